/*
 * participant_core.c - the participant's protocol core (participant_core.h).
 *
 * No I/O here: messages leave through io->send, texts through io->log, and
 * the time of every event is the caller's. The crash windows around the
 * replies are listed in participant_core.h; each reply below names its own.
 */
#include "participant_core.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One registered saga handler. */
struct step_handler {
    enum pcore_step_kind kind;
    char name[WIRE_NAME_MAX + 1];
    size_t name_len;
    treaty_step_fn fn;
    void *arg;
    void (*free_arg)(void *);
};

struct pcore {
    char service[WIRE_NAME_MAX + 1];
    char instance[WIRE_NAME_MAX + 1];
    treaty_handlers_t h;
    bool has_2pc;               /* h was given; without it every PREPARE is voted NO */
    struct step_handler *steps; /* saga handlers */
    size_t nsteps, cap_steps;
    struct pcore_ext ext;
    struct pcore_io io;

    int heartbeat_ms;
    int sweep_ms;
    int64_t next_hello;
    bool welcomed; /* a WELCOME arrived: the sweep runs */
    int64_t last_welcome;
    int64_t next_sweep;

    atomic_uint logged;           /* texts given to io->log: a handler's own words are kept */
    atomic_uint_fast64_t dropped; /* malformed or unexpected messages */
};

/* ------------------------------------------------------------------ logs */

void pcore_vlog(struct pcore *c, enum pcore_level level, const char *fmt, va_list ap)
{
    char buf[PCORE_LOG_MAX];
    vsnprintf(buf, sizeof buf, fmt, ap);
    for (char *s = buf; *s; s++) /* one line: libpq's messages span several */
        if ((unsigned char)*s < 0x20)
            *s = ' ';
    atomic_fetch_add(&c->logged, 1);
    if (c->io.log != NULL)
        c->io.log(c->io.ctx, level, buf);
}

void pcore_log(struct pcore *c, enum pcore_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pcore_vlog(c, level, fmt, ap);
    va_end(ap);
}

uint64_t pcore_dropped(const struct pcore *c)
{
    return c != NULL ? atomic_load(&((struct pcore *)c)->dropped) : 0;
}

const char *pcore_service(const struct pcore *c)
{
    return c->service;
}

const char *pcore_instance(const struct pcore *c)
{
    return c->instance;
}

static bool name_ok(const char *s)
{
    return s != NULL && wire_name_ok((const uint8_t *)s, strnlen(s, WIRE_NAME_MAX + 1));
}

/* ------------------------------------------------------------- lifecycle */

int pcore_new(const char *service, const char *instance, const treaty_handlers_t *h, const struct pcore_io *io,
              int64_t now, struct pcore **out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (!name_ok(service) || !name_ok(instance) || io == NULL || io->send == NULL ||
        (h != NULL && (h->prepare == NULL || h->commit == NULL || h->abort == NULL)))
        return TREATY_EINVAL;
    struct pcore *c = calloc(1, sizeof *c);
    if (c == NULL)
        return TREATY_ENOMEM;
    snprintf(c->service, sizeof c->service, "%s", service);
    snprintf(c->instance, sizeof c->instance, "%s", instance);
    if (h != NULL) {
        c->h = *h;
        c->has_2pc = true;
    }
    c->io = *io;
    c->heartbeat_ms = PCORE_HEARTBEAT_MS;
    c->sweep_ms = PCORE_SWEEP_MS;
    c->next_hello = now; /* due at the first tick */
    atomic_init(&c->logged, 0);
    atomic_init(&c->dropped, 0);
    *out = c;
    return 0;
}

void pcore_destroy(struct pcore **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    struct pcore *c = *cp;
    for (size_t i = 0; i < c->nsteps; i++)
        if (c->steps[i].free_arg != NULL)
            c->steps[i].free_arg(c->steps[i].arg);
    free(c->steps);
    if (c->ext.on_destroy != NULL)
        c->ext.on_destroy(c->ext.arg);
    free(c);
    *cp = NULL;
}

void pcore_set_ext(struct pcore *c, const struct pcore_ext *ext)
{
    c->ext = *ext;
}

const struct pcore_ext *pcore_get_ext(const struct pcore *c)
{
    return &c->ext;
}

