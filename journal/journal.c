/*
 * journal.c - the coordinator's durable journal in PostgreSQL (see journal.h).
 *
 * Three threads share a struct journal:
 *
 *   loop thread    journal_append() encodes each record at once into a COPY
 *                  text line of the pending batch (journal_int.h; the writer
 *                  turns a group's lines into the INSERT's arrays);
 *                  journal_lookup() queues a txid. journal_flush() hands the
 *                  batch to the writer and the lookups to the reader by
 *                  sending a pointer over an inproc PUSH socket (ownership
 *                  moves with the message). journal_durable() and
 *                  journal_lookup_results() drain what the two send back on
 *                  one PULL socket, journal_socket(). Nothing here touches
 *                  Postgres after journal_start().
 *
 *   writer thread  owns a blocking libpq connection (the one journal_connect
 *                  opened). Lifecycle of one group:
 *                    1. wait for a batch (or for the next collection);
 *                    2. take every batch that is waiting (group commit);
 *                    3. only lazy records: wait up to lazy_delay_ms for more,
 *                       cut short by a forced batch or by STOP;
 *                    4. one round trip in libpq pipeline mode: SET
 *                       synchronous_commit = on|off (when it differs from
 *                       the previous group's); the prepared INSERT ...
 *                       SELECT FROM unnest(<one text[] a column>) (prepared
 *                       in the first group's pipeline of each connection),
 *                       one row per record except 2PC END records, which go
 *                       in one 'ends' row per distinct detail at the end
 *                       (group_to_arrays);
 *                       the group's id (grp) on its first row; Sync (the
 *                       implicit transaction commits at the Sync);
 *                    5. on any failure: healthy = false, drop the connection,
 *                       reconnect with backoff, go to 4 with the same group
 *                       and the same grp;
 *                    6. after the commit returned: publish the group's last
 *                       sequence number as the durable watermark, healthy =
 *                       true, free the group.
 *                  Between groups it deletes finished transactions older
 *                  than retention_s, every gc_interval_ms.
 *
 *   reader thread  owns a libpq connection of its own, opened at the first
 *                  lookup: takes every lookup batch waiting, answers them in
 *                  queries of up to LOOKUP_CHUNK txids, sends the answers
 *                  back (see "reader" below). Never touches the writer's
 *                  state.
 *
 * Messages (each one frame, fixed size, same process; see open_sockets):
 *
 *   loop -> writer   struct msg {JMSG_BATCH, batch}   the writer owns the batch
 *                    struct msg {JMSG_STOP}           write what is left, exit
 *                    struct msg {JMSG_WAKE}           nothing; wakes the writer
 *   loop -> reader   struct msg {JMSG_LOOKUP, lookups} the reader owns them
 *                    struct msg {JMSG_STOP}           exit, answer nothing more
 *   writer -> loop   struct note {NOTE_DURABLE, seq}  durable watermark
 *   reader -> loop   struct note {NOTE_ANSWERS, a}    the loop owns the answers
 *
 * The watermark is also kept in an atomic, which is what journal_durable()
 * returns; its messages exist to make journal_socket() readable.
 *
 * Writing a group again is idempotent. A connection lost after the Sync went
 * out leaves the commit's fate unknown: the server may have committed and
 * died (or lost us) before its answer arrived. Each group carries an id, a
 * UUIDv7 drawn when the group is formed, stored in the grp column of its first
 * row under a partial unique index (sql/004_runs_and_lookups.sql). The
 * rewrite is the same INSERT with the same grp; if the first attempt landed,
 * the index refuses it (23505 on treaty_journal_grp, the rewrite rolls back)
 * and the writer knows the group is stored. Chosen over the alternatives:
 *   - remembering max(seq) before the group and, after reconnecting, looking
 *     for the group's first record above it: a round trip only on the
 *     failure path too, but it answers "not there" while the first attempt
 *     is still committing on a backend that has not yet noticed the lost
 *     connection (a network failure rather than a server crash), and the
 *     rewrite then duplicates it. The unique index waits for that
 *     transaction and decides by its outcome;
 *   - a unique key on what a record decides (txid, kind): a txid can run
 *     again after an END, and STEP records legitimately repeat.
 * Cost on the normal path: no extra round trip or statement, one 16-byte
 * parameter and one btree entry per group (not per record).
 *
 * Ordering: batches are sent, received and written in append order, and a
 * group is one Postgres transaction, so "every record up to the watermark is
 * committed" holds. A lazy group commits with synchronous_commit = off: its
 * COMMIT returns before the WAL is flushed, so a Postgres crash may lose it
 * (only records appended with force = false: the coordinator's 2PC ENDs and
 * saga STEPs; recovery copes: a lost END resends the decision, a lost STEP
 * runs the step again through the participant's barrier). The next forced
 * group's flush covers every earlier lazy group, since the WAL is flushed in
 * order.
 */
#include "journal.h"
#include "journal_int.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <zmq.h>

#include "log.h"
#include "sql_journal.h"
#include "sql_saga.h"
#include "sql_batched_end.h"
#include "sql_runs_and_lookups.h"
#include "treaty.h"

#define DEFAULT_CONNECT_INITIAL_MS 100
#define DEFAULT_CONNECT_MAX_MS 5000
#define DEFAULT_LAZY_DELAY_MS 20
#define DEFAULT_GC_INTERVAL_MS 5000
/* One connection attempt gives up after this, unless conninfo sets connect_timeout. */
#define DEFAULT_ATTEMPT_TIMEOUT_MS 10000
/* Waits are cut into slices this long to notice a stop request. */
#define SLICE_MS 20
/* A group stops taking batches beyond this many bytes of COPY data. It always
 * takes one: a batch bigger than this (a saga definition is up to a few MB of
 * hex) is written alone. */
#define GROUP_MAX_BYTES ((size_t)4 << 20)
/* Columns a record is encoded in: txid, kind, services, failed_branch,
 * detail, step, data. The INSERT has one more, ended, for the rows that
 * hold a group's END records (sql/003_batched_end.sql). */
#define JOURNAL_NCOLS 7
#define INSERT_NCOLS (JOURNAL_NCOLS + 1)
/* And one more parameter: the group's id, stored on its first row (grp). */
#define INSERT_NPARAMS (INSERT_NCOLS + 1)
/* A group's END records go in one 'ends' row per distinct detail; beyond
 * this many details in one group, an END is written as a row of its own
 * (kind 'end', as versions 1 and 2 wrote every END). */
#define ENDS_MAX_DETAILS 8
/* The scan fetches at most this many rows at a time, starting with
 * SCAN_FETCH_FIRST and adapting to the average row size so that one fetch
 * holds about SCAN_FETCH_BYTES: saga definitions can be megabytes each, and
 * 10000 of them in one result would not fit in memory. */
#define SCAN_FETCH_ROWS 10000
#define SCAN_FETCH_FIRST 256
#define SCAN_FETCH_BYTES ((size_t)64 << 20)
/* A collection round takes at most this many old 'end' rows (one txid each)
 * and this many old 'ends' rows (each naming a group's finished txids). */
#define GC_MAX_TXIDS 10000
#define GC_MAX_ENDS 256
/* pg_advisory_xact_lock key pair held while applying the schema: "TREA", 1. */
#define SCHEMA_LOCK_SQL "SELECT pg_advisory_xact_lock(1414677825, 1)"

#define ERRLEN 512

/* ------------------------------------------------------------------ types */

/* Records appended between two flushes (normally one loop turn; before
 * journal_start, everything appended), already encoded as COPY text. */
struct batch {
    struct batch *next; /* writer: next batch of the group */
    uint64_t first_seq;
    uint64_t last_seq;
    unsigned nrecs;
    bool forced;
    struct journal_buf rows;
};

enum msg_type { JMSG_BATCH = 1, JMSG_STOP = 2, JMSG_WAKE = 3, JMSG_LOOKUP = 4 };

/* loop -> writer, loop -> reader. */
struct msg {
    int type;                 /* enum msg_type */
    struct batch *b;          /* JMSG_BATCH: ownership passes to the receiver */
    struct lookup_batch *lkp; /* JMSG_LOOKUP: ownership passes to the receiver */
};

/* Lookups queued during loop turns: the txids asked, in order. */
struct lookup_batch {
    struct lookup_batch *next; /* reader: the batches taken together */
    unsigned n, cap;
    uint8_t (*txid)[16];
};

/* The reader's answers to a run of lookups, one per lookup, in their order. */
struct answers {
    struct answers *next; /* loop: received, not yet handed out */
    unsigned n;
    struct journal_lookup_result r[];
};

enum note_type { NOTE_DURABLE = 1, NOTE_ANSWERS = 2 };

/* writer -> loop, reader -> loop. */
struct note {
    int type;          /* enum note_type */
    uint64_t durable;  /* NOTE_DURABLE: the new watermark */
    struct answers *a; /* NOTE_ANSWERS: ownership passes to the receiver */
};

/* What a journal connection's session already holds, so that a group sends
 * only what is missing. Reset whenever the connection is replaced. */
struct pgsess {
    bool prepared; /* INSERT_NAME is prepared */
    int sync;      /* synchronous_commit set by the last group: 1 on, 0 off, -1 not set */
};

/* The END records of a group that share one detail: written as one row. */
struct ends_row {
    const char *detail; /* the COPY field in the group's batch, still escaped */
    size_t detail_len;
    struct journal_buf txids; /* "{uuid,uuid,...}" being built */
};

/* State touched only by the writer thread (between journal_start and the join). */
struct writer {
    PGconn *conn;              /* NULL while disconnected; set only through writer_set_conn */
    struct pgsess sess;        /* of conn */
    struct batch *head, *tail; /* the group being gathered or written */
    size_t bytes;
    unsigned nrecs;
    bool forced;
    int64_t first_at; /* when the group's first batch arrived */
    uint8_t grp[16];  /* the group's id (UUIDv7), the same in every attempt to write it */
    bool stopping;    /* JMSG_STOP received */
    int backoff_ms;   /* 0 until a failure; reset by a commit */
    int64_t next_gc;
    uint64_t rng;
    struct journal_buf cols[INSERT_NCOLS];  /* write_group's parameters, reused */
    struct ends_row ends[ENDS_MAX_DETAILS]; /* write_group's 'ends' rows, reused */
};

/* State touched only by the reader thread (between journal_start and the join). */
struct reader {
    PGconn *conn;    /* NULL until the first lookup, and while disconnected */
    int backoff_ms;  /* 0 until a failure; reset by an answered query */
    int64_t next_ms; /* after a failure: no new connection before this */
    uint64_t rng;
    struct journal_buf param; /* the uuid[] literal of a query, reused */
};

struct journal {
    /* Configuration, immutable after journal_connect. */
    char *conninfo;
    int connect_initial_ms;
    int connect_max_ms;
    int lazy_delay_ms;
    int retention_s;
    int gc_interval_ms;
    int attempt_timeout_ms;
    bool ascii_only;    /* database encoding is neither UTF8 nor SQL_ASCII */
    volatile int *stop; /* journal_connect only */

    /* Loop thread. */
    PGconn *conn;                 /* until journal_start; then the writer's */
    struct batch *pending;        /* appended, not yet flushed */
    uint64_t appended;            /* last sequence number handed out */
    struct lookup_batch *lookups; /* queued, not yet flushed */
    struct answers *answers;      /* received, not yet handed out (oldest first) */
    struct answers **answers_tail;
    bool started;
    void *to_writer; /* PUSH */
    void *to_reader; /* PUSH */
    void *from_both; /* PULL: journal_socket() */
    pthread_t thread, reader_thread;
    uint64_t rng;

    /* Used by the writer thread until it is joined. */
    void *writer_in;  /* PULL */
    void *writer_out; /* PUSH */
    struct writer w;

    /* Used by the reader thread until it is joined. */
    void *reader_in;  /* PULL */
    void *reader_out; /* PUSH */
    struct reader r;

