-- Treaty participant barrier, schema version 3 (versions 2 and 3 below).
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

-- Version 3: the purge horizon. treaty_pg_barrier_purge deletes old rows, and
-- a deleted row no longer refuses what it was there to refuse (an action
-- after its compensation, a PREPARE after its branch committed) nor tells a
-- COMMIT whether its branch committed. So the purge records how far it went,
-- in the same transaction as its DELETE: it deletes a row only when the row
-- and its txid (a UUIDv7) were both created before the horizon, and what then
-- arrives for a UUIDv7 txid created before the horizon is refused or judged
-- without its rows (see participant-sdk/src/pg_core.h). Rows of other txids (not
-- UUIDv7: their age is unknown) are never purged, so they still decide.
-- This part (to the end of the file) also runs by itself on an older table:
-- it must not lock treaty_barrier, which prepared transactions may hold.
CREATE TABLE IF NOT EXISTS treaty_barrier_horizon (
    id        boolean     PRIMARY KEY DEFAULT true CHECK (id), -- one row, written by the first purge
    horizon   timestamptz NOT NULL, -- rows of UUIDv7 txids created before this may be gone; never moves back
    purged_at timestamptz NOT NULL DEFAULT now() -- when a purge last moved or confirmed it
);
