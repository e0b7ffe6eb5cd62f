/*
 * sjournal.c - the simulated journal: what journal/journal.c promises
 * (journal.h), kept in memory, with the faults of a real one.
 *
 * Semantics modelled:
 *   - append: a record gets the next sequence number of this coordinator
 *     incarnation (1, 2, ...); it waits in the pending batch.
 *   - group commit: after every event the coordinator handles, the pending
 *     records go out as one group, unless a group is in flight (then they
 *     wait for the next); the group's commit returns after a simulated
 *     latency and everything in it becomes durable at once, in append order
 *     (the durable watermark).
 *   - forced vs lazy: a group holding a forced record is flushed (survives a
 *     crash of the journal's PostgreSQL); a lazy-only group is durable when
 *     its commit returns but, until a later forced group flushes it, lost if
 *     PostgreSQL crashes (synchronous_commit = off).
 *   - a crash of the coordinator while a group is in flight: the group
 *     committed or not (both explored, by the seed); pending records are
 *     lost.
 *   - PostgreSQL down: the group in flight fails with its fate unknown (it
 *     may have landed); the writer writes it again once PostgreSQL is back,
 *     and the rewrite stores it once (journal schema 4's group id).
 *   - lookups: answered after a latency from the durable records, by the
 *     same rules as the real journal (the latest run decides; a saga's
 *     outcome is its END's detail); an error while PostgreSQL is down.
 *   - the recovery scan: the records of every txid after its last END (the
 *     unfinished runs), in sequence order.
 *   - the collector: an END older than the retention goes, with the records
 *     of its txid before it.
 * Records carry the PostgreSQL server's clock (the world's true time).
 */
#include <stdlib.h>
#include <string.h>

#include "journal.h"
#include "sim.h"
#include "sjournal.h"
#include "treaty.h"

struct srec {
    uint64_t pgseq; /* the table's seq: order across incarnations */
    uint8_t txid[16];
    enum journal_kind kind;
    unsigned nservices;
    char **services;
    int failed_branch;
    int step;
    char *detail;
    uint8_t *data;
    size_t data_len;
    bool has_data;
    int64_t written_ms; /* true wall clock */
    bool flushed;       /* survives a crash of PostgreSQL */
    bool deleted;       /* collected */
};

struct pending {
    uint64_t seq; /* the incarnation's sequence number */
    bool force;
    struct srec rec;
};

struct sjournal {
    struct srec *recs; /* durable, in pgseq order */
    size_t nrecs, caprecs;
    uint64_t next_pgseq;
    bool pg_up;

    /* the coordinator incarnation's side */
    uint64_t appended;    /* last sequence number handed out */
    struct pending *pend; /* appended, not yet in a group */
    size_t npend, cappend;
    struct pending *group; /* in flight */
    size_t ngroup;
    bool group_forced;
    bool group_landed; /* its fate, once decided */
    bool group_failed; /* failed with fate unknown: written again when PostgreSQL is back */
    bool in_flight;
    int coord; /* node id of the coordinator using it */
    unsigned coord_inc;

    uint64_t lookups, lost_lazy, landed_unknown;
};

/* ------------------------------------------------------------- records */

static void rec_copy(struct srec *d, const struct journal_rec *r)
{
    memset(d, 0, sizeof *d);
    memcpy(d->txid, r->txid, 16);
    d->kind = r->kind;
    d->nservices = r->nservices;
    if (r->nservices > 0) {
        d->services = sim_xcalloc(r->nservices, sizeof *d->services);
        for (unsigned i = 0; i < r->nservices; i++)
            d->services[i] = sim_xstrdup(r->services[i]);
    }
    d->failed_branch = r->failed_branch;
    d->step = r->step;
    d->detail = r->detail ? sim_xstrdup(r->detail) : NULL;
    if (r->data != NULL) {
        d->has_data = true;
        d->data = sim_xcalloc(r->data_len + 1, 1);
        memcpy(d->data, r->data, r->data_len);
        d->data_len = r->data_len;
    }
}

static void rec_free(struct srec *d)
{
    for (unsigned i = 0; i < d->nservices; i++)
        free(d->services[i]);
    free(d->services);
    free(d->detail);
    free(d->data);
    memset(d, 0, sizeof *d);
}

static void to_journal_rec(const struct srec *s, struct journal_rec *r)
{
    memset(r, 0, sizeof *r);
    memcpy(r->txid, s->txid, 16);
    r->kind = s->kind;
    r->nservices = s->nservices;
    r->services = (const char *const *)s->services;
    r->failed_branch = s->failed_branch;
    r->step = s->kind == JOURNAL_STEP || s->kind == JOURNAL_AUDIT ? s->step : -1;
    r->detail = s->detail;
    r->data = s->has_data ? s->data : NULL;
    r->data_len = s->data_len;
}