    /* Shared between the threads. */
    _Atomic uint64_t durable;
    atomic_bool healthy;
    atomic_bool abandon;     /* journal_close gave up waiting: the writer exits */
    atomic_bool reader_stop; /* journal_close: the reader exits, unanswered lookups are dropped */
    _Atomic uint64_t n_batches;
    _Atomic uint64_t n_records;
    _Atomic uint64_t n_forced;
    _Atomic uint64_t n_reconnects;
    _Atomic uint64_t n_gc_deleted;
    _Atomic uint64_t n_write_us; /* time the writer spent writing groups */
    atomic_uint fault_lose_acks; /* journal_fault_lose_acks (journal_int.h) */
};

/* ---------------------------------------------------------------- helpers */

/* Replaces the writer's connection (c may be NULL) and forgets what the old
 * session held. Does not close the old one. */
static void writer_set_conn(struct writer *w, PGconn *c)
{
    w->conn = c;
    w->sess = (struct pgsess){.prepared = false, .sync = -1};
}

static _Noreturn void out_of_memory(void)
{
    log_error("journal: out of memory");
    abort();
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

static void *xrealloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (!p)
        out_of_memory();
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xcalloc(1, n);
    memcpy(p, s, n);
    return p;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int clamp_ms(int64_t ms)
{
    return ms < 0 ? 0 : ms > INT_MAX ? INT_MAX : (int)ms;
}

static void set_err(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/* Copies a (possibly multi-line) libpq message as one line. */
static void one_line(char *dst, size_t len, const char *src)
{
    size_t n = 0;
    if (len == 0)
        return;
    for (; *src && n + 1 < len; src++)
        dst[n++] = (*src == '\n' || *src == '\r' || *src == '\t') ? ' ' : *src;
    while (n > 0 && dst[n - 1] == ' ')
        n--;
    dst[n] = '\0';
}

/* "message (SQLSTATE xxxxx)" from a failed result, or the connection's message. */
static void pg_error(PGconn *c, const PGresult *res, char *buf, size_t len)
{
    char msg[ERRLEN];
    const char *m = res ? PQresultErrorMessage(res) : NULL;
    if (!m || !*m)
        m = PQerrorMessage(c);
    one_line(msg, sizeof msg, m && *m ? m : "unknown error");
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state)
        set_err(buf, len, "%s (SQLSTATE %s)", msg, state);
    else
        set_err(buf, len, "%s", msg);
}

/* Runs sql, expects `want`; on failure fills err and returns false. */
static bool pg_exec(PGconn *c, const char *sql, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, sql);
    bool ok = res && PQresultStatus(res) == want;
    if (!ok)
        pg_error(c, res, err, errlen);
    PQclear(res);
    return ok;
}

/* COMMIT of a failed transaction "succeeds" with the tag ROLLBACK: check the tag. */
static bool pg_commit(PGconn *c, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, "COMMIT");
    bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "COMMIT") == 0;
    if (!ok) {
        if (res && PQresultStatus(res) == PGRES_COMMAND_OK)
            set_err(err, errlen, "COMMIT rolled back the transaction");
        else
            pg_error(c, res, err, errlen);
    }
    PQclear(res);
    return ok;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9E3779B97F4A7C15u;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Du;
}

static uint64_t rng_seed(const void *p)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)(uintptr_t)p ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec;
}

/*
 * Exponential backoff with jitter. *b is the current base (0: no failure yet).
 * immediate: the first failure retries at once (a write failure: the server
 * may simply have closed an idle connection). Returns the delay in ms, drawn
 * from [base/2, base], and doubles the base up to max_ms.
 */
static int backoff_delay(int *b, int initial_ms, int max_ms, bool immediate, uint64_t *rng)
{
    int base = *b;
    if (base == 0 && !immediate)
        base = initial_ms;
    if (base == 0) {
        *b = initial_ms;
        return 0;
    }
    *b = base > max_ms / 2 ? max_ms : base * 2;
    if (base > max_ms)
        base = max_ms;
    int half = base / 2;
    return half + (int)(rng_next(rng) % (uint64_t)(base - half + 1));
}

typedef bool (*stop_fn)(struct journal *j);

static bool connect_stopped(struct journal *j)
{
    return j->stop && *j->stop;
}

static bool writer_abandoned(struct journal *j)
{
    return atomic_load(&j->abandon);
}

/* Sleeps ms, in slices. Returns true when stopped() turned true. */
static bool sleep_unless(struct journal *j, stop_fn stopped, int ms)
{
    int64_t until = now_ms() + ms;
    for (;;) {
        if (stopped(j))
            return true;
        int64_t left = until - now_ms();
        if (left <= 0)
            return false;
        int slice = left < SLICE_MS ? (int)left : SLICE_MS;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Server notices and warnings go to our log, not to libpq's stderr printer. */
static void notice_receiver(void *arg, const PGresult *res)
{
    char msg[ERRLEN];
    (void)arg;
    one_line(msg, sizeof msg, PQresultErrorMessage(res));
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (sev && strcmp(sev, "WARNING") == 0)
        log_warn("journal: PostgreSQL: %s", msg);
    else
        log_debug("journal: PostgreSQL: %s", msg);
}

/* fallback_application_name of the journal's connections. */
#define APP_WRITER "treatyd-journal"
#define APP_READER "treatyd-journal-lookup"

/*
 * One connection attempt, non-blocking so that it can be given up: after
 * attempt_timeout_ms, or as soon as stopped() turns true. The connection is
 * in blocking mode once established. Returns NULL with err filled on failure.
 */
static PGconn *pg_connect_within(struct journal *j, stop_fn stopped, const char *app, int timeout_ms, char *err,
                                 size_t errlen)
{
    /* Later parameters override what the expanded conninfo says. */
    const char *const kw[] = {"dbname", "fallback_application_name", "client_encoding", NULL};
    const char *const val[] = {j->conninfo, app, "UTF8", NULL};
    PGconn *c = PQconnectStartParams(kw, val, 1);
    if (!c)
        out_of_memory();
    PQsetNoticeReceiver(c, notice_receiver, NULL);
    if (PQstatus(c) == CONNECTION_BAD)
        goto fail_libpq;

    int64_t deadline = now_ms() + timeout_ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    for (;;) {
        if (st == PGRES_POLLING_OK)
            return c;
        if (st == PGRES_POLLING_FAILED)
            goto fail_libpq;
        if (stopped(j)) {
            set_err(err, errlen, "stopped while connecting");
            goto fail_conn;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            set_err(err, errlen, "no answer within %d ms", timeout_ms);
            goto fail_conn;
        }
        struct pollfd p = {.fd = PQsocket(c), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT};
        if (p.fd < 0) {
            st = PQconnectPoll(c);
            continue;
        }
        int r = poll(&p, 1, left < SLICE_MS ? (int)left : SLICE_MS);
        if (r < 0 && errno != EINTR) {
            set_err(err, errlen, "poll: %s", strerror(errno));
            goto fail_conn;
        }
        if (r > 0)
            st = PQconnectPoll(c);
    }

fail_libpq:
    one_line(err, errlen, PQerrorMessage(c));
fail_conn:
    PQfinish(c);
    return NULL;
}

/* One attempt within attempt_timeout_ms (connect_timeout, or 10 s). */
static PGconn *pg_connect(struct journal *j, stop_fn stopped, const char *app, char *err, size_t errlen)
{
    return pg_connect_within(j, stopped, app, j->attempt_timeout_ms, err, errlen);
}

/* ------------------------------------------------------------ row codec */

void journal_buf_free(struct journal_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void buf_reserve(struct journal_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2)
            out_of_memory();
        cap *= 2;
    }
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

static void buf_put(struct journal_buf *b, const char *s, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void buf_putc(struct journal_buf *b, char c)
{
    buf_reserve(b, 1);
    b->data[b->len++] = c;
}

static void buf_puts(struct journal_buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

static void put_copy_char(struct journal_buf *b, char c)
{
    switch (c) {
    case '\\':
        buf_put(b, "\\\\", 2);
        break;
    case '\t':
        buf_put(b, "\\t", 2);
        break;
    case '\n':
        buf_put(b, "\\n", 2);
        break;
    case '\r':
        buf_put(b, "\\r", 2);
        break;
    default:
        buf_putc(b, c);
        break;
    }
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629), or 0. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/* Appends s made storable ('?' for what the database cannot hold) and
 * escaped for COPY; in_array also escapes for a quoted array element. */
static void put_text(struct journal_buf *b, const char *s, bool ascii_only, bool in_array)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = ascii_only ? (*p < 0x80) : utf8_len(p);
        if (n == 0) {
            buf_putc(b, '?');
            p++;
        } else if (n == 1) {
            char c = (char)*p++;
            if (in_array && (c == '"' || c == '\\'))
                put_copy_char(b, '\\');
            put_copy_char(b, c);
        } else {
            buf_put(b, (const char *)p, n);
            p += n;
        }
    }
}

/* txids travel as treaty_txid_t's bytes; the SDK's formatter and parser are
 * the one implementation of the UUID text form. */
void journal_txid_format(const uint8_t txid[16], char buf[37])
{
    treaty_txid_format((const treaty_txid_t *)txid, buf);
}

int journal_txid_parse(const char *s, uint8_t txid[16])
{
    return treaty_txid_parse(s, (treaty_txid_t *)txid);
}

const char *journal_kind_name(enum journal_kind k)
{
    switch (k) {
    case JOURNAL_COMMIT:
        return "commit";
    case JOURNAL_ABORT:
        return "abort";
    case JOURNAL_END:
        return "end";
    case JOURNAL_SAGA:
        return "saga";
    case JOURNAL_STEP:
        return "step";
    case JOURNAL_TURN:
        return "turn";
    }
    return NULL;
}

static int kind_parse(const char *s, enum journal_kind *out)
{
    static const enum journal_kind kinds[] = {JOURNAL_COMMIT, JOURNAL_ABORT, JOURNAL_END,
                                              JOURNAL_SAGA,   JOURNAL_STEP,  JOURNAL_TURN};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (strcmp(s, journal_kind_name(kinds[i])) == 0) {
            *out = kinds[i];
            return 0;
        }
    }
    return TREATY_EPROTO;
}

static void put_int_or_null(struct journal_buf *b, bool present, int v)
{
    if (present) {
        char num[16];
        int n = snprintf(num, sizeof num, "%d", v);
        buf_put(b, num, (size_t)n);
    } else {
        buf_puts(b, "\\N");
    }
}

/* bytea in hex form, "\\x" + two lowercase digits a byte: the COPY text of
 * the literal \x0a1b..., whose backslash COPY itself wants escaped. Nothing
 * else in the hex form needs escaping. */
static void put_bytea(struct journal_buf *b, const void *data, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = data;
    if (len > (SIZE_MAX - 3) / 2)
        out_of_memory();
    buf_reserve(b, 3 + 2 * len);
    char *w = b->data + b->len;
    *w++ = '\\';
    *w++ = '\\';
    *w++ = 'x';
    for (size_t i = 0; i < len; i++) {
        *w++ = hex[p[i] >> 4];
        *w++ = hex[p[i] & 0xf];
    }
    b->len += 3 + 2 * len;
}

void journal_encode_row(struct journal_buf *b, const struct journal_rec *r, bool ascii_only)
{
    const char *kind = journal_kind_name(r->kind);
    if (!kind) {
        /* A programmer error: loud, even in release builds. */
        log_error("journal: append of a record of invalid kind %d", (int)r->kind);
        abort();
    }
    assert(r->nservices == 0 || r->services);

    char id[37];
    journal_txid_format(r->txid, id);
    buf_put(b, id, 36);
    buf_putc(b, '\t');
    buf_puts(b, kind);
    buf_putc(b, '\t');
    if (r->nservices == 0) {
        buf_puts(b, "\\N");
    } else {
        buf_putc(b, '{');
        for (unsigned i = 0; i < r->nservices; i++) {
            assert(r->services[i]);
            if (i > 0)
                buf_putc(b, ',');
            buf_putc(b, '"');
            put_text(b, r->services[i] ? r->services[i] : "", ascii_only, true);
            buf_putc(b, '"');
        }
        buf_putc(b, '}');
    }
    buf_putc(b, '\t');
    /* Callers zero-initialise records: failed_branch and step mean something
     * only for the kinds that carry them. */
    put_int_or_null(b, (r->kind == JOURNAL_ABORT || r->kind == JOURNAL_TURN) && r->failed_branch >= 0,
                    r->failed_branch);
    buf_putc(b, '\t');
    if (r->detail)
        put_text(b, r->detail, ascii_only, false);
    else
        buf_puts(b, "\\N");
    buf_putc(b, '\t');
    put_int_or_null(b, r->kind == JOURNAL_STEP && r->step >= 0, r->step);
    buf_putc(b, '\t');
    assert(r->data || r->data_len == 0);
    if (r->data)
        put_bytea(b, r->data, r->data_len);
    else
        buf_puts(b, "\\N");
    buf_putc(b, '\n');
}

void journal_strv_free(struct journal_strv *sv)
{
    free(sv->v);
    sv->v = NULL;
    sv->n = sv->cap = 0;
}

static void strv_push(struct journal_strv *sv, const char *s)
{
    if (sv->n == sv->cap) {
        if (sv->cap > UINT_MAX / 2)
            out_of_memory();
        sv->cap = sv->cap ? sv->cap * 2 : 8;
        sv->v = xrealloc(sv->v, sv->cap * sizeof sv->v[0]);
    }
    sv->v[sv->n++] = s;
}

int journal_parse_text_array(char *s, struct journal_strv *out)
{
    out->n = 0;
    if (s[0] != '{')
        return TREATY_EPROTO;
    /* Elements are copied down in place: w always stays before p. */
    char *p = s + 1, *w = s;
    if (p[0] == '}')
        return p[1] == '\0' ? 0 : TREATY_EPROTO;
    for (;;) {
        char *start = w;
        if (*p == '"') {
            p++;
            for (;;) {
                if (*p == '\0')
                    return TREATY_EPROTO;
                if (*p == '"') {
                    p++;
                    break;
                }
                if (*p == '\\' && *++p == '\0')
                    return TREATY_EPROTO;
                *w++ = *p++;
            }
        } else {
            while (*p && *p != ',' && *p != '}' && *p != '"' && *p != '{') {
                if (*p == '\\' && *++p == '\0')
                    return TREATY_EPROTO;
                *w++ = *p++;
            }
            if (w == start)
                return TREATY_EPROTO;
            if (w - start == 4 && strncasecmp(start, "NULL", 4) == 0)
                w = start;
        }
        *w++ = '\0';
        strv_push(out, start);
        if (*p == ',') {
            p++;
            continue;
        }
        if (p[0] == '}' && p[1] == '\0')
            return 0;
        return TREATY_EPROTO;
    }
}

static void batch_free(struct batch *b)
{
    if (!b)
        return;
    journal_buf_free(&b->rows);
    free(b);
}

/* ---------------------------------------------------------------- connect */

/*
 * Applies sql/001_journal.sql, then sql/002_saga.sql when the database is
 * below version 2, sql/003_batched_end.sql when below version 3 and
 * sql/004_runs_and_lookups.sql when below version 4, in one transaction
 * under an advisory lock, so that coordinators starting together do not race
 * on CREATE ... IF NOT EXISTS and an upgrade happens once, entirely or not at
 * all (if we crash in the middle, the transaction rolls back and the next
 * start upgrades). 002, 003 and 004 are skipped once applied: re-adding
 * 002's CHECK constraint would scan the whole journal under an exclusive lock
 * on every start, and 003's constraints have no IF NOT EXISTS. A database already holding a newer schema is left
 * untouched. Returns 0, TREATY_EVERSION, or TREATY_EPG (the caller tells a lost connection from an SQL error by
 * PQstatus).
 */
static int apply_schema(PGconn *c, int *version, char *err, size_t errlen)
{
    char why[ERRLEN];
    PGresult *res = NULL;

    /* Quiet: "relation ... already exists, skipping" on every start. */
    if (!pg_exec(c, "BEGIN; SET LOCAL client_min_messages = warning; " SCHEMA_LOCK_SQL, PGRES_TUPLES_OK, why,
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
            set_err(err, errlen,
                    "journal: the database holds journal schema version %d, newer than the %d this "
                    "treatyd supports; upgrade treatyd",
                    v, JOURNAL_SCHEMA_VERSION);
            PQclear(PQexec(c, "ROLLBACK"));
            return TREATY_EVERSION;
        }
    }
    if (!pg_exec(c, sql_journal, PGRES_COMMAND_OK, why, sizeof why))
        goto fail_sql;
    if (v < 2) {
        if (v == 1)
            log_info("journal: upgrading the journal schema from version 1 to 2 (sagas)");
        if (!pg_exec(c, sql_saga, PGRES_COMMAND_OK, why, sizeof why))
            goto fail_sql;
    }
    if (v < 3) {
        if (v >= 1)
            log_info("journal: upgrading the journal schema from version %d to 3 (END records in batches)", v);
        if (!pg_exec(c, sql_batched_end, PGRES_COMMAND_OK, why, sizeof why))
            goto fail_sql;
    }
    if (v < 4) {
        if (v >= 1)
            log_info("journal: upgrading the journal schema from version %d to 4 (idempotent rewrites, lookups)", v);
        if (!pg_exec(c, sql_runs_and_lookups, PGRES_COMMAND_OK, why, sizeof why))
            goto fail_sql;
    }
    res = PQexec(c, "SELECT max(version) FROM treaty_schema");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        goto fail_res;
    *version = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    res = NULL;
    if (!pg_commit(c, why, sizeof why))
        goto fail_sql;
    return 0;

fail_res:
    pg_error(c, res, why, sizeof why);
    PQclear(res);
fail_sql:
    set_err(err, errlen, "journal: cannot apply the journal schema: %s", why);
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "ROLLBACK"));
    return TREATY_EPG;
}

