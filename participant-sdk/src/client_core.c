/*
 * client_core.c - the client's protocol core (client_core.h).
 *
 * Every request is one allocation: struct ccore_req, then its frames, then
 * the bytes they point to (names, payloads, policies), so a request
 * re-sends what it copied at its start, whatever became of the txn or saga
 * it was made from. A request in flight is in three indexes: the list of
 * every request (submission order), the hash bucket of its txid, and the
 * timer heap (by due time: its re-send or its deadline, whichever is
 * first). A completed asynchronous one leaves the heap and joins the
 * callback FIFO.
 */
#include "client_core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"

#define HEAP_NONE SIZE_MAX

struct ccore_req {
    struct ccore_req *prev, *next; /* every request, in submission order */
    struct ccore_req *hnext;       /* the hash bucket of its txid */
    struct ccore_req *dnext;       /* the FIFO of completed async requests */
    size_t heap_idx;               /* in the timer heap while not done, else HEAP_NONE */
    treaty_txid_t txid;
    uint8_t type; /* WIRE_SUBMIT, WIRE_SAGA or WIRE_QUERY */
    bool async;   /* completed by a callback in ccore_run_callbacks */
    treaty_outcome_fn cb;
    void *arg;
    int64_t deadline;  /* give up (status UNKNOWN) */
    int64_t next_send; /* re-send */
    uint16_t attempt;
    int timeout_ms;
    uint8_t timeout_buf[4]; /* SUBMIT: the prepare deadline; SAGA: deadline_ms */
    bool done;
    int rc; /* 0 answered, TREATY_ETIMEDOUT, or ccore_fail_all's error */
    treaty_outcome_t out;
    size_t nframes;
    struct wire_frame frames[]; /* then the bytes they point to */
};

struct ccore {
    struct ccore_io io;
    struct ccore_req *head, *tail; /* every request */
    struct ccore_req **buckets;    /* by txid; nbuckets is a power of two */
    size_t nbuckets, count;
    struct ccore_req **heap; /* requests not done, by due time (min at 0) */
    size_t heap_len, heap_cap;
    struct ccore_req *dhead, *dtail; /* completed async requests, callbacks to run */
    uint64_t rng;
    uint64_t stale;     /* replies nobody waited for */
    uint64_t malformed; /* replies that did not decode, or of another type */
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
ccore_logf(struct ccore *c, const char *fmt, ...)
{
    char buf[CCORE_LOG_MAX];
    va_list ap;
    if (c->io.log == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    c->io.log(c->io.ctx, buf);
}

/* xorshift64*: only for jitter, never for ids. */
static uint32_t ccore_rand(struct ccore *c)
{
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static int64_t resend_delay(struct ccore *c)
{
    return CCORE_RESEND_MIN_MS + (int64_t)(ccore_rand(c) % CCORE_RESEND_JITTER_MS);
}

struct ccore *ccore_new(const struct ccore_io *io, uint64_t seed)
{
    if (io == NULL || io->send == NULL)
        return NULL;
    struct ccore *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->io = *io;
    c->rng = seed != 0 ? seed : 0x9E3779B97F4A7C15ULL; /* xorshift never leaves 0 */
    return c;
}

void ccore_destroy(struct ccore **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    struct ccore *c = *cp;
    struct ccore_req *r = c->head;
    while (r != NULL) {
        struct ccore_req *next = r->next;
        free(r);
        r = next;
    }
    free(c->buckets);
    free(c->heap);
    free(c);
    *cp = NULL;
}

uint64_t ccore_stale(const struct ccore *c)
{
    return c->stale;
}

uint64_t ccore_malformed(const struct ccore *c)
{
    return c->malformed;
}

/* ------------------------------------------------- the requests' indexes */

/* When r next needs attention: its re-send or its deadline. */
static int64_t due_of(const struct ccore_req *r)
{
    return r->next_send < r->deadline ? r->next_send : r->deadline;
}

static void heap_set(struct ccore *c, size_t i, struct ccore_req *r)
{
    c->heap[i] = r;
    r->heap_idx = i;
}

static void heap_up(struct ccore *c, size_t i)
{
    struct ccore_req *r = c->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (due_of(c->heap[parent]) <= due_of(r))
            break;
        heap_set(c, i, c->heap[parent]);
        i = parent;
    }
    heap_set(c, i, r);
}

static void heap_down(struct ccore *c, size_t i)
{
    struct ccore_req *r = c->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        int64_t best = due_of(r);
        if (l < c->heap_len && due_of(c->heap[l]) < best) {
            m = l;
            best = due_of(c->heap[l]);
        }
        if (l + 1 < c->heap_len && due_of(c->heap[l + 1]) < best)
            m = l + 1;
        if (m == i)
            break;
        heap_set(c, i, c->heap[m]);
        i = m;
    }
    heap_set(c, i, r);
}

/* false: out of memory. */
static bool heap_push(struct ccore *c, struct ccore_req *r)
{
    if (c->heap_len == c->heap_cap) {
        size_t cap = c->heap_cap ? c->heap_cap * 2 : 64;
        struct ccore_req **h = realloc(c->heap, cap * sizeof *h);
        if (h == NULL)
            return false;
        c->heap = h;
        c->heap_cap = cap;
    }
    heap_set(c, c->heap_len++, r);
    heap_up(c, r->heap_idx);
    return true;
}

static void heap_remove(struct ccore *c, struct ccore_req *r)
{
    size_t i = r->heap_idx;
    if (i == HEAP_NONE)
        return;
    r->heap_idx = HEAP_NONE;
    struct ccore_req *last = c->heap[--c->heap_len];
    if (i == c->heap_len)
        return;
    heap_set(c, i, last);
    heap_up(c, i);
    heap_down(c, last->heap_idx);
}

static size_t bucket_of(const struct ccore *c, const uint8_t txid[TREATY_TXID_LEN])
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: any txid layout spreads */
    for (size_t i = 0; i < TREATY_TXID_LEN; i++) {
        h ^= txid[i];
        h *= 1099511628211ULL;
    }
    return (size_t)h & (c->nbuckets - 1);
}

