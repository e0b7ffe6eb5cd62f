/*
 * participant.c - treaty_participant_*: serve PREPARE / COMMIT / ABORT and
 * saga STEPs for one service instance.
 *
 * Lifecycle of a participant
 *   1. new: a DEALER socket (own ZeroMQ context) connects to the coordinator.
 *      Nothing is sent yet.
 *   2. first turn (process, or the SDK thread after start): HELLO with the
 *      service and instance names. HELLO is repeated every heartbeat for the
 *      participant's whole life: it is the heartbeat, and it is also how the
 *      instance re-registers with a coordinator that restarted (ZeroMQ
 *      reconnects the socket by itself; the next HELLO does the rest).
 *   3. WELCOME: adopt the coordinator's heartbeat period. On the first one,
 *      run the on_connect hook (pg.c: find in-doubt branches, INQUIRE), and
 *      from then on every sweep period.
 *   4. PREPARE -> prepare handler -> VOTE (unless the handler returned an
 *      error: no vote; the coordinator's prepare timeout then aborts).
 *      COMMIT / ABORT -> handler -> ACK when it returned 0 (else no ACK: the
 *      coordinator re-sends the decision).
 *      A participant made without 2PC handlers (saga only) votes NO to every
 *      PREPARE and acknowledges ABORT (nothing was applied).
 *   4b. STEP (action or compensation, by name) -> the handler registered
 *      under that name and kind -> RESULT ok / failed / transient, echoing
 *      txid, step and attempt. A RESULT is always sent: a transient one tells
 *      the coordinator to retry with backoff now rather than after its try
 *      timeout. No handler of that name: an action fails (the saga turns
 *      around), a compensation is transient (retried until someone deploys
 *      the handler; the saga shows as stuck meanwhile).
 *   5. destroy: stop the thread if started, close the socket.
 *
 * Durability lives in the handlers, not here: this file only moves messages.
 * The crash windows that matter are around a handler's durable step and the
 * reply that follows it:
 *   - crash after a YES handler returned, before VOTE left: the branch is
 *     prepared but the coordinator never heard; it aborts on its prepare
 *     timeout, and the in-doubt sweep after restart INQUIREs and rolls back.
 *   - crash after COMMIT/ABORT was applied, before the ACK left: the
 *     coordinator re-sends the decision; the handler applies it again
 *     (idempotent) and ACKs.
 *   - crash after a step handler returned, before the RESULT left: the
 *     coordinator's try timeout re-sends the STEP; the handler sees it again
 *     and must answer as the first time (pg.c's barrier does exactly that).
 *
 * Threading: the socket is created by new() on the caller's thread. After
 * treaty_participant_start() the SDK thread owns it exclusively until
 * treaty_participant_stop() joins that thread; pthread_create/pthread_join
 * are the memory barriers that hand it over and back (ZeroMQ sockets may move
 * between threads that way, never be shared).
 *
 * Malformed or unexpected messages are dropped and counted; the handle's
 * errmsg says what was dropped. Nothing from the network can crash the host.
 * With TREATY_SDK_LOG set (non-empty, not "0") in the environment, every text
 * that lands in errmsg is also written to stderr, one line each. Alerts
 * (participant_alertf: a decision the participant refuses because obeying it
 * would report something that did not happen) go to stderr always.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "participant_int.h"
#include "treaty.h"
#include "wire.h"

#define PARTICIPANT_HEARTBEAT_MS 1000   /* until the coordinator's WELCOME says otherwise */
#define PARTICIPANT_HEARTBEAT_MIN_MS 10 /* bounds on what a WELCOME may set */
#define PARTICIPANT_HEARTBEAT_MAX_MS 600000
#define PARTICIPANT_RECONNECT_BEATS 3  /* WELCOME after this many silent heartbeats: reconnected */
#define PARTICIPANT_HELLO_RETRY_MS 250 /* HELLO could not be sent (not connected) */
#define PARTICIPANT_POLL_MS 100        /* SDK thread: longest sleep between stop checks */
#define PARTICIPANT_BATCH 64           /* messages handled per process call */
#define PARTICIPANT_MAX_PAYLOAD (64u * 1024u * 1024u)
#define PARTICIPANT_ERRMSG_MAX 256