static int attempt_timeout_from(const char *conninfo, int *out, char *err, size_t errlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        char msg[ERRLEN];
        one_line(msg, sizeof msg, perr ? perr : "out of memory");
        set_err(err, errlen, "journal: invalid conninfo: %s", msg);
        PQfreemem(perr);
        return TREATY_EINVAL;
    }
    *out = DEFAULT_ATTEMPT_TIMEOUT_MS;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val) {
            long s = strtol(o->val, NULL, 10);
            /* libpq: 0 or less waits forever, 1 means 2. */
            *out = s <= 0 ? INT_MAX : s < 2 ? 2000 : s > INT_MAX / 1000 ? INT_MAX : (int)s * 1000;
        }
    }
    PQconninfoFree(opts);
    return 0;
}

int journal_connect(const struct journal_config *cfg, struct journal **out, char *errbuf, size_t errlen)
{
    int rc;
    set_err(errbuf, errlen, "%s", "");
    if (!out || !cfg || !cfg->conninfo || cfg->connect_initial_ms < 0 || cfg->connect_max_ms < 0 ||
        cfg->lazy_delay_ms < 0 || cfg->gc_interval_ms < 0) {
        set_err(errbuf, errlen, "journal: invalid configuration");
        return TREATY_EINVAL;
    }
    /* No default for retention: 0 once meant "the default, 3600" here while
     * the coordinator read it as "forget at once". */
    if (cfg->retention_s < 1) {
        set_err(errbuf, errlen, "journal: retention_s must be at least 1 second, got %d", cfg->retention_s);
        return TREATY_EINVAL;
    }
    *out = NULL;
    int attempt_ms;
    rc = attempt_timeout_from(cfg->conninfo, &attempt_ms, errbuf, errlen);
    if (rc)
        return rc;

    struct journal *j = xcalloc(1, sizeof *j);
    j->conninfo = xstrdup(cfg->conninfo);
    j->connect_initial_ms = cfg->connect_initial_ms ? cfg->connect_initial_ms : DEFAULT_CONNECT_INITIAL_MS;
    j->connect_max_ms = cfg->connect_max_ms ? cfg->connect_max_ms : DEFAULT_CONNECT_MAX_MS;
    if (j->connect_max_ms < j->connect_initial_ms)
        j->connect_max_ms = j->connect_initial_ms;
    j->lazy_delay_ms = cfg->lazy_delay_ms ? cfg->lazy_delay_ms : DEFAULT_LAZY_DELAY_MS;
    j->retention_s = cfg->retention_s;
    j->gc_interval_ms = cfg->gc_interval_ms ? cfg->gc_interval_ms : DEFAULT_GC_INTERVAL_MS;
    j->attempt_timeout_ms = attempt_ms;
    j->stop = cfg->stop;
    j->rng = rng_seed(j);
    atomic_init(&j->durable, 0);
    atomic_init(&j->healthy, true);
    atomic_init(&j->abandon, false);
    atomic_init(&j->n_batches, 0);
    atomic_init(&j->n_records, 0);
    atomic_init(&j->n_forced, 0);
    atomic_init(&j->n_reconnects, 0);
    atomic_init(&j->n_gc_deleted, 0);
    atomic_init(&j->n_write_us, 0);
    atomic_init(&j->fault_lose_acks, 0);
    atomic_init(&j->reader_stop, false);
    j->answers_tail = &j->answers;

    int backoff = 0;
    for (;;) {
        char why[ERRLEN];
        int version = 0;
        PGconn *c = pg_connect(j, connect_stopped, APP_WRITER, why, sizeof why);
        if (c) {
            rc = apply_schema(c, &version, why, sizeof why);
            if (rc == 0) {
                const char *enc = PQparameterStatus(c, "server_encoding");
                j->ascii_only = enc && strcmp(enc, "UTF8") != 0 && strcmp(enc, "SQL_ASCII") != 0;
                if (j->ascii_only)
                    log_warn("journal: database encoding is %s, not UTF8: non-ASCII text is stored as '?'", enc);
                log_info("journal: connected to PostgreSQL, schema version %d", version);
                j->conn = c;
                *out = j;
                return 0;
            }
            if (rc == TREATY_EVERSION || PQstatus(c) == CONNECTION_OK) {
                /* Not a lost connection: retrying will not help. */
                set_err(errbuf, errlen, "%s", why);
                log_error("%s", why);
                PQfinish(c);
                goto fail_journal;
            }
            PQfinish(c); /* the connection broke while applying the schema */
        }
        if (connect_stopped(j))
            goto fail_stopped;
        int delay = backoff_delay(&backoff, j->connect_initial_ms, j->connect_max_ms, false, &j->rng);
        log_warn("journal: cannot connect to PostgreSQL, retrying in %d ms: %s", delay, why);
        if (sleep_unless(j, connect_stopped, delay))
            goto fail_stopped;
    }

fail_stopped:
    rc = TREATY_EBUSY;
    set_err(errbuf, errlen, "journal: stopped while connecting to PostgreSQL");
fail_journal:
    free(j->conninfo);
    free(j);
    return rc;
}

/* ------------------------------------------------------------------- scan */

static void scan_fail(PGconn *c, PGresult *res, const char *what)
{
    char why[ERRLEN];
    pg_error(c, res, why, sizeof why);
    log_error("journal: recovery scan failed (%s): %s", what, why);
}

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decodes a bytea in text output form ("\x0a1b...", the scan sets
 * bytea_output = hex) into out, reused from row to row. Returns 0 or
 * TREATY_EPROTO.
 */
static int bytea_decode(const char *s, size_t len, struct journal_buf *out)
{
    out->len = 0;
    if (len < 2 || s[0] != '\\' || s[1] != 'x' || len % 2 != 0)
        return TREATY_EPROTO;
    size_t n = (len - 2) / 2;
    buf_reserve(out, n + 1);
    const unsigned char *p = (const unsigned char *)s + 2;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(p[2 * i]), lo = hex_digit(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return TREATY_EPROTO;
        out->data[i] = (char)(hi << 4 | lo);
    }
    out->len = n;
    return 0;
}

/*
 * The records of unfinished runs: every record (END rows aside) that no END
 * of its txid follows by seq, grouped by txid in append order. A txid's
 * records after its last END are all such records, so each txid delivered
 * is exactly one run. ENDs are the 'end' rows (versions 1 and 2, saga ENDs)
 * and every element of the 'ends' rows.
 *
 * The plan, for a journal of millions of finished rows and few unfinished
 * ones: one hash anti join. The hash is built from every END (txid, seq)
 * (the 'ends' rows through their partial index, each unnested), then one
 * sequential pass over the table probes it; only the few survivors are
 * sorted and their large columns (data) read. Every row is read once and
 * nothing is sorted but the result. The planner left alone misjudges the
 * unnested ENDs (ten a row, while a group's row names hundreds) and picks a
 * merge anti join that walks the whole txid index in random heap order
 * (measured 3.4 s against 1.4 s for the hash join on 1M finished 2PC
 * transactions), or could pick a nested loop; JOURNAL_SCAN_SETTINGS rules
 * both out for the scan's transaction. The hash grows past its estimate as
 * needed (about 64 bytes an END; it spills to disk in batches beyond
 * work_mem * hash_mem_multiplier).
 */