/* Keeps at most one request per bucket on average. false: out of memory. */
static bool buckets_grow(struct ccore *c)
{
    if (c->count < c->nbuckets)
        return true;
    size_t n = c->nbuckets ? c->nbuckets * 2 : 64;
    struct ccore_req **b = calloc(n, sizeof *b);
    if (b == NULL)
        return false;
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
    for (struct ccore_req *r = c->head; r != NULL; r = r->next) {
        size_t k = bucket_of(c, r->txid.b);
        r->hnext = b[k];
        b[k] = r;
    }
    return true;
}

/* Links a new request (next_send and deadline set, not done) into the
 * list, its txid's bucket and the heap. TREATY_ENOMEM when it cannot. */
static int req_link(struct ccore *c, struct ccore_req *r)
{
    c->count++;
    if (!buckets_grow(c) || !heap_push(c, r)) {
        c->count--;
        return TREATY_ENOMEM;
    }
    r->prev = c->tail;
    r->next = NULL;
    if (c->tail != NULL)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    size_t k = bucket_of(c, r->txid.b);
    r->hnext = c->buckets[k];
    c->buckets[k] = r;
    return 0;
}

/* Unlinks r from the list, its bucket and the heap (not from the callback
 * FIFO: only ccore_run_callbacks takes requests off it, before this). */
static void req_unlink(struct ccore *c, struct ccore_req *r)
{
    heap_remove(c, r);
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        c->head = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        c->tail = r->prev;
    r->prev = r->next = NULL;
    for (struct ccore_req **pp = &c->buckets[bucket_of(c, r->txid.b)]; *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == r) {
            *pp = r->hnext;
            break;
        }
    }
    r->hnext = NULL;
    c->count--;
}

/* ---------------------------------------------------------- the requests */

static void outcome_init(treaty_outcome_t *o, const treaty_txid_t *id)
{
    memset(o, 0, sizeof *o);
    o->txid = *id;
    o->status = TREATY_STATUS_NONE;
    o->failed_branch = TREATY_NO_BRANCH;
}

