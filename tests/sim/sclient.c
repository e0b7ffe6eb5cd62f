/*
 * sclient.c - a simulated client process: the SDK's real client core
 * (participant-sdk/src/client_core.h) on the simulated network and clock,
 * and the workload it runs.
 *
 * The workload: the world's transactions (check.h), each owned by one client,
 * started at random moments: 2PC transfers between bank-a and bank-b, and
 * order sagas (create_order, reserve, charge; sometimes reserve and charge in
 * one parallel group; sometimes a charge the wallet cannot pay, so the saga
 * turns around). Timeouts are short and random, so answers are often UNKNOWN;
 * the client then resubmits the same txid later, or queries it. It also
 * resubmits txids it already has an answer for (the answer must not change),
 * queries txids nobody submitted (presumed abort) and sometimes submits one
 * of those afterwards (it must stay aborted). Its txids survive its crashes
 * (a client stores the txid before it submits, as the README advises); what
 * it was waiting for does not.
 *
 * Every final answer goes to check_told(), which records it and flags an
 * answer that contradicts an earlier one.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "client_core.h"
#include "sim.h"
#include "treaty.h"

struct reqarg {
    struct reqarg *prev, *next; /* in flight: freed with the core at a crash */
    struct sclient *sc;
    size_t tx;
    bool query;
};

struct sclient {
    struct world *w;
    struct node *n;
    struct ccore *core;
    size_t *inflight; /* per wtx index: requests this incarnation has in flight */
    size_t cap;
    struct reqarg *reqs;
};

static void req_unlink(struct sclient *sc, struct reqarg *ra)
{
    if (ra->prev)
        ra->prev->next = ra->next;
    else
        sc->reqs = ra->next;
    if (ra->next)
        ra->next->prev = ra->prev;
}

static void reqs_free(struct sclient *sc)
{
    while (sc->reqs) {
        struct reqarg *ra = sc->reqs;
        sc->reqs = ra->next;
        free(ra);
    }
}

static int io_send(void *ctx, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes,
                   const char **why)
{
    struct sclient *sc = ctx;
    (void)why;
    world_send(sc->w, sc->n->id, NULL, 0, h, frames, nframes);
    return 0;
}

static void io_log(void *ctx, const char *text)
{
    struct sclient *sc = ctx;
    sim_trace(sc->w, "%s: %s", sc->n->name, text);
}

/* A UUIDv7 made now by this client's wall clock, random bits from the world. */
static void make_txid(struct world *w, struct node *n, uint8_t txid[16])
{
    uint64_t a = sim_rng_next(&w->rng), b = sim_rng_next(&w->rng);
    memcpy(txid, &a, 8);
    memcpy(txid + 8, &b, 8);
    uint64_t ms = (uint64_t)world_wall_ms(w, n);
    for (int i = 0; i < 6; i++)
        txid[i] = (uint8_t)(ms >> (40 - 8 * i));
    txid[6] = (uint8_t)((txid[6] & 0x0f) | 0x70);
    txid[8] = (uint8_t)((txid[8] & 0x3f) | 0x80);
}

/* A late resubmission comes this long after the first answer: past the
 * journal's retention (60 s), so its records may be collected. */
#define LATE_MS 75000

static bool final_status(int st)
{
    return st == TREATY_STATUS_COMMITTED || st == TREATY_STATUS_ABORTED || st == TREATY_STATUS_COMPLETED ||
           st == TREATY_STATUS_COMPENSATED;
}

static void on_outcome(void *arg, const treaty_outcome_t *o)
{
    struct reqarg *ra = arg;
    struct sclient *sc = ra->sc;
    struct world *w = sc->w;
    struct wtx *t = &w->check->tx[ra->tx];
    if (ra->tx < sc->cap && sc->inflight[ra->tx] > 0)
        sc->inflight[ra->tx]--;
    req_unlink(sc, ra);
    bool late = t->late && t->told != 0 && w->now >= t->told_at + LATE_MS;
    if (o->error == TREATY_EEXPIRED) {
        sim_trace(w, "%s: %s refused as expired: gives up", sc->n->name, ra->query ? "query" : "submit");
        if (t->told == 0)
            t->gave_up = true;
        t->late_done |= late;
    } else if (o->error == 0 && final_status(o->status)) {
        check_told(w, t, o->status, o->reason);
        t->late_done |= late;
    }
    free(ra);
}

