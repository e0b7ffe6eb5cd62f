-- Treaty participant barrier, schema version 1.
-- Lives in each participant's own database. libtreaty creates it if missing.
-- A row is written in the same local transaction as the branch's business
-- change (then PREPARE TRANSACTION), so a branch is applied at most once:
-- a duplicate PREPARE that arrives after the branch committed finds the row
-- and is answered without running the work again.

CREATE TABLE IF NOT EXISTS treaty_barrier (
    txid       uuid        NOT NULL,
    branch     integer     NOT NULL,
    op         text        NOT NULL,      -- 'prepare' for 2PC branches
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, branch, op)
);

-- Version 2: sagas. op is 'action' or 'compensation' for saga steps (branch =
-- step index). result records what the action did ('ok', 'failed', or
-- 'blocked' when the row was written by a compensation that arrived first),
-- so a duplicate action answers with the first result and a late action is
-- refused.
ALTER TABLE treaty_barrier ADD COLUMN IF NOT EXISTS result text;
ALTER TABLE treaty_barrier ADD COLUMN IF NOT EXISTS reason text;
CREATE INDEX IF NOT EXISTS treaty_barrier_created ON treaty_barrier (created_at);