/* Stores a copy of a landed record in the table. */
static void store(struct world *w, struct sjournal *j, const struct srec *r, bool flushed)
{
    if (j->nrecs == j->caprecs) {
        j->caprecs = j->caprecs ? 2 * j->caprecs : 1024;
        j->recs = sim_xrealloc(j->recs, j->caprecs * sizeof *j->recs);
    }
    struct journal_rec jr;
    to_journal_rec(r, &jr);
    jr.step = r->step;
    struct srec *d = &j->recs[j->nrecs++];
    rec_copy(d, &jr);
    d->pgseq = ++j->next_pgseq;
    d->written_ms = world_wall_ms(w, NULL);
    d->flushed = flushed;
}

/* A forced commit flushes the WAL: every earlier record survives too. */
static void flush_all(struct sjournal *j)
{
    for (size_t i = j->nrecs; i-- > 0 && !j->recs[i].flushed;)
        j->recs[i].flushed = true;
}

/* ------------------------------------------------------------ lifecycle */

struct sjournal *sjournal_new(struct world *w)
{
    (void)w;
    struct sjournal *j = sim_xcalloc(1, sizeof *j);
    j->pg_up = true;
    j->coord = -1;
    return j;
}

static void pend_free(struct pending *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rec_free(&p[i].rec);
}

void sjournal_free(struct sjournal *j)
{
    if (j == NULL)
        return;
    for (size_t i = 0; i < j->nrecs; i++)
        rec_free(&j->recs[i]);
    free(j->recs);
    pend_free(j->pend, j->npend);
    free(j->pend);
    pend_free(j->group, j->ngroup);
    free(j->group);
    free(j);
}

bool sjournal_healthy(const struct sjournal *j)
{
    return j->pg_up && !j->group_failed;
}

bool sjournal_up_now(const struct sjournal *j)
{
    return j->pg_up;
}

void sjournal_attach(struct world *w, struct sjournal *j, struct node *coord)
{
    (void)w;
    /* A new coordinator incarnation: its own sequence numbers from 1. */
    pend_free(j->pend, j->npend);
    j->npend = 0;
    pend_free(j->group, j->ngroup);
    j->ngroup = 0;
    j->in_flight = j->group_failed = false;
    j->appended = 0;
    j->coord = coord->id;
    j->coord_inc = coord->inc;
}

uint64_t sjournal_append(struct sjournal *j, const struct journal_rec *r, bool force)
{
    if (j->npend == j->cappend) {
        j->cappend = j->cappend ? 2 * j->cappend : 256;
        j->pend = sim_xrealloc(j->pend, j->cappend * sizeof *j->pend);
    }
    struct pending *p = &j->pend[j->npend++];
    p->seq = ++j->appended;
    p->force = force;
    rec_copy(&p->rec, r);
    return p->seq;
}

/* Commit latency: a forced group waits for the WAL flush. */
static int64_t commit_latency(struct world *w, bool forced)
{
    return forced ? sim_rng_range(&w->rng, 1, 6) : sim_rng_range(&w->rng, 1, 25);
}

void sjournal_flush(struct world *w, struct sjournal *j)
{
    if (j->in_flight || j->npend == 0 || !j->pg_up)
        return;
    free(j->group);
    j->group = j->pend;
    j->ngroup = j->npend;
    j->pend = NULL;
    j->npend = j->cappend = 0;
    j->group_forced = false;
    for (size_t i = 0; i < j->ngroup; i++)
        j->group_forced |= j->group[i].force;
    j->in_flight = true;
    j->group_landed = false;
    world_schedule(w, commit_latency(w, j->group_forced), EV_JOURNAL_DONE, j->coord, 0, NULL);
}

static void land_group(struct world *w, struct sjournal *j)
{
    if (j->group_landed)
        return;
    /* Every group commits with synchronous_commit = on (journal.c): once its
     * commit returned it survives a crash of PostgreSQL, lazy or not. */
    for (size_t i = 0; i < j->ngroup; i++)
        store(w, j, &j->group[i].rec, true);
    flush_all(j);
    j->group_landed = true;
}

uint64_t sjournal_commit_done(struct world *w, struct sjournal *j)
{
    if (!j->in_flight)
        return 0;
    if (!j->pg_up) {
        /* The connection broke with the commit's fate unknown. */
        if (!j->group_landed && !j->group_failed && sim_rng_chance(&w->rng, w->p.lost_ack_chance)) {
            land_group(w, j);
            j->landed_unknown++;
        }
        j->group_failed = true;
        sim_trace(w, "journal: group of %zu records failed (landed: %s); written again when PostgreSQL is back",
                  j->ngroup, j->group_landed ? "yes" : "no");
        return 0;
    }
    land_group(w, j); /* a rewrite of a group that landed stores nothing twice */
    uint64_t watermark = j->ngroup ? j->group[j->ngroup - 1].seq : 0;
    sim_trace(w, "journal: group of %zu records durable up to seq %llu%s", j->ngroup, (unsigned long long)watermark,
              j->group_forced ? " (forced)" : "");
    pend_free(j->group, j->ngroup);
    j->ngroup = 0;
    j->in_flight = false;
    j->group_failed = false;
    return watermark;
}

