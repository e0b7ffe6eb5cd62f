/*
 * journal.h - the coordinator's durable journal in PostgreSQL.
 *
 * Append-only rows in treaty_journal (sql/001_journal.sql), one per record,
 * keyed by txid. Lifecycle:
 *
 *   1. journal_connect()   blocking: connect (retrying with backoff, logging each
 *                          try), apply the schema, refuse a newer schema version,
 *                          take the owner lock: a session-level advisory lock
 *                          this connection - the writer's - holds for its life
 *                          (and every reconnect takes again; journal_deposed).
 *                          While another session holds it, wait: one coordinator
 *                          per journal, and a dead coordinator's backend that is
 *                          still finishing a commit finishes before the scan.
 *   2. journal_scan()      blocking: read back every record of unfinished
 *                          transactions (runs of a txid without an END), for
 *                          recovery. Finished ones are not read: their
 *                          outcomes are answered by journal_lookup().
 *   3. journal_start()     start the writer and reader threads. From now on the
 *                          coordinator loop appends records with
 *                          journal_append() and queues outcome lookups with
 *                          journal_lookup() (neither blocks on Postgres), and
 *                          calls journal_flush() once per loop turn; the writer
 *                          group-commits the batches waiting for it (up to
 *                          about 4 MB) in one Postgres transaction and then
 *                          reports the new durable watermark on
 *                          journal_socket(); the reader answers lookups there
 *                          too.
 *   4. journal_close()     flush what is pending (bounded wait), stop the
 *                          threads; lookups not answered yet are dropped.
 *
 * Forced vs lazy: a batch holding a forced record is written at once; a
 * batch of only lazy records (a 2PC END, a STEP) may be delayed up to
 * lazy_delay_ms to gather more. Every group commits with synchronous_commit =
 * on: a record reported durable survives a crash of PostgreSQL. Records
 * become durable in append order, so one watermark (the highest durable
 * sequence number) says what is durable.
 *
 * If Postgres is lost, the writer keeps the batch, reconnects with backoff and
 * writes it again, and journal_healthy() turns false until a batch commits
 * again. Writing again is idempotent: a group that had committed although its
 * acknowledgement was lost is not stored a second time (schema version 4).
 * Journals written before version 4 may hold such records twice; the scan
 * and the lookups tolerate that.
 *
 * Thread safety: every function is called from the coordinator's loop thread
 * only; the writer and reader threads are internal.
 */
#ifndef TREATY_JOURNAL_H
#define TREATY_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metrics_hist.h"

/* sql/001_journal.sql, 002_saga.sql, 003_batched_end.sql, 004_runs_and_lookups.sql, 005_audit.sql */
#define JOURNAL_SCHEMA_VERSION 5

enum journal_kind {
    JOURNAL_COMMIT = 1, /* 2PC decision: commit. Forced. services = every branch's service */
    JOURNAL_ABORT = 2,  /* 2PC decision: abort. Forced. services, detail = reason, failed_branch */
    JOURNAL_END = 3,    /* finished (2PC: every branch acknowledged; saga: detail = "completed" or
                           "compensated"). 2PC: lazy, and a group's 2PC ENDs are stored together, one
                           'ends' row per detail, for up to 8 details (sql/003_batched_end.sql). A
                           saga's END is a row of its own (sql/004_runs_and_lookups.sql) */
    JOURNAL_SAGA = 4,   /* saga definition. Forced before the first step runs. services = each step's
                           service; data = the encoded definition (coordinator's format) */
    JOURNAL_STEP = 5,   /* saga step done. Lazy. step = index; detail = "action" or "compensation" */
    JOURNAL_TURN = 6,   /* saga turned around. Forced before any compensation runs. step = the
                           failing step (failed_branch column), detail = reason */
    JOURNAL_AUDIT = 7   /* an operator's resolve (treatyctl; sql/005_audit.sql). Forced, appended right
                           before the record that carries it out (ABORT, TURN or STEP), in the same batch.
                           detail = "<what> by <who>: <why>"; step = the saga step it concerns, else -1.
                           Decides nothing: recovery and the lookups pass over it */
};

