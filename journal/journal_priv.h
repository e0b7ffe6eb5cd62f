/*
 * journal_priv.h - what the files of journal/ share: struct journal, which
 * thread owns each part of it, the messages between the threads, and the
 * functions one file offers another. For journal/ only: the coordinator
 * includes journal.h, the unit tests journal_int.h; neither includes this.
 *
 * The files, one responsibility each:
 *   journal.c       the public entry points on the loop thread: connect,
 *                   start, append, flush, durable, lookup queueing and
 *                   answers, statistics, close
 *   writer.c        the writer thread: group commit in pipeline mode, the
 *                   idempotent rewrite of a group (grp), reconnects, and the
 *                   fault point that loses a group's acknowledgement
 *   collect.c       the collector: deletes finished transactions (runs on
 *                   the writer thread, between groups)
 *   scan.c          the recovery scan, journal_scan() (loop thread, before
 *                   journal_start)
 *   records.c       the reader thread: one transaction's records for an
 *                   operator (journal_read_records)
 *   lookup.c        the reader thread: outcome lookups and how the journal's
 *                   rows become outcomes
 *   codec.c         the row codec (journal_int.h)
 *   schema.c        applying sql/00*.sql under the advisory lock
 *   pg.c            libpq helpers of every thread: a bounded connection
 *                   attempt, reconnect backoff, errors as one line
 *   (the clocks, out-of-memory and the PRNG are participant-sdk/src/util.h's,
 *    shared with the coordinator)
 *
 * Three threads share a struct journal:
 *
 *   loop thread    the coordinator's: every function of journal.h
 *                  (journal.c, scan.c). journal_append() encodes each record
 *                  at once into a COPY text line of the pending batch;
 *                  journal_lookup() queues a txid. journal_flush() hands the
 *                  batch to the writer and the lookups to the reader by
 *                  sending a pointer over an inproc PUSH socket (ownership
 *                  moves with the message). journal_durable() and
 *                  journal_lookup_results() drain what the two send back on
 *                  one PULL socket, journal_socket(). Nothing on this thread
 *                  touches Postgres after journal_start().
 *
 *   writer thread  journal_writer_main() (writer.c): owns the blocking libpq
 *                  connection journal_connect opened, writes each group of
 *                  batches in one Postgres transaction, then publishes the
 *                  durable watermark; between groups, journal_collect()
 *                  (collect.c).
 *
 *   reader thread  journal_reader_main() (lookup.c): owns a libpq connection
 *                  of its own, opened at the first lookup or records request
 *                  and kept by journal_reader_ask(); answers both.
 *                  Never touches the writer's state.
 *
 * Messages (each one frame, fixed size, same process; see open_sockets in
 * journal.c):
 *
 *   loop -> writer   struct msg {JMSG_BATCH, batch}   the writer owns the batch
 *                    struct msg {JMSG_STOP}           write what is left, exit
 *                    struct msg {JMSG_WAKE}           nothing; wakes the writer
 *   loop -> reader   struct msg {JMSG_LOOKUP, lookups} the reader owns them
 *                    struct msg {JMSG_RECORDS, rq}    the reader owns them
 *                    struct msg {JMSG_STOP}           exit, answer nothing more
 *   writer -> loop   struct note {NOTE_DURABLE, seq}  durable watermark
 *   reader -> loop   struct note {NOTE_ANSWERS, a}    the loop owns the answers
 *                    struct note {NOTE_RECORDS, rec}  the loop owns the records
 *
 * The watermark is also kept in an atomic, which is what journal_durable()
 * returns; its messages exist to make journal_socket() readable.
 *
 * After journal_close() has joined the threads, everything is the loop
 * thread's again.
 */
#ifndef TREATY_JOURNAL_PRIV_H
#define TREATY_JOURNAL_PRIV_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <libpq-fe.h>

#include "journal.h"
#include "journal_int.h"
#include "metrics_hist.h"
#include "util.h"

/* ms as a poll timeout: 0 .. INT_MAX. */
static inline int journal_clamp_ms(int64_t ms)
{
    return ms < 0 ? 0 : ms > INT_MAX ? INT_MAX : (int)ms;
}

/* Waits are cut into slices this long to notice a stop request. */
#define SLICE_MS 20
/* Columns a record is encoded in: txid, kind, services, failed_branch,
 * detail, step, data. The INSERT has one more, ended, for the rows that
 * hold a group's END records (sql/003_batched_end.sql). */