/* A request of type for id with nframes frames over storage bytes (the
 * caller fills them), not linked. NULL on out-of-memory. */
static struct ccore_req *req_alloc(uint8_t type, const treaty_txid_t *id, int timeout_ms, size_t nframes,
                                   size_t storage)
{
    struct ccore_req *r = malloc(sizeof *r + nframes * sizeof r->frames[0] + storage);
    if (r == NULL)
        return NULL;
    memset(r, 0, sizeof *r);
    r->heap_idx = HEAP_NONE;
    r->type = type;
    r->txid = *id;
    r->timeout_ms = timeout_ms;
    r->nframes = nframes;
    outcome_init(&r->out, id);
    return r;
}

/* The bytes after r's frames. */
static uint8_t *req_storage(struct ccore_req *r)
{
    return (uint8_t *)&r->frames[r->nframes];
}

/* Frame f over n bytes copied from data to *at (advanced). */
static void put_frame(struct wire_frame *f, uint8_t **at, const void *data, size_t n)
{
    if (n > 0)
        memcpy(*at, data, n);
    f->data = *at;
    f->len = n;
    *at += n;
}

static struct ccore_req *encode_submit(const struct treaty_txn *t, int timeout_ms)
{
    size_t total = 0;
    for (size_t i = 0; i < t->nbranches; i++)
        total += t->branches[i].service_len + t->branches[i].len;
    struct ccore_req *r = req_alloc(WIRE_SUBMIT, &t->id, timeout_ms, 1 + 2 * t->nbranches, total);
    if (r == NULL)
        return NULL;
    /* The coordinator's prepare deadline leaves a margin (a quarter of the
     * wait, at most 1 s) so that an abort caused by that deadline still
     * reaches this client within timeout_ms. */
    int margin = timeout_ms / 4 < 1000 ? timeout_ms / 4 : 1000;
    wire_put_u32(r->timeout_buf, (uint32_t)(timeout_ms - margin > 0 ? timeout_ms - margin : 1));
    r->frames[0].data = r->timeout_buf;
    r->frames[0].len = sizeof r->timeout_buf;
    uint8_t *at = req_storage(r);
    for (size_t i = 0; i < t->nbranches; i++) {
        const struct txn_branch *b = &t->branches[i];
        put_frame(&r->frames[1 + 2 * i], &at, b->service, b->service_len);
        put_frame(&r->frames[2 + 2 * i], &at, b->payload, b->len);
    }
    return r;
}

static struct ccore_req *encode_saga(const struct treaty_saga *s, int timeout_ms)
{
    size_t total = 0;
    for (size_t i = 0; i < s->nsteps; i++) {
        const struct saga_step *st = &s->steps[i];
        total += strlen(st->service) + strlen(st->action) + strlen(st->compensation) + st->len + st->comp_len +
                 WIRE_POLICY_LEN;
    }
    struct ccore_req *r = req_alloc(WIRE_SAGA, &s->id, timeout_ms, 1 + WIRE_SAGA_FRAMES_PER_STEP * s->nsteps, total);
    if (r == NULL)
        return NULL;
    wire_put_u32(r->timeout_buf, s->deadline_ms);
    r->frames[0].data = r->timeout_buf;
    r->frames[0].len = sizeof r->timeout_buf;
    uint8_t *at = req_storage(r);
    struct wire_frame *f = &r->frames[1];
    for (size_t i = 0; i < s->nsteps; i++) {
        const struct saga_step *st = &s->steps[i];
        uint8_t pol[WIRE_POLICY_LEN];
        wire_encode_policy(&st->policy, pol);
        put_frame(f++, &at, st->service, strlen(st->service));
        put_frame(f++, &at, st->action, strlen(st->action));
        put_frame(f++, &at, st->payload, st->len);
        put_frame(f++, &at, st->compensation, strlen(st->compensation));
        put_frame(f++, &at, st->comp_payload, st->comp_len);
        put_frame(f++, &at, pol, sizeof pol);
    }
    return r;
}

/* Sends (or re-sends) r. A failed send is not an error: the request is
 * re-sent at next_send anyway, until the deadline. */
