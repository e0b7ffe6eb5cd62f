/*
 * journal.c - the coordinator's durable journal in PostgreSQL (see journal.h):
 * its public entry points, on the coordinator's loop thread. The threads,
 * who owns what and the messages between them: journal_priv.h.
 *
 * journal_connect() connects and applies the schema (schema.c);
 * journal_scan() is scan.c's. journal_start() opens the inproc plumbing and
 * starts the writer (writer.c) and the reader (lookup.c). From then on
 * journal_append() encodes each record at once into a COPY text line of the
 * pending batch (codec.c); journal_lookup() queues a txid, and
 * journal_read_records() a records request; journal_flush() hands them over;
 * journal_durable(), journal_lookup_results() and journal_records_results()
 * drain what comes back. Nothing here touches Postgres after journal_start().
 */
#include "journal_priv.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <zmq.h>

#include "log.h"
#include "treaty.h"

#define DEFAULT_CONNECT_INITIAL_MS 100
#define DEFAULT_CONNECT_MAX_MS 5000
#define DEFAULT_LAZY_DELAY_MS 20
#define DEFAULT_GC_INTERVAL_MS 5000
/* One connection attempt gives up after this, unless conninfo sets connect_timeout. */
#define DEFAULT_ATTEMPT_TIMEOUT_MS 10000

/* Buckets of the group commit histograms (journal_get_hists): records per
 * group, and a group's write time in microseconds (0.5 ms .. 10 s). */
static const uint64_t group_records_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
#define GROUP_RECORDS_BUCKETS ((unsigned)(sizeof group_records_bounds / sizeof group_records_bounds[0]))
static const uint64_t group_us_bounds[] = {500,    1000,   2000,   5000,    10000,   20000,   50000,
                                           100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};
#define GROUP_US_BUCKETS ((unsigned)(sizeof group_us_bounds / sizeof group_us_bounds[0]))

/* ---------------------------------------------------------------- connect */

/* journal_connect's stop predicate (a journal_stop_fn): *cfg->stop is set. */
static bool connect_stopped(struct journal *j)
{
    return j->stop && *j->stop;
}

/* Takes the owner lock on c (journal_pg_take_owner), waiting while another
 * session holds it: another coordinator, or the backend of one that died
 * and has not gone yet. 0: taken; TREATY_EBUSY: stopped while waiting;
 * TREATY_EPG: c failed (why says how). */
static int wait_for_owner_lock(struct journal *j, PGconn *c, char *why, size_t whylen)
{
    int backoff = 0;
    int64_t next_log = 0;
    for (;;) {
        int rc = journal_pg_take_owner(c, why, whylen);
        if (rc != TREATY_EBUSY)
            return rc;
        int64_t now = util_mono_ms();
        if (now >= next_log) {
            log_warn("journal: waiting: %s; a coordinator that died lets go as soon as PostgreSQL sees its "
                     "connection closed",
                     why);
            next_log = now + 10000;
        }
        if (connect_stopped(j))
            return TREATY_EBUSY;
        int delay = journal_backoff_delay(&backoff, j->connect_initial_ms, j->connect_max_ms, false, &j->rng);
        if (journal_sleep_unless(j, connect_stopped, delay))
            return TREATY_EBUSY;
    }
}