/* One registered saga handler. */
struct step_handler {
    enum participant_step_kind kind;
    char name[WIRE_NAME_MAX + 1];
    size_t name_len;
    treaty_step_fn fn;
    void *arg;
    void (*free_arg)(void *);
};

struct treaty_participant {
    char service[WIRE_NAME_MAX + 1];
    char instance[WIRE_NAME_MAX + 1];
    treaty_handlers_t h;
    bool has_2pc;               /* h was given; without it every PREPARE is voted NO */
    struct step_handler *steps; /* saga handlers, set before start */
    size_t nsteps, cap_steps;
    struct participant_ext ext;

    void *ctx;
    void *sock;
    int fd;

    int heartbeat_ms;
    int sweep_ms;
    int64_t next_hello; /* monotonic ms */
    bool welcomed;      /* a WELCOME arrived: the sweep runs */
    int64_t last_welcome;
    int64_t next_sweep;

    pthread_t thread;
    atomic_bool running; /* written by the caller's thread only */
    atomic_bool stop;

    atomic_uint_fast64_t dropped;
    bool log_stderr;

    struct wire_in in;

    pthread_mutex_t err_lock;
    atomic_uint err_seq;                     /* bumped by every participant_errorf */
    char errmsg[PARTICIPANT_ERRMSG_MAX];     /* written under err_lock, any thread */
    char errmsg_out[PARTICIPANT_ERRMSG_MAX]; /* the reader's copy */
};

/* The participant whose SDK thread this is (NULL on other threads). */
static _Thread_local const struct treaty_participant *current;

int64_t participant_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void errorv(treaty_participant_t *p, bool alert, const char *fmt, va_list ap)
{
    char buf[PARTICIPANT_ERRMSG_MAX];
    vsnprintf(buf, sizeof buf, fmt, ap);
    for (char *c = buf; *c; c++) /* one line: libpq's messages span several */
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    atomic_fetch_add(&p->err_seq, 1);
    pthread_mutex_lock(&p->err_lock);
    memcpy(p->errmsg, buf, sizeof buf);
    pthread_mutex_unlock(&p->err_lock);
    if (alert)
        fprintf(stderr, "treaty participant %s/%s: ALERT: %s\n", p->service, p->instance, buf);
    else if (p->log_stderr)
        fprintf(stderr, "treaty participant %s/%s: %s\n", p->service, p->instance, buf);
}

void participant_errorf(treaty_participant_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errorv(p, false, fmt, ap);
    va_end(ap);
}

void participant_alertf(treaty_participant_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    errorv(p, true, fmt, ap);
    va_end(ap);
}

uint64_t participant_dropped(const treaty_participant_t *p)
{
    return p != NULL ? atomic_load(&((treaty_participant_t *)p)->dropped) : 0;
}

void participant_set_ext(treaty_participant_t *p, const struct participant_ext *ext)
{
    p->ext = *ext;
}

void participant_set_sweep_ms(treaty_participant_t *p, int ms)
{
    if (ms > 0)
        p->sweep_ms = ms;
}

const char *treaty_participant_errmsg(const treaty_participant_t *cp)
{
    if (cp == NULL)
        return "no participant handle";
    treaty_participant_t *p = (treaty_participant_t *)cp;
    pthread_mutex_lock(&p->err_lock);
    memcpy(p->errmsg_out, p->errmsg, sizeof p->errmsg_out);
    pthread_mutex_unlock(&p->err_lock);
    return p->errmsg_out;
}