const char journal_scan_sql[] =
    "SELECT r.txid, r.kind, r.services, r.failed_branch, r.detail, r.step, r.data "
    "  FROM treaty_journal r "
    " WHERE r.kind NOT IN ('end', 'ends') "
    "   AND NOT EXISTS (SELECT 1 "
    "                     FROM (SELECT txid, seq FROM treaty_journal WHERE kind = 'end' "
    "                           UNION ALL "
    "                           SELECT unnest(ended), seq FROM treaty_journal WHERE kind = 'ends') e "
    "                    WHERE e.txid = r.txid AND e.seq > r.seq) "
    " ORDER BY r.txid, r.seq";

int journal_scan(struct journal *j, journal_scan_fn cb, void *arg)
{
    if (!j || !cb)
        return TREATY_EINVAL;
    if (j->started || !j->conn)
        return TREATY_ESTATE;
    PGconn *c = j->conn;
    if (PQstatus(c) != CONNECTION_OK) {
        PQreset(c);
        if (PQstatus(c) != CONNECTION_OK) {
            scan_fail(c, NULL, "reconnect");
            return TREATY_EPG;
        }
    }

    int64_t t0 = now_ms();
    int rc = 0;
    uint64_t nrows = 0, ntx = 0;
    uint8_t last_txid[16] = {0};
    struct journal_buf scratch = {0}, bytes = {0};
    struct journal_strv sv = {0};
    PGresult *res = NULL;

    /* A read-only transaction: the cursor and the planner settings. */
    res = PQexec(c, "BEGIN READ ONLY; " JOURNAL_SCAN_SETTINGS);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto fail_sql;
    PQclear(res);
    char sql[sizeof journal_scan_sql + 64];
    snprintf(sql, sizeof sql, "DECLARE treaty_scan NO SCROLL CURSOR FOR %s", journal_scan_sql);
    res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        goto fail_sql;
    PQclear(res);
    res = NULL;

    long fetch = SCAN_FETCH_FIRST;
    for (;;) {
        char fetch_sql[64];
        snprintf(fetch_sql, sizeof fetch_sql, "FETCH FORWARD %ld FROM treaty_scan", fetch);
        res = PQexec(c, fetch_sql);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            goto fail_sql;
        int n = PQntuples(res);
        if (n == 0)
            break;
        /* Next fetch: about SCAN_FETCH_BYTES at this fetch's average row
         * size, growing at most fourfold at a time. */
        size_t got = 0;
        for (int i = 0; i < n; i++)
            got +=
                64 + (size_t)PQgetlength(res, i, 2) + (size_t)PQgetlength(res, i, 4) + (size_t)PQgetlength(res, i, 6);
        size_t want = SCAN_FETCH_BYTES / (got / (size_t)n + 1);
        fetch = want < 1 ? 1 : want > (size_t)fetch * 4 ? fetch * 4 : (long)want;
        if (fetch > SCAN_FETCH_ROWS)
            fetch = SCAN_FETCH_ROWS;
        for (int i = 0; i < n && rc == 0; i++) {
            struct journal_rec r = {.failed_branch = -1, .step = -1};
            if (journal_txid_parse(PQgetvalue(res, i, 0), r.txid) != 0 ||
                kind_parse(PQgetvalue(res, i, 1), &r.kind) != 0) {
                log_error("journal: recovery scan: malformed row (txid %s, kind %s)", PQgetvalue(res, i, 0),
                          PQgetvalue(res, i, 1));
                goto fail_row;
            }
            if (!PQgetisnull(res, i, 2)) {
                int len = PQgetlength(res, i, 2);
                scratch.len = 0;
                buf_put(&scratch, PQgetvalue(res, i, 2), (size_t)len + 1);
                if (journal_parse_text_array(scratch.data, &sv) != 0) {
                    log_error("journal: recovery scan: malformed services %s", PQgetvalue(res, i, 2));
                    goto fail_row;
                }
                r.nservices = sv.n;
                r.services = sv.n ? sv.v : NULL;
            }
            if (!PQgetisnull(res, i, 3))
                r.failed_branch = atoi(PQgetvalue(res, i, 3));
            if (!PQgetisnull(res, i, 4))
                r.detail = PQgetvalue(res, i, 4);
            if (r.kind == JOURNAL_STEP && !PQgetisnull(res, i, 5))
                r.step = atoi(PQgetvalue(res, i, 5));
            if (!PQgetisnull(res, i, 6)) {
                if (bytea_decode(PQgetvalue(res, i, 6), (size_t)PQgetlength(res, i, 6), &bytes) != 0) {
                    char id[37];
                    journal_txid_format(r.txid, id);
                    log_error("journal: recovery scan: malformed data of a %s record (txid %s)",
                              journal_kind_name(r.kind), id);
                    goto fail_row;
                }
                r.data = bytes.data;
                r.data_len = bytes.len;
            }
            if (nrows == 0 || memcmp(last_txid, r.txid, 16) != 0) {
                memcpy(last_txid, r.txid, 16);
                ntx++;
            }
            nrows++;
            rc = cb(arg, &r, 0);
        }
        PQclear(res);
        res = NULL;
        if (rc != 0)
            break;
    }
    PQclear(res);
    res = NULL;
    if (rc != 0) {
        /* Stopped by the callback: closes the cursor too. */
        PQclear(PQexec(c, "ROLLBACK"));
    } else {
        res = PQexec(c, "COMMIT");
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            goto fail_sql;
        PQclear(res);
        log_info("journal: recovery scan read %" PRIu64 " records of %" PRIu64 " unfinished transactions in %lld ms",
                 nrows, ntx, (long long)(now_ms() - t0));
    }
    journal_buf_free(&scratch);
    journal_buf_free(&bytes);
    journal_strv_free(&sv);
    return rc;

fail_sql:
    scan_fail(c, res, "query");
fail_row:
    PQclear(res);
    if (PQstatus(c) == CONNECTION_OK)
        PQclear(PQexec(c, "ROLLBACK"));
    journal_buf_free(&scratch);
    journal_buf_free(&bytes);
    journal_strv_free(&sv);
    return TREATY_EPG;
}

/* ----------------------------------------------------------------- writer */

/*
 * The group goes to Postgres as one INSERT of seven text[] parameters, one
 * element per record, built here from the COPY text lines the batches hold
 * (journal_int.h). COPY needs a round trip before its data can be sent; a
 * parameterised INSERT ... unnest() goes in one message with everything else.
 */
#define INSERT_NAME "treaty_journal_insert"
#define INSERT_SQL                                                                                                     \
    "INSERT INTO treaty_journal (txid, kind, services, failed_branch, detail, step, data, ended, grp) "                \
    "SELECT t::uuid, k, s::text[], f::integer, d, st::integer, x::bytea, e::uuid[], "                                  \
    "       CASE WHEN n = 1 THEN $9::uuid END "                                                                        \
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "                 \
    "$8::text[]) WITH ORDINALITY AS u(t, k, s, f, d, st, x, e, n) ORDER BY n"
/* The unique index on grp (sql/004_runs_and_lookups.sql). */
#define GRP_INDEX "treaty_journal_grp"

/* Appends one COPY text field (s, n bytes, still escaped) to the array
 * literal a as an element: NULL for \N, else double-quoted with '"' and '\'
 * escaped. COPY's escapes are undone on the way: \t \n \r and \<c> -> c. */
static void put_array_elem(struct journal_buf *a, const char *s, size_t n)
{
    buf_putc(a, a->len == 0 ? '{' : ',');
    if (n == 2 && s[0] == '\\' && s[1] == 'N') {
        buf_puts(a, "NULL");
        return;
    }
    buf_reserve(a, 2 * n + 2);
    char *w = a->data + a->len;
    *w++ = '"';
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n) {
            c = s[++i];
            c = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
        }
        if (c == '"' || c == '\\')
            *w++ = '\\';
        *w++ = c;
    }
    *w++ = '"';
    a->len = (size_t)(w - a->data);
}

/* True for the COPY field of a saga END's detail. */
static bool saga_end_detail(const char *f, size_t n)
{
    return (n == 9 && memcmp(f, "completed", 9) == 0) || (n == 11 && memcmp(f, "compensated", 11) == 0);
}

/* Splits the COPY lines of every batch from head on into the INSERT's array
 * literals (NUL-terminated), one element per row. Every record is a row of
 * its own (ended NULL), in append order, except the END records of 2PC
 * transactions (any END but a saga's "completed" or "compensated"): those
 * sharing a detail become one row of kind 'ends' (txid NULL, ended = their
 * txids), after the group's other rows, so that a transaction's END has a
 * higher seq than its other records even when they are in the same group.
 * A saga's END stays a row of its own (kind 'end') so that an outcome lookup
 * finds it through the txid index (see journal_lookup below). Returns the
 * number of rows, or -1 when a line does not have JOURNAL_NCOLS fields (a bug
 * of the encoder). */
static long group_to_arrays(const struct batch *head, struct journal_buf cols[INSERT_NCOLS],
                            struct ends_row ends[ENDS_MAX_DETAILS])
{
    static const char null_field[] = "\\N";
    long rows = 0;
    unsigned nends = 0;
    for (int k = 0; k < INSERT_NCOLS; k++)
        cols[k].len = 0;
    for (const struct batch *b = head; b; b = b->next) {
        const char *p = b->rows.data, *end = b->rows.data + b->rows.len;
        while (p < end) {
            const char *eol = memchr(p, '\n', (size_t)(end - p));
            if (!eol)
                return -1;
            const char *f[JOURNAL_NCOLS];
            size_t n[JOURNAL_NCOLS];
            for (int k = 0; k < JOURNAL_NCOLS; k++) {
                f[k] = p;
                while (p < eol && *p != '\t')
                    p++;
                if ((k < JOURNAL_NCOLS - 1) != (p < eol))
                    return -1;
                n[k] = (size_t)(p - f[k]);
                p++; /* the TAB, or the LF after the last field */
            }
            if (n[1] == 3 && memcmp(f[1], "end", 3) == 0 && n[0] == 36 && !saga_end_detail(f[4], n[4])) {
                unsigned i = 0;
                while (i < nends && (ends[i].detail_len != n[4] || memcmp(ends[i].detail, f[4], n[4]) != 0))
                    i++;
                if (i == nends && nends < ENDS_MAX_DETAILS) {
                    ends[i].detail = f[4];
                    ends[i].detail_len = n[4];
                    ends[i].txids.len = 0;
                    nends++;
                }
                if (i < nends) {
                    buf_putc(&ends[i].txids, ends[i].txids.len == 0 ? '{' : ',');
                    buf_put(&ends[i].txids, f[0], 36);
                    continue;
                }
            }
            for (int k = 0; k < JOURNAL_NCOLS; k++)
                put_array_elem(&cols[k], f[k], n[k]);
            put_array_elem(&cols[JOURNAL_NCOLS], null_field, 2);
            rows++;
        }
    }
    for (unsigned i = 0; i < nends; i++) {
        buf_putc(&ends[i].txids, '}');
        put_array_elem(&cols[0], null_field, 2);
        put_array_elem(&cols[1], "ends", 4);
        put_array_elem(&cols[2], null_field, 2);
        put_array_elem(&cols[3], null_field, 2);
        put_array_elem(&cols[4], ends[i].detail, ends[i].detail_len);
        put_array_elem(&cols[5], null_field, 2);
        put_array_elem(&cols[6], null_field, 2);
        put_array_elem(&cols[7], ends[i].txids.data, ends[i].txids.len);
        rows++;
    }
    for (int k = 0; k < INSERT_NCOLS; k++) {
        if (cols[k].len == 0)
            buf_putc(&cols[k], '{');
        buf_putc(&cols[k], '}');
        buf_putc(&cols[k], '\0');
    }
    return rows;
}

