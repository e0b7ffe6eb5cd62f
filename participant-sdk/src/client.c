/*
 * client.c - treaty_client_*, treaty_txn_* and treaty_saga_*: start
 * transactions (2PC) and sagas, and learn their outcome.
 *
 * One DEALER socket (with its own ZeroMQ context) per client, connected to the
 * coordinator's ROUTER. Every request in flight is an entry in a list of
 * pending requests that keeps the encoded request for re-sending:
 *
 *   1. submit/run_saga/query: the request is encoded once and sent (attempt 0).
 *   2. waiting: every 500..1000 ms (jittered) the same request is sent again
 *      with attempt + 1. The coordinator treats a re-sent SUBMIT or SAGA of a txid
 *      it already knows as a duplicate, so re-sending is idempotent; it is what
 *      carries a request across a coordinator restart or a lost message.
 *   3. answered: OUTCOME (committed/aborted, completed/compensated/stuck, or
 *      pending for a QUERY) or ERROR with the entry's txid completes the
 *      entry. OUTCOME pending for a SUBMIT or SAGA only says "still running":
 *      keep waiting for the decision. OUTCOME stuck for a SAGA is final for
 *      the caller (the coordinator keeps retrying the compensation, an
 *      operator is needed), so it completes the entry.
 *   4. timed out: after timeout_ms without an answer the entry completes with
 *      TREATY_STATUS_UNKNOWN. The transaction may still commit: the caller
 *      asks again by txid (treaty_client_query) or resubmits with
 *      treaty_txn_new_with_id.
 *
 * Completed entries of asynchronous requests wait in a queue until
 * treaty_client_process() runs their callback; the blocking calls drive the
 * same machinery (receiving, re-sending, timing out every entry) but never
 * run callbacks themselves, so a callback never runs inside a blocking call.
 *
 * Cost with n requests in flight on one handle: a reply finds its entries
 * through a hash table by txid, the entry due first (re-send or deadline) is
 * the top of a binary heap, and completed callbacks are a FIFO: O(1) or
 * O(log n) per message, not O(n).
 *
 * Nothing here is durable: a crash of the client loses only the waiting.
 * Whatever the coordinator decided stays decided and can be queried by txid.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "treaty.h"
#include "wire.h"

#define CLIENT_RESEND_MIN_MS 500
#define CLIENT_RESEND_JITTER_MS 500
#define CLIENT_MAX_REPLY (64u * 1024u) /* replies carry short texts only */
#define CLIENT_ERRMSG_MAX 256

/* ------------------------------------------------------------------ txn */

struct txn_branch {
    char service[WIRE_NAME_MAX + 1];
    size_t service_len;
    uint8_t *payload; /* owned; NULL when len == 0 */
    size_t len;
};

struct treaty_txn {
    treaty_txid_t id;
    size_t nbranches;
    size_t cap;
    struct txn_branch *branches;
};

int treaty_txn_new_with_id(const treaty_txid_t *id, treaty_txn_t **out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (id == NULL)
        return TREATY_EINVAL;
    struct treaty_txn *t = calloc(1, sizeof *t);
    if (t == NULL)
        return TREATY_ENOMEM;
    t->id = *id;
    *out = t;
    return 0;
}

int treaty_txn_new(treaty_txn_t **out)
{
    treaty_txid_t id;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    int rc = treaty_txid_generate(&id);
    if (rc < 0)
        return rc;
    return treaty_txn_new_with_id(&id, out);
}

void treaty_txn_destroy(treaty_txn_t **tp)
{
    if (tp == NULL || *tp == NULL)
        return;
    struct treaty_txn *t = *tp;
    for (size_t i = 0; i < t->nbranches; i++)
        free(t->branches[i].payload);
    free(t->branches);
    free(t);
    *tp = NULL;
}

const treaty_txid_t *treaty_txn_id(const treaty_txn_t *t)
{
    return t != NULL ? &t->id : NULL;
}

int treaty_txn_add_branch(treaty_txn_t *t, const char *service, const void *payload, size_t len)
{
    if (t == NULL || service == NULL || (payload == NULL && len > 0))
        return TREATY_EINVAL;
    size_t slen = strnlen(service, WIRE_NAME_MAX + 1);
    if (!wire_name_ok((const uint8_t *)service, slen))
        return TREATY_EINVAL;
    if (t->nbranches >= WIRE_MAX_BRANCHES)
        return TREATY_ETOOBIG;
    if (t->nbranches == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4;
        if (cap > WIRE_MAX_BRANCHES)
            cap = WIRE_MAX_BRANCHES;
        struct txn_branch *nb = realloc(t->branches, cap * sizeof *nb);
        if (nb == NULL)
            return TREATY_ENOMEM;
        t->branches = nb;
        t->cap = cap;
    }
    struct txn_branch *b = &t->branches[t->nbranches];
    memset(b, 0, sizeof *b);
    memcpy(b->service, service, slen);
    b->service_len = slen;
    if (len > 0) {
        b->payload = malloc(len);
        if (b->payload == NULL)
            return TREATY_ENOMEM;
        memcpy(b->payload, payload, len);
    }
    b->len = len;
    t->nbranches++;
    return 0;
}