void pcore_set_sweep_ms(struct pcore *c, int ms)
{
    if (ms > 0)
        c->sweep_ms = ms;
}

/* ---------------------------------------------------------- saga handlers */

int pcore_add_step(struct pcore *c, enum pcore_step_kind kind, const char *name, treaty_step_fn fn, void *arg,
                   void (*free_arg)(void *))
{
    int rc;
    if (c == NULL || fn == NULL || !name_ok(name) || (kind != PCORE_ACTION && kind != PCORE_COMPENSATION)) {
        rc = TREATY_EINVAL;
        goto fail;
    }
    size_t len = strlen(name);
    for (size_t i = 0; i < c->nsteps; i++) {
        struct step_handler *e = &c->steps[i];
        if (e->kind == kind && e->name_len == len && memcmp(e->name, name, len) == 0) {
            if (e->free_arg != NULL)
                e->free_arg(e->arg);
            e->fn = fn;
            e->arg = arg;
            e->free_arg = free_arg;
            return 0;
        }
    }
    if (c->nsteps == c->cap_steps) {
        size_t cap = c->cap_steps ? c->cap_steps * 2 : 8;
        struct step_handler *n = realloc(c->steps, cap * sizeof *n);
        if (n == NULL) {
            rc = TREATY_ENOMEM;
            goto fail;
        }
        c->steps = n;
        c->cap_steps = cap;
    }
    struct step_handler *e = &c->steps[c->nsteps++];
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

static const struct step_handler *find_step(const struct pcore *c, unsigned kind, const uint8_t *name, size_t len)
{
    for (size_t i = 0; i < c->nsteps; i++) {
        const struct step_handler *e = &c->steps[i];
        if ((unsigned)e->kind == kind && e->name_len == len && memcmp(e->name, name, len) == 0)
            return e;
    }
    return NULL;
}

/* ------------------------------------------------------------- messages */

static int send_msg(struct pcore *c, uint8_t type, const uint8_t *txid, uint16_t branch, uint16_t attempt,
                    uint16_t code, const struct wire_frame *frames, size_t nframes, const char **why)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid != NULL)
        memcpy(h.txid, txid, sizeof h.txid);
    h.branch = branch;
    h.attempt = attempt;
    h.code = code;
    *why = NULL;
    return c->io.send(c->io.ctx, &h, frames, nframes, why);
}

static const char *txid_str(const uint8_t *txid, char *buf)
{
    treaty_txid_t id;
    memcpy(id.b, txid, sizeof id.b);
    return treaty_txid_format(&id, buf);
}

/* Logs a reply that could not be sent: "<TYPE> <txid>:<branch> not sent: <why>". */
static void not_sent(struct pcore *c, const char *what, const uint8_t *txid, unsigned branch, int rc, const char *why)
{
    char ids[TREATY_TXID_STRLEN];
    pcore_log(c, PCORE_NOTE, "%s %s:%u not sent: %s", what, txid_str(txid, ids), branch,
              why != NULL ? why : treaty_strerror(rc));
}

static void send_hello(struct pcore *c, int64_t now)
{
    const char *why;
    struct wire_frame f[2] = {wire_str(c->service), wire_str(c->instance)};
    if (send_msg(c, WIRE_HELLO, NULL, 0, 0, 0, f, 2, &why) < 0) {
        /* not connected (yet): try again soon, but never from a busy loop */
        int retry = c->heartbeat_ms < PCORE_HELLO_RETRY_MS ? c->heartbeat_ms : PCORE_HELLO_RETRY_MS;
        c->next_hello = now + retry;
        return;
    }
    c->next_hello = now + c->heartbeat_ms;
}

static void branch_of(const struct wire_msg *m, treaty_branch_t *b)
{
    memset(b, 0, sizeof *b);
    memcpy(b->txid.b, m->hdr.txid, TREATY_TXID_LEN);
    b->branch = m->hdr.branch;
    b->attempt = m->hdr.attempt;
}