/* "commit", "abort", "end", "saga", "step", "turn", "audit" (the kind column) or NULL. */
const char *journal_kind_name(enum journal_kind k);

struct journal_rec {
    uint8_t txid[16];
    enum journal_kind kind;
    unsigned nservices;          /* branches or steps, in order */
    const char *const *services; /* nservices names of [A-Za-z0-9._-]{1,64} */
    const char *detail;          /* free text or NULL; e.g. the abort reason and failed branch */
    int failed_branch;           /* ABORT: branch that caused it; TURN: failing step; else -1 */
    int step;                    /* STEP: the step index; AUDIT: the step it concerns or -1; else -1 */
    const void *data;            /* SAGA: the definition (bytea); else NULL */
    size_t data_len;
};

/* For the ms fields, 0 means the default given. retention_s has no default. */
struct journal_config {
    const char *conninfo;   /* libpq conninfo of the journal database */
    int connect_initial_ms; /* first reconnect backoff (default 100) */
    int connect_max_ms;     /* backoff cap (default 5000) */
    int lazy_delay_ms;      /* how long a lazy-only batch may wait (default 20) */
    int retention_s;        /* finished transactions are deleted after this; at least 1 */
    int gc_interval_ms;     /* how often the writer collects (default 5000) */
    volatile int *stop;     /* optional: journal_connect gives up when *stop becomes non-zero */
};

struct journal;

/* Step 1. Waits, logging every 10 s, while another session holds the owner
 * lock. On success *out is owned by the caller (journal_close). Returns 0,
 * TREATY_EPG (schema failure, message in errbuf), TREATY_EVERSION (the database
 * holds a newer schema than JOURNAL_SCHEMA_VERSION), TREATY_EINVAL (a NULL
 * argument, a negative field, retention_s < 1, an unparsable conninfo), or
 * TREATY_EBUSY when *stop became set while retrying or waiting for the lock. errbuf gets a one-line
 * message on error. */
int journal_connect(const struct journal_config *cfg, struct journal **out, char *errbuf, size_t errlen);

/*
 * Step 2. Calls cb once per record of every unfinished transaction, grouped by
 * txid and in append order within it. A transaction is the run of a txid's
 * records up to and including an END (by seq); the records of a txid after
 * its last END (a later run of the same txid, or duplicates written again
 * after a lost acknowledgement) form a transaction of their own. Only runs
 * without an END are delivered; finished transactions are answered by
 * journal_lookup(). cb's record and strings are borrowed for the call. A
 * non-zero return from cb stops the scan and is returned. finished_at_unix is
 * always 0 (kept for source compatibility). Returns 0 or TREATY_EPG (or
 * TREATY_EINVAL for a NULL argument, TREATY_ESTATE after journal_start).
 */
typedef int (*journal_scan_fn)(void *arg, const struct journal_rec *r, long long finished_at_unix);
int journal_scan(struct journal *j, journal_scan_fn cb, void *arg);

/*
 * Step 2b. The creation time (Unix ms, the txid's first 48 bits) of the
 * newest txid with a record in the journal among those made no later than
 * below_ms, into *out_ms; -1 when there is none. One indexed read (the txid
 * index, backwards from below_ms). The coordinator uses it at start-up: a
 * txid made later than that has no record, so it needs no journal lookup
 * before it may run. (A UUIDv4 txid of an old journal that sorts below
 * below_ms reads as a time too: never less than the newest UUIDv7's, so the
 * answer only errs towards more lookups.) Before journal_start; 0,
 * TREATY_EINVAL, TREATY_ESTATE (started) or TREATY_EPG.
 */
int journal_newest_txid(struct journal *j, int64_t below_ms, int64_t *out_ms);