/* ----------------------------------------------------------------- saga */

#define SAGA_DEFAULT_MAX_ATTEMPTS 3
#define SAGA_DEFAULT_FIRST_BACKOFF_MS 100
#define SAGA_DEFAULT_MAX_BACKOFF_MS 5000
#define SAGA_DEFAULT_TRY_TIMEOUT_MS 5000

struct saga_step {
    char service[WIRE_NAME_MAX + 1];
    char action[WIRE_NAME_MAX + 1];
    char compensation[WIRE_NAME_MAX + 1];
    uint8_t *payload; /* owned; NULL when len == 0 */
    size_t len;
    uint8_t *comp_payload; /* owned; NULL when comp_len == 0 */
    size_t comp_len;
    struct wire_policy policy; /* defaults already applied */
};

struct treaty_saga {
    treaty_txid_t id;
    uint32_t deadline_ms; /* 0: none */
    size_t nsteps;
    struct saga_step steps[WIRE_MAX_STEPS];
};

int treaty_saga_new_with_id(const treaty_txid_t *id, treaty_saga_t **out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (id == NULL)
        return TREATY_EINVAL;
    struct treaty_saga *s = calloc(1, sizeof *s);
    if (s == NULL)
        return TREATY_ENOMEM;
    s->id = *id;
    *out = s;
    return 0;
}

int treaty_saga_new(treaty_saga_t **out)
{
    treaty_txid_t id;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    int rc = treaty_txid_generate(&id);
    if (rc < 0)
        return rc;
    return treaty_saga_new_with_id(&id, out);
}

void treaty_saga_destroy(treaty_saga_t **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    struct treaty_saga *s = *sp;
    for (size_t i = 0; i < s->nsteps; i++) {
        free(s->steps[i].payload);
        free(s->steps[i].comp_payload);
    }
    free(s);
    *sp = NULL;
}

const treaty_txid_t *treaty_saga_id(const treaty_saga_t *s)
{
    return s != NULL ? &s->id : NULL;
}

static bool name_ok(const char *name)
{
    return name != NULL && wire_name_ok((const uint8_t *)name, strnlen(name, WIRE_NAME_MAX + 1));
}

/* Copies len bytes of data (NULL when len == 0). 0 or TREATY_ENOMEM. */
static int copy_payload(const void *data, size_t len, uint8_t **out)
{
    *out = NULL;
    if (len == 0)
        return 0;
    *out = malloc(len);
    if (*out == NULL)
        return TREATY_ENOMEM;
    memcpy(*out, data, len);
    return 0;
}

/* Appends a step to s in group group. Returns its index or a TREATY_E*. */
static int saga_add(struct treaty_saga *s, bool parallel, const char *service, const char *action, const void *payload,
                    size_t len, const char *compensation, const void *comp_payload, size_t comp_len)
{
    if (s == NULL || !name_ok(service) || !name_ok(action) || !name_ok(compensation) || (payload == NULL && len > 0) ||
        (comp_payload == NULL && comp_len > 0))
        return TREATY_EINVAL;
    if (parallel && s->nsteps == 0)
        return TREATY_ESTATE;
    if (s->nsteps >= WIRE_MAX_STEPS)
        return TREATY_ETOOBIG;
    struct saga_step *st = &s->steps[s->nsteps];
    memset(st, 0, sizeof *st);
    if (copy_payload(payload, len, &st->payload) < 0)
        return TREATY_ENOMEM;
    if (copy_payload(comp_payload, comp_len, &st->comp_payload) < 0) {
        free(st->payload);
        st->payload = NULL;
        return TREATY_ENOMEM;
    }
    snprintf(st->service, sizeof st->service, "%s", service);
    snprintf(st->action, sizeof st->action, "%s", action);
    snprintf(st->compensation, sizeof st->compensation, "%s", compensation);
    st->len = len;
    st->comp_len = comp_len;
    /* Groups run in ascending order: a new step opens the next group, a
     * parallel one joins the group of the step before it. */
    if (s->nsteps == 0)
        st->policy.group = 0;
    else
        st->policy.group = (uint16_t)(s->steps[s->nsteps - 1].policy.group + (parallel ? 0 : 1));
    st->policy.max_attempts = SAGA_DEFAULT_MAX_ATTEMPTS;
    st->policy.first_backoff_ms = SAGA_DEFAULT_FIRST_BACKOFF_MS;
    st->policy.max_backoff_ms = SAGA_DEFAULT_MAX_BACKOFF_MS;
    st->policy.try_timeout_ms = SAGA_DEFAULT_TRY_TIMEOUT_MS;
    return (int)s->nsteps++;
}