static void req_send(struct ccore *c, struct ccore_req *r, int64_t now)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = r->type;
    memcpy(h.txid, r->txid.b, sizeof h.txid);
    h.attempt = r->attempt;
    const char *why = NULL;
    int rc = c->io.send(c->io.ctx, &h, r->frames, r->nframes, &why);
    if (rc < 0)
        ccore_logf(c, "send %s failed (will re-send): %s", wire_type_name(r->type),
                   why != NULL ? why : treaty_strerror(rc));
    if (r->attempt < UINT16_MAX)
        r->attempt++;
    r->next_send = now + resend_delay(c);
    if (r->heap_idx != HEAP_NONE)
        heap_down(c, r->heap_idx); /* due only moves later */
}

/* Links r (made at now) and sends it. Frees r when it cannot. */
static int req_start(struct ccore *c, struct ccore_req *r, treaty_outcome_fn cb, void *arg, int64_t now,
                     struct ccore_req **out)
{
    r->async = cb != NULL;
    r->cb = cb;
    r->arg = arg;
    r->deadline = now + r->timeout_ms;
    r->next_send = now;
    if (req_link(c, r) < 0) {
        free(r);
        return TREATY_ENOMEM;
    }
    req_send(c, r, now);
    if (out != NULL)
        *out = r->async ? NULL : r;
    return 0;
}

/* The arguments every start shares. */
static bool start_ok(const struct ccore *c, int timeout_ms, treaty_outcome_fn cb, struct ccore_req **out)
{
    if (out != NULL)
        *out = NULL;
    return c != NULL && timeout_ms > 0 && (cb != NULL || out != NULL);
}

int ccore_submit(struct ccore *c, const treaty_txn_t *t, int timeout_ms, treaty_outcome_fn cb, void *arg, int64_t now,
                 struct ccore_req **out)
{
    if (!start_ok(c, timeout_ms, cb, out) || t == NULL)
        return TREATY_EINVAL;
    if (t->nbranches == 0) {
        ccore_logf(c, "transaction has no branches");
        return TREATY_EINVAL;
    }
    struct ccore_req *r = encode_submit(t, timeout_ms);
    if (r == NULL)
        return TREATY_ENOMEM;
    return req_start(c, r, cb, arg, now, out);
}

int ccore_run_saga(struct ccore *c, const treaty_saga_t *s, int timeout_ms, treaty_outcome_fn cb, void *arg,
                   int64_t now, struct ccore_req **out)
{
    if (!start_ok(c, timeout_ms, cb, out) || s == NULL)
        return TREATY_EINVAL;
    if (s->nsteps == 0) {
        ccore_logf(c, "saga has no steps");
        return TREATY_EINVAL;
    }
    struct ccore_req *r = encode_saga(s, timeout_ms);
    if (r == NULL)
        return TREATY_ENOMEM;
    return req_start(c, r, cb, arg, now, out);
}

int ccore_query(struct ccore *c, const treaty_txid_t *id, int timeout_ms, treaty_outcome_fn cb, void *arg, int64_t now,
                struct ccore_req **out)
{
    if (!start_ok(c, timeout_ms, cb, out) || id == NULL)
        return TREATY_EINVAL;
    struct ccore_req *r = req_alloc(WIRE_QUERY, id, timeout_ms, 0, 0);
    if (r == NULL)
        return TREATY_ENOMEM;
    return req_start(c, r, cb, arg, now, out);
}

/* ------------------------------------------------------------ completion */

/* A completed request: out of the heap; an async one joins the FIFO. */
static void req_done(struct ccore *c, struct ccore_req *r)
{
    r->done = true;
    heap_remove(c, r);
    if (r->async) {
        r->dnext = NULL;
        if (c->dtail != NULL)
            c->dtail->dnext = r;
        else
            c->dhead = r;
        c->dtail = r;
    }
}