#define JOURNAL_NCOLS 7
#define INSERT_NCOLS (JOURNAL_NCOLS + 1)
/* A group's END records go in one 'ends' row per distinct detail; beyond
 * this many details in one group, an END is written as a row of its own
 * (kind 'end', as versions 1 and 2 wrote every END). */
#define ENDS_MAX_DETAILS 8

/* Size of the error texts passed around (err, errlen). */
#define ERRLEN 512

/* fallback_application_name of the journal's connections. */
#define APP_WRITER "treatyd-journal"
#define APP_READER "treatyd-journal-lookup"

/* ------------------------------------------------------------------ types */

/* Records appended between two flushes (normally one loop turn; before
 * journal_start, everything appended), already encoded as COPY text. Owned
 * by the loop thread until journal_flush() sends it, then by the writer. */
struct batch {
    struct batch *next;      /* writer: next batch of the group */
    uint64_t first_seq;      /* sequence number of its first record */
    uint64_t last_seq;       /* and of its last */
    unsigned nrecs;          /* records: last_seq - first_seq + 1 */
    bool forced;             /* one of them was appended with force */
    struct journal_buf rows; /* one COPY text line a record (journal_int.h) */
};

static inline void batch_free(struct batch *b)
{
    if (!b)
        return;
    journal_buf_free(&b->rows);
    free(b);
}

enum msg_type { JMSG_BATCH = 1, JMSG_STOP = 2, JMSG_WAKE = 3, JMSG_LOOKUP = 4, JMSG_RECORDS = 5 };

/* journal_read_records requests queued during loop turns, in order. Owned
 * by the loop thread until journal_flush() sends them, then by the reader. */
struct records_req {
    struct records_req *next;
    uint8_t txid[16];
    uint64_t token;
};

static inline void records_req_free(struct records_req *q)
{
    while (q) {
        struct records_req *next = q->next;
        free(q);
        q = next;
    }
}

/* loop -> writer, loop -> reader. */
struct msg {
    int type;                 /* enum msg_type */
    struct batch *b;          /* JMSG_BATCH: ownership passes to the receiver */
    struct lookup_batch *lkp; /* JMSG_LOOKUP: ownership passes to the receiver */
    struct records_req *rq;   /* JMSG_RECORDS: ownership passes to the receiver */
};

/* Lookups queued during loop turns: the txids asked, in order. Owned by the
 * loop thread until journal_flush() sends it, then by the reader. */
struct lookup_batch {
    struct lookup_batch *next; /* reader: the batches taken together */
    unsigned n, cap;           /* txids asked, room for */
    uint8_t (*txid)[16];       /* in the order asked */
};

/* Frees l and every batch after it. */
static inline void lookup_batch_free(struct lookup_batch *l)
{
    while (l) {
        struct lookup_batch *next = l->next;
        free(l->txid);
        free(l);
        l = next;
    }
}

/* The reader's answers to a run of lookups, one per lookup, in their order.
 * Made by the reader, owned by the loop thread once received. */
struct answers {
    struct answers *next; /* loop: received, not yet handed out */
    unsigned n;
    struct journal_lookup_result r[];
};

enum note_type { NOTE_DURABLE = 1, NOTE_ANSWERS = 2, NOTE_RECORDS = 3 };

/* The reader's answer to one records_req, as the loop keeps it until
 * journal_records_results hands it out. */
struct records_answer {
    struct records_answer *next; /* loop: received, not yet handed out */
    struct journal_records r;
};

/* writer -> loop, reader -> loop. */
struct note {
    int type;                   /* enum note_type */
    uint64_t durable;           /* NOTE_DURABLE: the new watermark */
    struct answers *a;          /* NOTE_ANSWERS: ownership passes to the receiver */
    struct records_answer *rec; /* NOTE_RECORDS: ownership passes to the receiver */
};

/* What a journal connection's session already holds, so that a group sends
 * only what is missing. Reset whenever the connection is replaced. */
struct pgsess {
    bool prepared; /* the writer's INSERT is prepared (writer.c) */
    int sync;      /* 1: SET synchronous_commit = on was sent and took; else not yet */
};

/* The END records of a group that share one detail: written as one row. */
struct ends_row {
    const char *detail; /* the COPY field in the group's batch, still escaped */
    size_t detail_len;
    struct journal_buf txids; /* "{uuid,uuid,...}" being built */
};