static void on_welcome(struct pcore *c, const struct wire_msg *m, int64_t now)
{
    uint32_t hb;
    if (wire_get_u32(&m->frames[0], &hb) && hb >= PCORE_HEARTBEAT_MIN_MS && hb <= PCORE_HEARTBEAT_MAX_MS) {
        c->heartbeat_ms = (int)hb;
        if (c->next_hello > now + c->heartbeat_ms)
            c->next_hello = now + c->heartbeat_ms;
    }
    /* The first WELCOME, or one after a silence of several heartbeats (the
     * coordinator restarted or was unreachable, and has registered us
     * again): look for in-doubt branches now rather than at the next sweep. */
    bool reconnected = !c->welcomed || now - c->last_welcome > PCORE_RECONNECT_BEATS * (int64_t)c->heartbeat_ms;
    c->welcomed = true;
    c->last_welcome = now;
    if (reconnected) {
        c->next_sweep = now + c->sweep_ms;
        if (c->ext.on_connect != NULL)
            c->ext.on_connect(c->ext.arg, c, true);
    }
}

static void on_prepare(struct pcore *c, const struct wire_msg *m)
{
    treaty_branch_t b;
    char reason[TREATY_REASON_MAX];
    char ids[TREATY_TXID_STRLEN];

    branch_of(m, &b);
    b.payload = m->frames[0].len > 0 ? (const void *)m->frames[0].data : (const void *)"";
    b.len = m->frames[0].len;
    reason[0] = '\0';
    unsigned seq = atomic_load(&c->logged);
    int rc;
    if (c->has_2pc) {
        rc = c->h.prepare(c->h.arg, &b, reason);
    } else {
        rc = TREATY_VOTE_NO; /* nothing was done: NO is the truth (presumed abort) */
        snprintf(reason, sizeof reason, "this participant does not take part in 2PC");
    }
    reason[TREATY_REASON_MAX - 1] = '\0';
    if (rc < 0) {
        if (atomic_load(&c->logged) == seq) /* keep the handler's own, better words */
            pcore_log(c, PCORE_NOTE, "prepare %s:%u sent no vote: %s", txid_str(m->hdr.txid, ids), b.branch,
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
    const char *why;
    struct wire_frame f = wire_str(reason);
    int sent = send_msg(c, WIRE_VOTE, m->hdr.txid, m->hdr.branch, m->hdr.attempt, vote, &f, 1, &why);
    if (sent < 0)
        not_sent(c, "VOTE", m->hdr.txid, b.branch, sent, why);
}

static void on_decision(struct pcore *c, const struct wire_msg *m)
{
    treaty_branch_t b;
    char ids[TREATY_TXID_STRLEN];
    bool commit = m->hdr.type == WIRE_COMMIT;

    branch_of(m, &b);
    if (!c->has_2pc && commit) {
        /* We vote NO to every PREPARE, so no coordinator can decide commit. */
        atomic_fetch_add(&c->dropped, 1);
        pcore_log(c, PCORE_NOTE, "dropped COMMIT %s:%u: this participant does not take part in 2PC",
                  txid_str(m->hdr.txid, ids), b.branch);
        return;
    }
    unsigned seq = atomic_load(&c->logged);
    int rc = !c->has_2pc ? 0 : commit ? c->h.commit(c->h.arg, &b) : c->h.abort(c->h.arg, &b);
    if (rc < 0) {
        if (atomic_load(&c->logged) == seq)
            pcore_log(c, PCORE_NOTE, "%s %s:%u not acknowledged: %s", commit ? "commit" : "abort",
                      txid_str(m->hdr.txid, ids), b.branch, treaty_err_name(rc));
        return;
    }
    /* If we crash here the decision is applied but not acknowledged: the
     * coordinator re-sends it and the handler applies it again (a no-op). */
    const char *why;
    uint16_t code = commit ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED;
    int sent = send_msg(c, WIRE_ACK, m->hdr.txid, m->hdr.branch, m->hdr.attempt, code, NULL, 0, &why);
    if (sent < 0)
        not_sent(c, "ACK", m->hdr.txid, b.branch, sent, why);
}

/* STEP -> handler -> RESULT. */
static void on_step(struct pcore *c, const struct wire_msg *m)
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
    const struct step_handler *e = find_step(c, kind, nf->data, nf->len);
    if (e == NULL) {
        /* An action nobody serves cannot succeed: fail it and let the saga
         * turn around. A compensation must not be given up: transient, so
         * it is retried until a handler is deployed. */
        result = action ? WIRE_RESULT_FAILED : WIRE_RESULT_TRANSIENT;
        snprintf(reason, sizeof reason, "no %s handler named %s", action ? "action" : "compensation", name);
        pcore_log(c, PCORE_NOTE, "STEP %s:%u: %s", txid_str(m->hdr.txid, ids), m->hdr.branch, reason);
    } else {
        treaty_step_t st;
        memset(&st, 0, sizeof st);
        memcpy(st.txid.b, m->hdr.txid, TREATY_TXID_LEN);
        st.step = m->hdr.branch;
        st.attempt = m->hdr.attempt;
        st.name = name;
        st.payload = m->frames[1].len > 0 ? (const void *)m->frames[1].data : (const void *)"";
        st.len = m->frames[1].len;
        unsigned seq = atomic_load(&c->logged);
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
            if (atomic_load(&c->logged) == seq) /* keep the handler's own words */
                pcore_log(c, PCORE_NOTE, "%s %s %s:%u transient: %s", action ? "action" : "compensation", name,
                          txid_str(m->hdr.txid, ids), m->hdr.branch, reason);
        }
    }
    /* If we crash (or the send fails) here, the step's effect stays and the
     * RESULT is lost: the coordinator re-sends the STEP after its try
     * timeout, and the (idempotent) handler answers it again. */
    const char *why;
    struct wire_frame f = wire_str(reason);
    int sent =
        send_msg(c, WIRE_RESULT, m->hdr.txid, m->hdr.branch, m->hdr.attempt, WIRE_RESULT(kind, result), &f, 1, &why);
    if (sent < 0)
        not_sent(c, "RESULT", m->hdr.txid, m->hdr.branch, sent, why);
}