static void start_request(struct sclient *sc, size_t idx, bool query)
{
    struct world *w = sc->w;
    struct wtx *t = &w->check->tx[idx];
    struct reqarg *ra = sim_xcalloc(1, sizeof *ra);
    ra->sc = sc;
    ra->tx = idx;
    ra->next = sc->reqs;
    if (sc->reqs)
        sc->reqs->prev = ra;
    sc->reqs = ra;
    ra->query = query;
    int timeout = (int)sim_rng_range(&w->rng, 150, 3000);
    int rc;
    if (query || t->kind == WTX_PHANTOM) {
        rc = ccore_query(sc->core, (const treaty_txid_t *)t->txid, timeout, on_outcome, ra, w->now, NULL);
        t->queries++;
    } else if (t->kind == WTX_2PC) {
        treaty_txn_t *txn = NULL;
        treaty_txn_new_with_id((const treaty_txid_t *)t->txid, &txn);
        char a[32], b[32];
        snprintf(a, sizeof a, "%d:%lld", t->from_acct, (long long)-t->amount);
        snprintf(b, sizeof b, "%d:%lld", t->to_acct, (long long)t->amount);
        treaty_txn_add_branch(txn, "bank-a", a, strlen(a));
        treaty_txn_add_branch(txn, "bank-b", b, strlen(b));
        rc = ccore_submit(sc->core, txn, timeout, on_outcome, ra, w->now, NULL);
        treaty_txn_destroy(&txn);
        t->submits++;
    } else {
        treaty_saga_t *s = NULL;
        treaty_saga_new_with_id((const treaty_txid_t *)t->txid, &s);
        char o[32], q[32], p[32];
        snprintf(o, sizeof o, "%d", t->order);
        snprintf(q, sizeof q, "%d", t->qty);
        snprintf(p, sizeof p, "%d:%lld", t->customer, (long long)t->price);
        treaty_retry_t retry = {.max_attempts = (unsigned)sim_rng_range(&w->rng, 2, 8),
                                .first_backoff_ms = (unsigned)sim_rng_range(&w->rng, 10, 100),
                                .max_backoff_ms = 300,
                                .try_timeout_ms = (unsigned)sim_rng_range(&w->rng, 100, 800)};
        treaty_saga_add_step(s, "orders", "create_order", o, strlen(o), "cancel_order", o, strlen(o));
        treaty_saga_add_step(s, "inventory", "reserve", q, strlen(q), "release", q, strlen(q));
        if (t->parallel)
            treaty_saga_add_parallel_step(s, "payment", "charge", p, strlen(p), "refund", p, strlen(p));
        else
            treaty_saga_add_step(s, "payment", "charge", p, strlen(p), "refund", p, strlen(p));
        for (unsigned k = 0; k < 3; k++)
            treaty_saga_set_retry(s, k, &retry);
        rc = ccore_run_saga(sc->core, s, timeout, on_outcome, ra, w->now, NULL);
        treaty_saga_destroy(&s);
        t->submits++;
    }
    if (rc != 0) {
        req_unlink(sc, ra);
        free(ra);
        world_violation(w, "%s: starting a request failed: %s", sc->n->name, treaty_strerror(rc));
        return;
    }
    t->started = true;
    sc->inflight[idx]++;
    sim_trace(w, "%s: %s %s", sc->n->name, query || t->kind == WTX_PHANTOM ? "query" : "submit",
              treaty_txid_format((const treaty_txid_t *)t->txid, (char[TREATY_TXID_STRLEN]){0}));
}

static void after(struct sclient *sc)
{
    if (sc->core == NULL)
        return;
    ccore_run_callbacks(sc->core);
    world_tick_at(sc->w, sc->n->id, ccore_next_tick(sc->core));
}

static void ensure_cap(struct sclient *sc)
{
    size_t n = sc->w->check->ntx + 64;
    if (sc->cap >= n)
        return;
    sc->inflight = sim_xrealloc(sc->inflight, n * sizeof *sc->inflight);
    memset(sc->inflight + sc->cap, 0, (n - sc->cap) * sizeof *sc->inflight);
    sc->cap = n;
}