int treaty_saga_add_step(treaty_saga_t *s, const char *service, const char *action, const void *payload, size_t len,
                         const char *compensation, const void *comp_payload, size_t comp_len)
{
    return saga_add(s, false, service, action, payload, len, compensation, comp_payload, comp_len);
}

int treaty_saga_add_parallel_step(treaty_saga_t *s, const char *service, const char *action, const void *payload,
                                  size_t len, const char *compensation, const void *comp_payload, size_t comp_len)
{
    return saga_add(s, true, service, action, payload, len, compensation, comp_payload, comp_len);
}

int treaty_saga_set_retry(treaty_saga_t *s, unsigned step, const treaty_retry_t *policy)
{
    if (s == NULL || policy == NULL || step >= s->nsteps || policy->max_attempts > UINT16_MAX)
        return TREATY_EINVAL;
    struct wire_policy *w = &s->steps[step].policy;
    w->max_attempts = (uint16_t)(policy->max_attempts ? policy->max_attempts : SAGA_DEFAULT_MAX_ATTEMPTS);
    w->first_backoff_ms = policy->first_backoff_ms ? policy->first_backoff_ms : SAGA_DEFAULT_FIRST_BACKOFF_MS;
    w->max_backoff_ms = policy->max_backoff_ms ? policy->max_backoff_ms : SAGA_DEFAULT_MAX_BACKOFF_MS;
    w->try_timeout_ms = policy->try_timeout_ms ? policy->try_timeout_ms : SAGA_DEFAULT_TRY_TIMEOUT_MS;
    return 0;
}

int treaty_saga_set_deadline(treaty_saga_t *s, unsigned deadline_ms)
{
    if (s == NULL)
        return TREATY_EINVAL;
    s->deadline_ms = (uint32_t)deadline_ms; /* unsigned is at most 32 bits on every supported target */
    return 0;
}

/* --------------------------------------------------------------- client */

/* One request in flight. */
struct pending {
    struct pending *prev, *next; /* every entry, in submission order */
    struct pending *hnext;       /* the hash bucket of its txid */
    struct pending *dnext;       /* the queue of completed async entries */
    size_t heap_idx;             /* in the timer heap while not done, else HEAP_NONE */
    treaty_txid_t txid;
    uint8_t type; /* WIRE_SUBMIT, WIRE_SAGA or WIRE_QUERY */
    bool async;   /* completed by a callback in treaty_client_process */
    treaty_outcome_fn cb;
    void *arg;
    int64_t deadline;  /* monotonic ms: give up (status UNKNOWN) */
    int64_t next_send; /* monotonic ms: re-send */
    uint16_t attempt;
    int timeout_ms;
    /* the encoded request, kept for re-sending */
    size_t nframes;
    struct wire_frame *frames; /* into storage below / the frame array */
    uint8_t timeout_buf[4];    /* SUBMIT: timeout_ms; SAGA: deadline_ms */
    uint8_t *storage;          /* one block holding the copied names, payloads, policies */
    /* completion */
    bool done;
    int rc; /* 0 answered, TREATY_ETIMEDOUT */
    treaty_outcome_t out;
};

#define HEAP_NONE SIZE_MAX