/* State touched only by the writer thread (writer.c, collect.c) between
 * journal_start and the join; before the start and after the join, by the
 * loop thread (journal.c hands conn over; journal_close writes an unstarted
 * journal's records with cols and ends). */
struct writer {
    PGconn *conn;                           /* NULL while disconnected; set only through writer_set_conn */
    struct pgsess sess;                     /* of conn */
    struct batch *head, *tail;              /* the group being gathered or written */
    size_t bytes;                           /* COPY text of the group */
    unsigned nrecs;                         /* records of the group */
    bool forced;                            /* the group holds a forced record */
    int64_t first_at;                       /* when the group's first batch arrived */
    uint8_t grp[16];                        /* the group's id (UUIDv7), the same in every attempt to write it */
    bool stopping;                          /* JMSG_STOP received */
    int backoff_ms;                         /* 0 until a failure; reset by a commit */
    int64_t next_gc;                        /* when the collector runs next (now_ms) */
    struct util_rng rng;                    /* backoff jitter, fallback group ids */
    struct journal_buf cols[INSERT_NCOLS];  /* write_group's parameters, reused */
    struct ends_row ends[ENDS_MAX_DETAILS]; /* write_group's 'ends' rows, reused */
};

/* State touched only by the reader thread (lookup.c) between journal_start
 * and the join. */
struct reader {
    PGconn *conn;             /* NULL until the first request, and while disconnected */
    int backoff_ms;           /* 0 until a failure; reset by an answered query */
    int64_t next_ms;          /* after a failure: no new connection before this */
    struct util_rng rng;      /* backoff jitter */
    struct journal_buf param; /* the uuid[] literal of a query, reused */
};

struct journal {
    /* Configuration, immutable after journal_connect: any thread. */
    char *conninfo;
    int connect_initial_ms;
    int connect_max_ms;
    int lazy_delay_ms;
    int retention_s;
    int gc_interval_ms;
    int attempt_timeout_ms; /* one connection attempt: connect_timeout, or 10 s */
    bool ascii_only;        /* database encoding is neither UTF8 nor SQL_ASCII */
    volatile int *stop;     /* journal_connect only */

    /* Loop thread. */
    PGconn *conn;                  /* journal_start moves it to w.conn, journal_close back after the join */
    struct batch *pending;         /* appended, not yet flushed */
    uint64_t appended;             /* last sequence number handed out */
    struct lookup_batch *lookups;  /* queued, not yet flushed */
    struct answers *answers;       /* received, not yet handed out (oldest first) */
    struct answers **answers_tail; /* where the next answers received go */
    struct records_req *records;   /* journal_read_records: queued, not yet flushed (in order) */
    struct records_req **records_tail;
    struct records_answer *rec_answers; /* received, not yet handed out (oldest first) */
    struct records_answer **rec_answers_tail;
    bool started;                    /* journal_start succeeded: the threads run until journal_close */
    void *to_writer;                 /* PUSH */
    void *to_reader;                 /* PUSH */
    void *from_both;                 /* PULL: journal_socket() */
    pthread_t thread, reader_thread; /* the writer, the reader */
    struct util_rng rng;             /* journal_connect's backoff, journal_close's group id */

    /* Used by the writer thread until it is joined. */
    void *writer_in;  /* PULL */
    void *writer_out; /* PUSH */
    struct writer w;

    /* Used by the reader thread until it is joined. */
    void *reader_in;  /* PULL */
    void *reader_out; /* PUSH */
    struct reader r;

    /* Shared between the threads. */
    _Atomic uint64_t durable; /* the watermark: set by the writer (never started: by journal_close) */
    atomic_bool healthy;      /* set by the writer */
    atomic_bool abandon;      /* journal_close gave up waiting: the writer exits */
    atomic_bool deposed;      /* another session took the owner lock while the writer was disconnected */
    atomic_bool reader_stop;  /* journal_close: the reader exits, unanswered lookups are dropped */
    /* journal_stats, counted by the writer thread (the collector's among
     * them: n_reconnects, n_gc_deleted). */
    _Atomic uint64_t n_batches;
    _Atomic uint64_t n_records;
    _Atomic uint64_t n_forced;
    _Atomic uint64_t n_reconnects;
    _Atomic uint64_t n_gc_deleted;
    _Atomic uint64_t n_write_us; /* time the writer spent writing groups */
    /* Written by the writer thread only (metrics_hist.h: one writer, any reader). */
    struct metrics_hist h_group_records; /* records per group committed */
    struct metrics_hist h_group_us;      /* a group's time from the first try to its commit, us */
    atomic_uint fault_lose_acks;         /* armed by journal_fault_lose_acks (journal_int.h), taken by the writer */
};