/* Step 3. zctx is the coordinator's ZeroMQ context (inproc transport). */
int journal_start(struct journal *j, void *zctx);

/* Queues a record (copied) and returns its sequence number (1, 2, ...). Never
 * blocks, never fails except on out-of-memory (aborts the daemon). */
uint64_t journal_append(struct journal *j, const struct journal_rec *r, bool force);

/* Hands everything appended since the last flush to the writer. Once per loop turn. */
void journal_flush(struct journal *j);

/* A ZeroMQ socket to include in the loop's zmq_poll (ZMQ_POLLIN). */
void *journal_socket(struct journal *j);

/* Drains the notifications on journal_socket() (call when it is readable;
 * harmless otherwise): lookup answers among them are kept for
 * journal_lookup_results(). Returns the highest durable sequence number so
 * far. */
uint64_t journal_durable(struct journal *j);

/*
 * Outcome lookups: what the journal durably says about one txid, for the
 * coordinator's answers about transactions it no longer holds in memory.
 * journal_lookup() queues a request (never blocks); the requests of one loop
 * turn go to Postgres together at journal_flush(), on a connection of their
 * own, so lookups never delay the writer. Answers arrive in any order;
 * journal_socket() becomes readable, and journal_lookup_results() hands each
 * to cb. Call both journal_durable() and journal_lookup_results() when the
 * socket is readable: either may take the other's notification off it (and
 * keeps it for the other). Each journal_lookup() call gets exactly one
 * answer, a txid asked twice two. Lookups queued before journal_start() are
 * sent when it starts. Only durable records are seen: the caller keeps what it
 * appended but has not seen durable in memory. A lookup that cannot reach
 * Postgres is answered with error = TREATY_EPG (the caller refuses or
 * retries), even when Postgres does not answer at all: a connection attempt
 * or a query gives up after 10 s (the attempt sooner if conninfo's
 * connect_timeout says so), and each query (of up to 1,000 txids) gets at
 * most two tries. After a failure the reader reconnects with the writer's
 * backoff (connect_initial_ms .. connect_max_ms) and answers lookups that
 * come in meanwhile with TREATY_EPG at once.
 *
 * The outcome is that of the txid's latest run (the records after its last
 * END, or else those up to it; see journal_scan). Records stored twice by
 * writers before schema version 4 do not change it.
 */
enum journal_outcome {
    JOURNAL_OUTCOME_NONE = 0,    /* no record of this txid (never seen, or collected) */
    JOURNAL_OUTCOME_COMMITTED,   /* a COMMIT record */
    JOURNAL_OUTCOME_ABORTED,     /* an ABORT record */
    JOURNAL_OUTCOME_COMPLETED,   /* a saga END "completed" */
    JOURNAL_OUTCOME_COMPENSATED, /* a saga END "compensated" */
    JOURNAL_OUTCOME_UNFINISHED   /* records, but neither decision nor END (a saga in flight) */
};

struct journal_lookup_result {
    uint8_t txid[16];
    int error; /* 0, or TREATY_EPG: the journal could not be read */
    enum journal_outcome outcome;
    int failed_branch; /* ABORT's failed branch or the saga's TURN step; -1 none */
    char detail[256];  /* ABORT's or TURN's detail ("" none), truncated */
};

/* Queues a lookup of txid (copied). Never blocks, never fails except on
 * out-of-memory (aborts the daemon). */
void journal_lookup(struct journal *j, const uint8_t txid[16]);
typedef void (*journal_lookup_fn)(void *arg, const struct journal_lookup_result *r);
/* Calls cb for every answer received so far, in the order received; r is
 * borrowed for the call. cb may call journal_lookup(). Loop thread; harmless
 * when none. */
void journal_lookup_results(struct journal *j, journal_lookup_fn cb, void *arg);