struct treaty_client {
    void *ctx;
    void *sock;
    int fd;
    struct pending *head, *tail; /* every entry */
    struct pending **buckets;    /* by txid; nbuckets is a power of two */
    size_t nbuckets, count;
    struct pending **heap; /* entries not done, by due time (min at 0) */
    size_t heap_len, heap_cap;
    struct pending *dhead, *dtail; /* completed async entries, callbacks to run */
    uint64_t rng;
    uint64_t stale;     /* replies nobody waited for */
    uint64_t malformed; /* replies that did not decode */
    struct wire_in in;
    char errmsg[CLIENT_ERRMSG_MAX];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
client_errorf(struct treaty_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
}

/* xorshift64*: only for jitter, never for ids. */
static uint32_t client_rand(struct treaty_client *c)
{
    uint64_t x = c->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static int64_t resend_delay(struct treaty_client *c)
{
    return CLIENT_RESEND_MIN_MS + (int64_t)(client_rand(c) % CLIENT_RESEND_JITTER_MS);
}

int treaty_client_new(const char *endpoint, treaty_client_t **out)
{
    int zero = 0;
    int err = TREATY_ETRANSPORT;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (endpoint == NULL || *endpoint == '\0')
        return TREATY_EINVAL;

    struct treaty_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return TREATY_ENOMEM;
    treaty_txid_t seed;
    if (treaty_txid_generate(&seed) == 0)
        memcpy(&c->rng, seed.b + 8, sizeof c->rng); /* the random half of a UUIDv7 */
    if (c->rng == 0)
        c->rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)now_ms();

    c->ctx = zmq_ctx_new();
    if (c->ctx == NULL)
        goto fail_ctx;
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (c->sock == NULL)
        goto fail_socket;
    if (zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &zero, sizeof zero) != 0)
        goto fail_setup;
    size_t fdlen = sizeof c->fd;
    if (zmq_getsockopt(c->sock, ZMQ_FD, &c->fd, &fdlen) != 0)
        goto fail_setup;
    if (zmq_connect(c->sock, endpoint) != 0) {
        /* a malformed endpoint or an unknown transport is the caller's error */
        if (errno == EINVAL || errno == EPROTONOSUPPORT || errno == ENOCOMPATPROTO)
            err = TREATY_EINVAL;
        goto fail_setup;
    }
    snprintf(c->errmsg, sizeof c->errmsg, "no error");
    *out = c;
    return 0;

fail_setup:
    zmq_close(c->sock);
fail_socket:
    zmq_ctx_term(c->ctx);
fail_ctx:
    free(c);
    return err;
}

static void pending_free(struct pending *p)
{
    if (p == NULL)
        return;
    free(p->frames);
    free(p->storage);
    free(p);
}

void treaty_client_destroy(treaty_client_t **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    struct treaty_client *c = *cp;
    struct pending *p = c->head;
    while (p != NULL) {
        struct pending *next = p->next;
        pending_free(p);
        p = next;
    }
    zmq_close(c->sock); /* ZMQ_LINGER 0: queued requests are dropped */
    zmq_ctx_term(c->ctx);
    free(c->buckets);
    free(c->heap);
    free(c);
    *cp = NULL;
}

const char *treaty_client_errmsg(const treaty_client_t *c)
{
    if (c == NULL)
        return "no client handle";
    return c->errmsg;
}

/* ------------------------------------------------- the entries' indexes */

/* When p next needs attention: its re-send or its deadline. */
static int64_t due_of(const struct pending *p)
{
    return p->next_send < p->deadline ? p->next_send : p->deadline;
}

static void heap_set(struct treaty_client *c, size_t i, struct pending *p)
{
    c->heap[i] = p;
    p->heap_idx = i;
}

static void heap_up(struct treaty_client *c, size_t i)
{
    struct pending *p = c->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (due_of(c->heap[parent]) <= due_of(p))
            break;
        heap_set(c, i, c->heap[parent]);
        i = parent;
    }
    heap_set(c, i, p);
}

static void heap_down(struct treaty_client *c, size_t i)
{
    struct pending *p = c->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        int64_t best = due_of(p);
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
    heap_set(c, i, p);
}

/* false: out of memory. */
static bool heap_push(struct treaty_client *c, struct pending *p)
{
    if (c->heap_len == c->heap_cap) {
        size_t cap = c->heap_cap ? c->heap_cap * 2 : 64;
        struct pending **h = realloc(c->heap, cap * sizeof *h);
        if (h == NULL)
            return false;
        c->heap = h;
        c->heap_cap = cap;
    }
    heap_set(c, c->heap_len++, p);
    heap_up(c, p->heap_idx);
    return true;
}

static void heap_remove(struct treaty_client *c, struct pending *p)
{
    size_t i = p->heap_idx;
    if (i == HEAP_NONE)
        return;
    p->heap_idx = HEAP_NONE;
    struct pending *last = c->heap[--c->heap_len];
    if (i == c->heap_len)
        return;
    heap_set(c, i, last);
    heap_up(c, i);
    heap_down(c, last->heap_idx);
}

static size_t bucket_of(const struct treaty_client *c, const uint8_t txid[TREATY_TXID_LEN])
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a: any txid layout spreads */
    for (size_t i = 0; i < TREATY_TXID_LEN; i++) {
        h ^= txid[i];
        h *= 1099511628211ULL;
    }
    return (size_t)h & (c->nbuckets - 1);
}