static int attempt_timeout_from(const char *conninfo, int *out, char *err, size_t errlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
    if (!opts) {
        char msg[ERRLEN];
        journal_one_line(msg, sizeof msg, perr ? perr : "out of memory");
        journal_set_err(err, errlen, "journal: invalid conninfo: %s", msg);
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
    journal_set_err(errbuf, errlen, "%s", "");
    if (!out || !cfg || !cfg->conninfo || cfg->connect_initial_ms < 0 || cfg->connect_max_ms < 0 ||
        cfg->lazy_delay_ms < 0 || cfg->gc_interval_ms < 0) {
        journal_set_err(errbuf, errlen, "journal: invalid configuration");
        return TREATY_EINVAL;
    }
    /* No default for retention: 0 once meant "the default, 3600" here while
     * the coordinator read it as "forget at once". */
    if (cfg->retention_s < 1) {
        journal_set_err(errbuf, errlen, "journal: retention_s must be at least 1 second, got %d", cfg->retention_s);
        return TREATY_EINVAL;
    }
    *out = NULL;
    int attempt_ms;
    rc = attempt_timeout_from(cfg->conninfo, &attempt_ms, errbuf, errlen);
    if (rc)
        return rc;

    struct journal *j = util_xcalloc(1, sizeof *j);
    j->conninfo = util_xstrdup(cfg->conninfo);
    j->connect_initial_ms = cfg->connect_initial_ms ? cfg->connect_initial_ms : DEFAULT_CONNECT_INITIAL_MS;
    j->connect_max_ms = cfg->connect_max_ms ? cfg->connect_max_ms : DEFAULT_CONNECT_MAX_MS;
    if (j->connect_max_ms < j->connect_initial_ms)
        j->connect_max_ms = j->connect_initial_ms;
    j->lazy_delay_ms = cfg->lazy_delay_ms ? cfg->lazy_delay_ms : DEFAULT_LAZY_DELAY_MS;
    j->retention_s = cfg->retention_s;
    j->gc_interval_ms = cfg->gc_interval_ms ? cfg->gc_interval_ms : DEFAULT_GC_INTERVAL_MS;
    j->attempt_timeout_ms = attempt_ms;
    j->stop = cfg->stop;
    util_rng_seed(&j->rng, util_fresh_seed());
    atomic_init(&j->durable, 0);
    atomic_init(&j->healthy, true);
    atomic_init(&j->abandon, false);
    atomic_init(&j->deposed, false);
    atomic_init(&j->n_batches, 0);
    atomic_init(&j->n_records, 0);
    atomic_init(&j->n_forced, 0);
    atomic_init(&j->n_reconnects, 0);
    atomic_init(&j->n_gc_deleted, 0);
    atomic_init(&j->n_write_us, 0);
    atomic_init(&j->fault_lose_acks, 0);
    atomic_init(&j->reader_stop, false);
    metrics_hist_init(&j->h_group_records, group_records_bounds, GROUP_RECORDS_BUCKETS);
    metrics_hist_init(&j->h_group_us, group_us_bounds, GROUP_US_BUCKETS);
    j->answers_tail = &j->answers;
    j->records_tail = &j->records;
    j->rec_answers_tail = &j->rec_answers;

    int backoff = 0;
    for (;;) {
        char why[ERRLEN];
        int version = 0;
        PGconn *c = journal_pg_connect(j, connect_stopped, APP_WRITER, why, sizeof why);
        if (c) {
            rc = journal_apply_schema(c, &version, why, sizeof why);
            if (rc == 0) {
                rc = wait_for_owner_lock(j, c, why, sizeof why);
                if (rc == TREATY_EBUSY) {
                    PQfinish(c);
                    goto fail_stopped;
                }
            }
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
            if (rc == TREATY_EVERSION || (rc != TREATY_EPG && PQstatus(c) == CONNECTION_OK)) {
                /* Not a lost connection: retrying will not help. */
                journal_set_err(errbuf, errlen, "%s", why);
                log_error("%s", why);
                PQfinish(c);
                goto fail_journal;
            }
            PQfinish(c); /* the connection broke while applying the schema or taking the lock */
        }
        if (connect_stopped(j))
            goto fail_stopped;
        int delay = journal_backoff_delay(&backoff, j->connect_initial_ms, j->connect_max_ms, false, &j->rng);
        log_warn("journal: cannot connect to PostgreSQL, retrying in %d ms: %s", delay, why);
        if (journal_sleep_unless(j, connect_stopped, delay))
            goto fail_stopped;
    }

fail_stopped:
    rc = TREATY_EBUSY;
    journal_set_err(errbuf, errlen, "journal: stopped while connecting to PostgreSQL");
fail_journal:
    free(j->conninfo);
    free(j);
    return rc;
}

/* ------------------------------------------------------- start and after */

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
    util_rng_seed(&j->w.rng, util_fresh_seed());
    util_rng_seed(&j->r.rng, util_fresh_seed());

    /* Signals are for the loop thread: the threads start with all blocked. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&j->thread, NULL, journal_writer_main, j);
    if (err == 0) {
        int rerr = pthread_create(&j->reader_thread, NULL, journal_reader_main, j);
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
        b = util_xcalloc(1, sizeof *b);
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
        l = j->lookups = util_xcalloc(1, sizeof *l);
    if (l->n == l->cap) {
        if (l->cap > UINT_MAX / 2)
            util_out_of_memory();
        l->cap = l->cap ? l->cap * 2 : 16;
        l->txid = util_xrealloc(l->txid, (size_t)l->cap * sizeof l->txid[0]);
    }
    memcpy(l->txid[l->n++], txid, 16);
}

void journal_read_records(struct journal *j, const uint8_t txid[16], uint64_t token)
{
    assert(j && txid);
    struct records_req *q = util_xcalloc(1, sizeof *q);
    memcpy(q->txid, txid, 16);
    q->token = token;
    *j->records_tail = q;
    j->records_tail = &q->next;
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
    if (j->records) { /* after the lookups: the reader answers in that order */
        struct msg m = {.type = JMSG_RECORDS, .rq = j->records};
        if (zmq_send(j->to_reader, &m, sizeof m, ZMQ_DONTWAIT) == (int)sizeof m) {
            j->records = NULL;
            j->records_tail = &j->records;
        } else { /* kept, as above */
            log_error("journal: cannot hand a records request to the reader: %s", zmq_strerror(errno));
        }
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
        } else if (n.type == NOTE_RECORDS && n.rec) {
            n.rec->next = NULL;
            *j->rec_answers_tail = n.rec;
            j->rec_answers_tail = &n.rec->next;
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

void journal_records_results(struct journal *j, journal_records_fn cb, void *arg)
{
    if (!j || !cb)
        return;
    loop_drain(j);
    /* Detached first, as journal_lookup_results does. */
    struct records_answer *a = j->rec_answers;
    j->rec_answers = NULL;
    j->rec_answers_tail = &j->rec_answers;
    while (a) {
        struct records_answer *next = a->next;
        cb(arg, &a->r);
        free(a);
        a = next;
    }
}

static void rec_answers_free(struct records_answer *a)
{
    while (a) {
        struct records_answer *next = a->next;
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

bool journal_deposed(const struct journal *j)
{
    return j && atomic_load(&j->deposed);
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

void journal_get_hists(const struct journal *j, struct metrics_hist_snap *group_records,
                       struct metrics_hist_snap *group_us)
{
    if (group_records != NULL)
        metrics_hist_read(&j->h_group_records, group_records);
    if (group_us != NULL)
        metrics_hist_read(&j->h_group_us, group_us);
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
        int64_t deadline = util_mono_ms() + (wait_ms > 0 ? wait_ms : 0);
        while (atomic_load(&j->durable) < target && !atomic_load(&j->abandon)) {
            int64_t left = deadline - util_mono_ms();
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
            else if (m.type == JMSG_RECORDS)
                records_req_free(m.rq);
        }
        loop_drain(j);
        close_sockets(j);
        j->conn = j->w.conn;
        writer_set_conn(&j->w, NULL);
    } else if (j->pending && j->conn) {
        /* Appended but never started: one synchronous attempt. */
        journal_write_unstarted(j);
    }

    uint64_t durable = atomic_load(&j->durable);
    if (durable < target)
        log_error("journal: closed with %" PRIu64 " records not durable (seq %" PRIu64 "..%" PRIu64 ")",
                  target - durable, durable + 1, target);
    batch_free(j->pending);
    lookup_batch_free(j->lookups);
    answers_free(j->answers);
    records_req_free(j->records);
    rec_answers_free(j->rec_answers);
    PQfinish(j->conn);
    free(j->conninfo);
    free(j);
}
