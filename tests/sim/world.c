/*
 * world.c - the simulated world: the PRNG, the event queue, the network with
 * its faults, process crashes and restarts, database and journal restarts,
 * clock jumps, and the phases (faults, heal, quiescence). See sim.h.
 *
 * Determinism: every random choice comes from w->rng, events run in (time,
 * sequence) order, and nothing reads a real clock. Two runs of one seed are
 * the same run.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "sdb.h"
#include "allowlist.h"
#include "sim.h"
#include "sjournal.h"
#include "treaty.h"

/* ------------------------------------------------------------------ PRNG */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sim_rng_seed(struct sim_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sim_rng_next(struct sim_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

int64_t sim_rng_range(struct sim_rng *r, int64_t lo, int64_t hi)
{
    if (hi <= lo)
        return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(sim_rng_next(r) % span);
}

bool sim_rng_chance(struct sim_rng *r, double p)
{
    if (p <= 0)
        return false;
    return (double)(sim_rng_next(r) >> 11) * 0x1.0p-53 < p;
}

/* Exponential waiting time for a rate per second, in ms (never 0). */
static int64_t rng_exp_ms(struct sim_rng *r, double per_s)
{
    double u = ((double)(sim_rng_next(r) >> 11) + 1.0) * 0x1.0p-53;
    double ms = -log(u) / per_s * 1000.0;
    if (ms > 1e12)
        ms = 1e12;
    return (int64_t)ms + 1;
}

/* ---------------------------------------------------------------- memory */

void *sim_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "treaty-sim: out of memory\n");
        abort();
    }
    return p;
}

void *sim_xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);
    if (q == NULL) {
        fprintf(stderr, "treaty-sim: out of memory\n");
        abort();
    }
    return q;
}

char *sim_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = sim_xcalloc(1, n);
    memcpy(d, s, n);
    return d;
}

/* ----------------------------------------------------------------- trace */

/* Every trace line is hashed (FNV-1a), printed or not: two runs of a seed
 * must give the same hash (main.c --determinism). */
void sim_trace(struct world *w, const char *fmt, ...)
{
    if (!w->trace && !w->hash_trace)
        return;
    char line[1024];
    int n = snprintf(line, sizeof line, "%8lld.%03lld ", (long long)(w->now / 1000), (long long)(w->now % 1000));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    for (const char *p = line; *p; p++)
        w->trace_hash = (w->trace_hash ^ (uint8_t)*p) * 1099511628211ull;
    w->trace_hash = (w->trace_hash ^ '\n') * 1099511628211ull;
    if (w->trace)
        fprintf(w->trace_out, "%s\n", line);
}

void world_violation(struct world *w, const char *fmt, ...)
{
    if (w->violated)
        return;
    w->violated = true;
    w->stop = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->violation, sizeof w->violation, fmt, ap);
    va_end(ap);
    sim_trace(w, "VIOLATION: %s", w->violation);
}

/* ------------------------------------------------------------ event heap */

