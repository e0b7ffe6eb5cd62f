-- Treaty coordinator journal, schema version 5: the operator's audit records.
--
-- kind 'audit': an operator's resolve through treatyctl (docs/treatyctl.md),
-- forced, and appended just before the record that carries it out (the 2PC's
-- ABORT, the saga's TURN, or the STEP record of a compensation given up as
-- done by hand) in the same write group, so the two are stored together or
-- not at all. detail says what was done, by whom and why:
--   '<what> by <who>: <why>'   e.g. 'abort by uid 1000 (alice): customer called'
-- step: the saga step it concerns (a compensation given up), else NULL.
-- written_at: when.
--
-- An audit record decides nothing: recovery and the outcome lookups pass
-- over it, and the collector deletes it with the rest of its transaction's
-- run (it always comes before that run's END). The audit trail of one
-- transaction:
--   SELECT written_at, step, detail FROM treaty_journal WHERE txid = '...' AND kind = 'audit' ORDER BY seq;

-- NOT VALID: the rows already stored passed the narrower check of version 4,
-- and validating would scan the whole journal under an exclusive lock.
ALTER TABLE treaty_journal DROP CONSTRAINT IF EXISTS treaty_journal_kind_check;
ALTER TABLE treaty_journal ADD CONSTRAINT treaty_journal_kind_check
    CHECK (kind IN ('commit', 'abort', 'end', 'saga', 'step', 'turn', 'ends', 'audit')) NOT VALID;

INSERT INTO treaty_schema (version)
SELECT 5 WHERE NOT EXISTS (SELECT 1 FROM treaty_schema WHERE version = 5);