/* Keeps at most one entry per bucket on average. false: out of memory. */
static bool buckets_grow(struct treaty_client *c)
{
    if (c->count < c->nbuckets)
        return true;
    size_t n = c->nbuckets ? c->nbuckets * 2 : 64;
    struct pending **b = calloc(n, sizeof *b);
    if (b == NULL)
        return false;
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
    for (struct pending *p = c->head; p != NULL; p = p->next) {
        size_t k = bucket_of(c, p->txid.b);
        p->hnext = b[k];
        b[k] = p;
    }
    return true;
}

/* A completed entry: out of the heap; an async one joins the callback queue. */
static void pending_done(struct treaty_client *c, struct pending *p)
{
    p->done = true;
    heap_remove(c, p);
    if (p->async) {
        p->dnext = NULL;
        if (c->dtail != NULL)
            c->dtail->dnext = p;
        else
            c->dhead = p;
        c->dtail = p;
    }
}

/* Sends (or re-sends) p's request. A failed send is not an error: the request
 * is re-sent at next_send anyway, until the deadline. */
static void pending_send(struct treaty_client *c, struct pending *p, int64_t now)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = p->type;
    memcpy(h.txid, p->txid.b, sizeof h.txid);
    h.attempt = p->attempt;
    if (wire_send(c->sock, NULL, 0, &h, p->frames, p->nframes) < 0)
        client_errorf(c, "send %s failed (will re-send): %s", wire_type_name(p->type), zmq_strerror(errno));
    if (p->attempt < UINT16_MAX)
        p->attempt++;
    p->next_send = now + resend_delay(c);
    if (p->heap_idx != HEAP_NONE)
        heap_down(c, p->heap_idx); /* due only moves later */
}

/* Links a new entry (next_send and deadline set, not done) into the list,
 * its txid's bucket and the heap. TREATY_ENOMEM when it cannot. */
static int pending_link(struct treaty_client *c, struct pending *p)
{
    c->count++;
    if (!buckets_grow(c) || !heap_push(c, p)) {
        c->count--;
        return TREATY_ENOMEM;
    }
    p->prev = c->tail;
    p->next = NULL;
    if (c->tail != NULL)
        c->tail->next = p;
    else
        c->head = p;
    c->tail = p;
    size_t k = bucket_of(c, p->txid.b);
    p->hnext = c->buckets[k];
    c->buckets[k] = p;
    return 0;
}

/* Unlinks p from the list, its bucket and the heap (not from the callback
 * queue: only treaty_client_process takes entries off it, before this). */
static void pending_unlink(struct treaty_client *c, struct pending *p)
{
    heap_remove(c, p);
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        c->head = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    else
        c->tail = p->prev;
    p->prev = p->next = NULL;
    for (struct pending **pp = &c->buckets[bucket_of(c, p->txid.b)]; *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == p) {
            *pp = p->hnext;
            break;
        }
    }
    p->hnext = NULL;
    c->count--;
}

static void outcome_init(treaty_outcome_t *o, const treaty_txid_t *id)
{
    memset(o, 0, sizeof *o);
    if (id != NULL)
        o->txid = *id;
    o->status = TREATY_STATUS_NONE;
    o->failed_branch = TREATY_NO_BRANCH;
}

/* Encodes the SAGA request of s into p's frames and storage. */
static int pending_fill_saga(struct pending *p, const struct treaty_saga *s)
{
    size_t total = 0;
    for (size_t i = 0; i < s->nsteps; i++) {
        const struct saga_step *st = &s->steps[i];
        total += strlen(st->service) + strlen(st->action) + strlen(st->compensation) + st->len + st->comp_len +
                 WIRE_POLICY_LEN;
    }
    p->nframes = 1 + WIRE_SAGA_FRAMES_PER_STEP * s->nsteps;
    p->frames = calloc(p->nframes, sizeof *p->frames);
    if (p->frames == NULL)
        return TREATY_ENOMEM;
    p->storage = malloc(total);
    if (p->storage == NULL)
        return TREATY_ENOMEM; /* frames freed with p */
    wire_put_u32(p->timeout_buf, s->deadline_ms);
    p->frames[0].data = p->timeout_buf;
    p->frames[0].len = sizeof p->timeout_buf;
    size_t off = 0;
    struct wire_frame *f = &p->frames[1];
#define SAGA_PUT(ptr, n)                                                                                               \
    do {                                                                                                               \
        if ((n) > 0)                                                                                                   \
            memcpy(p->storage + off, (ptr), (n));                                                                      \
        f->data = p->storage + off;                                                                                    \
        f->len = (n);                                                                                                  \
        off += (n);                                                                                                    \
        f++;                                                                                                           \
    } while (0)
    for (size_t i = 0; i < s->nsteps; i++) {
        const struct saga_step *st = &s->steps[i];
        uint8_t pol[WIRE_POLICY_LEN];
        wire_encode_policy(&st->policy, pol);
        SAGA_PUT(st->service, strlen(st->service));
        SAGA_PUT(st->action, strlen(st->action));
        SAGA_PUT(st->payload, st->len);
        SAGA_PUT(st->compensation, strlen(st->compensation));
        SAGA_PUT(st->comp_payload, st->comp_len);
        SAGA_PUT(pol, sizeof pol);
    }
#undef SAGA_PUT
    return 0;
}