static bool name_ok(const char *s)
{
    return s != NULL && wire_name_ok((const uint8_t *)s, strnlen(s, WIRE_NAME_MAX + 1));
}

int treaty_participant_new(const char *endpoint, const char *service, const char *instance, const treaty_handlers_t *h,
                           treaty_participant_t **out)
{
    int zero = 0, one = 1;
    int err = TREATY_ETRANSPORT;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (endpoint == NULL || *endpoint == '\0' || !name_ok(service) || !name_ok(instance) ||
        (h != NULL && (h->prepare == NULL || h->commit == NULL || h->abort == NULL)))
        return TREATY_EINVAL;

    struct treaty_participant *p = calloc(1, sizeof *p);
    if (p == NULL)
        return TREATY_ENOMEM;
    snprintf(p->service, sizeof p->service, "%s", service);
    snprintf(p->instance, sizeof p->instance, "%s", instance);
    if (h != NULL) {
        p->h = *h;
        p->has_2pc = true;
    }
    p->heartbeat_ms = PARTICIPANT_HEARTBEAT_MS;
    p->sweep_ms = PARTICIPANT_SWEEP_MS;
    p->next_hello = participant_now_ms(); /* due at the first turn */
    atomic_init(&p->stop, false);
    atomic_init(&p->running, false);
    atomic_init(&p->dropped, 0);
    atomic_init(&p->err_seq, 0);
    const char *log = getenv("TREATY_SDK_LOG");
    p->log_stderr = log != NULL && *log != '\0' && strcmp(log, "0") != 0;
    snprintf(p->errmsg, sizeof p->errmsg, "no error");
    if (pthread_mutex_init(&p->err_lock, NULL) != 0) {
        err = TREATY_EIO;
        goto fail_mutex;
    }

    p->ctx = zmq_ctx_new();
    if (p->ctx == NULL)
        goto fail_ctx;
    p->sock = zmq_socket(p->ctx, ZMQ_DEALER);
    if (p->sock == NULL)
        goto fail_socket;
    /* ZMQ_IMMEDIATE 1: while the coordinator is unreachable a reply or HELLO
     * is dropped at once instead of piling up in the pipe and arriving in a
     * burst after the reconnect. Nothing is lost that matters: the
     * coordinator re-sends PREPARE / COMMIT / ABORT, and HELLO is periodic
     * (retried sooner when it could not be sent). */
    if (zmq_setsockopt(p->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(p->sock, ZMQ_IMMEDIATE, &one, sizeof one) != 0)
        goto fail_setup;
    size_t fdlen = sizeof p->fd;
    if (zmq_getsockopt(p->sock, ZMQ_FD, &p->fd, &fdlen) != 0)
        goto fail_setup;
    if (zmq_connect(p->sock, endpoint) != 0) {
        if (errno == EINVAL || errno == EPROTONOSUPPORT || errno == ENOCOMPATPROTO)
            err = TREATY_EINVAL;
        goto fail_setup;
    }
    *out = p;
    return 0;

fail_setup:
    zmq_close(p->sock);
fail_socket:
    zmq_ctx_term(p->ctx);
fail_ctx:
    pthread_mutex_destroy(&p->err_lock);
fail_mutex:
    free(p);
    return err;
}

void treaty_participant_destroy(treaty_participant_t **pp)
{
    if (pp == NULL || *pp == NULL)
        return;
    struct treaty_participant *p = *pp;
    if (atomic_load(&p->running))
        treaty_participant_stop(p);
    zmq_close(p->sock); /* ZMQ_LINGER 0: unsent replies are dropped; the coordinator re-sends */
    zmq_ctx_term(p->ctx);
    for (size_t i = 0; i < p->nsteps; i++)
        if (p->steps[i].free_arg != NULL)
            p->steps[i].free_arg(p->steps[i].arg);
    free(p->steps);
    if (p->ext.on_destroy != NULL)
        p->ext.on_destroy(p->ext.arg);
    pthread_mutex_destroy(&p->err_lock);
    free(p);
    *pp = NULL;
}

/* ---------------------------------------------------------- saga handlers */

int participant_add_step(treaty_participant_t *p, enum participant_step_kind kind, const char *name, treaty_step_fn fn,
                         void *arg, void (*free_arg)(void *))
{
    int rc;
    if (p == NULL || fn == NULL || !name_ok(name) || (kind != PARTICIPANT_ACTION && kind != PARTICIPANT_COMPENSATION)) {
        rc = TREATY_EINVAL;
        goto fail;
    }
    if (atomic_load(&p->running)) {
        rc = TREATY_ESTATE; /* the SDK thread reads the table without a lock */
        goto fail;
    }
    size_t len = strlen(name);
    for (size_t i = 0; i < p->nsteps; i++) {
        struct step_handler *e = &p->steps[i];
        if (e->kind == kind && e->name_len == len && memcmp(e->name, name, len) == 0) {
            if (e->free_arg != NULL)
                e->free_arg(e->arg);
            e->fn = fn;
            e->arg = arg;
            e->free_arg = free_arg;
            return 0;
        }
    }
    if (p->nsteps == p->cap_steps) {
        size_t cap = p->cap_steps ? p->cap_steps * 2 : 8;
        struct step_handler *n = realloc(p->steps, cap * sizeof *n);
        if (n == NULL) {
            rc = TREATY_ENOMEM;
            goto fail;
        }
        p->steps = n;
        p->cap_steps = cap;
    }
    struct step_handler *e = &p->steps[p->nsteps++];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    memcpy(e->name, name, len);
    e->name_len = len;
    e->fn = fn;
    e->arg = arg;
    e->free_arg = free_arg;
    return 0;

fail:
    if (free_arg != NULL)
        free_arg(arg);
    return rc;
}

int treaty_participant_on_action(treaty_participant_t *p, const char *name, treaty_step_fn fn, void *arg)
{
    return participant_add_step(p, PARTICIPANT_ACTION, name, fn, arg, NULL);
}

int treaty_participant_on_compensation(treaty_participant_t *p, const char *name, treaty_step_fn fn, void *arg)
{
    return participant_add_step(p, PARTICIPANT_COMPENSATION, name, fn, arg, NULL);
}

static const struct step_handler *find_step(const struct treaty_participant *p, unsigned kind, const uint8_t *name,
                                            size_t len)
{
    for (size_t i = 0; i < p->nsteps; i++) {
        const struct step_handler *e = &p->steps[i];
        if ((unsigned)e->kind == kind && e->name_len == len && memcmp(e->name, name, len) == 0)
            return e;
    }
    return NULL;
}

const struct participant_ext *participant_get_ext(const treaty_participant_t *p)
{
    return &p->ext;
}

/* ------------------------------------------------------------- messages */

static int send_msg(struct treaty_participant *p, uint8_t type, const uint8_t *txid, uint16_t branch, uint16_t attempt,
                    uint16_t code, const struct wire_frame *frames, size_t nframes)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid != NULL)
        memcpy(h.txid, txid, sizeof h.txid);
    h.branch = branch;
    h.attempt = attempt;
    h.code = code;
    return wire_send(p->sock, NULL, 0, &h, frames, nframes);
}