/* Completes r with the reply m (OUTCOME or ERROR). */
static void req_answer(struct ccore *c, struct ccore_req *r, const struct wire_msg *m)
{
    outcome_init(&r->out, &r->txid);
    if (m->hdr.type == WIRE_OUTCOME) {
        r->out.status = (enum treaty_status)m->hdr.code;
        r->out.failed_branch = m->hdr.branch;
    } else {
        int code = -(int)m->hdr.code;
        r->out.error = code < 0 ? code : TREATY_EPROTO;
    }
    wire_copy_text(&m->frames[0], r->out.reason, sizeof r->out.reason);
    r->rc = 0;
    req_done(c, r);
}

void ccore_on_message(struct ccore *c, const struct wire_msg *m)
{
    bool used = false;
    if (m->hdr.type != WIRE_OUTCOME && m->hdr.type != WIRE_ERROR) {
        ccore_logf(c, "dropped unexpected %s from the coordinator", wire_type_name(m->hdr.type));
        c->malformed++;
        return;
    }
    for (struct ccore_req *r = c->nbuckets ? c->buckets[bucket_of(c, m->hdr.txid)] : NULL; r != NULL; r = r->hnext) {
        if (r->done || memcmp(r->txid.b, m->hdr.txid, TREATY_TXID_LEN) != 0)
            continue;
        used = true;
        /* PENDING answers a QUERY; a SUBMIT or SAGA waits for the decision
         * (STUCK is as final as a saga gets for its client: it completes). */
        if (m->hdr.type == WIRE_OUTCOME && m->hdr.code == TREATY_STATUS_PENDING && r->type != WIRE_QUERY)
            continue;
        req_answer(c, r, m);
    }
    if (!used)
        c->stale++;
}

void ccore_on_malformed(struct ccore *c, int err)
{
    c->malformed++;
    ccore_logf(c, "dropped a malformed reply (%s)", treaty_err_name(err));
}

void ccore_on_tick(struct ccore *c, int64_t now)
{
    while (c->heap_len > 0 && due_of(c->heap[0]) <= now) {
        struct ccore_req *r = c->heap[0];
        if (now >= r->deadline) {
            outcome_init(&r->out, &r->txid);
            r->out.status = TREATY_STATUS_UNKNOWN;
            snprintf(r->out.reason, sizeof r->out.reason, "no answer from the coordinator within %d ms", r->timeout_ms);
            r->rc = TREATY_ETIMEDOUT;
            req_done(c, r);
            continue;
        }
        req_send(c, r, now); /* moves r down the heap */
    }
}

int ccore_fail_all(struct ccore *c, int err, const char *reason)
{
    int n = 0;
    while (c->heap_len > 0) { /* the heap holds exactly the requests not done */
        struct ccore_req *r = c->heap[0];
        outcome_init(&r->out, &r->txid);
        r->out.status = TREATY_STATUS_UNKNOWN;
        r->out.error = err;
        snprintf(r->out.reason, sizeof r->out.reason, "%s", reason != NULL ? reason : treaty_strerror(err));
        r->rc = err;
        req_done(c, r); /* out of the heap */
        n++;
    }
    return n;
}

int64_t ccore_next_tick(const struct ccore *c)
{
    return c->heap_len > 0 ? due_of(c->heap[0]) : -1;
}

bool ccore_has_callbacks(const struct ccore *c)
{
    return c->dhead != NULL;
}

int ccore_run_callbacks(struct ccore *c)
{
    int ran = 0;
    while (c->dhead != NULL) {
        struct ccore_req *r = c->dhead;
        c->dhead = r->dnext;
        if (c->dhead == NULL)
            c->dtail = NULL;
        r->dnext = NULL;
        req_unlink(c, r);
        r->cb(r->arg, &r->out);
        free(r);
        ran++;
    }
    return ran;
}

bool ccore_req_done(const struct ccore_req *r)
{
    return r->done;
}

int ccore_take(struct ccore *c, struct ccore_req **rp, treaty_outcome_t *out)
{
    if (c == NULL || rp == NULL || *rp == NULL)
        return TREATY_EINVAL;
    struct ccore_req *r = *rp;
    int rc = TREATY_ESTATE;
    if (r->done) {
        if (out != NULL)
            *out = r->out;
        rc = r->rc;
    }
    req_unlink(c, r);
    free(r);
    *rp = NULL;
    return rc;
}
