/*
 * schema.c - the journal's schema: sql/001_journal.sql .. 005 (compiled in
 * from the generated sql_*.h), applied by journal_connect() on the loop
 * thread before anything else touches the journal.
 */
#include "journal_priv.h"

#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"
#include "sql_journal.h"
#include "sql_saga.h"
#include "sql_batched_end.h"
#include "sql_runs_and_lookups.h"
#include "sql_audit.h"
#include "treaty.h"

/* pg_advisory_xact_lock key pair held while applying the schema: "TREA", 1. */
#define SCHEMA_LOCK_SQL "SELECT pg_advisory_xact_lock(1414677825, 1)"

/*
 * Applies sql/001_journal.sql, then sql/002_saga.sql when the database is
 * below version 2, sql/003_batched_end.sql when below version 3 and
 * sql/004_runs_and_lookups.sql when below version 4, in one transaction
 * under an advisory lock, so that coordinators starting together do not race
 * on CREATE ... IF NOT EXISTS and an upgrade happens once, entirely or not at
 * all (if we crash in the middle, the transaction rolls back and the next
 * start upgrades). 002 .. 005 are skipped once applied: re-adding
 * 002's CHECK constraint would scan the whole journal under an exclusive lock
 * on every start, and 003's constraints have no IF NOT EXISTS. A database
 * already holding a newer schema is left untouched. Returns 0,
 * TREATY_EVERSION, or TREATY_EPG (the caller tells a lost connection from an
 * SQL error by PQstatus).
 */
int journal_apply_schema(PGconn *c, int *version, char *err, size_t errlen)
{
    char why[ERRLEN];
    PGresult *res = NULL;

    /* Quiet: "relation ... already exists, skipping" on every start. */
    if (!journal_pg_exec(c, "BEGIN; SET LOCAL client_min_messages = warning; " SCHEMA_LOCK_SQL, PGRES_TUPLES_OK, why,
                         sizeof why))
        goto fail_sql;
    res = PQexec(c, "SELECT to_regclass('treaty_schema') IS NOT NULL");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto fail_res;
    bool exists = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    res = NULL;
    int v = 0;
    if (exists) {
        res = PQexec(c, "SELECT coalesce(max(version), 0) FROM treaty_schema");
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            goto fail_res;
        v = atoi(PQgetvalue(res, 0, 0));
        PQclear(res);
        res = NULL;
        if (v > JOURNAL_SCHEMA_VERSION) {
            journal_set_err(err, errlen,
                            "journal: the database holds journal schema version %d, newer than the %d this "
                            "treatyd supports; upgrade treatyd",
                            v, JOURNAL_SCHEMA_VERSION);
            PQclear(PQexec(c, "ROLLBACK"));
            return TREATY_EVERSION;
        }
    }
    if (!journal_pg_exec(c, sql_journal, PGRES_COMMAND_OK, why, sizeof why))
        goto fail_sql;
    if (v < 2) {
        if (v == 1)
            log_info("journal: upgrading the journal schema from version 1 to 2 (sagas)");
        if (!journal_pg_exec(c, sql_saga, PGRES_COMMAND_OK, why, sizeof why))
            goto fail_sql;
    }
    if (v < 3) {
        if (v >= 1)
            log_info("journal: upgrading the journal schema from version %d to 3 (END records in batches)", v);
        if (!journal_pg_exec(c, sql_batched_end, PGRES_COMMAND_OK, why, sizeof why))
            goto fail_sql;
    }
    if (v < 4) {
        if (v >= 1)
            log_info("journal: upgrading the journal schema from version %d to 4 (idempotent rewrites, lookups)", v);
        if (!journal_pg_exec(c, sql_runs_and_lookups, PGRES_COMMAND_OK, why, sizeof why))
            goto fail_sql;
    }
    if (v < 5) {
        if (v >= 1)
            log_info("journal: upgrading the journal schema from version %d to 5 (audit records)", v);
        if (!journal_pg_exec(c, sql_audit, PGRES_COMMAND_OK, why, sizeof why))
            goto fail_sql;
    }
    res = PQexec(c, "SELECT max(version) FROM treaty_schema");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto fail_res;
    *version = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    res = NULL;
    if (!journal_pg_commit(c, why, sizeof why))
        goto fail_sql;
    return 0;

fail_res:
    journal_pg_error(c, res, why, sizeof why);
    PQclear(res);
fail_sql:
    journal_set_err(err, errlen, "journal: cannot apply the journal schema: %s", why);
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "ROLLBACK"));
    return TREATY_EPG;
}