static void send_hello(struct treaty_participant *p, int64_t now)
{
    struct wire_frame f[2] = {wire_str(p->service), wire_str(p->instance)};
    if (send_msg(p, WIRE_HELLO, NULL, 0, 0, 0, f, 2) < 0) {
        /* not connected (yet): try again soon, but never from a busy loop */
        int retry = p->heartbeat_ms < PARTICIPANT_HELLO_RETRY_MS ? p->heartbeat_ms : PARTICIPANT_HELLO_RETRY_MS;
        p->next_hello = now + retry;
        return;
    }
    p->next_hello = now + p->heartbeat_ms;
}

static void branch_of(const struct wire_msg *m, treaty_branch_t *b)
{
    memset(b, 0, sizeof *b);
    memcpy(b->txid.b, m->hdr.txid, TREATY_TXID_LEN);
    b->branch = m->hdr.branch;
    b->attempt = m->hdr.attempt;
}

static const char *txid_str(const uint8_t *txid, char *buf)
{
    treaty_txid_t id;
    memcpy(id.b, txid, sizeof id.b);
    return treaty_txid_format(&id, buf);
}

static void on_welcome(struct treaty_participant *p, const struct wire_msg *m)
{
    uint32_t hb;
    int64_t now = participant_now_ms();
    if (wire_get_u32(&m->frames[0], &hb) && hb >= PARTICIPANT_HEARTBEAT_MIN_MS && hb <= PARTICIPANT_HEARTBEAT_MAX_MS) {
        p->heartbeat_ms = (int)hb;
        if (p->next_hello > now + p->heartbeat_ms)
            p->next_hello = now + p->heartbeat_ms;
    }
    /* The first WELCOME, or one after a silence of several heartbeats (the
     * coordinator restarted or was unreachable, and has registered us
     * again): look for in-doubt branches now rather than at the next sweep. */
    bool reconnected = !p->welcomed || now - p->last_welcome > PARTICIPANT_RECONNECT_BEATS * (int64_t)p->heartbeat_ms;
    p->welcomed = true;
    p->last_welcome = now;
    if (reconnected) {
        p->next_sweep = now + p->sweep_ms;
        if (p->ext.on_connect != NULL)
            p->ext.on_connect(p->ext.arg, p, true);
    }
}