/* Replaces the writer's connection (c may be NULL) and forgets what the old
 * session held. Does not close the old one. */
static inline void writer_set_conn(struct writer *w, PGconn *c)
{
    w->conn = c;
    w->sess = (struct pgsess){.prepared = false, .sync = -1};
}

/* The writer's stop predicate (a journal_stop_fn): journal_close gave up. */
static inline bool writer_abandoned(struct journal *j)
{
    return atomic_load(&j->abandon);
}

/* ------------------------------------------- growing a journal_buf (codec) */

/* Makes room for extra more bytes. Aborts on out-of-memory. Static, not
 * inline: the compiler keeps it out of line, as it did in journal.c, and
 * inlines the three below. */
static void buf_reserve(struct journal_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            util_out_of_memory();
        cap *= 2;
    }
    b->data = util_xrealloc(b->data, cap);
    b->cap = cap;
}

static inline void buf_put(struct journal_buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static inline void buf_putc(struct journal_buf *b, char c)
{
    buf_reserve(b, 1);
    b->data[b->len++] = c;
}

static inline void buf_puts(struct journal_buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* ------------------------------------------------------------------- pg.c */

/* Formats into buf (nothing when buf is NULL or len 0). */
void journal_set_err(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Copies a (possibly multi-line) libpq message as one line. */
void journal_one_line(char *dst, size_t len, const char *src);

/* "message (SQLSTATE xxxxx)" from a failed result, or the connection's message. */
void journal_pg_error(PGconn *c, const PGresult *res, char *buf, size_t len);

/* Runs sql, expects `want`; on failure fills err and returns false. */
bool journal_pg_exec(PGconn *c, const char *sql, ExecStatusType want, char *err, size_t errlen);

/* COMMIT, checking its tag: COMMIT of a failed transaction "succeeds" with the
 * tag ROLLBACK. On failure fills err and returns false. */
bool journal_pg_commit(PGconn *c, char *err, size_t errlen);

/* A thread's "give up now" test, polled while connecting or sleeping. */
typedef bool (*journal_stop_fn)(struct journal *j);

/*
 * Exponential backoff with jitter. *b is the current base (0: no failure yet).
 * immediate: the first failure retries at once (a write failure: the server
 * may simply have closed an idle connection). Returns the delay in ms, drawn
 * from [base/2, base], and doubles the base up to max_ms.
 */
int journal_backoff_delay(int *b, int initial_ms, int max_ms, bool immediate, struct util_rng *rng);

/* Sleeps ms, in slices. Returns true when stopped() turned true. */
bool journal_sleep_unless(struct journal *j, journal_stop_fn stopped, int ms);

/*
 * One connection attempt to j->conninfo as application app, non-blocking so
 * that it can be given up: after timeout_ms, or as soon as stopped() turns
 * true. The connection is in blocking mode once established, with its server
 * notices going to our log. Returns NULL with err filled on failure; the
 * caller owns the connection.
 */
PGconn *journal_pg_connect_within(struct journal *j, journal_stop_fn stopped, const char *app, int timeout_ms,
                                  char *err, size_t errlen);

/* One attempt within j->attempt_timeout_ms (connect_timeout, or 10 s). */
PGconn *journal_pg_connect(struct journal *j, journal_stop_fn stopped, const char *app, char *err, size_t errlen);
/*
 * The journal's owner lock: a session-level advisory lock that the writer's
 * connection holds for as long as it lives, taken before the recovery scan
 * (journal_connect) and again on every reconnect. One coordinator per
 * journal: a second one waits at journal_connect. And a coordinator that died
 * mid-commit still has a PostgreSQL backend finishing that commit; the lock
 * is only free once that backend has gone, so the next incarnation's scan
 * cannot miss a record the dead one's commit is still writing. 0: taken (or
 * already held by this session); TREATY_EBUSY: another session holds it, err
 * says which; TREATY_EPG: the query failed (err says why).
 */
int journal_pg_take_owner(PGconn *c, char *err, size_t errlen);
/* Writer thread: a new connection for the writer, holding the owner lock.
 * NULL when it cannot connect (why says so), or when another session holds
 * the lock: then j->deposed is set (once, logged) and healthy cleared. */
PGconn *journal_writer_connect(struct journal *j, char *why, size_t whylen);
/* --------------------------------------------------------------- schema.c */

/*
 * Brings the database's journal schema to JOURNAL_SCHEMA_VERSION in one
 * transaction under an advisory lock; *version gets the version it holds
 * then. Returns 0, TREATY_EVERSION (a newer schema: left untouched), or
 * TREATY_EPG (the caller tells a lost connection from an SQL error by
 * PQstatus); err gets a one-line message on error. Loop thread, blocking.
 */
int journal_apply_schema(PGconn *c, int *version, char *err, size_t errlen);

/* --------------------------------------------------------------- writer.c */

/* The writer thread (arg: the struct journal). Returns when it has written
 * everything after JMSG_STOP, or when abandoned. */
void *journal_writer_main(void *arg);

/* journal_close of a journal never started: one synchronous attempt, on the
 * loop thread, to write j->pending on j->conn; moves the watermark if it
 * landed, logs if not. j->pending stays the caller's. */
void journal_write_unstarted(struct journal *j);

/* -------------------------------------------------------------- collect.c */

/* One collection round (writer thread, between groups): deletes finished
 * transactions older than retention_s and sets w.next_gc. Failures are
 * logged; a lost connection leaves w.conn NULL for the write path to
 * reconnect. */
void journal_collect(struct journal *j);

/* --------------------------------------------------------------- lookup.c */

/* The reader thread (arg: the struct journal). Returns after JMSG_STOP or
 * reader_stop, having closed its connection. */
void *journal_reader_main(void *arg);

/* Waits, up to deadline (util_mono_ms), until libpq holds a whole result of
 * the reader's connection c (or the final NULL). 0, or TREATY_EPG with err
 * filled (also when the reader is stopping). Reader thread. */
int journal_reader_wait(struct journal *j, PGconn *c, int64_t deadline, char *err, size_t errlen);

/* A reader's query, or a connection attempt for one, gives up after this
 * (the attempt sooner if conninfo's connect_timeout says so). */
#define READER_TIMEOUT_MS 10000

/* One request of the reader's, asked on its connection c (reader thread):
 * returns 0 when answered; TREATY_EPG, with why filled, when the query
 * failed (journal_reader_ask then closes c); any other error when asking
 * again would not help (having logged why, if it needs saying). */
typedef int (*journal_reader_fn)(struct journal *j, PGconn *c, void *arg, char *why, size_t whylen);

/*
 * Runs ask(j, c, arg, why, whylen) on the reader's connection j->r.conn,
 * keeping that connection for the reader's next requests. Reader thread.
 *   - No connection, and before j->r.next_ms (backing off after a failure):
 *     returns TREATY_EBUSY at once; nothing is tried, why is untouched.
 *   - No connection otherwise: one attempt (journal_pg_connect_within, as
 *     APP_READER, within the lesser of attempt_timeout_ms and
 *     READER_TIMEOUT_MS), then the connection is made non-blocking; if
 *     either fails: as a failure below.
 *   - ask returns 0: j->r.backoff_ms goes back to 0; returns 0.
 *   - ask returns an error other than TREATY_EPG: returned as it is; the
 *     connection is kept and the backoff left as it was.
 *   - ask returns TREATY_EPG: the connection is closed. On the request's
 *     first attempt, with no failure since the last answered request
 *     (j->r.backoff_ms 0) and the reader not stopping, a connection that
 *     served before may simply have been closed while idle: logs "journal:
 *     <what> connection lost, reconnecting: <why>" at info (nothing when what
 *     is NULL) and tries once more at once, connecting as above.
 *   - A failure (a connection attempt, or ask's TREATY_EPG not tried again):
 *     j->r.next_ms becomes now plus journal_backoff_delay(&j->r.backoff_ms,
 *     connect_initial_ms, connect_max_ms, not immediate); returns TREATY_EPG
 *     with why filled. Logs nothing: the caller says what went unanswered.
 */
int journal_reader_ask(struct journal *j, journal_reader_fn ask, void *arg, const char *what, char *why, size_t whylen);

/* -------------------------------------------------------------- records.c */

/* Answers the records requests from head on (reader thread, after the
 * lookups taken with them), each in a NOTE_RECORDS to the loop; frees the
 * requests. */
void journal_records_work(struct journal *j, struct records_req *head);

#endif /* TREATY_JOURNAL_PRIV_H */