void sjournal_coord_crash(struct world *w, struct sjournal *j)
{
    if (j->in_flight && !j->group_landed && j->pg_up && sim_rng_chance(&w->rng, 0.5)) {
        land_group(w, j); /* it committed; the acknowledgement died with us */
        sim_trace(w, "journal: the group in flight at the crash landed (%zu records)", j->ngroup);
    }
    pend_free(j->pend, j->npend);
    j->npend = 0;
    pend_free(j->group, j->ngroup);
    j->ngroup = 0;
    j->in_flight = false;
    j->group_failed = false;
    j->coord = -1;
}

void sjournal_down(struct world *w, struct sjournal *j)
{
    size_t lost = 0;
    if (j->in_flight && j->group_landed && !j->group_forced)
        j->group_landed = false; /* its rows go below; the rewrite stores them again */
    for (size_t i = j->nrecs; i-- > 0 && !j->recs[i].flushed;) {
        rec_free(&j->recs[i]);
        j->nrecs--;
        lost++;
    }
    j->lost_lazy += lost;
    j->pg_up = false;
    sim_trace(w, "journal: PostgreSQL restarts (down); %zu lazily committed records lost", lost);
}

void sjournal_up(struct world *w, struct sjournal *j)
{
    if (j->pg_up)
        return;
    j->pg_up = true;
    sim_trace(w, "journal: PostgreSQL up");
    if (j->coord >= 0 && w->nodes[j->coord].alive && w->nodes[j->coord].inc == j->coord_inc) {
        if (j->in_flight)
            world_schedule(w, commit_latency(w, true), EV_JOURNAL_DONE, j->coord, 0, NULL);
        else
            sjournal_flush(w, j);
    }
}

/* --------------------------------------------------------------- scan */

static bool txid_eq(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, 16) == 0;
}

static int cmp_txid_seq(const void *a, const void *b)
{
    const struct srec *const *x = a, *const *y = b;
    int c = memcmp((*x)->txid, (*y)->txid, 16);
    if (c != 0)
        return c;
    return (*x)->pgseq < (*y)->pgseq ? -1 : (*x)->pgseq > (*y)->pgseq;
}

/* The live records sorted by (txid, seq); caller frees. */
static struct srec **sorted(const struct sjournal *j, size_t *n)
{
    struct srec **v = sim_xcalloc(j->nrecs + 1, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < j->nrecs; i++)
        if (!j->recs[i].deleted)
            v[k++] = &j->recs[i];
    qsort(v, k, sizeof *v, cmp_txid_seq);
    *n = k;
    return v;
}

int sjournal_scan(const struct sjournal *j, journal_scan_fn cb, void *arg)
{
    size_t n;
    struct srec **v = sorted(j, &n);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        size_t e = i;
        while (e < n && txid_eq(v[e]->txid, v[i]->txid))
            e++;
        size_t start = i;
        for (size_t k = i; k < e; k++)
            if (v[k]->kind == JOURNAL_END)
                start = k + 1;
        for (size_t k = start; k < e && rc == 0; k++) {
            struct journal_rec r;
            to_journal_rec(v[k], &r);
            rc = cb(arg, &r, 0);
        }
        i = e;
    }
    free(v);
    return rc;
}

int64_t sjournal_newest_txid(const struct sjournal *j, int64_t below_ms)
{
    int64_t newest = -1;
    for (size_t i = 0; i < j->nrecs; i++) {
        const struct srec *r = &j->recs[i];
        if (r->deleted)
            continue;
        int64_t t = 0;
        for (int k = 0; k < 6; k++)
            t = t << 8 | r->txid[k];
        if (t <= below_ms && t > newest)
            newest = t;
    }
    return newest;
}

size_t sjournal_unfinished(const struct sjournal *j)
{
    size_t n, count = 0;
    struct srec **v = sorted(j, &n);
    for (size_t i = 0; i < n;) {
        size_t e = i;
        while (e < n && txid_eq(v[e]->txid, v[i]->txid))
            e++;
        count += v[e - 1]->kind != JOURNAL_END;
        i = e;
    }
    free(v);
    return count + j->npend;
}

/* ------------------------------------------------------------- lookups */