static bool ev_less(const struct event *a, const struct event *b)
{
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static void heap_push(struct world *w, struct event *e)
{
    if (w->nheap == w->capheap) {
        w->capheap = w->capheap ? w->capheap * 2 : 1024;
        w->heap = sim_xrealloc(w->heap, w->capheap * sizeof *w->heap);
    }
    size_t i = w->nheap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_less(e, w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = e;
}

static struct event *heap_pop(struct world *w)
{
    if (w->nheap == 0)
        return NULL;
    struct event *top = w->heap[0], *last = w->heap[--w->nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct event *best = last;
        if (l < w->nheap && ev_less(w->heap[l], best))
            m = l, best = w->heap[l];
        if (r < w->nheap && ev_less(w->heap[r], best))
            m = r;
        if (m == i)
            break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (w->nheap > 0)
        w->heap[i] = last;
    return top;
}

/* Events are recycled: a world schedules millions. */
static struct event *event_get(struct world *w)
{
    struct event *e = w->free_events;
    if (e != NULL) {
        w->free_events = e->data;
        return e;
    }
    return sim_xrealloc(NULL, sizeof *e);
}

static void event_put(struct world *w, struct event *e)
{
    e->data = w->free_events;
    w->free_events = e;
}

void world_schedule(struct world *w, int64_t after, enum ev_kind kind, int node, long arg, void *data)
{
    struct event *e = event_get(w);
    e->at = w->now + (after > 0 ? after : 0);
    e->seq = w->next_seq++;
    e->kind = kind;
    e->node = node;
    e->inc = node >= 0 ? w->nodes[node].inc : 0;
    e->arg = arg;
    e->data = data;
    heap_push(w, e);
}

void world_tick_at(struct world *w, int node, int64_t due)
{
    struct node *n = &w->nodes[node];
    if (due < 0 || !n->alive)
        return;
    if (due < w->now)
        due = w->now;
    if (n->tick_at >= 0 && n->tick_at <= due && n->tick_at >= w->now)
        return; /* an earlier tick is already scheduled: it reschedules */
    n->tick_at = due;
    world_schedule(w, due - w->now, EV_TICK, node, 0, NULL);
}

int64_t world_wall_ms(const struct world *w, const struct node *n)
{
    return w->epoch_ms + w->now + (n != NULL ? n->wall_skew_ms : 0);
}

/* --------------------------------------------------------------- network */

/* A message is one allocation: the struct and its bytes. */
static struct netmsg *netmsg_alloc(size_t len)
{
    struct netmsg *m = sim_xrealloc(NULL, sizeof(struct netmsg) + len + 1);
    memset(m, 0, sizeof *m);
    m->data = (uint8_t *)(m + 1);
    m->len = len;
    return m;
}

static void netmsg_free(struct netmsg *m)
{
    free(m);
}

static struct netmsg *netmsg_copy(const struct netmsg *m)
{
    struct netmsg *c = netmsg_alloc(m->len);
    uint8_t *data = c->data;
    *c = *m;
    c->data = data;
    memcpy(c->data, m->data, m->len);
    return c;
}

static int64_t net_delay(struct world *w)
{
    if (w->healed)
        return sim_rng_range(&w->rng, 0, 2);
    if (sim_rng_chance(&w->rng, w->p.long_delay))
        return sim_rng_range(&w->rng, 1000, 15000);
    return sim_rng_range(&w->rng, w->p.delay_min_ms, w->p.delay_max_ms);
}

bool world_dies_here(struct world *w, struct node *n)
{
    if (n->dying)
        return true;
    if (w->healed || w->p.step_crash <= 0 || !sim_rng_chance(&w->rng, w->p.step_crash))
        return false;
    sim_trace(w, "%s: killed here", n->name);
    n->dying = true;
    return true;
}

void world_send(struct world *w, int from, const uint8_t *to_rid, size_t to_rid_len, const struct wire_hdr *h,
                const struct wire_frame *frames, size_t nframes)
{
    struct node *src = &w->nodes[from];
    int to = w->coord;
    unsigned to_inc = 0;
    if (to_rid != NULL) {
        to = -1;
        for (size_t i = 0; i < w->nnodes; i++) {
            struct node *n = &w->nodes[i];
            if (n->kind != NODE_COORD && n->rid_len == to_rid_len && memcmp(n->rid, to_rid, to_rid_len) == 0) {
                to = (int)i;
                to_inc = n->inc;
                break;
            }
        }
        if (to < 0)
            return; /* a routing id of a dead incarnation: ZeroMQ drops it */
        if (h->type == WIRE_PREPARE || h->type == WIRE_COMMIT || h->type == WIRE_ABORT || h->type == WIRE_STEP) {
            /* the hostile peer overhears the coordinator's requests */
            struct sniffed *sn = &w->sniff[w->nsniff++ % SIM_SNIFF_MAX];
            sn->type = h->type;
            memcpy(sn->txid, h->txid, 16);
            sn->branch = h->branch;
            sn->attempt = h->attempt;
            sn->code = h->code;
        }
    }
    struct netmsg *m = netmsg_alloc(wire_packed_len(frames, nframes));
    m->from = from;
    m->from_inc = src->inc;
    memcpy(m->rid, src->rid, src->rid_len);
    m->rid_len = src->rid_len;
    m->to = to;
    m->to_inc = to_inc;
    wire_pack(h, frames, nframes, m->data);
    w->messages++;
    if (!w->healed && sim_rng_chance(&w->rng, w->p.msg_drop)) {
        sim_trace(w, "net: drop %s %s -> %s", wire_type_name(h->type), src->name, w->nodes[to].name);
        netmsg_free(m);
        return;
    }
    if (!w->healed && sim_rng_chance(&w->rng, w->p.msg_dup))
        world_schedule(w, net_delay(w), EV_MSG, -1, 0, netmsg_copy(m));
    int64_t delay = net_delay(w);
    if (!w->healed && (h->type == WIRE_COMMIT || h->type == WIRE_ABORT) && sim_rng_chance(&w->rng, w->p.hold_decision))
        delay = sim_rng_range(&w->rng, 200, 3000);
    world_schedule(w, delay, EV_MSG, -1, 0, m);
}

static void deliver(struct world *w, struct netmsg *m)
{
    struct node *n = &w->nodes[m->to];
    if (n->kind == NODE_COORD && !n->alive) {
        /* A DEALER keeps what it could not deliver and sends it once the
         * coordinator is back; messages from a sender that died since are
         * gone with its socket. */
        if (w->nodes[m->from].alive && w->nodes[m->from].inc == m->from_inc && !sim_rng_chance(&w->rng, 0.2)) {
            world_schedule(w, sim_rng_range(&w->rng, 5, 50), EV_MSG, -1, 0, m);
            return;
        }
        netmsg_free(m);
        return;
    }
    if (!n->alive || (n->kind != NODE_COORD && n->inc != m->to_inc)) {
        netmsg_free(m);
        return;
    }
    static struct wire_msg msg;
    int rc = wire_unpack(m->data, m->len, (size_t)1 << 24, &msg);
    if (rc < 0) {
        world_violation(w, "a message from %s did not decode: %s", w->nodes[m->from].name, treaty_strerror(rc));
        netmsg_free(m);
        return;
    }
    switch (n->kind) {
    case NODE_COORD:
        scoord_msg(w, n, m->from, m->rid, m->rid_len, &msg);
        break;
    case NODE_PART:
        spart_msg(w, n, &msg);
        break;
    case NODE_CLIENT:
        sclient_msg(w, n, &msg);
        break;
    case NODE_ROGUE:
        srogue_msg(w, n, &msg);
        break;
    }
    netmsg_free(m);
}

/* ------------------------------------------------------------- processes */

static void set_rid(struct node *n)
{
    int len = snprintf((char *)n->rid, sizeof n->rid, "%s#%u", n->name, n->inc);
    n->rid_len = (size_t)len < sizeof n->rid ? (size_t)len : sizeof n->rid - 1;
}

static void node_start(struct world *w, struct node *n)
{
    n->inc++;
    n->alive = true;
    n->tick_at = -1;
    set_rid(n);
    sim_trace(w, "%s: start (incarnation %u)", n->name, n->inc);
    switch (n->kind) {
    case NODE_COORD:
        scoord_start(w, n);
        break;
    case NODE_PART:
        spart_start(w, n);
        break;
    case NODE_CLIENT:
        sclient_start(w, n);
        break;
    case NODE_ROGUE:
        srogue_start(w, n);
        break;
    }
}

static void node_crash(struct world *w, struct node *n)
{
    if (!n->alive)
        return;
    sim_trace(w, "%s: SIGKILL", n->name);
    w->crashes++;
    switch (n->kind) {
    case NODE_COORD:
        scoord_crash(w, n);
        break;
    case NODE_PART:
        spart_crash(w, n);
        break;
    case NODE_CLIENT:
        sclient_crash(w, n);
        break;
    case NODE_ROGUE:
        break;
    }
    n->alive = false;
    n->dying = false;
    n->inc++; /* events of the dead incarnation are stale from now on */
    n->tick_at = -1;
    world_schedule(w, sim_rng_range(&w->rng, w->p.down_min_ms, w->p.down_max_ms), EV_RESTART, n->id, 0, NULL);
}

void world_crash_node(struct world *w, int node)
{
    node_crash(w, &w->nodes[node]);
}

/* The next fault of each kind, drawn as a Poisson process. */
static void schedule_faults(struct world *w)
{
    for (size_t i = 0; i < w->nnodes; i++) {
        if (w->p.crash_rate > 0)
            world_schedule(w, rng_exp_ms(&w->rng, w->p.crash_rate), EV_CRASH, (int)i, 0, NULL);
        if (w->p.clock_jump_rate > 0)
            world_schedule(w, rng_exp_ms(&w->rng, w->p.clock_jump_rate), EV_CLOCK_JUMP, (int)i, 0, NULL);
    }
    for (size_t d = 0; d < w->ndbs; d++)
        if (w->p.db_restart_rate > 0)
            world_schedule(w, rng_exp_ms(&w->rng, w->p.db_restart_rate), EV_DB_DOWN, -1, (long)d, NULL);
    if (w->p.journal_restart_rate > 0)
        world_schedule(w, rng_exp_ms(&w->rng, w->p.journal_restart_rate), EV_JOURNAL_DOWN, -1, 0, NULL);
}

static void heal(struct world *w)
{
    sim_trace(w, "heal: faults stop");
    w->healed = true;
    w->healed_at = w->now;
    for (size_t i = 0; i < w->nnodes; i++)
        w->nodes[i].wall_skew_ms = 0;
    world_schedule(w, 0, EV_PROBE, -1, 0, NULL);
}

/* Quiescent: every process up, every client answered, nothing in flight at
 * the coordinator, no prepared transaction, no unfinished journal
 * transaction. Otherwise why (for the liveness violation). */
static bool quiescent(struct world *w, char *why, size_t len)
{
    for (size_t i = 0; i < w->nnodes; i++) {
        struct node *n = &w->nodes[i];
        if (!n->alive) {
            snprintf(why, len, "%s is down", n->name);
            return false;
        }
        if (n->kind == NODE_CLIENT && !sclient_done(w, n, false)) {
            snprintf(why, len, "%s waits for answers", n->name);
            return false;
        }
        if (n->kind == NODE_COORD && scoord_unfinished(w, n) > 0) {
            snprintf(why, len, "the coordinator holds %zu unfinished transactions", scoord_unfinished(w, n));
            return false;
        }
    }
    for (size_t d = 0; d < w->ndbs; d++)
        if (sdb_prepared(w->dbs[d]) > 0) {
            snprintf(why, len, "db %s holds %zu prepared transactions", sdb_name(w->dbs[d]), sdb_prepared(w->dbs[d]));
            return false;
        }
    if (sjournal_unfinished(w->journal) > 0) {
        snprintf(why, len, "the journal holds %zu unfinished transactions", sjournal_unfinished(w->journal));
        return false;
    }
    return true;
}

static void run_event_(struct world *w, struct event *e);

/* Runs one event; a process killed in the middle of it crashes after it. */
static void run_event(struct world *w, struct event *e)
{
    int target = e->kind == EV_MSG ? ((struct netmsg *)e->data)->to : e->node;
    run_event_(w, e);
    if (target >= 0 && w->nodes[target].dying)
        node_crash(w, &w->nodes[target]);
}

static void run_event_(struct world *w, struct event *e)
{
    struct node *n = e->node >= 0 ? &w->nodes[e->node] : NULL;
    bool stale = n != NULL && e->inc != n->inc;
    switch (e->kind) {
    case EV_MSG:
        deliver(w, e->data);
        e->data = NULL;
        break;
    case EV_TICK:
        if (stale || !n->alive || n->tick_at != e->at)
            break;
        n->tick_at = -1;
        if (n->kind == NODE_COORD)
            scoord_tick(w, n);
        else if (n->kind == NODE_PART)
            spart_tick(w, n);
        else if (n->kind == NODE_ROGUE)
            srogue_tick(w, n);
        else
            sclient_tick(w, n);
        break;
    case EV_JOURNAL_DONE:
        if (!stale && n->alive)
            scoord_journal_done(w, n);
        break;
    case EV_LOOKUP_DONE:
        if (!stale && n->alive)
            scoord_lookup_done(w, n, e->data);
        free(e->data);
        e->data = NULL;
        break;
    case EV_CRASH:
        if (w->healed || (e->arg == 1 && stale))
            break;
        node_crash(w, n);
        if (e->arg == 0) /* the Poisson process goes on; arg 1: a one-off crash */
            world_schedule(w, rng_exp_ms(&w->rng, w->p.crash_rate), EV_CRASH, e->node, 0, NULL);
        break;
    case EV_RESTART:
        if (!n->alive)
            node_start(w, n);
        break;
    case EV_DB_DOWN:
        if (w->healed)
            break;
        sdb_down(w, w->dbs[e->arg]);
        world_schedule(w, sim_rng_range(&w->rng, 10, 2000), EV_DB_UP, -1, e->arg, NULL);
        world_schedule(w, rng_exp_ms(&w->rng, w->p.db_restart_rate), EV_DB_DOWN, -1, e->arg, NULL);
        break;
    case EV_DB_UP:
        sdb_up(w, w->dbs[e->arg]);
        break;
    case EV_JOURNAL_DOWN:
        if (w->healed)
            break;
        sjournal_down(w, w->journal);
        world_schedule(w, sim_rng_range(&w->rng, 10, 2000), EV_JOURNAL_UP, -1, 0, NULL);
        world_schedule(w, rng_exp_ms(&w->rng, w->p.journal_restart_rate), EV_JOURNAL_DOWN, -1, 0, NULL);
        break;
    case EV_JOURNAL_UP:
        sjournal_up(w, w->journal);
        break;
    case EV_GC:
        sjournal_gc(w, w->journal);
        world_schedule(w, 1000, EV_GC, -1, 0, NULL);
        break;
    case EV_WORK:
        if (!stale && n->alive)
            sclient_work(w, n);
        break;
    case EV_CLOCK_JUMP:
        if (w->healed)
            break;
        n->wall_skew_ms = sim_rng_range(&w->rng, -3000, 3000);
        sim_trace(w, "%s: wall clock jumps to skew %lld ms", n->name, (long long)n->wall_skew_ms);
        world_schedule(w, rng_exp_ms(&w->rng, w->p.clock_jump_rate), EV_CLOCK_JUMP, e->node, 0, NULL);
        break;
    case EV_HEAL:
        heal(w);
        break;
    case EV_PROBE: {
        char why[256] = "";
        if (quiescent(w, why, sizeof why)) {
            bool late = false;
            for (size_t i = 0; i < w->nnodes; i++)
                late |= w->nodes[i].kind == NODE_CLIENT && !sclient_done(w, &w->nodes[i], true);
            if (!late) {
                sim_trace(w, "quiescent %lld ms after heal", (long long)(w->now - w->healed_at));
                w->stop = true;
            } else {
                /* quiescent; the late resubmissions come later (not a liveness matter) */
                w->healed_at = w->now;
                world_schedule(w, 100, EV_PROBE, -1, 0, NULL);
            }
        } else if (w->now - w->healed_at > w->p.liveness_ms) {
            world_violation(w, "liveness: not quiescent %lld ms after the faults stopped: %s",
                            (long long)(w->now - w->healed_at), why);
        } else {
            world_schedule(w, 100, EV_PROBE, -1, 0, NULL);
        }
        break;
    }
    }
}

/* ----------------------------------------------------------------- setup */

static const struct {
    const char *service, *instance;
} participants[] = {
    {"bank-a", "a1"},    {"bank-a", "a2"},    {"bank-b", "b1"},  {"orders", "o1"},
    {"inventory", "i1"}, {"inventory", "i2"}, {"payment", "p1"},
};
static const char *const databases[] = {"bank-a", "bank-b", "orders", "inventory", "payment"};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* A rate that is 0 for about a third of the seeds. */
static double maybe(struct sim_rng *r, double max)
{
    if (sim_rng_chance(r, 0.3))
        return 0;
    return max * (double)sim_rng_range(r, 1, 1000) / 1000.0;
}

static void draw_params(struct world *w)
{
    struct world_params *p = &w->p;
    struct sim_rng *r = &w->rng;
    p->faults_ms = sim_rng_range(r, 5000, 30000);
    p->liveness_ms = 60000;
    p->msg_drop = maybe(r, 0.15);
    p->msg_dup = maybe(r, 0.08);
    p->delay_min_ms = 0;
    p->delay_max_ms = sim_rng_range(r, 1, 60);
    p->crash_rate = maybe(r, 0.25);
    p->down_min_ms = 10;
    p->down_max_ms = sim_rng_range(r, 50, 2000);
    p->db_restart_rate = maybe(r, 0.08);
    p->journal_restart_rate = maybe(r, 0.08);
    p->clock_jump_rate = maybe(r, 0.05);
    p->lost_ack_chance = 0.5;
    p->step_crash = p->crash_rate > 0 ? maybe(r, 0.01) : 0;
    p->long_delay = maybe(r, 0.005);
    p->late = sim_rng_chance(r, 0.2);
    p->crash_in_flight = p->crash_rate > 0 ? maybe(r, 0.02) : 0;
    p->hold_decision = maybe(r, 0.1);
    p->clients = (int)sim_rng_range(r, 1, 3);
    p->n2pc = (int)sim_rng_range(r, 5, 40);
    p->nsagas = (int)sim_rng_range(r, 0, 20);
    p->auth = sim_rng_chance(r, 0.5);
    p->rogue_rate = maybe(r, 20.0);
    static const unsigned keys[] = {0, ALLOW_CLIENT, ALLOW_PARTICIPANT, ALLOW_CLIENT | ALLOW_PARTICIPANT};
    p->rogue_key = keys[sim_rng_range(r, 0, 3)];
}

struct world *world_new(uint64_t seed, bool trace, bool hash, FILE *out)
{
    struct world *w = sim_xcalloc(1, sizeof *w);
    w->seed = seed;
    w->trace = trace;
    w->hash_trace = hash;
    w->trace_hash = 1469598103934665603ull;
    w->trace_out = out != NULL ? out : stdout;
    sim_rng_seed(&w->rng, seed);
    w->epoch_ms = 1800000000000LL; /* 2027-01-15: any fixed wall clock */
    w->retention_s = 60;
    draw_params(w);
    w->journal = sjournal_new(w);
    w->check = check_new();
    w->ndbs = NELEM(databases);
    w->dbs = sim_xcalloc(w->ndbs, sizeof *w->dbs);
    for (size_t i = 0; i < w->ndbs; i++)
        w->dbs[i] = sdb_new(w, databases[i]);
    char key[32];
    for (int i = 0; i < SIM_ACCOUNTS; i++) {
        snprintf(key, sizeof key, "acct:%d", i);
        sdb_seed(w->dbs[0], key, SIM_ACCOUNT_START);
        sdb_seed(w->dbs[1], key, SIM_ACCOUNT_START);
        snprintf(key, sizeof key, "wallet:%d", i);
        sdb_seed(w->dbs[4], key, SIM_WALLET_START);
    }
    sdb_seed(w->dbs[3], "stock", SIM_STOCK_START);

    w->nnodes = 1 + NELEM(participants) + (size_t)w->p.clients + 1;
    w->nodes = sim_xcalloc(w->nnodes, sizeof *w->nodes);
    size_t k = 0;
    w->coord = 0;
    w->nodes[k] = (struct node){.kind = NODE_COORD, .id = (int)k, .tick_at = -1};
    snprintf(w->nodes[k].name, sizeof w->nodes[k].name, "treatyd");
    k++;
    for (size_t i = 0; i < NELEM(participants); i++, k++) {
        struct node *n = &w->nodes[k];
        *n = (struct node){.kind = NODE_PART, .id = (int)k, .tick_at = -1};
        snprintf(n->name, sizeof n->name, "%s/%s", participants[i].service, participants[i].instance);
        snprintf(n->service, sizeof n->service, "%s", participants[i].service);
        snprintf(n->instance, sizeof n->instance, "%s", participants[i].instance);
        for (size_t d = 0; d < w->ndbs; d++)
            if (strcmp(databases[d], n->service) == 0)
                n->db = (int)d;
    }
    int first_client = (int)k;
    for (int i = 0; i < w->p.clients; i++, k++) {
        struct node *n = &w->nodes[k];
        *n = (struct node){.kind = NODE_CLIENT, .id = (int)k, .tick_at = -1};
        snprintf(n->name, sizeof n->name, "client/%d", i + 1);
    }
    w->rogue = (int)k;
    w->nodes[k] = (struct node){.kind = NODE_ROGUE, .id = (int)k, .tick_at = -1};
    snprintf(w->nodes[k].name, sizeof w->nodes[k].name, "rogue");
    k++;
    /* The workload: who runs what (txids are made when a client starts one). */
    for (int i = 0; i < w->p.n2pc + w->p.nsagas; i++) {
        struct wtx *t = check_add(w->check, i < w->p.n2pc ? WTX_2PC : WTX_SAGA);
        t->client = first_client + (int)sim_rng_range(&w->rng, 0, w->p.clients - 1);
        if (t->kind == WTX_2PC) {
            t->from_acct = (int)sim_rng_range(&w->rng, 0, SIM_ACCOUNTS - 1);
            t->to_acct = (int)sim_rng_range(&w->rng, 0, SIM_ACCOUNTS - 1);
            t->amount = sim_rng_range(&w->rng, 1, 400) * (sim_rng_chance(&w->rng, 0.5) ? 1 : -1);
        } else {
            t->order = i;
            t->customer = (int)sim_rng_range(&w->rng, 0, SIM_ACCOUNTS - 1);
            t->qty = (int)sim_rng_range(&w->rng, 1, 5);
            t->price = sim_rng_chance(&w->rng, 0.2) ? 5000 : sim_rng_range(&w->rng, 10, 200);
            t->parallel = sim_rng_chance(&w->rng, 0.3);
        }
        t->late = w->p.late && sim_rng_chance(&w->rng, 0.15);
    }
    return w;
}

void world_run(struct world *w)
{
    sim_trace(w,
              "seed %llu: faults %lld ms, drop %.3f dup %.3f delay <= %lld ms, crash %.3f/s, db restarts %.3f/s, "
              "journal restarts %.3f/s, clock jumps %.3f/s, %d clients, %d 2PC, %d sagas, %s, forgeries %.2f/s "
              "(key: %s)",
              (unsigned long long)w->seed, (long long)w->p.faults_ms, w->p.msg_drop, w->p.msg_dup,
              (long long)w->p.delay_max_ms, w->p.crash_rate, w->p.db_restart_rate, w->p.journal_restart_rate,
              w->p.clock_jump_rate, w->p.clients, w->p.n2pc, w->p.nsagas,
              w->p.auth ? "authenticated" : "unauthenticated", w->p.rogue_rate,
              w->p.auth ? allow_roles_name(w->p.rogue_key) : "-");
    for (size_t i = 0; i < w->nnodes; i++)
        node_start(w, &w->nodes[i]);
    schedule_faults(w);
    world_schedule(w, 1000, EV_GC, -1, 0, NULL);
    world_schedule(w, w->p.faults_ms, EV_HEAL, -1, 0, NULL);
    struct event *e;
    while (!w->stop && (e = heap_pop(w)) != NULL) {
        w->now = e->at;
        w->events++;
        run_event(w, e);
        if (e->kind == EV_MSG)
            netmsg_free(e->data);
        else
            free(e->data);
        event_put(w, e);
    }
    if (!w->violated && !w->stop)
        world_violation(w, "the world ran out of events before it was quiescent");
    if (!w->violated)
        check_world(w);
}

void world_free(struct world *w)
{
    if (w == NULL)
        return;
    struct event *e;
    while ((e = heap_pop(w)) != NULL) {
        if (e->kind == EV_MSG)
            netmsg_free(e->data);
        else
            free(e->data);
        free(e);
    }
    free(w->heap);
    while (w->free_events != NULL) {
        e = w->free_events;
        w->free_events = e->data;
        free(e);
    }
    for (size_t i = 0; i < w->nnodes; i++) {
        struct node *n = &w->nodes[i];
        if (n->kind == NODE_COORD)
            scoord_free(n);
        else if (n->kind == NODE_PART)
            spart_free(n);
        else
            sclient_free(n);
    }
    free(w->nodes);
    for (size_t i = 0; i < w->ndbs; i++)
        sdb_free(w->dbs[i]);
    free(w->dbs);
    sjournal_free(w->journal);
    check_free(w->check);
    free(w);
}
