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