/*
 * One transaction's records, for an operator (treatyctl show): what the
 * journal durably holds of a txid - its rows (the txid index) and the 2PC
 * ENDs batched in 'ends' rows after its first row (read along the seq index
 * from there) - in seq order, at most JOURNAL_RECORDS_MAX of them: the first
 * ones, with truncated set when there are more. Every run of the txid still
 * in the journal is there, finished or not, audit records included.
 * journal_read_records() queues a request (copied; never blocks, never fails
 * except on out-of-memory, which aborts the daemon); it goes to the reader
 * thread at journal_flush(), is answered there after the lookups handed over
 * with it, on the lookups' connection and with their rules (only durable
 * records are seen; TREATY_EPG when Postgres cannot be read, within 10 s),
 * and comes back through journal_records_results(): exactly one answer per
 * request, in the order asked. Call journal_records_results() when
 * journal_socket() is readable, with journal_durable() and
 * journal_lookup_results(): any of them may take the others' notifications
 * off it (and keeps them for the others). Requests not answered by
 * journal_close() are dropped.
 */
#define JOURNAL_RECORDS_MAX 160

struct journal_record_row {
    uint64_t seq;           /* the table's seq: the order of the records */
    enum journal_kind kind; /* END for a 2PC END batched in an 'ends' row */
    int64_t written_ms;     /* when its row was written (Unix ms, PostgreSQL's clock) */
    int failed_branch;      /* ABORT, TURN: the failing branch or step; else -1 */
    int step;               /* STEP, AUDIT: the step; else -1 */
    char services[512];     /* the services column, comma-separated ("" none); cut with "..." */
    char detail[256];       /* the detail column ("" none); cut */
};

struct journal_records {
    uint8_t txid[16];
    uint64_t token; /* the caller's, from journal_read_records */
    int error;      /* 0, or TREATY_EPG: the journal could not be read (n is 0) */
    unsigned n;     /* rows[0..n) */
    bool truncated; /* the txid has more than JOURNAL_RECORDS_MAX records */
    struct journal_record_row rows[JOURNAL_RECORDS_MAX];
};

void journal_read_records(struct journal *j, const uint8_t txid[16], uint64_t token);
typedef void (*journal_records_fn)(void *arg, const struct journal_records *r);
/* Calls cb for every answer received so far, in the order received; r is
 * borrowed for the call. cb may call journal_read_records(). Loop thread;
 * harmless when none. */
void journal_records_results(struct journal *j, journal_records_fn cb, void *arg);

/* False while the writer cannot reach Postgres (new work should be refused). */
bool journal_healthy(const struct journal *j);

/* True once the writer, reconnecting, found the owner lock held by another
 * session (journal_connect says what it is): another coordinator took the
 * journal while this one was cut off. The writer has stopped for good;
 * nothing appended since will become durable. The coordinator must stop.
 * Any thread. */
bool journal_deposed(const struct journal *j);
/* Number of records appended but not yet durable. */
uint64_t journal_backlog(const struct journal *j);

/* Statistics for logs and benchmarks. */
struct journal_stats {
    uint64_t batches; /* Postgres transactions committed by the writer */
    uint64_t records; /* records written */
    uint64_t forced_batches;
    uint64_t reconnects;
    uint64_t gc_deleted;
    uint64_t write_us; /* wall time the writer spent writing groups (reconnects included): the
                          share of time it was busy, i.e. how close the journal is to its limit */
};
void journal_get_stats(const struct journal *j, struct journal_stats *out);

/* Histograms of the writer's group commits, copied into the caller's
 * structs: records per group, and each group's time from its first write
 * attempt to its commit in microseconds (reconnects and rewrites included).
 * Either pointer may be NULL. */
void journal_get_hists(const struct journal *j, struct metrics_hist_snap *group_records,
                       struct metrics_hist_snap *group_us);

/* Step 4. Waits up to wait_ms for pending records to become durable, stops the
 * writer, disconnects and frees. Accepts NULL; sets *j to NULL. */
void journal_close(struct journal **j, int wait_ms);

#endif /* TREATY_JOURNAL_H */
