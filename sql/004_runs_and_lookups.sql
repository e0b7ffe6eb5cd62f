-- Treaty coordinator journal, schema version 4: idempotent group rewrites,
-- transactions as runs, outcome lookups by txid.
--
-- grp: the id of the write group (one Postgres transaction of the journal's
-- writer), a UUIDv7 stored on the group's first row only (NULL on every
-- other row and on rows written before version 4). A group whose commit's
-- acknowledgement was lost (the connection dropped after the server
-- committed, before the writer read the answer) is written again with the
-- same grp; the unique index refuses the second copy, so every record is
-- stored once. One index entry per group, not per record.
--
-- Journals written before version 4 may hold a rewritten group twice (two
-- COMMIT rows for one txid, an END named twice); the journal's readers
-- tolerate that.
--
-- Runs. A txid's records up to and including an END (by seq) are one
-- transaction; records of the txid after its last END form another (the
-- txid ran again). The collector deletes an old END with the records of its
-- txid before it, never what follows it. Useful queries:
--   records of unfinished transactions (what recovery reads):
--     SELECT r.* FROM treaty_records r
--      WHERE r.kind <> 'end'
--        AND NOT EXISTS (SELECT 1 FROM treaty_records e
--                         WHERE e.txid = r.txid AND e.kind = 'end' AND e.seq > r.seq)
--      ORDER BY r.txid, r.seq;

ALTER TABLE treaty_journal ADD COLUMN IF NOT EXISTS grp uuid;
CREATE UNIQUE INDEX IF NOT EXISTS treaty_journal_grp ON treaty_journal (grp) WHERE grp IS NOT NULL;

-- Outcome lookups. A 2PC transaction's outcome is its decision row (COMMIT
-- or ABORT), found through the txid index. A saga's outcome is its END;
-- from version 4 on the writer stores a saga's END ("completed" or
-- "compensated") as a row of its own, kind 'end', which the txid index finds
-- too (only 2PC ENDs are batched in 'ends' rows). Version 3 batched saga ENDs
-- as well: this partial GIN index finds those rows by txid until the
-- collector has removed them. No row written from version 4 on matches its
-- predicate, so it costs nothing on the write path. (The predicate names
-- ended, not kind: only 'ends' rows have one, and a query that said kind =
-- 'ends' would let the planner walk every 'ends' row through the partial
-- index of version 3 instead.) One transaction's outcome:
--   SELECT kind, detail, failed_branch FROM treaty_journal WHERE txid = '...' ORDER BY seq;
--   SELECT seq, detail FROM treaty_journal       -- saga END of a version-3 writer
--    WHERE ended IS NOT NULL AND detail IN ('completed', 'compensated') AND ended && ARRAY['...'::uuid];
CREATE INDEX IF NOT EXISTS treaty_journal_saga_ends ON treaty_journal USING gin (ended)
    WHERE ended IS NOT NULL AND detail IN ('completed', 'compensated');

INSERT INTO treaty_schema (version)
SELECT 4 WHERE NOT EXISTS (SELECT 1 FROM treaty_schema WHERE version = 4);