/* The next thing this client does. */
void sclient_work(struct world *w, struct node *n)
{
    struct sclient *sc = n->impl;
    struct check *ck = w->check;
    ensure_cap(sc);
    /* Candidates: my transactions not yet started, waiting for an answer
     * with nothing in flight, or answered (a late resubmission). */
    size_t fresh = SIZE_MAX, waiting = SIZE_MAX, answered = SIZE_MAX, late = SIZE_MAX;
    size_t nfresh = 0, nwaiting = 0, nanswered = 0;
    for (size_t i = 0; i < ck->ntx; i++) {
        struct wtx *t = &ck->tx[i];
        if (t->client != n->id)
            continue;
        if (!t->started) {
            if (sim_rng_range(&w->rng, 0, (int64_t)nfresh++) == 0)
                fresh = i;
        } else if (t->told == 0 && !t->gave_up) {
            if (sc->inflight[i] == 0 && sim_rng_range(&w->rng, 0, (int64_t)nwaiting++) == 0)
                waiting = i;
        } else {
            if (t->late && !t->late_done && t->told != 0 && w->now >= t->told_at + LATE_MS && sc->inflight[i] == 0)
                late = i;
            if (sim_rng_range(&w->rng, 0, (int64_t)nanswered++) == 0)
                answered = i;
        }
    }
    if (late != SIZE_MAX) {
        /* a client that comes back to a txid much later: the answer must not change */
        start_request(sc, late, sim_rng_chance(&w->rng, 0.3));
        after(sc);
        world_schedule(w, sim_rng_range(&w->rng, 5, 300), EV_WORK, n->id, 0, NULL);
        return;
    }
    int64_t r = sim_rng_range(&w->rng, 0, 99);
    if (w->healed) {
        if (waiting != SIZE_MAX) {
            start_request(sc, waiting, sim_rng_chance(&w->rng, 0.3));
        } else if (fresh != SIZE_MAX) {
            make_txid(w, n, ck->tx[fresh].txid);
            start_request(sc, fresh, false);
        }
    } else if (r < 50 && fresh != SIZE_MAX) {
        struct wtx *t = &ck->tx[fresh];
        make_txid(w, n, t->txid);
        start_request(sc, fresh, false);
    } else if (r < 75 && waiting != SIZE_MAX) {
        start_request(sc, waiting, sim_rng_chance(&w->rng, 0.3));
    } else if (r < 85 && answered != SIZE_MAX) {
        start_request(sc, answered, sim_rng_chance(&w->rng, 0.5));
    } else if (r < 92) {
        /* a query of a txid nobody submitted; sometimes submitted later */
        struct wtx *t = check_add(ck, WTX_PHANTOM);
        t->client = n->id;
        make_txid(w, n, t->txid);
        ensure_cap(sc);
        start_request(sc, (size_t)(t - ck->tx), true);
    } else if (r < 96) {
        /* submit a phantom that was answered: it must stay aborted */
        for (size_t i = 0; i < ck->ntx; i++) {
            struct wtx *t = &ck->tx[i];
            if (t->kind == WTX_PHANTOM && t->client == n->id && t->told != 0 && sim_rng_chance(&w->rng, 0.3)) {
                t->kind = WTX_2PC;
                t->from_acct = 0;
                t->to_acct = 0;
                t->amount = 1;
                start_request(sc, i, false);
                t->kind = WTX_PHANTOM;
                break;
            }
        }
    }
    after(sc);
    if (!w->stop)
        world_schedule(w, sim_rng_range(&w->rng, w->healed ? 50 : 5, w->healed ? 300 : 200), EV_WORK, n->id, 0, NULL);
}

bool sclient_done(struct world *w, struct node *n, bool late_too)
{
    struct check *ck = w->check;
    for (size_t i = 0; i < ck->ntx; i++) {
        const struct wtx *t = &ck->tx[i];
        if (late_too && t->client == n->id && t->late && t->told != 0 && !t->late_done)
            return false;
        if (t->client == n->id && t->kind != WTX_PHANTOM && (!t->started || (t->told == 0 && !t->gave_up)))
            return false;
        if (t->client == n->id && t->kind == WTX_PHANTOM && t->told == 0 && !t->gave_up)
            return false;
    }
    return true;
}

/* ----------------------------------------------------------- lifecycle */

void sclient_start(struct world *w, struct node *n)
{
    struct sclient *sc = n->impl;
    if (sc == NULL) {
        sc = n->impl = sim_xcalloc(1, sizeof *sc);
        sc->w = w;
        sc->n = n;
    }
    struct ccore_io io = {.ctx = sc, .send = io_send, .log = io_log};
    sc->core = ccore_new(&io, sim_rng_next(&w->rng));
    ensure_cap(sc);
    memset(sc->inflight, 0, sc->cap * sizeof *sc->inflight);
    world_schedule(w, sim_rng_range(&w->rng, 0, 100), EV_WORK, n->id, 0, NULL);
}

void sclient_crash(struct world *w, struct node *n)
{
    (void)w;
    struct sclient *sc = n->impl;
    /* The requests in flight go with the core, callbacks unrun. */
    ccore_destroy(&sc->core);
    reqs_free(sc);
}

void sclient_msg(struct world *w, struct node *n, const struct wire_msg *m)
{
    (void)w;
    struct sclient *sc = n->impl;
    ccore_on_message(sc->core, m);
    after(sc);
}

void sclient_tick(struct world *w, struct node *n)
{
    struct sclient *sc = n->impl;
    ccore_on_tick(sc->core, w->now);
    after(sc);
}

void sclient_free(struct node *n)
{
    struct sclient *sc = n->impl;
    if (sc == NULL)
        return;
    ccore_destroy(&sc->core);
    reqs_free(sc);
    free(sc->inflight);
    free(sc);
    n->impl = NULL;
}