/* Reads one result of the pipeline; true when its status is want (and, for
 * a statement, the NULL that ends its results followed). */
static bool pipeline_result(PGconn *c, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *res = PQgetResult(c);
    bool ok = res && PQresultStatus(res) == want;
    if (!ok)
        pg_error(c, res, err, errlen);
    PQclear(res);
    if (ok && want != PGRES_PIPELINE_SYNC && (res = PQgetResult(c)) != NULL) {
        PQclear(res);
        set_err(err, errlen, "unexpected second result in the journal pipeline");
        ok = false;
    }
    return ok;
}

/* ------------------------------------------------------------ fault point */

#ifdef TREATY_FAULTS
int journal_fault_lose_acks(struct journal *j, unsigned n)
{
    if (!j)
        return TREATY_EINVAL;
    atomic_store(&j->fault_lose_acks, n);
    return 0;
}

/* True (once per armed fault) when this group is to lose its acknowledgement. */
static bool fault_take(struct journal *j)
{
    unsigned n = atomic_load(&j->fault_lose_acks);
    while (n > 0 && !atomic_compare_exchange_weak(&j->fault_lose_acks, &n, n - 1)) {
    }
    return n > 0;
}

/* True when buf (n bytes of the server's messages, from a message's start)
 * holds a whole ReadyForQuery ('Z', length 5). */
static bool holds_ready_for_query(const unsigned char *buf, size_t n)
{
    size_t at = 0;
    while (n - at >= 5) {
        uint32_t len = (uint32_t)buf[at + 1] << 24 | (uint32_t)buf[at + 2] << 16 | (uint32_t)buf[at + 3] << 8 |
                       (uint32_t)buf[at + 4];
        if (buf[at] == 'Z' && len == 5)
            return n - at >= 6;
        if (len < 4 || len > n - at - 1)
            return false;
        at += 1 + len;
    }
    return false;
}

/* journal_int.h: waits (peeking, libpq reads nothing) until the answer to the
 * pipeline's Sync has arrived, i.e. the group committed, then replaces the
 * socket with one whose peer is closed. */
static void fault_lose_ack(PGconn *c)
{
    enum { PEEK = 1 << 16 };
    /* Static, too big for the stack: used by whichever thread writes a group
     * of a journal with the fault armed (its writer, or journal_close before
     * a start), so at most one journal of a process may have it armed. */
    static unsigned char buf[PEEK];
    int fd = PQsocket(c);
    int64_t until = now_ms() + 10000;
    bool seen = false;
    while (fd >= 0 && now_ms() < until) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, SLICE_MS) <= 0)
            continue;
        ssize_t n = recv(fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break; /* closed or broken anyway */
        if (n > 0 && (seen = holds_ready_for_query(buf, (size_t)n)))
            break;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 1000000L}; /* more is on its way */
        nanosleep(&ts, NULL);
    }
    if (!seen)
        log_warn("journal: fault point: the answer to the Sync was not seen; breaking the connection anyway");
    int sv[2];
    if (fd >= 0 && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
        close(sv[1]);
        dup2(sv[0], fd); /* closes our end of the server's socket */
        close(sv[0]);
    }
    log_warn("journal: fault point: the group's acknowledgement is lost");
}
#else
int journal_fault_lose_acks(struct journal *j, unsigned n)
{
    (void)j;
    (void)n;
    return TREATY_ESTATE;
}

static bool fault_take(struct journal *j)
{
    (void)j;
    return false;
}

static void fault_lose_ack(PGconn *c)
{
    (void)c;
}
#endif

/* write_group: the group is stored (committed now, or by an earlier attempt). */
#define GROUP_WRITTEN 0
#define GROUP_WRITTEN_BEFORE 1

/*
 * Reads the INSERT's result in the pipeline. GROUP_WRITTEN when it stored
 * want_rows rows; GROUP_WRITTEN_BEFORE when the unique index on grp refused
 * the group's first row: an earlier attempt to write this very group
 * committed (this statement, and with it this transaction, rolled back);
 * TREATY_EPG otherwise, with err filled.
 */
static int insert_result(PGconn *c, const char *want_rows, char *err, size_t errlen)
{
    int rc = TREATY_EPG;
    PGresult *res = PQgetResult(c);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *cons = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
    if (st == PGRES_COMMAND_OK && strcmp(PQcmdTuples(res), want_rows) == 0)
        rc = GROUP_WRITTEN;
    else if (st == PGRES_FATAL_ERROR && state && strcmp(state, "23505") == 0 && cons && strcmp(cons, GRP_INDEX) == 0)
        rc = GROUP_WRITTEN_BEFORE;
    else if (st == PGRES_COMMAND_OK)
        set_err(err, errlen, "INSERT stored %s rows, not %s", PQcmdTuples(res), want_rows);
    else
        pg_error(c, res, err, errlen);
    PQclear(res);
    if (rc != TREATY_EPG && (res = PQgetResult(c)) != NULL) {
        PQclear(res);
        set_err(err, errlen, "unexpected second result in the journal pipeline");
        rc = TREATY_EPG;
    }
    return rc;
}

/*
 * Writes the batches from head on in one Postgres transaction, in one round
 * trip: in pipeline mode, SET synchronous_commit, the INSERT (the group's id
 * grp on its first row), and a Sync that commits the implicit transaction
 * holding both. Returns GROUP_WRITTEN after the Sync's answer came back,
 * i.e. after the commit returned; GROUP_WRITTEN_BEFORE when an earlier
 * attempt to write the group (same grp) had committed; or TREATY_EPG with
 * err filled: the caller then drops the connection (it may be mid-pipeline
 * or anywhere in it) and writes the group again with the same grp.
 */