void sjournal_lookup(struct world *w, struct sjournal *j, const uint8_t txid[16])
{
    uint8_t *t = sim_xcalloc(1, 16);
    memcpy(t, txid, 16);
    j->lookups++;
    world_schedule(w, sim_rng_range(&w->rng, 1, 5), EV_LOOKUP_DONE, j->coord, 0, t);
}

static bool detail_is(const char *d, const char *want)
{
    return d != NULL && strcmp(d, want) == 0;
}

void sjournal_lookup_answer(const struct sjournal *j, const uint8_t txid[16], struct journal_lookup_result *out)
{
    memset(out, 0, sizeof *out);
    memcpy(out->txid, txid, 16);
    out->failed_branch = -1;
    if (!j->pg_up) {
        out->error = TREATY_EPG;
        return;
    }
    /* This txid's rows in seq order, as the real lookup reads them. */
    struct srec **v = sim_xcalloc(j->nrecs + 1, sizeof *v);
    size_t n = 0;
    for (size_t i = 0; i < j->nrecs; i++)
        if (!j->recs[i].deleted && txid_eq(j->recs[i].txid, txid))
            v[n++] = &j->recs[i];
    out->outcome = JOURNAL_OUTCOME_NONE;
    size_t L = n;
    for (size_t i = n; i-- > 0;)
        if (v[i]->kind != JOURNAL_END && v[i]->kind != JOURNAL_AUDIT) {
            L = i;
            break;
        }
    if (L == n) {
        for (size_t i = n; i-- > 0;)
            if (detail_is(v[i]->detail, "completed") || detail_is(v[i]->detail, "compensated")) {
                out->outcome =
                    detail_is(v[i]->detail, "completed") ? JOURNAL_OUTCOME_COMPLETED : JOURNAL_OUTCOME_COMPENSATED;
                break;
            }
    } else if (v[L]->kind == JOURNAL_COMMIT) {
        out->outcome = JOURNAL_OUTCOME_COMMITTED;
    } else if (v[L]->kind == JOURNAL_ABORT) {
        out->outcome = JOURNAL_OUTCOME_ABORTED;
        out->failed_branch = v[L]->failed_branch;
        snprintf(out->detail, sizeof out->detail, "%s", v[L]->detail ? v[L]->detail : "");
    } else {
        size_t start = 0;
        for (size_t i = L + 1; i-- > 0;)
            if (v[i]->kind == JOURNAL_END) {
                start = i + 1;
                break;
            }
        for (size_t i = L + 1; i-- > start;)
            if (v[i]->kind == JOURNAL_TURN) {
                out->failed_branch = v[i]->failed_branch;
                snprintf(out->detail, sizeof out->detail, "%s", v[i]->detail ? v[i]->detail : "");
                break;
            }
        out->outcome = JOURNAL_OUTCOME_UNFINISHED;
        size_t e = L + 1;
        while (e < n && v[e]->kind != JOURNAL_END)
            e++;
        if (e < n) {
            if (detail_is(v[e]->detail, "completed"))
                out->outcome = JOURNAL_OUTCOME_COMPLETED;
            else if (detail_is(v[e]->detail, "compensated"))
                out->outcome = JOURNAL_OUTCOME_COMPENSATED;
        }
    }
    free(v);
}

/* ----------------------------------------------------------- collector */

void sjournal_gc(struct world *w, struct sjournal *j)
{
    if (!j->pg_up)
        return;
    int64_t horizon = world_wall_ms(w, NULL) - (int64_t)w->retention_s * 1000;
    size_t deleted = 0;
    for (size_t i = 0; i < j->nrecs; i++) {
        struct srec *e = &j->recs[i];
        if (e->deleted || e->kind != JOURNAL_END || e->written_ms >= horizon)
            continue;
        for (size_t k = 0; k <= i; k++) {
            struct srec *r = &j->recs[k];
            if (!r->deleted && txid_eq(r->txid, e->txid) && r->pgseq <= e->pgseq) {
                r->deleted = true;
                deleted++;
            }
        }
    }
    if (deleted > 0)
        sim_trace(w, "journal: collector deleted %zu records", deleted);
}

/* Facts for the checks: the last decision record of txid among the live
 * and collected records (collected ones still count: they were durable). */
int sjournal_decision(const struct sjournal *j, const uint8_t txid[16], bool *committed, bool *aborted)
{
    *committed = *aborted = false;
    for (size_t i = 0; i < j->nrecs; i++) {
        const struct srec *r = &j->recs[i];
        if (!txid_eq(r->txid, txid))
            continue;
        if (r->kind == JOURNAL_COMMIT)
            *committed = true;
        else if (r->kind == JOURNAL_ABORT)
            *aborted = true;
    }
    return 0;
}