static void on_prepare(struct treaty_participant *p, const struct wire_msg *m)
{
    treaty_branch_t b;
    char reason[TREATY_REASON_MAX];
    char ids[TREATY_TXID_STRLEN];

    branch_of(m, &b);
    b.payload = m->frames[0].len > 0 ? (const void *)m->frames[0].data : (const void *)"";
    b.len = m->frames[0].len;
    reason[0] = '\0';
    unsigned seq = atomic_load(&p->err_seq);
    int rc;
    if (p->has_2pc) {
        rc = p->h.prepare(p->h.arg, &b, reason);
    } else {
        rc = TREATY_VOTE_NO; /* nothing was done: NO is the truth (presumed abort) */
        snprintf(reason, sizeof reason, "this participant does not take part in 2PC");
    }
    reason[TREATY_REASON_MAX - 1] = '\0';
    if (rc < 0) {
        if (atomic_load(&p->err_seq) == seq) /* keep the handler's own, better words */
            participant_errorf(p, "prepare %s:%u sent no vote: %s", txid_str(m->hdr.txid, ids), b.branch,
                               treaty_err_name(rc));
        return;
    }
    uint16_t vote;
    if (rc == TREATY_VOTE_YES) {
        vote = TREATY_VOTE_YES;
    } else if (rc == TREATY_VOTE_NO) {
        vote = TREATY_VOTE_NO;
    } else {
        /* A handler bug; NO is always safe (presumed abort). */
        vote = TREATY_VOTE_NO;
        snprintf(reason, sizeof reason, "prepare handler returned %d, not a vote", rc);
    }
    /* If we crash (or the send fails) here, a YES vote is lost: the
     * coordinator aborts on its prepare timeout or re-sends PREPARE, which
     * the handler answers again. */
    struct wire_frame f = wire_str(reason);
    if (send_msg(p, WIRE_VOTE, m->hdr.txid, m->hdr.branch, m->hdr.attempt, vote, &f, 1) < 0)
        participant_errorf(p, "VOTE %s:%u not sent: %s", txid_str(m->hdr.txid, ids), b.branch, zmq_strerror(errno));
}