static int write_group(PGconn *c, struct pgsess *sess, const struct batch *head, bool forced, const uint8_t grp[16],
                       struct journal_buf cols[INSERT_NCOLS], struct ends_row ends[ENDS_MAX_DETAILS], bool lose_ack,
                       char *err, size_t errlen)
{
    char nrows[24], grp_text[37];
    long rows = group_to_arrays(head, cols, ends);
    if (rows < 0) {
        set_err(err, errlen, "malformed journal row in the group (encoder bug)");
        return TREATY_EPG;
    }
    snprintf(nrows, sizeof nrows, "%ld", rows);
    journal_txid_format(grp, grp_text);
    const char *values[INSERT_NPARAMS];
    for (int k = 0; k < INSERT_NCOLS; k++)
        values[k] = cols[k].data;
    values[INSERT_NCOLS] = grp_text;

    if (PQenterPipelineMode(c) != 1) {
        pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    /* The INSERT is prepared once per connection, in the first group's
     * pipeline: later groups skip its parsing and planning. */
    bool prepare = !sess->prepared;
    /* Forced: the commit waits for the WAL flush whatever the server's
     * default. Lazy only: it returns without waiting. A session SET, not SET
     * LOCAL (which an implicit transaction refuses with a warning), sent
     * whenever the mode differs from the previous group's on this
     * connection, so the session always holds the mode this group needs. (A
     * failed group rolls its SET back: then either the connection is dropped
     * and the next one starts with sess reset, or, for a group written
     * before, sess->sync is left as it was, below.) */
    bool set = sess->sync != (forced ? 1 : 0);
    if ((prepare && PQsendPrepare(c, INSERT_NAME, INSERT_SQL, INSERT_NPARAMS, NULL) != 1) ||
        (set && PQsendQueryParams(c, forced ? "SET synchronous_commit = on" : "SET synchronous_commit = off", 0, NULL,
                                  NULL, NULL, NULL, 0) != 1) ||
        PQsendQueryPrepared(c, INSERT_NAME, INSERT_NPARAMS, values, NULL, NULL, 0) != 1 || PQpipelineSync(c) != 1) {
        pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    if (lose_ack)
        fault_lose_ack(c);
    if ((prepare && !pipeline_result(c, PGRES_COMMAND_OK, err, errlen)) ||
        (set && !pipeline_result(c, PGRES_COMMAND_OK, err, errlen)))
        return TREATY_EPG;
    int rc = insert_result(c, nrows, err, errlen);
    if (rc < 0)
        return rc;
    /*
     * The commit point of every record in the group: the Sync's answer
     * (ReadyForQuery) leaves the server after the implicit transaction
     * committed, and with synchronous_commit = on after its WAL was flushed.
     * Nothing is reported durable before this.
     *
     * If the connection drops after the server committed but before its
     * answer reached us, the rows are stored but we cannot know it: the
     * caller writes the group again, with the same grp, on a new connection.
     * That INSERT finds the first attempt's row in the unique index on grp:
     * committed, it fails with 23505 (GROUP_WRITTEN_BEFORE: nothing is stored
     * twice); still in progress on a backend that has not noticed the lost
     * connection yet, it waits for that transaction's end and then fails, or
     * goes ahead if it rolled back. A forced group's first attempt became
     * visible only after its WAL flush, so GROUP_WRITTEN_BEFORE is as durable
     * as GROUP_WRITTEN. If treatyd crashes instead, nothing was reported
     * durable, and recovery reads whatever landed.
     */
    if (!pipeline_result(c, PGRES_PIPELINE_SYNC, err, errlen))
        return TREATY_EPG;
    if (PQtransactionStatus(c) != PQTRANS_IDLE) {
        set_err(err, errlen, "the journal transaction did not end with the pipeline's Sync");
        return TREATY_EPG;
    }
    if (PQexitPipelineMode(c) != 1) {
        pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    sess->prepared = true;
    /* A refused INSERT rolled this pipeline's SET back with it: the session
     * keeps the mode it had. */
    if (rc == GROUP_WRITTEN)
        sess->sync = forced ? 1 : 0;
    return rc;
}

/* A fresh id for the group being started: a UUIDv7 (time-ordered, 74 random
 * bits), or from the writer's own generator if the system's fails. */
static void group_new_id(uint64_t *rng, uint8_t grp[16])
{
    if (treaty_txid_generate((treaty_txid_t *)grp) == 0)
        return;
    for (int i = 0; i < 16; i += 8) {
        uint64_t x = rng_next(rng);
        memcpy(grp + i, &x, 8);
    }
}

static void group_add(struct writer *w, struct batch *b)
{
    b->next = NULL;
    if (w->tail)
        w->tail->next = b;
    else {
        w->head = b;
        w->first_at = now_ms();
        group_new_id(&w->rng, w->grp);
    }
    w->tail = b;
    w->bytes += b->rows.len;
    w->nrecs += b->nrecs;
    w->forced = w->forced || b->forced;
}

/* Frees write_group's reusable buffers. */
static void writer_bufs_free(struct writer *w)
{
    for (int k = 0; k < INSERT_NCOLS; k++)
        journal_buf_free(&w->cols[k]);
    for (int i = 0; i < ENDS_MAX_DETAILS; i++)
        journal_buf_free(&w->ends[i].txids);
}

static void group_free(struct writer *w)
{
    while (w->head) {
        struct batch *b = w->head;
        w->head = b->next;
        batch_free(b);
    }
    w->tail = NULL;
    w->bytes = 0;
    w->nrecs = 0;
    w->forced = false;
}

/* Waits up to timeout_ms for a message, then takes every waiting one until
 * the group is full or STOP arrives. */
static void writer_take(struct journal *j, int timeout_ms)
{
    struct writer *w = &j->w;
    zmq_pollitem_t it = {.socket = j->writer_in, .events = ZMQ_POLLIN};
    int r = zmq_poll(&it, 1, timeout_ms);
    if (r <= 0) {
        if (r < 0 && errno == ETERM) {
            log_error("journal: ZeroMQ context terminated under the running journal (journal_close comes first)");
            atomic_store(&j->abandon, true);
        }
        return;
    }
    while (!w->stopping && w->bytes < GROUP_MAX_BYTES) {
        struct msg m;
        int n = zmq_recv(j->writer_in, &m, sizeof m, ZMQ_DONTWAIT);
        if (n < 0) {
            if (errno == ETERM)
                atomic_store(&j->abandon, true);
            return;
        }
        assert(n == (int)sizeof m);
        if (m.type == JMSG_BATCH)
            group_add(w, m.b);
        else if (m.type == JMSG_STOP)
            w->stopping = true;
    }
}

/* Connects until it works. Returns false only when abandoned. */
static bool writer_reconnect(struct journal *j)
{
    struct writer *w = &j->w;
    for (;;) {
        char why[ERRLEN];
        if (writer_abandoned(j))
            return false;
        PGconn *c = pg_connect(j, writer_abandoned, APP_WRITER, why, sizeof why);
        if (c) {
            writer_set_conn(w, c);
            atomic_fetch_add(&j->n_reconnects, 1);
            log_info("journal: reconnected to PostgreSQL");
            return true;
        }
        if (writer_abandoned(j))
            return false;
        atomic_store(&j->healthy, false);
        int delay = backoff_delay(&w->backoff_ms, j->connect_initial_ms, j->connect_max_ms, false, &w->rng);
        log_warn("journal: cannot connect to PostgreSQL, retrying in %d ms: %s", delay, why);
        if (sleep_unless(j, writer_abandoned, delay))
            return false;
    }
}

/* Writes the group until it commits, then publishes the watermark. Returns
 * false only when abandoned (the group is then left unwritten). */
static bool writer_commit_group(struct journal *j)
{
    struct writer *w = &j->w;
    int64_t t0 = now_us();
    for (;;) {
        char why[ERRLEN];
        if (writer_abandoned(j))
            return false;
        if (!w->conn && !writer_reconnect(j))
            return false;
        int rc = write_group(w->conn, &w->sess, w->head, w->forced, w->grp, w->cols, w->ends, fault_take(j), why,
                             sizeof why);
        if (rc == GROUP_WRITTEN)
            break;
        if (rc == GROUP_WRITTEN_BEFORE) {
            log_warn("journal: %u records (seq %" PRIu64 "..%" PRIu64 ") had been stored by the attempt whose "
                     "acknowledgement was lost; not stored again",
                     w->nrecs, w->head->first_seq, w->tail->last_seq);
            break;
        }
        /* Not committed (or we cannot know): the same group goes again. */
        atomic_store(&j->healthy, false);
        log_error("journal: cannot write %u records (seq %" PRIu64 "..%" PRIu64 "), will reconnect and write "
                  "them again: %s",
                  w->nrecs, w->head->first_seq, w->tail->last_seq, why);
        PQfinish(w->conn);
        writer_set_conn(w, NULL);
        int delay = backoff_delay(&w->backoff_ms, j->connect_initial_ms, j->connect_max_ms, true, &w->rng);
        if (delay > 0 && sleep_unless(j, writer_abandoned, delay))
            return false;
    }

    /*
     * Durable: COMMIT returned. Only now does the watermark move; the loop
     * sends the replies that waited for these records. If we crash before
     * the loop reads it, the records are in the journal and recovery
     * resumes their transactions.
     */
    uint64_t seq = w->tail->last_seq;
    atomic_fetch_add(&j->n_write_us, (uint64_t)(now_us() - t0));
    atomic_fetch_add(&j->n_batches, 1);
    atomic_fetch_add(&j->n_records, w->nrecs);
    if (w->forced)
        atomic_fetch_add(&j->n_forced, 1);
    atomic_store(&j->durable, seq);
    if (!atomic_exchange(&j->healthy, true))
        log_info("journal: writing to PostgreSQL again (durable up to seq %" PRIu64 ")", seq);
    w->backoff_ms = 0;
    group_free(w);
    struct note n = {.type = NOTE_DURABLE, .durable = seq, .a = NULL};
    if (zmq_send(j->writer_out, &n, sizeof n, ZMQ_DONTWAIT) < 0 && errno != EAGAIN)
        log_warn("journal: cannot notify the loop: %s", zmq_strerror(errno));
    return true;
}

/*
 * Collects finished transactions: for up to GC_MAX_ENDS 'ends' rows and
 * GC_MAX_TXIDS 'end' rows (written by versions 1 and 2, and for saga ENDs)
 * older than retention_s, deletes each END row and, for every txid it names,
 * that txid's records with a lower seq than the END row: the run the END
 * finished, and any older run. Records of the txid after that END (a newer
 * run, finished or not) stay: an END says nothing about what followed it.
 * When a txid is named by several old END rows of this round, the highest
 * bounds it.
 *
 * One transaction, lazily committed. If we crash before COMMIT, nothing is
 * deleted. If Postgres crashes and forgets the committed delete, the END rows
 * and their runs are back, still finished, and go in a later round. Either
 * way a run and the END that finished it disappear together, so no END ever
 * outlives its run to be mistaken for another's.
 */
static void writer_gc(struct journal *j)
{
    struct writer *w = &j->w;
    char why[ERRLEN], sql[1536];
    PGresult *res = NULL;

    w->next_gc = now_ms() + j->gc_interval_ms;
    if (!w->conn) {
        /* One attempt: the write path does the persistent retrying. */
        writer_set_conn(w, pg_connect(j, writer_abandoned, APP_WRITER, why, sizeof why));
        if (!w->conn) {
            log_warn("journal: collector cannot connect to PostgreSQL: %s", why);
            return;
        }
        atomic_fetch_add(&j->n_reconnects, 1);
    }
    PGconn *c = w->conn;
    /* b: old 'ends' rows; s: old 'end' rows; done: each txid they name with
     * the highest seq naming it. Both are found through their partial
     * indexes on written_at; del reaches each txid's records through the
     * txid index. An 'ends' row has a NULL txid: del never reaches it, dele
     * deletes the END rows themselves. */
    snprintf(sql, sizeof sql,
             "WITH b AS (SELECT seq, ended FROM treaty_journal "
             "            WHERE kind = 'ends' AND written_at < now() - make_interval(secs => %d) "
             "            LIMIT %d), "
             "     s AS (SELECT seq, txid FROM treaty_journal "
             "            WHERE kind = 'end' AND written_at < now() - make_interval(secs => %d) "
             "            LIMIT %d), "
             "     done AS (SELECT txid, max(seq) AS upto "
             "                FROM (SELECT unnest(ended) AS txid, seq FROM b UNION ALL SELECT txid, seq FROM s) e "
             "               GROUP BY txid), "
             "     del AS (DELETE FROM treaty_journal j USING done "
             "              WHERE j.txid = done.txid AND j.seq < done.upto RETURNING 1), "
             "     dele AS (DELETE FROM treaty_journal j "
             "               WHERE j.seq IN (SELECT seq FROM b UNION ALL SELECT seq FROM s) RETURNING 1) "
             "SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM del) + (SELECT count(*) FROM dele), "
             "       (SELECT count(*) FROM b), (SELECT count(*) FROM s)",
             j->retention_s, GC_MAX_ENDS, j->retention_s, GC_MAX_TXIDS);
    if (!pg_exec(c, "BEGIN; SET LOCAL synchronous_commit = off", PGRES_COMMAND_OK, why, sizeof why))
        goto fail;
    res = PQexec(c, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        pg_error(c, res, why, sizeof why);
        goto fail;
    }
    long long ntx = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    long long nrows = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    long long nends = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    long long nend = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    PQclear(res);
    res = NULL;
    if (!pg_commit(c, why, sizeof why))
        goto fail;
    if (nrows > 0) {
        atomic_fetch_add(&j->n_gc_deleted, (uint64_t)nrows);
        log_debug("journal: collected %lld finished transactions (%lld records)", ntx, nrows);
    }
    if (nend >= GC_MAX_TXIDS || nends >= GC_MAX_ENDS)
        w->next_gc = now_ms(); /* more to collect, after whatever batches wait */
    return;

fail:
    PQclear(res);
    log_warn("journal: collecting finished transactions failed: %s", why);
    if (PQstatus(c) == CONNECTION_OK) {
        PQclear(PQexec(c, "ROLLBACK"));
    } else {
        PQfinish(c);
        writer_set_conn(w, NULL);
    }
}

static void *writer_main(void *arg)
{
    struct journal *j = arg;
    struct writer *w = &j->w;
    w->next_gc = now_ms() + j->gc_interval_ms;

    while (!writer_abandoned(j)) {
        if (!w->head) {
            if (w->stopping)
                break;
            int64_t until_gc = w->next_gc - now_ms();
            if (until_gc <= 0) {
                writer_gc(j);
                continue;
            }
            writer_take(j, clamp_ms(until_gc));
            continue;
        }
        /* Lazy only: gather more for a while, unless the group is full. */
        if (!w->forced && !w->stopping && w->bytes < GROUP_MAX_BYTES) {
            int64_t left = w->first_at + j->lazy_delay_ms - now_ms();
            if (left > 0) {
                writer_take(j, clamp_ms(left));
                continue;
            }
        }
        /* Take whatever else is waiting, then write. */
        writer_take(j, 0);
        if (!writer_commit_group(j))
            break;
    }
    if (w->head)
        log_error("journal: writer stopped with %u records not written (seq %" PRIu64 "..%" PRIu64 ")", w->nrecs,
                  w->head->first_seq, w->tail->last_seq);
    group_free(w);
    writer_bufs_free(w);
    return NULL;
}

/* ----------------------------------------------------------------- reader */

/*
 * Outcome lookups. The reader thread owns a libpq connection of its own,
 * opened at its first lookup, so that a lookup never waits behind a group
 * and a group never waits behind a lookup. It answers every batch it finds
 * waiting with queries of up to LOOKUP_CHUNK txids each (one round trip).
 *
 * What the query reads: every row of the asked txids (the txid index), and
 * the saga ENDs a version-3 writer batched in 'ends' rows (the partial GIN
 * index of sql/004_runs_and_lookups.sql; the query says "ended IS NOT NULL"
 * for "an 'ends' row", as the index's predicate does, so that the planner
 * cannot walk every 'ends' row through treaty_journal_ends instead). It does
 * not read 2PC ENDs, which stay in 'ends' rows no index covers by txid: no
 * outcome needs them.
 *
 * How rows become an outcome (lookup_decide), in seq order per txid. A
 * transaction is a run of records ended by an END; a txid's latest run
 * decides. The latest run holds L, the txid's last record other than an END:
 *   - L is a COMMIT or an ABORT: that decision is the outcome. A 2PC run
 *     writes nothing before its decision and nothing but its END after it,
 *     so whatever ended before L was an earlier run;
 *   - L is a saga's (SAGA, STEP, TURN): the first END after L says
 *     "completed" or "compensated"; no END after L: UNFINISHED. The run
 *     began at the last SAGA record up to L (a saga's definition is forced
 *     before anything else of it): its last TURN, if any, gives
 *     failed_branch and detail;
 *   - no record but ENDs (the run was collected, an END left behind by an
 *     older writer): a saga END still says how the saga ended; otherwise
 *     NONE;
 *   - no row: NONE.
 * Records stored twice by writers before version 4 change nothing: a second
 * COMMIT is still the last decision, a second END follows the first, a
 * STEP or TURN written again after its END still runs from the same SAGA.
 */
#define LOOKUP_SQL                                                                                                     \
    "SELECT txid, seq, kind, failed_branch, detail FROM treaty_journal "                                               \
    " WHERE txid = ANY($1::uuid[]) "                                                                                   \
    "UNION ALL "                                                                                                       \
    "SELECT e.txid, b.seq, 'end', NULL, b.detail "                                                                     \
    "  FROM treaty_journal b CROSS JOIN LATERAL unnest(b.ended) AS e(txid) "                                           \
    " WHERE b.ended IS NOT NULL AND b.detail IN ('completed', 'compensated') AND b.ended && $1::uuid[] "               \
    "   AND e.txid = ANY($1::uuid[]) "                                                                                 \
    "ORDER BY 1, 2"
const char journal_lookup_sql[] = LOOKUP_SQL;

/* Txids a query asks about at most. */
#define LOOKUP_CHUNK 1000
/* A lookup's connection attempt or query gives up after this (the attempt
 * sooner if connect_timeout says so); a query's connection is then dropped. */
#define LOOKUP_TIMEOUT_MS 10000

static bool reader_stopped(struct journal *j)
{
    return atomic_load(&j->reader_stop);
}

/* One row of the lookup query, pointing into its PGresult. */
struct lrow {
    uint8_t txid[16];
    long long seq;
    enum journal_kind kind;
    int failed_branch;
    const char *detail; /* NULL when NULL */
};

static void set_detail(struct journal_lookup_result *out, const char *d)
{
    snprintf(out->detail, sizeof out->detail, "%s", d ? d : "");
}

static bool detail_is(const char *d, const char *want)
{
    return d && strcmp(d, want) == 0;
}

/* The outcome of one txid from its rows v[0..n) in seq order (see above). */
static void lookup_decide(const struct lrow *v, size_t n, struct journal_lookup_result *out)
{
    out->outcome = JOURNAL_OUTCOME_NONE;
    out->failed_branch = -1;
    out->detail[0] = '\0';
    size_t L = n;
    for (size_t i = n; i-- > 0;) {
        if (v[i].kind != JOURNAL_END) {
            L = i;
            break;
        }
    }
    if (L == n) {
        for (size_t i = n; i-- > 0;) {
            if (detail_is(v[i].detail, "completed") || detail_is(v[i].detail, "compensated")) {
                out->outcome =
                    detail_is(v[i].detail, "completed") ? JOURNAL_OUTCOME_COMPLETED : JOURNAL_OUTCOME_COMPENSATED;
                break;
            }
        }
        return;
    }
    if (v[L].kind == JOURNAL_COMMIT) {
        out->outcome = JOURNAL_OUTCOME_COMMITTED;
        return;
    }
    if (v[L].kind == JOURNAL_ABORT) {
        out->outcome = JOURNAL_OUTCOME_ABORTED;
        out->failed_branch = v[L].failed_branch;
        set_detail(out, v[L].detail);
        return;
    }
    /* A saga's run: from its last SAGA record up to L (or, without one, from
     * the END before L), then the first END after L. */
    size_t start = 0, saga = L + 1;
    for (size_t i = L + 1; i-- > 0 && saga > L;) {
        if (v[i].kind == JOURNAL_SAGA)
            saga = start = i;
    }
    for (size_t i = L + 1; saga > L && i-- > 0;) {
        if (v[i].kind == JOURNAL_END) {
            start = i + 1;
            break;
        }
    }
    for (size_t i = L + 1; i-- > start;) {
        if (v[i].kind == JOURNAL_TURN) {
            out->failed_branch = v[i].failed_branch;
            set_detail(out, v[i].detail);
            break;
        }
    }
    out->outcome = JOURNAL_OUTCOME_UNFINISHED;
    if (L + 1 < n) {
        const char *d = v[L + 1].detail;
        if (detail_is(d, "completed"))
            out->outcome = JOURNAL_OUTCOME_COMPLETED;
        else if (detail_is(d, "compensated"))
            out->outcome = JOURNAL_OUTCOME_COMPENSATED;
        else {
            char id[37];
            journal_txid_format(v[0].txid, id);
            log_warn("journal: lookup of %s: a saga's records end with an END of detail \"%s\"; answered "
                     "unfinished",
                     id, d ? d : "(null)");
        }
    }
}

/* Waits, up to deadline, until libpq holds a whole result (or the final
 * NULL). 0, or TREATY_EPG with err filled. */
static int wait_not_busy(struct journal *j, PGconn *c, int64_t deadline, char *err, size_t errlen)
{
    for (;;) {
        int f = PQflush(c);
        if (f < 0) {
            pg_error(c, NULL, err, errlen);
            return TREATY_EPG;
        }
        if (f == 0) {
            if (!PQconsumeInput(c)) {
                pg_error(c, NULL, err, errlen);
                return TREATY_EPG;
            }
            if (!PQisBusy(c))
                return 0;
        }
        if (reader_stopped(j)) {
            set_err(err, errlen, "journal closing");
            return TREATY_EPG;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            set_err(err, errlen, "no answer within %d ms", LOOKUP_TIMEOUT_MS);
            return TREATY_EPG;
        }
        struct pollfd p = {.fd = PQsocket(c), .events = (short)(POLLIN | (f == 1 ? POLLOUT : 0))};
        if (p.fd < 0) {
            set_err(err, errlen, "no connection");
            return TREATY_EPG;
        }
        if (poll(&p, 1, left < SLICE_MS ? (int)left : SLICE_MS) < 0 && errno != EINTR) {
            set_err(err, errlen, "poll: %s", strerror(errno));
            return TREATY_EPG;
        }
    }
}

/* Runs the lookup query for the uuid[] literal param, on a non-blocking
 * connection, within LOOKUP_TIMEOUT_MS. *out owns the result on success. */
static int lookup_query(struct journal *j, PGconn *c, const char *param, PGresult **out, char *err, size_t errlen)
{
    const char *values[1] = {param};
    int64_t deadline = now_ms() + LOOKUP_TIMEOUT_MS;
    if (PQsendQueryParams(c, LOOKUP_SQL, 1, NULL, values, NULL, NULL, 0) != 1) {
        pg_error(c, NULL, err, errlen);
        return TREATY_EPG;
    }
    if (wait_not_busy(j, c, deadline, err, errlen) != 0)
        return TREATY_EPG;
    PGresult *res = PQgetResult(c);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 5) {
        pg_error(c, res, err, errlen);
        PQclear(res);
        return TREATY_EPG;
    }
    /* The NULL that ends the query's results. */
    if (wait_not_busy(j, c, deadline, err, errlen) != 0) {
        PQclear(res);
        return TREATY_EPG;
    }
    PGresult *more = PQgetResult(c);
    if (more) {
        PQclear(more);
        PQclear(res);
        set_err(err, errlen, "unexpected second result of a lookup");
        return TREATY_EPG;
    }
    *out = res;
    return 0;
}

static int cmp_result(const void *a, const void *b)
{
    return memcmp(((const struct journal_lookup_result *)a)->txid, ((const struct journal_lookup_result *)b)->txid, 16);
}

/*
 * Fills out[i] for txid[i], i < n, from the query's result: the outcome of
 * each txid it has rows of, NONE for the others. Returns 0, or TREATY_EPROTO
 * for a row the journal's format does not allow.
 */
static int lookup_answer(PGresult *res, const uint8_t (*txid)[16], unsigned n, struct journal_lookup_result *out)
{
    int nrows = PQntuples(res);
    struct lrow *rows = xcalloc((size_t)nrows, sizeof *rows);
    struct journal_lookup_result *found = xcalloc((size_t)nrows, sizeof *found);
    size_t nfound = 0;
    int rc = 0;
    for (int i = 0; i < nrows; i++) {
        struct lrow *r = &rows[i];
        const char *kind = PQgetvalue(res, i, 2);
        if (journal_txid_parse(PQgetvalue(res, i, 0), r->txid) != 0 || kind_parse(kind, &r->kind) != 0) {
            log_error("journal: lookup: malformed row (txid %s, kind %s)", PQgetvalue(res, i, 0), kind);
            rc = TREATY_EPROTO;
            goto out;
        }
        r->seq = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        r->failed_branch = PQgetisnull(res, i, 3) ? -1 : atoi(PQgetvalue(res, i, 3));
        r->detail = PQgetisnull(res, i, 4) ? NULL : PQgetvalue(res, i, 4);
    }
    /* Rows come ordered by txid, then seq: decide each txid's run. */
    for (int i = 0; i < nrows;) {
        int k = i + 1;
        while (k < nrows && memcmp(rows[k].txid, rows[i].txid, 16) == 0)
            k++;
        memcpy(found[nfound].txid, rows[i].txid, 16);
        lookup_decide(&rows[i], (size_t)(k - i), &found[nfound]);
        nfound++;
        i = k;
    }
    qsort(found, nfound, sizeof *found, cmp_result);
    for (unsigned i = 0; i < n; i++) {
        struct journal_lookup_result key;
        memcpy(key.txid, txid[i], 16);
        const struct journal_lookup_result *f = bsearch(&key, found, nfound, sizeof *found, cmp_result);
        if (f) {
            out[i] = *f;
        } else {
            memset(&out[i], 0, sizeof out[i]);
            memcpy(out[i].txid, txid[i], 16);
            out[i].outcome = JOURNAL_OUTCOME_NONE;
            out[i].failed_branch = -1;
        }
        out[i].error = 0;
    }
out:
    free(rows);
    free(found);
    return rc;
}

/* Answers txid[0..n) into a->r: from Postgres, or with TREATY_EPG. */
static void reader_answer(struct journal *j, const uint8_t (*txid)[16], unsigned n, struct answers *a)
{
    struct reader *r = &j->r;
    char why[ERRLEN] = "";
    a->n = n;
    r->param.len = 0;
    for (unsigned i = 0; i < n; i++) {
        char id[37];
        journal_txid_format(txid[i], id);
        buf_putc(&r->param, i == 0 ? '{' : ',');
        buf_put(&r->param, id, 36);
    }
    buf_put(&r->param, n ? "}" : "{}", n ? 2 : 3);

    for (int attempt = 0;; attempt++) {
        if (!r->conn) {
            if (now_ms() < r->next_ms) {
                /* Backing off after a failure: answered at once. */
                log_debug("journal: %u lookups answered TREATY_EPG (PostgreSQL unreachable, next attempt in %lld ms)",
                          n, (long long)(r->next_ms - now_ms()));
                goto answer_error;
            }
            int limit = j->attempt_timeout_ms < LOOKUP_TIMEOUT_MS ? j->attempt_timeout_ms : LOOKUP_TIMEOUT_MS;
            r->conn = pg_connect_within(j, reader_stopped, APP_READER, limit, why, sizeof why);
            if (r->conn && PQsetnonblocking(r->conn, 1) != 0) {
                pg_error(r->conn, NULL, why, sizeof why);
                PQfinish(r->conn);
                r->conn = NULL;
            }
            if (!r->conn)
                goto fail;
        }
        PGresult *res = NULL;
        if (lookup_query(j, r->conn, r->param.data, &res, why, sizeof why) == 0) {
            int rc = lookup_answer(res, txid, n, a->r);
            PQclear(res);
            if (rc == 0) {
                r->backoff_ms = 0;
                return;
            }
            goto answer_error; /* a malformed row (logged): asking again would not help */
        }
        PQfinish(r->conn);
        r->conn = NULL;
        /* A connection that served lookups before may simply have been
         * closed while idle (a Postgres restart): one more try at once. */
        if (attempt > 0 || r->backoff_ms != 0 || reader_stopped(j))
            goto fail;
        log_info("journal: lookup connection lost, reconnecting: %s", why);
    }

fail:
    r->next_ms = now_ms() + backoff_delay(&r->backoff_ms, j->connect_initial_ms, j->connect_max_ms, false, &r->rng);
    if (!reader_stopped(j))
        log_warn("journal: cannot look up %u transactions (answered TREATY_EPG): %s", n, why);
answer_error:
    for (unsigned i = 0; i < n; i++) {
        memset(&a->r[i], 0, sizeof a->r[i]);
        memcpy(a->r[i].txid, txid[i], 16);
        a->r[i].error = TREATY_EPG;
        a->r[i].outcome = JOURNAL_OUTCOME_NONE;
        a->r[i].failed_branch = -1;
    }
}

static void lookup_batch_free(struct lookup_batch *l)
{
    while (l) {
        struct lookup_batch *next = l->next;
        free(l->txid);
        free(l);
        l = next;
    }
}

/* Answers every lookup of the batches from head on, LOOKUP_CHUNK at a time,
 * each chunk's answers in one message to the loop. */
static void reader_work(struct journal *j, struct lookup_batch *head)
{
    for (struct lookup_batch *l = head; l && !reader_stopped(j); l = l->next) {
        for (unsigned at = 0; at < l->n && !reader_stopped(j); at += LOOKUP_CHUNK) {
            unsigned n = l->n - at < LOOKUP_CHUNK ? l->n - at : LOOKUP_CHUNK;
            struct answers *a = xcalloc(1, sizeof *a + (size_t)n * sizeof a->r[0]);
            reader_answer(j, (const uint8_t(*)[16])l->txid + at, n, a);
            struct note m = {.type = NOTE_ANSWERS, .durable = 0, .a = a};
            if (zmq_send(j->reader_out, &m, sizeof m, ZMQ_DONTWAIT) != (int)sizeof m) {
                log_error("journal: cannot hand %u lookup answers to the loop: %s", n, zmq_strerror(errno));
                free(a);
            }
        }
    }
}

static void *reader_main(void *arg)
{
    struct journal *j = arg;
    while (!reader_stopped(j)) {
        zmq_pollitem_t it = {.socket = j->reader_in, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, -1) < 0) {
            if (errno == ETERM)
                break;
            continue;
        }
        /* Every batch waiting, in order. */
        struct lookup_batch *head = NULL, **tail = &head;
        bool stop = false;
        struct msg m;
        while (zmq_recv(j->reader_in, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m) {
            if (m.type == JMSG_LOOKUP) {
                m.lkp->next = NULL;
                *tail = m.lkp;
                tail = &m.lkp->next;
            } else if (m.type == JMSG_STOP) {
                stop = true;
            }
        }
        if (!stop)
            reader_work(j, head);
        lookup_batch_free(head);
        if (stop)
            break;
    }
    PQfinish(j->r.conn);
    j->r.conn = NULL;
    journal_buf_free(&j->r.param);
    return NULL;
}

/* ------------------------------------------------------------ loop thread */

/* A socket of the journal's own inproc plumbing: unbounded queues (neither
 * thread may ever block on another), no linger. */
static void *make_socket(void *zctx, int type)
{
    void *s = zmq_socket(zctx, type);
    if (!s)
        return NULL;
    int zero = 0;
    if (zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero) != 0) {
        zmq_close(s);
        return NULL;
    }
    return s;
}

/* A socket of type bound (bind) or connected to endpoint, or NULL. */
static void *plumb(void *zctx, int type, bool bind, const char *endpoint)
{
    void *s = make_socket(zctx, type);
    if (s && (bind ? zmq_bind(s, endpoint) : zmq_connect(s, endpoint)) != 0) {
        zmq_close(s);
        s = NULL;
    }
    return s;
}

static void close_sockets(struct journal *j)
{
    void **all[] = {&j->to_writer,  &j->to_reader, &j->from_both, &j->writer_in,
                    &j->writer_out, &j->reader_in, &j->reader_out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (*all[i])
            zmq_close(*all[i]);
        *all[i] = NULL;
    }
}

/*
 * The plumbing (inproc, one frame a message, fixed size):
 *   to_writer  (loop, PUSH) -> writer_in  (writer, PULL)  struct msg
 *   to_reader  (loop, PUSH) -> reader_in  (reader, PULL)  struct msg
 *   writer_out (writer, PUSH) and reader_out (reader, PUSH)
 *                           -> from_both  (loop, PULL)    struct note
 */
static int open_sockets(struct journal *j, void *zctx)
{
    char w[64], r[64], l[64];
    snprintf(w, sizeof w, "inproc://treaty-journal-w-%p", (void *)j);
    snprintf(r, sizeof r, "inproc://treaty-journal-r-%p", (void *)j);
    snprintf(l, sizeof l, "inproc://treaty-journal-l-%p", (void *)j);
    if (!(j->from_both = plumb(zctx, ZMQ_PULL, true, l)) || !(j->writer_in = plumb(zctx, ZMQ_PULL, true, w)) ||
        !(j->reader_in = plumb(zctx, ZMQ_PULL, true, r)) || !(j->to_writer = plumb(zctx, ZMQ_PUSH, false, w)) ||
        !(j->to_reader = plumb(zctx, ZMQ_PUSH, false, r)) || !(j->writer_out = plumb(zctx, ZMQ_PUSH, false, l)) ||
        !(j->reader_out = plumb(zctx, ZMQ_PUSH, false, l))) {
        log_error("journal: cannot create the journal's sockets: %s", zmq_strerror(errno));
        close_sockets(j);
        return TREATY_ETRANSPORT;
    }
    return 0;
}

int journal_start(struct journal *j, void *zctx)
{
    sigset_t all, old;
    int err;

    if (!j || !zctx)
        return TREATY_EINVAL;
    if (j->started || !j->conn)
        return TREATY_ESTATE;
    if (open_sockets(j, zctx) != 0)
        return TREATY_ETRANSPORT;

    /* The connection journal_connect opened is the writer's from now on. */
    writer_set_conn(&j->w, j->conn);
    j->conn = NULL;
    j->w.rng = rng_seed(&j->w);
    j->r.rng = rng_seed(&j->r);

    /* Signals are for the loop thread: the threads start with all blocked. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&j->thread, NULL, writer_main, j);
    if (err == 0) {
        int rerr = pthread_create(&j->reader_thread, NULL, reader_main, j);
        if (rerr != 0) {
            /* Undo the writer: it has nothing to write yet. */
            atomic_store(&j->abandon, true);
            struct msg m = {.type = JMSG_STOP, .b = NULL, .lkp = NULL};
            zmq_send(j->to_writer, &m, sizeof m, ZMQ_DONTWAIT);
            pthread_join(j->thread, NULL);
            atomic_store(&j->abandon, false);
            err = rerr;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        log_error("journal: cannot start the journal's threads: %s", strerror(err));
        j->conn = j->w.conn;
        writer_set_conn(&j->w, NULL);
        close_sockets(j);
        return TREATY_EIO;
    }
    pthread_setname_np(j->thread, "treaty-journal");
    pthread_setname_np(j->reader_thread, "treaty-lookup");
    j->started = true;
    journal_flush(j); /* anything appended or looked up before the start */
    return 0;
}