/* A new pending entry for a SUBMIT of t, a SAGA of s, or a QUERY of id
 * (t and s NULL). */
static int pending_new(uint8_t type, const treaty_txn_t *t, const struct treaty_saga *s, const treaty_txid_t *id,
                       int timeout_ms, struct pending **out)
{
    *out = NULL;
    struct pending *p = calloc(1, sizeof *p);
    if (p == NULL)
        return TREATY_ENOMEM;
    p->heap_idx = HEAP_NONE;
    p->type = type;
    p->txid = *id;
    p->timeout_ms = timeout_ms;
    outcome_init(&p->out, id);

    if (type == WIRE_SAGA) {
        /* Copied: the saga may be destroyed while an async request is
         * still being re-sent. */
        if (pending_fill_saga(p, s) < 0) {
            pending_free(p);
            return TREATY_ENOMEM;
        }
    } else if (type == WIRE_SUBMIT) {
        /* Copy services and payloads into one block: the txn may be destroyed
         * while an async request is still being re-sent. */
        size_t total = 0;
        for (size_t i = 0; i < t->nbranches; i++)
            total += t->branches[i].service_len + t->branches[i].len;
        p->nframes = 1 + 2 * t->nbranches;
        p->frames = calloc(p->nframes, sizeof *p->frames);
        if (p->frames == NULL)
            goto fail_frames;
        p->storage = malloc(total);
        if (p->storage == NULL)
            goto fail_storage;
        /* The coordinator's prepare deadline leaves a margin (a quarter of the
         * wait, at most 1 s) so that an abort caused by that deadline still
         * reaches this client within timeout_ms. */
        int margin = timeout_ms / 4 < 1000 ? timeout_ms / 4 : 1000;
        wire_put_u32(p->timeout_buf, (uint32_t)(timeout_ms - margin > 0 ? timeout_ms - margin : 1));
        p->frames[0].data = p->timeout_buf;
        p->frames[0].len = sizeof p->timeout_buf;
        size_t off = 0;
        for (size_t i = 0; i < t->nbranches; i++) {
            const struct txn_branch *b = &t->branches[i];
            memcpy(p->storage + off, b->service, b->service_len);
            p->frames[1 + 2 * i].data = p->storage + off;
            p->frames[1 + 2 * i].len = b->service_len;
            off += b->service_len;
            if (b->len > 0)
                memcpy(p->storage + off, b->payload, b->len);
            p->frames[2 + 2 * i].data = p->storage + off;
            p->frames[2 + 2 * i].len = b->len;
            off += b->len;
        }
    }
    *out = p;
    return 0;

fail_storage:
    free(p->frames);
fail_frames:
    free(p);
    return TREATY_ENOMEM;
}

static int check_timeout(int timeout_ms)
{
    return timeout_ms > 0 ? 0 : TREATY_EINVAL;
}

/* Completes p with the reply m (OUTCOME or ERROR). */
static void pending_complete(struct treaty_client *c, struct pending *p, const struct wire_msg *m)
{
    outcome_init(&p->out, &p->txid);
    if (m->hdr.type == WIRE_OUTCOME) {
        p->out.status = (enum treaty_status)m->hdr.code;
        p->out.failed_branch = m->hdr.branch;
        wire_copy_text(&m->frames[0], p->out.reason, sizeof p->out.reason);
    } else {
        int code = -(int)m->hdr.code;
        p->out.error = code < 0 ? code : TREATY_EPROTO;
        wire_copy_text(&m->frames[0], p->out.reason, sizeof p->out.reason);
    }
    p->rc = 0;
    pending_done(c, p);
}

/* Hands one decoded reply to every waiting entry of its txid. */
static void dispatch(struct treaty_client *c, const struct wire_msg *m)
{
    bool used = false;
    if (m->hdr.type != WIRE_OUTCOME && m->hdr.type != WIRE_ERROR) {
        client_errorf(c, "dropped unexpected %s from the coordinator", wire_type_name(m->hdr.type));
        c->malformed++;
        return;
    }
    for (struct pending *p = c->nbuckets ? c->buckets[bucket_of(c, m->hdr.txid)] : NULL; p != NULL; p = p->hnext) {
        if (p->done || memcmp(p->txid.b, m->hdr.txid, TREATY_TXID_LEN) != 0)
            continue;
        used = true;
        /* PENDING answers a QUERY; a SUBMIT or SAGA waits for the decision
         * (STUCK is as final as a saga gets for its client: it completes). */
        if (m->hdr.type == WIRE_OUTCOME && m->hdr.code == TREATY_STATUS_PENDING && p->type != WIRE_QUERY)
            continue;
        pending_complete(c, p, m);
    }
    if (!used)
        c->stale++;
}