static void on_decision(struct treaty_participant *p, const struct wire_msg *m)
{
    treaty_branch_t b;
    char ids[TREATY_TXID_STRLEN];
    bool commit = m->hdr.type == WIRE_COMMIT;

    branch_of(m, &b);
    if (!p->has_2pc && commit) {
        /* We vote NO to every PREPARE, so no coordinator can decide commit. */
        atomic_fetch_add(&p->dropped, 1);
        participant_errorf(p, "dropped COMMIT %s:%u: this participant does not take part in 2PC",
                           txid_str(m->hdr.txid, ids), b.branch);
        return;
    }
    unsigned seq = atomic_load(&p->err_seq);
    int rc = !p->has_2pc ? 0 : commit ? p->h.commit(p->h.arg, &b) : p->h.abort(p->h.arg, &b);
    if (rc < 0) {
        if (atomic_load(&p->err_seq) == seq)
            participant_errorf(p, "%s %s:%u not acknowledged: %s", commit ? "commit" : "abort",
                               txid_str(m->hdr.txid, ids), b.branch, treaty_err_name(rc));
        return;
    }
    /* If we crash here the decision is applied but not acknowledged: the
     * coordinator re-sends it and the handler applies it again (a no-op). */
    uint16_t code = commit ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED;
    if (send_msg(p, WIRE_ACK, m->hdr.txid, m->hdr.branch, m->hdr.attempt, code, NULL, 0) < 0)
        participant_errorf(p, "ACK %s:%u not sent: %s", txid_str(m->hdr.txid, ids), b.branch, zmq_strerror(errno));
}

/* STEP -> handler -> RESULT. */
static void on_step(struct treaty_participant *p, const struct wire_msg *m)
{
    char reason[TREATY_REASON_MAX];
    char ids[TREATY_TXID_STRLEN];
    char name[WIRE_NAME_MAX + 1];
    unsigned kind = m->hdr.code; /* WIRE_STEP_ACTION or _COMPENSATION: checked by the codec */
    bool action = kind == WIRE_STEP_ACTION;
    const struct wire_frame *nf = &m->frames[0];

    memcpy(name, nf->data, nf->len); /* a valid name: 1..64 bytes, checked by the codec */
    name[nf->len] = '\0';
    reason[0] = '\0';
    unsigned result;
    const struct step_handler *e = find_step(p, kind, nf->data, nf->len);
    if (e == NULL) {
        /* An action nobody serves cannot succeed: fail it and let the saga
         * turn around. A compensation must not be given up: transient, so
         * it is retried until a handler is deployed. */
        result = action ? WIRE_RESULT_FAILED : WIRE_RESULT_TRANSIENT;
        snprintf(reason, sizeof reason, "no %s handler named %s", action ? "action" : "compensation", name);
        participant_errorf(p, "STEP %s:%u: %s", txid_str(m->hdr.txid, ids), m->hdr.branch, reason);
    } else {
        treaty_step_t st;
        memset(&st, 0, sizeof st);
        memcpy(st.txid.b, m->hdr.txid, TREATY_TXID_LEN);
        st.step = m->hdr.branch;
        st.attempt = m->hdr.attempt;
        st.name = name;
        st.payload = m->frames[1].len > 0 ? (const void *)m->frames[1].data : (const void *)"";
        st.len = m->frames[1].len;
        unsigned seq = atomic_load(&p->err_seq);
        int rc = e->fn(e->arg, &st, reason);
        reason[TREATY_REASON_MAX - 1] = '\0';
        if (rc == TREATY_STEP_OK) {
            result = WIRE_RESULT_OK;
            reason[0] = '\0';
        } else if (rc == TREATY_STEP_FAILED && action) {
            result = WIRE_RESULT_FAILED;
            if (reason[0] == '\0')
                snprintf(reason, sizeof reason, "action %s failed", name);
        } else {
            result = WIRE_RESULT_TRANSIENT;
            if (rc == TREATY_STEP_FAILED) {
                if (reason[0] == '\0')
                    snprintf(reason, sizeof reason, "compensation %s failed (retried: a compensation must succeed)",
                             name);
            } else if (rc >= 0) {
                snprintf(reason, sizeof reason, "%s handler %s returned %d, not a step result",
                         action ? "action" : "compensation", name, rc);
            } else if (reason[0] == '\0') {
                snprintf(reason, sizeof reason, "%s: %s", treaty_err_name(rc), treaty_strerror(rc));
            }
            if (atomic_load(&p->err_seq) == seq) /* keep the handler's own words */
                participant_errorf(p, "%s %s %s:%u transient: %s", action ? "action" : "compensation", name,
                                   txid_str(m->hdr.txid, ids), m->hdr.branch, reason);
        }
    }
    /* If we crash (or the send fails) here, the step's effect stays and the
     * RESULT is lost: the coordinator re-sends the STEP after its try
     * timeout, and the (idempotent) handler answers it again. */
    struct wire_frame f = wire_str(reason);
    if (send_msg(p, WIRE_RESULT, m->hdr.txid, m->hdr.branch, m->hdr.attempt, WIRE_RESULT(kind, result), &f, 1) < 0)
        participant_errorf(p, "RESULT %s:%u not sent: %s", txid_str(m->hdr.txid, ids), m->hdr.branch,
                           zmq_strerror(errno));
}