uint64_t journal_append(struct journal *j, const struct journal_rec *r, bool force)
{
    assert(j && r);
    struct batch *b = j->pending;
    if (!b) {
        b = xcalloc(1, sizeof *b);
        b->first_seq = j->appended + 1;
        j->pending = b;
    }
    journal_encode_row(&b->rows, r, j->ascii_only);
    b->last_seq = ++j->appended;
    b->nrecs++;
    b->forced = b->forced || force;
    return b->last_seq;
}

void journal_lookup(struct journal *j, const uint8_t txid[16])
{
    assert(j && txid);
    struct lookup_batch *l = j->lookups;
    if (!l)
        l = j->lookups = xcalloc(1, sizeof *l);
    if (l->n == l->cap) {
        if (l->cap > UINT_MAX / 2)
            out_of_memory();
        l->cap = l->cap ? l->cap * 2 : 16;
        l->txid = xrealloc(l->txid, (size_t)l->cap * sizeof l->txid[0]);
    }
    memcpy(l->txid[l->n++], txid, 16);
}

void journal_flush(struct journal *j)
{
    if (!j || !j->started)
        return;
    if (j->pending) {
        struct msg m = {.type = JMSG_BATCH, .b = j->pending, .lkp = NULL};
        if (zmq_send(j->to_writer, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m)
            j->pending = NULL;
        else /* kept: the next flush hands it over together with newer records */
            log_error("journal: cannot hand %u records to the writer: %s", j->pending->nrecs, zmq_strerror(errno));
    }
    if (j->lookups) {
        struct msg m = {.type = JMSG_LOOKUP, .b = NULL, .lkp = j->lookups};
        if (zmq_send(j->to_reader, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m)
            j->lookups = NULL;
        else /* kept, as above */
            log_error("journal: cannot hand %u lookups to the reader: %s", j->lookups->n, zmq_strerror(errno));
    }
}

void *journal_socket(struct journal *j)
{
    return j ? j->from_both : NULL;
}

/* Takes every notification off journal_socket(): watermarks are in the
 * atomic already; answers are kept, in order, for journal_lookup_results. */
static void loop_drain(struct journal *j)
{
    struct note n;
    if (!j->from_both)
        return;
    while (zmq_recv(j->from_both, &n, sizeof n, ZMQ_DONTWAIT) == (int)sizeof n) {
        if (n.type == NOTE_ANSWERS && n.a) {
            n.a->next = NULL;
            *j->answers_tail = n.a;
            j->answers_tail = &n.a->next;
        }
    }
}

uint64_t journal_durable(struct journal *j)
{
    if (!j)
        return 0;
    loop_drain(j);
    return atomic_load(&j->durable);
}

void journal_lookup_results(struct journal *j, journal_lookup_fn cb, void *arg)
{
    if (!j || !cb)
        return;
    loop_drain(j);
    /* Detached first: cb may look up again, or even call us. */
    struct answers *a = j->answers;
    j->answers = NULL;
    j->answers_tail = &j->answers;
    while (a) {
        struct answers *next = a->next;
        for (unsigned i = 0; i < a->n; i++)
            cb(arg, &a->r[i]);
        free(a);
        a = next;
    }
}

static void answers_free(struct answers *a)
{
    while (a) {
        struct answers *next = a->next;
        free(a);
        a = next;
    }
}

bool journal_healthy(const struct journal *j)
{
    return j && atomic_load(&j->healthy);
}

uint64_t journal_backlog(const struct journal *j)
{
    if (!j)
        return 0;
    uint64_t d = atomic_load(&j->durable);
    return j->appended > d ? j->appended - d : 0;
}

void journal_get_stats(const struct journal *j, struct journal_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!j)
        return;
    out->batches = atomic_load(&j->n_batches);
    out->records = atomic_load(&j->n_records);
    out->forced_batches = atomic_load(&j->n_forced);
    out->reconnects = atomic_load(&j->n_reconnects);
    out->gc_deleted = atomic_load(&j->n_gc_deleted);
    out->write_us = atomic_load(&j->n_write_us);
}

void journal_close(struct journal **jp, int wait_ms)
{
    if (!jp || !*jp)
        return;
    struct journal *j = *jp;
    *jp = NULL;
    uint64_t target = j->appended;

    if (j->started) {
        journal_flush(j);
        /* The reader stops at once: lookups not answered yet are dropped. */
        atomic_store(&j->reader_stop, true);
        struct msg m = {.type = JMSG_STOP, .b = NULL, .lkp = NULL};
        zmq_send(j->to_reader, &m, sizeof m, ZMQ_DONTWAIT);
        if (zmq_send(j->to_writer, &m, sizeof m, ZMQ_DONTWAIT) != (int)sizeof m)
            atomic_store(&j->abandon, true);
        int64_t deadline = now_ms() + (wait_ms > 0 ? wait_ms : 0);
        while (atomic_load(&j->durable) < target && !atomic_load(&j->abandon)) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                break;
            zmq_pollitem_t it = {.socket = j->from_both, .events = ZMQ_POLLIN};
            zmq_poll(&it, 1, left < 100 ? (int)left : 100);
            loop_drain(j);
        }
        /* Give up: the writer leaves its reconnect loop at once. */
        atomic_store(&j->abandon, true);
        m.type = JMSG_WAKE;
        zmq_send(j->to_writer, &m, sizeof m, ZMQ_DONTWAIT);
        pthread_join(j->thread, NULL);
        pthread_join(j->reader_thread, NULL);

        /* The threads' sockets are ours again: free what they never took,
         * and what they sent that nobody read. */
        while (zmq_recv(j->writer_in, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m) {
            if (m.type == JMSG_BATCH)
                batch_free(m.b);
        }
        while (zmq_recv(j->reader_in, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m) {
            if (m.type == JMSG_LOOKUP)
                lookup_batch_free(m.lkp);
        }
        loop_drain(j);
        close_sockets(j);
        j->conn = j->w.conn;
        writer_set_conn(&j->w, NULL);
    } else if (j->pending && j->conn) {
        /* Appended but never started: one synchronous attempt. */
        char why[ERRLEN];
        struct pgsess fresh = {.prepared = false, .sync = -1};
        uint8_t grp[16];
        group_new_id(&j->rng, grp);
        if (write_group(j->conn, &fresh, j->pending, j->pending->forced, grp, j->w.cols, j->w.ends, fault_take(j), why,
                        sizeof why) >= 0)
            atomic_store(&j->durable, j->pending->last_seq);
        else
            log_error("journal: cannot write %u records at close: %s", j->pending->nrecs, why);
        writer_bufs_free(&j->w);
    }

    uint64_t durable = atomic_load(&j->durable);
    if (durable < target)
        log_error("journal: closed with %" PRIu64 " records not durable (seq %" PRIu64 "..%" PRIu64 ")",
                  target - durable, durable + 1, target);
    batch_free(j->pending);
    lookup_batch_free(j->lookups);
    answers_free(j->answers);
    PQfinish(j->conn);
    free(j->conninfo);
    free(j);
}
