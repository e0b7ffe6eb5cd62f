-- Treaty coordinator journal, schema version 2: sagas.
-- A saga's definition (kind 'saga', forced), its completed steps (kind 'step',
-- lazy, step = index, detail = 'action' or 'compensation'), its turn-around
-- (kind 'turn', forced, failed_branch = failing step, detail = reason) and its
-- end (kind 'end', detail = 'completed' or 'compensated').

ALTER TABLE treaty_journal ADD COLUMN IF NOT EXISTS step integer;
ALTER TABLE treaty_journal ADD COLUMN IF NOT EXISTS data bytea;
ALTER TABLE treaty_journal DROP CONSTRAINT IF EXISTS treaty_journal_kind_check;
ALTER TABLE treaty_journal ADD CONSTRAINT treaty_journal_kind_check
    CHECK (kind IN ('commit', 'abort', 'end', 'saga', 'step', 'turn'));

INSERT INTO treaty_schema (version)
SELECT 2 WHERE NOT EXISTS (SELECT 1 FROM treaty_schema WHERE version = 2);