static void handle(struct treaty_participant *p, const struct wire_msg *m)
{
    char text[TREATY_REASON_MAX];
    switch (m->hdr.type) {
    case WIRE_WELCOME:
        on_welcome(p, m);
        return;
    case WIRE_PREPARE:
        on_prepare(p, m);
        return;
    case WIRE_COMMIT:
    case WIRE_ABORT:
        on_decision(p, m);
        return;
    case WIRE_STEP:
        on_step(p, m);
        return;
    case WIRE_ERROR:
        wire_copy_text(&m->frames[0], text, sizeof text);
        participant_errorf(p, "coordinator error %s: %s", treaty_err_name(-(int)m->hdr.code), text);
        return;
    default:
        atomic_fetch_add(&p->dropped, 1);
        participant_errorf(p, "dropped unexpected %s from the coordinator", wire_type_name(m->hdr.type));
        return;
    }
}

static bool readable(const struct treaty_participant *p)
{
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(p->sock, ZMQ_EVENTS, &ev, &len) != 0)
        return false;
    return (ev & ZMQ_POLLIN) != 0;
}

static int64_t next_due(const struct treaty_participant *p)
{
    int64_t due = p->next_hello;
    if (p->welcomed && p->ext.on_connect != NULL && p->next_sweep < due)
        due = p->next_sweep;
    return due;
}

/* One turn: timers first, then up to PARTICIPANT_BATCH messages. Returns the
 * number of messages read (malformed ones included) or TREATY_ETRANSPORT. */
static int turn(struct treaty_participant *p)
{
    int64_t now = participant_now_ms();
    if (now >= p->next_hello)
        send_hello(p, now);
    if (p->welcomed && p->ext.on_connect != NULL && now >= p->next_sweep) {
        p->next_sweep = now + p->sweep_ms;
        p->ext.on_connect(p->ext.arg, p, false);
    }

    int n = 0;
    while (n < PARTICIPANT_BATCH) {
        int rc = wire_recv(p->sock, false, PARTICIPANT_MAX_PAYLOAD, &p->in);
        if (rc == TREATY_ETIMEDOUT)
            break;
        if (rc == TREATY_ETRANSPORT) {
            if (errno == EINTR)
                break;
            participant_errorf(p, "receive failed: %s", zmq_strerror(errno));
            return TREATY_ETRANSPORT;
        }
        n++;
        if (rc < 0) {
            atomic_fetch_add(&p->dropped, 1);
            participant_errorf(p, "dropped a malformed message from the coordinator (%s)", treaty_err_name(rc));
            continue;
        }
        handle(p, &p->in.msg);
        wire_in_close(&p->in);
    }
    return n;
}