/* Receives every waiting reply without blocking. Returns the number of
 * messages read or a negative TREATY_E* (transport failure). */
static int drain(struct treaty_client *c)
{
    int n = 0;
    for (;;) {
        int rc = wire_recv(c->sock, false, CLIENT_MAX_REPLY, &c->in);
        if (rc == TREATY_ETIMEDOUT)
            return n;
        if (rc == TREATY_ETRANSPORT) {
            if (errno == EINTR)
                return n;
            client_errorf(c, "receive failed: %s", zmq_strerror(errno));
            return TREATY_ETRANSPORT;
        }
        n++;
        if (rc < 0) {
            c->malformed++;
            client_errorf(c, "dropped a malformed reply (%s)", treaty_err_name(rc));
            continue;
        }
        dispatch(c, &c->in.msg);
        wire_in_close(&c->in);
    }
}

/* Re-sends what is due and times out what has passed its deadline. */
static void run_timers(struct treaty_client *c, int64_t now)
{
    while (c->heap_len > 0 && due_of(c->heap[0]) <= now) {
        struct pending *p = c->heap[0];
        if (now >= p->deadline) {
            outcome_init(&p->out, &p->txid);
            p->out.status = TREATY_STATUS_UNKNOWN;
            snprintf(p->out.reason, sizeof p->out.reason, "no answer from the coordinator within %d ms", p->timeout_ms);
            p->rc = TREATY_ETIMEDOUT;
            pending_done(c, p);
            continue;
        }
        pending_send(c, p, now); /* moves p down the heap */
    }
}

static bool readable(struct treaty_client *c)
{
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(c->sock, ZMQ_EVENTS, &ev, &len) != 0)
        return false;
    return (ev & ZMQ_POLLIN) != 0;
}

