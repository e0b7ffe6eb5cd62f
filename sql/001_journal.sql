-- Treaty coordinator journal, schema version 1.
-- Applied by treatyd at start-up (idempotent). Append-only: rows are inserted,
-- never updated; finished transactions are deleted by the journal's collector.
--
-- Useful queries:
--   unfinished transactions:
--     SELECT txid, kind, services, written_at FROM treaty_journal j
--      WHERE NOT EXISTS (SELECT 1 FROM treaty_journal e WHERE e.txid = j.txid AND e.kind = 'end');
--   outcome of one transaction:
--     SELECT kind, detail, written_at FROM treaty_journal WHERE txid = '...' ORDER BY seq;

CREATE TABLE IF NOT EXISTS treaty_schema (
    version    integer     NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS treaty_journal (
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid          uuid        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('commit', 'abort', 'end')),
    services      text[],                 -- service of each branch, in branch order
    failed_branch integer,                -- abort: the branch that caused it
    detail        text,                   -- abort: the reason
    written_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS treaty_journal_txid ON treaty_journal (txid);
CREATE INDEX IF NOT EXISTS treaty_journal_end ON treaty_journal (written_at) WHERE kind = 'end';

INSERT INTO treaty_schema (version)
SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM treaty_schema WHERE version = 1);