static bool on_own_thread(const struct treaty_participant *p)
{
    return current == p;
}

/* True when the caller may use the socket: the participant is not started,
 * or this is its SDK thread. */
static bool may_use_socket(const struct treaty_participant *p)
{
    return !atomic_load(&((struct treaty_participant *)p)->running) || on_own_thread(p);
}

bool participant_on_owner_thread(const treaty_participant_t *p)
{
    return may_use_socket(p);
}

int treaty_participant_fd(const treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    return p->fd;
}

int treaty_participant_next_timeout(const treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (!may_use_socket(p))
        return TREATY_ESTATE;
    if (readable(p))
        return 0;
    int64_t wait = next_due(p) - participant_now_ms();
    if (wait <= 0)
        return 0;
    return wait > INT32_MAX ? INT32_MAX : (int)wait;
}

int treaty_participant_process(treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (atomic_load(&p->running))
        return TREATY_ESTATE; /* the SDK thread owns the socket */
    return turn(p);
}

int treaty_participant_inquire(treaty_participant_t *p, const treaty_txid_t *id, unsigned branch)
{
    if (p == NULL || id == NULL || branch > UINT16_MAX)
        return TREATY_EINVAL;
    if (!may_use_socket(p))
        return TREATY_ESTATE;
    if (send_msg(p, WIRE_INQUIRE, id->b, (uint16_t)branch, 0, 0, NULL, 0) < 0) {
        char ids[TREATY_TXID_STRLEN];
        participant_errorf(p, "INQUIRE %s:%u not sent: %s", treaty_txid_format(id, ids), branch, zmq_strerror(errno));
        return TREATY_ETRANSPORT;
    }
    return 0;
}

/* ----------------------------------------------------------- SDK thread */

static void *participant_thread(void *arg)
{
    struct treaty_participant *p = arg;
    zmq_pollitem_t item = {p->sock, 0, ZMQ_POLLIN, 0};

    current = p;
    while (!atomic_load(&p->stop)) {
        int n = turn(p);
        if (n >= PARTICIPANT_BATCH)
            continue; /* more may be waiting; timers were run too */
        long wait = PARTICIPANT_POLL_MS;
        int64_t until = next_due(p) - participant_now_ms();
        if (until < wait)
            wait = until > 0 ? (long)until : 0;
        if (n < 0)
            wait = PARTICIPANT_POLL_MS; /* transport trouble: do not spin */
        if (zmq_poll(&item, 1, wait) < 0 && errno != EINTR) {
            participant_errorf(p, "poll failed: %s", zmq_strerror(errno));
            struct timespec ts = {0, PARTICIPANT_POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    current = NULL;
    return NULL;
}

int treaty_participant_start(treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (atomic_load(&p->running))
        return TREATY_ESTATE;
    atomic_store(&p->stop, false);
    atomic_store(&p->running, true);
    /* pthread_create hands the socket (and the handlers' state) to the thread. */
    int rc = pthread_create(&p->thread, NULL, participant_thread, p);
    if (rc != 0) {
        atomic_store(&p->running, false);
        participant_errorf(p, "pthread_create: %s", strerror(rc));
        return TREATY_EIO;
    }
    return 0;
}

int treaty_participant_stop(treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (!atomic_load(&p->running))
        return TREATY_ESTATE;
    if (on_own_thread(p))
        return TREATY_ESTATE; /* from a handler: joining ourselves would deadlock */
    atomic_store(&p->stop, true);
    int rc = pthread_join(p->thread, NULL);
    /* pthread_join hands the socket back to the caller's thread. */
    atomic_store(&p->running, false);
    if (rc != 0) {
        participant_errorf(p, "pthread_join: %s", strerror(rc));
        return TREATY_EIO;
    }
    return 0;
}
