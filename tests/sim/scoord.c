/*
 * scoord.c - a simulated treatyd: the real coordinator core (coordinator/
 * core.h) with the simulated journal (sjournal.c), the simulated network
 * (world_send) and the simulated clock, in the shape of coordinator/loop.c:
 * every event is handed to the core, then the journal's pending records go
 * out as one group and the core's next timer is scheduled.
 *
 * Start: like treatyd, it waits for the journal's PostgreSQL, recovers from
 * the journal's unfinished runs, and serves. A crash loses the core (all
 * volatile state) and whatever the journal had not committed.
 *
 * Identities: with authentication (world_params.auth) every message reaches
 * the core with its sender's allow-list entry, as treatyd's loop looks it
 * up for the CURVE key of the connection: a key per process, the same in
 * every incarnation; clients are clients, participants participants of
 * their service, the hostile peer whatever its seed gave it. Without, the
 * core gets no peer (the routing id is the identity), as in treatyd
 * without security.curve.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allowlist.h"
#include "config.h"
#include "core.h"
#include "log.h"
#include "sim.h"
#include "sjournal.h"

struct scoord {
    struct world *w;
    struct node *n;
    struct config cfg;
    struct core *core;
    struct allow_entry *peers; /* with authentication: per node id */
};

/* The allow-list of the world: a key per node (from its name: stable across
 * restarts), roles by kind. */
static void make_peers(struct world *w, struct scoord *s)
{
    s->peers = sim_xcalloc(w->nnodes, sizeof *s->peers);
    for (size_t i = 0; i < w->nnodes; i++) {
        const struct node *n = &w->nodes[i];
        struct allow_entry *e = &s->peers[i];
        uint64_t h = 1469598103934665603ull;
        for (const char *c = n->name; *c; c++)
            h = (h ^ (uint8_t)*c) * 1099511628211ull;
        for (size_t b = 0; b < sizeof e->key; b++) {
            h = (h ^ b) * 1099511628211ull;
            e->key[b] = (uint8_t)(h >> 56);
        }
        switch (n->kind) {
        case NODE_CLIENT:
            e->roles = ALLOW_CLIENT;
            break;
        case NODE_PART:
            e->roles = ALLOW_PARTICIPANT;
            snprintf(e->services, sizeof e->services, "%s", n->service);
            break;
        case NODE_ROGUE:
            e->roles = w->p.rogue_key;
            if (e->roles & ALLOW_PARTICIPANT)
                snprintf(e->services, sizeof e->services, "rogue");
            break;
        case NODE_COORD:
            break;
        }
    }
}

static struct core_time now_of(struct world *w, struct node *n)
{
    struct core_time t = {.mono_ms = w->now, .wall_ms = world_wall_ms(w, n)};
    return t;
}

/* ------------------------------------------------------------- core_io */

static void io_send(void *ctx, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
                    const struct wire_frame *frames, size_t nframes)
{
    struct scoord *s = ctx;
    if (world_dies_here(s->w, s->n))
        return;
    sim_trace(s->w, "%s -> %.*s: %s branch %u code %u", s->n->name, (int)rid_len, (const char *)rid,
              wire_type_name(h->type), h->branch, h->code);
    world_send(s->w, s->n->id, rid, rid_len, h, frames, nframes);
}

static uint64_t io_append(void *ctx, const struct journal_rec *r, bool force)
{
    struct scoord *s = ctx;
    world_dies_here(s->w, s->n); /* then the record stays pending: the crash loses it */
    uint64_t seq = sjournal_append(s->w->journal, r, force);
    if (force && !s->w->healed && sim_rng_chance(&s->w->rng, s->w->p.crash_in_flight))
        world_schedule(s->w, sim_rng_range(&s->w->rng, 0, 4), EV_CRASH, s->n->id, 1, NULL);
    sim_trace(s->w, "%s: append %s seq %llu%s", s->n->name, journal_kind_name(r->kind), (unsigned long long)seq,
              force ? " (forced)" : "");
    return seq;
}

static void io_lookup(void *ctx, const uint8_t txid[16])
{
    struct scoord *s = ctx;
    sjournal_lookup(s->w, s->w->journal, txid);
}

static bool io_healthy(void *ctx)
{
    struct scoord *s = ctx;
    return sjournal_healthy(s->w->journal);
}

/* ------------------------------------------------------------ the loop */

/* What treatyd's loop does after handling events: flush the journal, arm
 * the poll timeout for the core's next timer. */