void pcore_on_message(struct pcore *c, const struct wire_msg *m, int64_t now)
{
    char text[TREATY_REASON_MAX];
    switch (m->hdr.type) {
    case WIRE_WELCOME:
        on_welcome(c, m, now);
        return;
    case WIRE_PREPARE:
        on_prepare(c, m);
        return;
    case WIRE_COMMIT:
    case WIRE_ABORT:
        on_decision(c, m);
        return;
    case WIRE_STEP:
        on_step(c, m);
        return;
    case WIRE_ERROR:
        wire_copy_text(&m->frames[0], text, sizeof text);
        pcore_log(c, PCORE_NOTE, "coordinator error %s: %s", treaty_err_name(-(int)m->hdr.code), text);
        return;
    default:
        atomic_fetch_add(&c->dropped, 1);
        pcore_log(c, PCORE_NOTE, "dropped unexpected %s from the coordinator", wire_type_name(m->hdr.type));
        return;
    }
}

void pcore_on_malformed(struct pcore *c, int err)
{
    atomic_fetch_add(&c->dropped, 1);
    pcore_log(c, PCORE_NOTE, "dropped a malformed message from the coordinator (%s)", treaty_err_name(err));
}

/* ---------------------------------------------------------------- timers */

static bool sweeping(const struct pcore *c)
{
    return c->welcomed && c->ext.on_connect != NULL;
}

void pcore_on_tick(struct pcore *c, int64_t now)
{
    if (now >= c->next_hello)
        send_hello(c, now);
    if (sweeping(c) && now >= c->next_sweep) {
        c->next_sweep = now + c->sweep_ms;
        c->ext.on_connect(c->ext.arg, c, false);
    }
}

int64_t pcore_next_tick(const struct pcore *c)
{
    int64_t due = c->next_hello;
    if (sweeping(c) && c->next_sweep < due)
        due = c->next_sweep;
    return due;
}

int pcore_inquire(struct pcore *c, const treaty_txid_t *id, unsigned branch)
{
    if (c == NULL || id == NULL || branch > UINT16_MAX)
        return TREATY_EINVAL;
    const char *why;
    int rc = send_msg(c, WIRE_INQUIRE, id->b, (uint16_t)branch, 0, 0, NULL, 0, &why);
    if (rc < 0)
        not_sent(c, "INQUIRE", id->b, branch, rc, why);
    return rc;
}