/* One non-blocking turn: replies, re-sends, timeouts. Callbacks are not run. */
static int turn(struct treaty_client *c)
{
    int rc = drain(c);
    if (rc < 0)
        return rc;
    run_timers(c, now_ms());
    /* Sending may have swallowed ZMQ_FD's edge for a reply that is now
     * waiting: look at ZMQ_EVENTS and drain again if so. */
    if (readable(c)) {
        rc = drain(c);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int treaty_client_next_timeout(const treaty_client_t *c)
{
    if (c == NULL)
        return -1;
    if (c->dhead != NULL)
        return 0; /* a callback is waiting to run */
    int64_t now = now_ms();
    int64_t next = c->heap_len > 0 ? due_of(c->heap[0]) : -1;
    if (readable((struct treaty_client *)c))
        return 0;
    if (next < 0)
        return -1;
    if (next <= now)
        return 0;
    return next - now > INT32_MAX ? INT32_MAX : (int)(next - now);
}

/* Waits until p is done (it is linked and was sent). */
static int wait_for(struct treaty_client *c, struct pending *p)
{
    for (;;) {
        int rc = turn(c);
        if (rc < 0)
            return rc;
        if (p->done)
            return 0;
        int64_t now = now_ms();
        int64_t due = c->heap_len > 0 ? due_of(c->heap[0]) : due_of(p); /* p is in the heap */
        long wait = due > now ? (long)(due - now) : 0;
        zmq_pollitem_t item = {c->sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, wait) < 0 && errno != EINTR) {
            client_errorf(c, "poll failed: %s", zmq_strerror(errno));
            return TREATY_ETRANSPORT;
        }
    }
}

static int blocking_request(struct treaty_client *c, uint8_t type, const treaty_txn_t *t, const struct treaty_saga *s,
                            const treaty_txid_t *id, int timeout_ms, treaty_outcome_t *out)
{
    struct pending *p;
    int rc = pending_new(type, t, s, id, timeout_ms, &p);
    if (rc < 0)
        return rc;
    int64_t now = now_ms();
    p->deadline = now + timeout_ms;
    p->next_send = now;
    if (pending_link(c, p) < 0) {
        pending_free(p);
        out->status = TREATY_STATUS_UNKNOWN;
        return TREATY_ENOMEM;
    }
    pending_send(c, p, now);
    rc = wait_for(c, p);
    pending_unlink(c, p);
    if (rc == 0) {
        *out = p->out;
        rc = p->rc;
    } else {
        out->status = TREATY_STATUS_UNKNOWN;
    }
    pending_free(p);
    return rc;
}

static int check_txn(struct treaty_client *c, const treaty_txn_t *t)
{
    if (t->nbranches == 0) {
        client_errorf(c, "transaction has no branches");
        return TREATY_EINVAL;
    }
    return 0;
}

int treaty_client_submit(treaty_client_t *c, const treaty_txn_t *t, int timeout_ms, treaty_outcome_t *out)
{
    if (out != NULL)
        outcome_init(out, t != NULL ? &t->id : NULL);
    if (c == NULL || t == NULL || out == NULL || check_timeout(timeout_ms) < 0)
        return TREATY_EINVAL;
    int rc = check_txn(c, t);
    if (rc < 0)
        return rc;
    return blocking_request(c, WIRE_SUBMIT, t, NULL, &t->id, timeout_ms, out);
}

int treaty_client_query(treaty_client_t *c, const treaty_txid_t *id, int timeout_ms, treaty_outcome_t *out)
{
    if (out != NULL)
        outcome_init(out, id);
    if (c == NULL || id == NULL || out == NULL || check_timeout(timeout_ms) < 0)
        return TREATY_EINVAL;
    return blocking_request(c, WIRE_QUERY, NULL, NULL, id, timeout_ms, out);
}

/* Links and sends a request whose outcome goes to cb in treaty_client_process. */
static int async_request(struct treaty_client *c, uint8_t type, const treaty_txn_t *t, const struct treaty_saga *s,
                         const treaty_txid_t *id, int timeout_ms, treaty_outcome_fn cb, void *arg)
{
    struct pending *p;
    int rc = pending_new(type, t, s, id, timeout_ms, &p);
    if (rc < 0)
        return rc;
    p->async = true;
    p->cb = cb;
    p->arg = arg;
    int64_t now = now_ms();
    p->deadline = now + timeout_ms;
    p->next_send = now;
    if (pending_link(c, p) < 0) {
        pending_free(p);
        return TREATY_ENOMEM;
    }
    pending_send(c, p, now);
    return 0;
}

int treaty_client_submit_async(treaty_client_t *c, const treaty_txn_t *t, int timeout_ms, treaty_outcome_fn cb,
                               void *arg)
{
    if (c == NULL || t == NULL || cb == NULL || check_timeout(timeout_ms) < 0)
        return TREATY_EINVAL;
    int rc = check_txn(c, t);
    if (rc < 0)
        return rc;
    return async_request(c, WIRE_SUBMIT, t, NULL, &t->id, timeout_ms, cb, arg);
}

static int check_saga(struct treaty_client *c, const struct treaty_saga *s)
{
    if (s->nsteps == 0) {
        client_errorf(c, "saga has no steps");
        return TREATY_EINVAL;
    }
    return 0;
}

int treaty_client_run_saga(treaty_client_t *c, const treaty_saga_t *s, int timeout_ms, treaty_outcome_t *out)
{
    if (out != NULL)
        outcome_init(out, s != NULL ? &s->id : NULL);
    if (c == NULL || s == NULL || out == NULL || check_timeout(timeout_ms) < 0)
        return TREATY_EINVAL;
    int rc = check_saga(c, s);
    if (rc < 0)
        return rc;
    return blocking_request(c, WIRE_SAGA, NULL, s, &s->id, timeout_ms, out);
}

int treaty_client_run_saga_async(treaty_client_t *c, const treaty_saga_t *s, int timeout_ms, treaty_outcome_fn cb,
                                 void *arg)
{
    if (c == NULL || s == NULL || cb == NULL || check_timeout(timeout_ms) < 0)
        return TREATY_EINVAL;
    int rc = check_saga(c, s);
    if (rc < 0)
        return rc;
    return async_request(c, WIRE_SAGA, NULL, s, &s->id, timeout_ms, cb, arg);
}

int treaty_client_fd(const treaty_client_t *c)
{
    if (c == NULL)
        return TREATY_EINVAL;
    return c->fd;
}

int treaty_client_process(treaty_client_t *c)
{
    if (c == NULL)
        return TREATY_EINVAL;
    int rc = turn(c);
    if (rc < 0)
        return rc;
    /* Run the callbacks of completed async entries. Each is unlinked before
     * its callback runs, so a callback may submit new requests. */
    int ran = 0;
    while (c->dhead != NULL) {
        struct pending *p = c->dhead;
        c->dhead = p->dnext;
        if (c->dhead == NULL)
            c->dtail = NULL;
        p->dnext = NULL;
        pending_unlink(c, p);
        p->cb(p->arg, &p->out);
        pending_free(p);
        ran++;
    }
    return ran;
}