static void after(struct scoord *s)
{
    if (s->core == NULL || s->n->dying)
        return;
    sjournal_flush(s->w, s->w->journal);
    world_tick_at(s->w, s->n->id, core_next_tick(s->core));
}

static void sim_config(struct world *w, struct config *c)
{
    config_defaults(c);
    c->heartbeat_ms = 100;
    c->dead_after_ms = 500;
    c->resend_initial_ms = 50;
    c->resend_max_ms = 500;
    c->default_timeout_ms = 1000;
    c->stuck_after_attempts = 20;
    c->stuck_retry_ms = 500;
    c->journal_retention_s = w->retention_s;
    c->txid_max_future_s = 5;
    c->txid_max_age_s = w->retention_s - 10;
    c->outcome_cache = 32; /* small: most answers about finished txids are journal lookups */
    c->max_inflight = 100000;
}

static int recover_cb(void *arg, const struct journal_rec *r, long long fin)
{
    struct scoord *s = arg;
    return core_recover_record(s->core, r, fin);
}

static void try_start(struct scoord *s)
{
    struct world *w = s->w;
    if (!sjournal_up_now(w->journal)) {
        /* treatyd keeps trying to connect */
        world_tick_at(w, s->n->id, w->now + 50);
        return;
    }
    struct core_io io = {
        .ctx = s, .send = io_send, .append = io_append, .lookup = io_lookup, .journal_healthy = io_healthy};
    sjournal_attach(w, w->journal, s->n);
    s->core = core_new(&s->cfg, &io, sim_rng_next(&w->rng));
    sjournal_scan(w->journal, recover_cb, s);
    core_recover_newest(
        s->core, sjournal_newest_txid(w->journal, world_wall_ms(w, s->n) + (int64_t)s->cfg.txid_max_future_s * 1000));
    size_t n = core_recover_done(s->core, now_of(w, s->n));
    sim_trace(w, "%s: recovered %zu unfinished transactions; serving", s->n->name, n);
    after(s);
}

void scoord_start(struct world *w, struct node *n)
{
    struct scoord *s = n->impl;
    if (s == NULL) {
        s = n->impl = sim_xcalloc(1, sizeof *s);
        s->w = w;
        s->n = n;
        sim_config(w, &s->cfg);
    }
    try_start(s);
}

void scoord_crash(struct world *w, struct node *n)
{
    struct scoord *s = n->impl;
    if (s->core != NULL)
        sjournal_coord_crash(w, w->journal);
    core_destroy(&s->core);
}

void scoord_msg(struct world *w, struct node *n, int from, const uint8_t *rid, size_t rid_len, const struct wire_msg *m)
{
    struct scoord *s = n->impl;
    if (s->core == NULL)
        return; /* still connecting to the journal: not listening yet */
    sim_trace(w, "%.*s -> %s: %s branch %u code %u", (int)rid_len, (const char *)rid, n->name,
              wire_type_name(m->hdr.type), m->hdr.branch, m->hdr.code);
    if (w->p.auth && s->peers == NULL)
        make_peers(w, s);
    core_on_message(s->core, rid, rid_len, w->p.auth ? &s->peers[from] : NULL, m, now_of(w, n));
    after(s);
}

void scoord_tick(struct world *w, struct node *n)
{
    struct scoord *s = n->impl;
    if (s->core == NULL) {
        try_start(s);
        return;
    }
    core_on_tick(s->core, now_of(w, n));
    after(s);
}

void scoord_journal_done(struct world *w, struct node *n)
{
    struct scoord *s = n->impl;
    if (s->core == NULL)
        return;
    uint64_t seq = sjournal_commit_done(w, w->journal);
    if (seq > 0)
        core_on_durable(s->core, seq, now_of(w, n));
    after(s);
}

void scoord_lookup_done(struct world *w, struct node *n, void *lookup)
{
    struct scoord *s = n->impl;
    if (s->core == NULL)
        return;
    struct journal_lookup_result r;
    sjournal_lookup_answer(w->journal, lookup, &r);
    core_on_lookup(s->core, &r, now_of(w, n));
    after(s);
}

size_t scoord_unfinished(struct world *w, struct node *n)
{
    (void)w;
    struct scoord *s = n->impl;
    return s->core != NULL ? core_unfinished(s->core) : 1;
}

void scoord_free(struct node *n)
{
    struct scoord *s = n->impl;
    if (s == NULL)
        return;
    core_destroy(&s->core);
    free(s->peers);
    free(s);
    n->impl = NULL;
}
