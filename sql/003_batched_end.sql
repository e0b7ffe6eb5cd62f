-- Treaty coordinator journal, schema version 3: END records in batches.
-- The END records a write group holds are stored as one row of kind 'ends'
-- (one per distinct detail): txid NULL, ended = the transactions' txids,
-- detail = their common detail (NULL for 2PC, 'completed' or 'compensated'
-- for sagas). A 2PC transaction then costs one row (its decision) instead
-- of two. Rows of kind 'end' (one per transaction, written by versions 1
-- and 2) are still read and collected.
--
-- treaty_records shows every record one per row, an 'ends' row as one 'end'
-- row per txid (with the batch row's seq and written_at). Useful queries:
--   unfinished transactions:
--     SELECT txid, kind, services, written_at FROM treaty_records j
--      WHERE NOT EXISTS (SELECT 1 FROM treaty_records e WHERE e.txid = j.txid AND e.kind = 'end');
--   the records of one transaction:
--     SELECT kind, detail, written_at FROM treaty_records WHERE txid = '...' ORDER BY seq;
--   (the view unnests every 'ends' row for that; on a large journal, read the
--   transaction's own rows through the txid index and its END apart:
--     SELECT kind, detail, written_at FROM treaty_journal WHERE txid = '...';
--     SELECT written_at, detail FROM treaty_journal
--      WHERE kind = 'ends' AND ended @> ARRAY['...'::uuid];  -- one row per group)

ALTER TABLE treaty_journal ADD COLUMN IF NOT EXISTS ended uuid[];
ALTER TABLE treaty_journal ALTER COLUMN txid DROP NOT NULL;
-- NOT VALID: the rows already stored passed the narrower check of version 2,
-- and validating would scan the whole journal under an exclusive lock.
ALTER TABLE treaty_journal DROP CONSTRAINT IF EXISTS treaty_journal_kind_check;
ALTER TABLE treaty_journal ADD CONSTRAINT treaty_journal_kind_check
    CHECK (kind IN ('commit', 'abort', 'end', 'saga', 'step', 'turn', 'ends')) NOT VALID;
ALTER TABLE treaty_journal ADD CONSTRAINT treaty_journal_ends_check
    CHECK (CASE WHEN kind = 'ends' THEN txid IS NULL AND ended IS NOT NULL
                ELSE txid IS NOT NULL AND ended IS NULL END) NOT VALID;
CREATE INDEX IF NOT EXISTS treaty_journal_ends ON treaty_journal (written_at) WHERE kind = 'ends';

CREATE OR REPLACE VIEW treaty_records AS
    SELECT seq, txid, kind, services, failed_branch, detail, step, data, written_at
      FROM treaty_journal
     WHERE kind <> 'ends'
    UNION ALL
    SELECT b.seq, e.txid, 'end', NULL::text[], NULL::integer, b.detail, NULL::integer, NULL::bytea, b.written_at
      FROM treaty_journal b CROSS JOIN LATERAL unnest(b.ended) AS e(txid)
     WHERE b.kind = 'ends';

INSERT INTO treaty_schema (version)
SELECT 3 WHERE NOT EXISTS (SELECT 1 FROM treaty_schema WHERE version = 3);
