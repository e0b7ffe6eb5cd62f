/*
 * coord.c - treatyd's event loop and the two-phase-commit state machines.
 *
 * One thread. zmq_poll() waits on the ROUTER socket (clients and participants)
 * and the journal's notification socket; a timer heap drives prepare
 * deadlines and decision re-sends. Every journal record appended during one
 * turn of the loop is handed to the journal writer at the end of that turn,
 * which commits them together (group commit).
 *
 * 2PC, presumed abort (see txn.h for the states):
 *   SUBMIT   -> pick a live instance per branch, send PREPARE to each
 *   VOTE YES -> when all are in: append COMMIT (forced). The commit point is
 *               that record's Postgres commit.
 *   durable  -> tell the waiting clients COMMITTED, send COMMIT to branches
 *   VOTE NO / deadline / no instance
 *            -> append ABORT (forced, so a resubmitted txid can never run
 *               again after its client was told "aborted"), send ABORT at
 *               once (no need to wait: no record means abort anyway), tell
 *               clients ABORTED once the record is durable
 *   ACK      -> when every branch acknowledged: append END (lazy), forget the
 *               transaction, remember its outcome for retention_s
 *   INQUIRE  -> answer from memory; ABORT when the txid is unknown
 *
 * Crash windows (what recovery does):
 *   - before the COMMIT record is durable: no COMMIT record, so the restarted
 *     coordinator knows nothing; participants INQUIRE and are told ABORT.
 *   - after it is durable, before or while sending: recovery finds COMMIT
 *     without END and re-sends COMMIT until every branch ACKs.
 *   - after the last ACK, before END is durable: recovery re-sends COMMIT;
 *     participants answer idempotently (COMMIT PREPARED of a missing gid).
 */
#include "coord.h"
#include "coord_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "fault.h"
#include "journal.h"
#include "log.h"
#include "registry.h"
#include "saga.h"
#include "timers.h"
#include "treaty.h"
#include "txmap.h"
#include "txn.h"
#include "wire.h"

/* ------------------------------------------------------------ helpers */

long long coord_wall_seconds(void)
{
    return (long long)time(NULL);
}

const char *coord_fmt_txid(const uint8_t *txid, char *buf)
{
    return treaty_txid_format((const treaty_txid_t *)txid, buf);
}

char *coord_strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    char *d = strdup(s);
    if (d == NULL)
        abort();
    return d;
}

void coord_send(struct coord *c, const uint8_t *rid, size_t rid_len, uint8_t type, const uint8_t *txid, unsigned branch,
                unsigned attempt, unsigned code, const struct wire_frame *frames, size_t n)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid)
        memcpy(h.txid, txid, 16);
    h.branch = (uint16_t)branch;
    h.attempt = (uint16_t)attempt;
    h.code = (uint16_t)code;
    if (wire_send(c->router, rid, rid_len, &h, frames, n) < 0)
        log_debug("send %s failed: %s (peer gone?)", wire_type_name(type), zmq_strerror(errno));
}

void coord_reply_error(struct coord *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid, int err,
                       const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct wire_frame f = wire_str(text);
    coord_send(c, rid, rid_len, WIRE_ERROR, txid, 0, 0, (unsigned)-err, &f, 1);
}

void coord_reply_outcome(struct coord *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid,
                         enum treaty_status st, int failed_branch, const char *reason)
{
    struct wire_frame f = wire_str(reason ? reason : "");
    coord_send(c, rid, rid_len, WIRE_OUTCOME, txid, failed_branch < 0 ? TREATY_NO_BRANCH : (unsigned)failed_branch, 0,
               st, &f, 1);
}

void coord_add_timer(struct coord *c, const uint8_t txid[16], int64_t due_ms)
{
    timers_add(&c->timers, due_ms, txid);
}

static void set_timer(struct coord *c, struct txn *t, int64_t due_ms)
{
    t->timer_due_ms = due_ms;
    coord_add_timer(c, t->txid, due_ms);
}

/* Exponential backoff with +-25% jitter, capped. */
static int next_backoff(const struct coord *c, int cur)
{
    int n = cur * 2;
    if (n > c->cfg->resend_max_ms || n <= 0)
        n = c->cfg->resend_max_ms;
    return n;
}

int coord_jitter(int ms)
{
    int span = ms / 4;
    if (span <= 0)
        return ms;
    return ms - span + (int)((unsigned)rand() % (unsigned)(2 * span + 1));
}

static void expect_durable(struct coord *c, struct txn *t, uint64_t seq)
{
    t->record_seq = seq;
    coord_expect_durable(c, t->txid, seq);
}

void coord_expect_durable(struct coord *c, const uint8_t txid[16], uint64_t seq)
{
    if (c->wait_len == c->wait_cap) {
        size_t ncap = c->wait_cap ? c->wait_cap * 2 : 1024;
        struct durable_wait *nw = malloc(ncap * sizeof *nw);
        if (nw == NULL)
            abort();
        for (size_t i = 0; i < c->wait_len; i++)
            nw[i] = c->waits[(c->wait_head + i) % c->wait_cap];
        free(c->waits);
        c->waits = nw;
        c->wait_cap = ncap;
        c->wait_head = 0;
    }
    struct durable_wait *w = &c->waits[(c->wait_head + c->wait_len) % c->wait_cap];
    w->seq = seq;
    memcpy(w->txid, txid, 16);
    c->wait_len++;
}

/* ------------------------------------------------------------ finished outcomes */

void coord_remember_done(struct coord *c, const uint8_t *txid, enum treaty_status st, int failed_branch,
                         const char *reason, long long finished_at)
{
    struct done *d = txmap_get(&c->finished, txid);
    if (d != NULL)
        return;
    d = calloc(1, sizeof *d);
    if (d == NULL)
        abort();
    memcpy(d->txid, txid, 16);
    d->status = (uint8_t)st;
    d->failed_branch = (int16_t)failed_branch;
    d->finished_at = finished_at;
    d->reason = coord_strdup(reason);
    txmap_put(&c->finished, txid, d);
    if (c->done_tail)
        c->done_tail->next = d;
    else
        c->done_head = d;
    c->done_tail = d;
}

static void expire_done(struct coord *c)
{
    long long horizon = coord_wall_seconds() - c->cfg->journal_retention_s;
    while (c->done_head && c->done_head->finished_at < horizon) {
        struct done *d = c->done_head;
        c->done_head = d->next;
        if (c->done_head == NULL)
            c->done_tail = NULL;
        txmap_del(&c->finished, d->txid);
        free(d->reason);
        free(d);
    }
}

/* ------------------------------------------------------------ decisions */

static void tell_waiters(struct coord *c, struct txn *t, enum treaty_status st)
{
    struct waiter *w = t->waiters;
    while (w) {
        struct waiter *n = w->next;
        coord_reply_outcome(c, w->rid, w->rid_len, t->txid, st, t->failed_branch, t->reason);
        free(w);
        w = n;
    }
    t->waiters = NULL;
}

/* Sends the decision to branch i: to the instance that prepared it when that
 * one is still live, else to any live instance of the service (they share the
 * database that holds the prepared transaction). */
static void send_decision(struct coord *c, struct txn *t, unsigned i)
{
    struct branch *b = &t->branches[i];
    uint8_t type = t->state == TXN_COMMITTING ? WIRE_COMMIT : WIRE_ABORT;
    const uint8_t *rid = NULL;
    size_t rid_len = 0;
    if (b->rid_len > 0 && registry_is_live(c->reg, b->service, b->rid, b->rid_len)) {
        rid = b->rid;
        rid_len = b->rid_len;
    } else {
        const struct instance *in = registry_pick(c->reg, b->service);
        if (in == NULL)
            return; /* nobody to tell now; the re-send timer tries again */
        rid = in->rid;
        rid_len = in->rid_len;
    }
    coord_send(c, rid, rid_len, type, t->txid, i, b->attempt++, 0, NULL, 0);
}

static void send_decisions(struct coord *c, struct txn *t)
{
    for (unsigned i = 0; i < t->nbranches; i++) {
        if (t->branches[i].acked)
            continue;
        send_decision(c, t, i);
        if (i == 0 && t->state == TXN_COMMITTING)
            FAULT_POINT("coord.between_commit_sends");
    }
    if (t->resend_ms <= 0)
        t->resend_ms = c->cfg->resend_initial_ms;
    set_timer(c, t, timers_now_ms() + coord_jitter(t->resend_ms));
    t->resend_ms = next_backoff(c, t->resend_ms);
}

static void finish(struct coord *c, struct txn *t)
{
    char id[TREATY_TXID_STRLEN];
    enum treaty_status st = t->state == TXN_COMMITTING ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED;
    txn_set_state(t, TXN_DONE);
    struct journal_rec r;
    memset(&r, 0, sizeof r);
    memcpy(r.txid, t->txid, 16);
    r.kind = JOURNAL_END;
    r.failed_branch = -1;
    /* Lazy: if END is lost in a crash, recovery re-sends the decision and the
     * participants acknowledge again (decisions are idempotent). */
    journal_append(c->journal, &r, false);
    log_debug("txn %s: finished %s", coord_fmt_txid(t->txid, id), treaty_status_name(st));
    /* Clients still waiting (only possible for a recovered or resubmitted txn
     * whose decision was durable) get the outcome now. */
    if (t->decision_durable)
        tell_waiters(c, t, st);
    coord_remember_done(c, t->txid, st, t->failed_branch, t->reason, coord_wall_seconds());
    txmap_del(&c->inflight, t->txid);
    txn_free(t);
}

static uint64_t append_decision(struct coord *c, struct txn *t, enum journal_kind kind)
{
    const char *services[WIRE_MAX_BRANCHES];
    bool any_prepared = false;
    for (unsigned i = 0; i < t->nbranches; i++) {
        services[i] = t->branches[i].service;
        any_prepared |= t->branches[i].prepared;
    }
    struct journal_rec r;
    memset(&r, 0, sizeof r);
    memcpy(r.txid, t->txid, 16);
    r.kind = kind;
    /* An abort decided before any PREPARE was sent (no live instance) has
     * nobody to tell: its record lists no services, so recovery finishes it
     * at once instead of waiting for acknowledgements that cannot come. */
    r.nservices = kind == JOURNAL_ABORT && !any_prepared ? 0 : t->nbranches;
    r.services = services;
    r.detail = t->reason;
    r.failed_branch = t->failed_branch;
    return journal_append(c->journal, &r, true);
}

static void decide_abort(struct coord *c, struct txn *t, int failed_branch, const char *reason)
{
    char id[TREATY_TXID_STRLEN];
    txn_set_state(t, TXN_ABORTING);
    t->failed_branch = failed_branch;
    free(t->reason);
    t->reason = coord_strdup(reason);
    log_info("txn %s: abort (branch %d: %s)", coord_fmt_txid(t->txid, id), failed_branch, reason);
    /* The ABORT record is forced only so that the client's answer survives a
     * crash: until it is durable a crash forgets the txn and presumed abort
     * answers every INQUIRE with ABORT, which is the same outcome. */
    expect_durable(c, t, append_decision(c, t, JOURNAL_ABORT));
    /* Branches that voted NO or were never sent PREPARE have nothing to undo. */
    for (unsigned i = 0; i < t->nbranches; i++) {
        struct branch *b = &t->branches[i];
        if (!b->prepared || b->vote == VOTE_NO) {
            b->acked = true;
            t->nacked++;
        }
    }
    c->st.aborted++;
    if (t->nacked == t->nbranches) {
        /* nothing to tell any participant; END after the record is durable */
        t->timer_due_ms = -1;
        return;
    }
    t->resend_ms = 0;
    send_decisions(c, t);
}

static void decide_commit(struct coord *c, struct txn *t)
{
    FAULT_POINT("coord.before_decision");
    txn_set_state(t, TXN_LOGGING_COMMIT);
    /* The commit point: once this record's Postgres commit returns, the
     * transaction commits whatever crashes. Nothing is sent until then
     * (see on_durable). */
    expect_durable(c, t, append_decision(c, t, JOURNAL_COMMIT));
    t->timer_due_ms = -1; /* the prepare deadline no longer applies */
}

/* The decision record of t is durable. */
static void on_decision_durable(struct coord *c, struct txn *t)
{
    t->decision_durable = true;
    if (t->state == TXN_LOGGING_COMMIT) {
        FAULT_POINT("coord.after_commit_durable");
        txn_set_state(t, TXN_COMMITTING);
        c->st.committed++;
        tell_waiters(c, t, TREATY_STATUS_COMMITTED);
        t->resend_ms = 0;
        send_decisions(c, t);
    } else if (t->state == TXN_ABORTING) {
        tell_waiters(c, t, TREATY_STATUS_ABORTED);
        if (t->nacked == t->nbranches)
            finish(c, t);
    }
}

static void process_durable(struct coord *c)
{
    uint64_t w = journal_durable(c->journal);
    if (w <= c->durable_seq)
        return;
    c->durable_seq = w;
    while (c->wait_len > 0) {
        struct durable_wait *d = &c->waits[c->wait_head];
        if (d->seq > w)
            break;
        struct durable_wait dw = *d;
        d = &dw;
        struct txn *t = txmap_get(&c->inflight, d->txid);
        uint64_t seq = d->seq;
        c->wait_head = (c->wait_head + 1) % c->wait_cap;
        c->wait_len--;
        if (t != NULL) {
            if (t->record_seq == seq && !t->decision_durable)
                on_decision_durable(c, t);
        } else {
            struct saga *sg = txmap_get(&c->sagas, d->txid);
            if (sg != NULL)
                saga_on_durable(c, sg, seq);
        }
    }
}

/* ------------------------------------------------------------ client requests */

int coord_admit(struct coord *c, const struct wire_in *in)
{
    const uint8_t *txid = in->msg.hdr.txid;
    if (c->stopping) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "coordinator is shutting down");
        return TREATY_EBUSY;
    }
    if (!journal_healthy(c->journal)) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "journal unavailable: PostgreSQL unreachable");
        return TREATY_EBUSY;
    }
    if (c->inflight.len + c->sagas.len >= (size_t)c->cfg->max_inflight) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "too many transactions in flight (limit %d)",
                          c->cfg->max_inflight);
        return TREATY_EBUSY;
    }
    return 0;
}

static void handle_submit(struct coord *c, const struct wire_in *in)
{
    const struct wire_msg *m = &in->msg;
    const uint8_t *txid = m->hdr.txid;
    char id[TREATY_TXID_STRLEN];

    struct txn *t = txmap_get(&c->inflight, txid);
    if (t != NULL) {
        /* A resubmission: same txid, same transaction. Answer when decided. */
        if (t->decision_durable)
            coord_reply_outcome(c, in->rid, in->rid_len, txid,
                                t->state == TXN_COMMITTING ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED,
                                t->failed_branch, t->reason);
        else
            txn_add_waiter(t, in->rid, in->rid_len);
        return;
    }
    struct done *d = txmap_get(&c->finished, txid);
    if (d != NULL) {
        coord_reply_outcome(c, in->rid, in->rid_len, txid, d->status, d->failed_branch, d->reason);
        return;
    }
    if (txmap_get(&c->sagas, txid) != NULL) {
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EINVAL, "txid is in use by a saga");
        return;
    }
    if (coord_admit(c, in) < 0)
        return;
    size_t nb = (m->nframes - 1) / 2;
    if (nb > (size_t)c->cfg->max_branches) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG, "%zu branches exceed the limit of %d", nb,
                          c->cfg->max_branches);
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        size_t len = m->frames[2 + 2 * i].len;
        if (len > (size_t)c->cfg->max_payload_bytes) {
            c->st.refused++;
            coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG,
                              "branch %zu payload of %zu bytes exceeds the limit of %d", i, len,
                              c->cfg->max_payload_bytes);
            return;
        }
    }
    uint32_t timeout_ms = 0;
    wire_get_u32(&m->frames[0], &timeout_ms);
    if (timeout_ms == 0)
        timeout_ms = (uint32_t)c->cfg->default_timeout_ms;
    if (timeout_ms > (uint32_t)c->cfg->max_timeout_ms)
        timeout_ms = (uint32_t)c->cfg->max_timeout_ms;

    t = txn_new(txid, (unsigned)nb);
    txmap_put(&c->inflight, txid, t);
    txn_add_waiter(t, in->rid, in->rid_len);
    c->st.submitted++;

    /* Choose every instance first: a service with no live instance aborts the
     * transaction before any PREPARE is sent. */
    const struct instance *chosen[WIRE_MAX_BRANCHES];
    for (size_t i = 0; i < nb; i++) {
        const struct wire_frame *svc = &m->frames[1 + 2 * i];
        memcpy(t->branches[i].service, svc->data, svc->len);
        t->branches[i].service[svc->len] = '\0';
        chosen[i] = registry_pick(c->reg, t->branches[i].service);
    }
    txn_set_state(t, TXN_PREPARING);
    for (size_t i = 0; i < nb; i++) {
        if (chosen[i] == NULL) {
            char reason[128];
            snprintf(reason, sizeof reason, "no live instance of service %s", t->branches[i].service);
            decide_abort(c, t, (int)i, reason);
            return;
        }
    }
    log_debug("txn %s: prepare %zu branches", coord_fmt_txid(txid, id), nb);
    for (size_t i = 0; i < nb; i++) {
        struct branch *b = &t->branches[i];
        if (chosen[i]->rid_len <= BRANCH_RID_MAX) {
            memcpy(b->rid, chosen[i]->rid, chosen[i]->rid_len);
            b->rid_len = (uint8_t)chosen[i]->rid_len;
        }
        b->prepared = true;
        coord_send(c, chosen[i]->rid, chosen[i]->rid_len, WIRE_PREPARE, txid, (unsigned)i, 0, 0, &m->frames[2 + 2 * i],
                   1);
    }
    set_timer(c, t, timers_now_ms() + timeout_ms);
}

static void handle_query(struct coord *c, const struct wire_in *in)
{
    const uint8_t *txid = in->msg.hdr.txid;
    struct saga *sg = txmap_get(&c->sagas, txid);
    if (sg != NULL) {
        saga_handle_query(c, sg, in);
        return;
    }
    struct txn *t = txmap_get(&c->inflight, txid);
    if (t != NULL) {
        enum treaty_status st = TREATY_STATUS_PENDING;
        if (t->decision_durable)
            st = t->state == TXN_ABORTING ? TREATY_STATUS_ABORTED : TREATY_STATUS_COMMITTED;
        coord_reply_outcome(c, in->rid, in->rid_len, txid, st, t->failed_branch, t->reason);
        return;
    }
    struct done *d = txmap_get(&c->finished, txid);
    if (d != NULL) {
        coord_reply_outcome(c, in->rid, in->rid_len, txid, d->status, d->failed_branch, d->reason);
        return;
    }
    coord_reply_outcome(c, in->rid, in->rid_len, txid, TREATY_STATUS_ABORTED, -1,
                        "no record of this transaction (presumed abort)");
}

/* ------------------------------------------------------------ participant messages */

/* Tells one participant the decision on (txid, branch) in answer to a late
 * vote or an INQUIRE. Unknown -> ABORT: presumed abort. */
static void answer_decision(struct coord *c, const struct wire_in *in)
{
    const uint8_t *txid = in->msg.hdr.txid;
    unsigned branch = in->msg.hdr.branch;
    struct txn *t = txmap_get(&c->inflight, txid);
    uint8_t type = WIRE_ABORT;
    if (t != NULL) {
        if (t->state == TXN_LOGGING_COMMIT || t->state == TXN_PREPARING)
            return; /* not decided yet: the decision will be sent */
        type = t->state == TXN_COMMITTING ? WIRE_COMMIT : WIRE_ABORT;
    } else {
        struct done *d = txmap_get(&c->finished, txid);
        if (d != NULL && d->status == TREATY_STATUS_COMMITTED)
            type = WIRE_COMMIT;
    }
    coord_send(c, in->rid, in->rid_len, type, txid, branch, 0, 0, NULL, 0);
}

static void record_vote(struct coord *c, struct txn *t, unsigned branch, bool yes, const char *reason)
{
    struct branch *b = &t->branches[branch];
    if (b->vote != VOTE_NONE)
        return; /* duplicate */
    b->vote = yes ? VOTE_YES : VOTE_NO;
    t->nvotes++;
    if (!yes) {
        char why[TREATY_REASON_MAX];
        snprintf(why, sizeof why, "branch %u (%s) voted no: %s", branch, b->service,
                 reason && *reason ? reason : "no reason given");
        decide_abort(c, t, (int)branch, why);
        return;
    }
    if (t->nvotes == t->nbranches)
        decide_commit(c, t);
}

static void handle_vote(struct coord *c, const struct wire_in *in)
{
    const struct wire_msg *m = &in->msg;
    struct txn *t = txmap_get(&c->inflight, m->hdr.txid);
    bool yes = m->hdr.code == TREATY_VOTE_YES;
    if (t == NULL || t->state != TXN_PREPARING || m->hdr.branch >= t->nbranches) {
        /* A late or stray vote. A YES means a prepared transaction waits for a
         * decision at that participant: give it the decision. */
        c->st.late_votes++;
        if (yes)
            answer_decision(c, in);
        return;
    }
    char reason[TREATY_REASON_MAX];
    wire_copy_text(&m->frames[0], reason, sizeof reason);
    record_vote(c, t, m->hdr.branch, yes, reason);
}

static void handle_ack(struct coord *c, const struct wire_in *in)
{
    const struct wire_msg *m = &in->msg;
    struct txn *t = txmap_get(&c->inflight, m->hdr.txid);
    if (t == NULL || m->hdr.branch >= t->nbranches)
        return; /* already finished: a duplicate ACK */
    bool want_commit = t->state == TXN_COMMITTING;
    if (t->state != TXN_COMMITTING && t->state != TXN_ABORTING)
        return;
    if ((m->hdr.code == TREATY_STATUS_COMMITTED) != want_commit) {
        char id[TREATY_TXID_STRLEN];
        log_warn("txn %s: branch %u acknowledged %s but the decision is %s; ignored", coord_fmt_txid(t->txid, id),
                 m->hdr.branch, treaty_status_name(m->hdr.code), want_commit ? "commit" : "abort");
        return;
    }
    struct branch *b = &t->branches[m->hdr.branch];
    if (b->acked)
        return;
    b->acked = true;
    t->nacked++;
    if (t->nacked == t->nbranches && t->decision_durable)
        finish(c, t);
}

static void handle_inquire(struct coord *c, const struct wire_in *in)
{
    const struct wire_msg *m = &in->msg;
    c->st.inquiries++;
    struct txn *t = txmap_get(&c->inflight, m->hdr.txid);
    if (t != NULL && t->state == TXN_PREPARING) {
        /* The participant holds a prepared transaction for this branch: that
         * is a YES vote whose message was lost (or it restarted before voting). */
        if (m->hdr.branch < t->nbranches) {
            struct branch *b = &t->branches[m->hdr.branch];
            if (in->rid_len <= BRANCH_RID_MAX) {
                memcpy(b->rid, in->rid, in->rid_len);
                b->rid_len = (uint8_t)in->rid_len;
            }
            record_vote(c, t, m->hdr.branch, true, NULL);
        }
        return;
    }
    answer_decision(c, in);
}

static void handle_hello(struct coord *c, const struct wire_in *in)
{
    const struct wire_msg *m = &in->msg;
    registry_hello(c->reg, &m->frames[0], &m->frames[1], in->rid, in->rid_len, timers_now_ms());
    uint8_t hb[4];
    wire_put_u32(hb, (uint32_t)c->cfg->heartbeat_ms);
    struct wire_frame f = {hb, 4};
    coord_send(c, in->rid, in->rid_len, WIRE_WELCOME, NULL, 0, 0, 0, &f, 1);
}

/* Receives and handles one message. Returns false when none was waiting. */
static bool handle_message(struct coord *c)
{
    /* Names and numbers must always fit; branch payloads are checked against
     * max_payload_bytes in handle_submit. */
    size_t limit =
        (size_t)c->cfg->max_payload_bytes > TREATY_REASON_MAX ? (size_t)c->cfg->max_payload_bytes : TREATY_REASON_MAX;
    int rc = wire_recv(c->router, true, limit, c->in);
    if (rc == TREATY_ETIMEDOUT)
        return false;
    if (rc < 0) {
        c->st.malformed++;
        if (c->in->rid_len == 0) {
            log_warn("dropped a malformed message: %s", treaty_strerror(rc));
            return true;
        }
        log_warn("rejected a message from a peer: %s", treaty_strerror(rc));
        const char *what = rc == TREATY_ETOOBIG    ? "message exceeds a limit (payload bytes or frame count)"
                           : rc == TREATY_EVERSION ? "unsupported protocol version"
                                                   : "malformed message";
        coord_reply_error(c, c->in->rid, c->in->rid_len, c->in->msg.hdr.txid, rc, "%s", what);
        return true;
    }
    switch (c->in->msg.hdr.type) {
    case WIRE_SUBMIT:
        handle_submit(c, c->in);
        break;
    case WIRE_QUERY:
        handle_query(c, c->in);
        break;
    case WIRE_HELLO:
        handle_hello(c, c->in);
        break;
    case WIRE_VOTE:
        handle_vote(c, c->in);
        break;
    case WIRE_ACK:
        handle_ack(c, c->in);
        break;
    case WIRE_INQUIRE:
        handle_inquire(c, c->in);
        break;
    case WIRE_SAGA:
        saga_handle_submit(c, c->in);
        break;
    case WIRE_RESULT:
        saga_handle_result(c, c->in);
        break;
    default:
        c->st.malformed++;
        coord_reply_error(c, c->in->rid, c->in->rid_len, c->in->msg.hdr.txid, TREATY_EPROTO,
                          "message type %s is not accepted by the coordinator", wire_type_name(c->in->msg.hdr.type));
        break;
    }
    wire_in_close(c->in);
    return true;
}

/* ------------------------------------------------------------ timers */

static void on_timer(struct coord *c, struct txn *t)
{
    switch (t->state) {
    case TXN_PREPARING: {
        int missing = -1;
        for (unsigned i = 0; i < t->nbranches; i++)
            if (t->branches[i].vote == VOTE_NONE) {
                missing = (int)i;
                break;
            }
        char why[160];
        snprintf(why, sizeof why, "prepare timed out waiting for branch %d (%s)", missing,
                 missing >= 0 ? t->branches[missing].service : "?");
        decide_abort(c, t, missing, why);
        break;
    }
    case TXN_COMMITTING:
    case TXN_ABORTING:
        if (t->nacked < t->nbranches)
            send_decisions(c, t);
        else if (t->decision_durable)
            finish(c, t); /* recovered with no branch to tell */
        break;
    default:
        break;
    }
}

static void run_timers(struct coord *c)
{
    int64_t now = timers_now_ms();
    struct timer_entry e;
    while (timers_pop_due(&c->timers, now, &e)) {
        struct txn *t = txmap_get(&c->inflight, e.txid);
        if (t == NULL) {
            struct saga *sg = txmap_get(&c->sagas, e.txid);
            if (sg != NULL)
                saga_on_timer(c, sg, e.due_ms);
            continue;
        }
        if (t->timer_due_ms != e.due_ms)
            continue; /* cancelled or rescheduled */
        t->timer_due_ms = -1;
        on_timer(c, t);
    }
}

/* ------------------------------------------------------------ recovery */

struct scan_state {
    struct coord *c;
    struct saga_recovery *saga;
    bool is_saga;
    bool have;
    uint8_t txid[16];
    bool commit, abort;
    long long ended_at;
    unsigned nservices;
    char services[WIRE_MAX_BRANCHES][WIRE_NAME_MAX + 1];
    char detail[TREATY_REASON_MAX];
    int failed_branch;
    size_t resumed, remembered;
};

static void scan_finish_txn(struct scan_state *s)
{
    struct coord *c = s->c;
    if (!s->have)
        return;
    s->have = false;
    if (s->is_saga) {
        s->is_saga = false;
        if (saga_recovery_finish(c, s->saga, s->ended_at))
            s->resumed++;
        else if (s->ended_at > 0)
            s->remembered++;
        return;
    }
    if (s->ended_at > 0) {
        coord_remember_done(c, s->txid, s->commit ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED, s->failed_branch,
                            s->abort ? s->detail : NULL, s->ended_at);
        s->remembered++;
        return;
    }
    if (!s->commit && !s->abort)
        return; /* an END-less txn with no decision cannot exist; ignore */
    if (txmap_get(&c->inflight, s->txid) != NULL)
        return;
    struct txn *t = txn_new(s->txid, s->nservices);
    for (unsigned i = 0; i < s->nservices; i++) {
        memcpy(t->branches[i].service, s->services[i], sizeof t->branches[i].service);
        t->branches[i].prepared = true;
    }
    t->decision_durable = true;
    t->failed_branch = s->failed_branch;
    if (s->commit) {
        txn_set_state(t, TXN_COMMITTING);
    } else {
        txn_set_state(t, TXN_ABORTING);
        t->reason = coord_strdup(s->detail);
    }
    txmap_put(&c->inflight, s->txid, t);
    /* First re-send soon: participants are reconnecting right now. */
    t->resend_ms = c->cfg->resend_initial_ms;
    set_timer(c, t, timers_now_ms() + c->cfg->resend_initial_ms);
    s->resumed++;
    c->st.recovered++;
}

static int scan_cb(void *arg, const struct journal_rec *r, long long finished_at)
{
    struct scan_state *s = arg;
    if (s->have && memcmp(s->txid, r->txid, 16) != 0)
        scan_finish_txn(s);
    if (!s->have) {
        s->have = true;
        memcpy(s->txid, r->txid, 16);
        s->commit = s->abort = false;
        s->ended_at = 0;
        s->nservices = 0;
        s->detail[0] = '\0';
        s->failed_branch = -1;
    }
    saga_recovery_add(s->saga, r);
    switch (r->kind) {
    case JOURNAL_SAGA:
    case JOURNAL_STEP:
    case JOURNAL_TURN:
        s->is_saga = true;
        break;
    case JOURNAL_COMMIT:
    case JOURNAL_ABORT:
        if (r->kind == JOURNAL_COMMIT)
            s->commit = true;
        else
            s->abort = true;
        if (r->nservices <= WIRE_MAX_BRANCHES) {
            s->nservices = r->nservices;
            for (unsigned i = 0; i < r->nservices; i++)
                snprintf(s->services[i], sizeof s->services[i], "%s", r->services[i]);
        }
        if (r->detail)
            snprintf(s->detail, sizeof s->detail, "%s", r->detail);
        s->failed_branch = r->failed_branch;
        break;
    case JOURNAL_END:
        s->ended_at = finished_at > 0 ? finished_at : coord_wall_seconds();
        break;
    }
    if (finished_at > 0)
        s->ended_at = finished_at;
    return 0;
}

static int recover(struct coord *c)
{
    struct scan_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        abort();
    s->c = c;
    s->saga = saga_recovery_new();
    int64_t t0 = timers_now_ms();
    int rc = journal_scan(c->journal, scan_cb, s);
    if (rc == 0)
        scan_finish_txn(s);
    log_info("recovery: %zu unfinished transactions resumed, %zu finished outcomes retained (%lld ms)", s->resumed,
             s->remembered, (long long)(timers_now_ms() - t0));
    saga_recovery_free(s->saga);
    free(s);
    return rc;
}

/* ------------------------------------------------------------ the loop */

static int open_router(struct coord *c)
{
    c->router = zmq_socket(c->zctx, ZMQ_ROUTER);
    if (c->router == NULL)
        return TREATY_ETRANSPORT;
    int one = 1, zero = 0, hwm = 1000000;
    int64_t maxmsg = (int64_t)c->cfg->max_payload_bytes + 4096;
    zmq_setsockopt(c->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(c->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    if (zmq_bind(c->router, c->cfg->listen) != 0) {
        log_error("cannot listen on %s: %s", c->cfg->listen, zmq_strerror(errno));
        return TREATY_ETRANSPORT;
    }
    return 0;
}

/* Every 60 s. journal_busy: the share of the last interval the journal's
 * writer spent writing (near 100 %: the journal is the limit). */
static void log_stats(struct coord *c)
{
    struct journal_stats js;
    journal_get_stats(c->journal, &js);
    int64_t now = timers_now_ms();
    double busy = now > c->stats_at_ms && c->stats_at_ms > 0
                      ? (double)(js.write_us - c->stats_write_us) / 10.0 / (double)(now - c->stats_at_ms)
                      : 0;
    c->stats_at_ms = now;
    c->stats_write_us = js.write_us;
    log_info("stats: submitted=%llu committed=%llu aborted=%llu in_flight=%zu refused=%llu malformed=%llu "
             "late_votes=%llu inquiries=%llu recovered=%llu journal_batches=%llu journal_records=%llu "
             "forced_batches=%llu journal_busy=%.0f%% instances=%zu sagas=%llu sagas_completed=%llu "
             "sagas_compensated=%llu sagas_stuck=%llu sagas_in_flight=%zu step_retries=%llu",
             (unsigned long long)c->st.submitted, (unsigned long long)c->st.committed,
             (unsigned long long)c->st.aborted, c->inflight.len, (unsigned long long)c->st.refused,
             (unsigned long long)c->st.malformed, (unsigned long long)c->st.late_votes,
             (unsigned long long)c->st.inquiries, (unsigned long long)c->st.recovered, (unsigned long long)js.batches,
             (unsigned long long)js.records, (unsigned long long)js.forced_batches, busy, registry_count(c->reg),
             (unsigned long long)c->st.sagas, (unsigned long long)c->st.sagas_completed,
             (unsigned long long)c->st.sagas_compensated, (unsigned long long)c->st.sagas_stuck, c->sagas.len,
             (unsigned long long)c->st.step_retries);
}

static void serve(struct coord *c, volatile sig_atomic_t *stop)
{
    int64_t next_sweep = timers_now_ms() + c->cfg->heartbeat_ms;
    int64_t next_stats = timers_now_ms() + 60000;
    c->stats_at_ms = timers_now_ms();
    int64_t deadline = -1;

    for (;;) {
        int64_t now = timers_now_ms();
        if (*stop && !c->stopping) {
            c->stopping = true;
            deadline = now + c->cfg->shutdown_deadline_ms;
            log_info("stopping: refusing new transactions; %zu in flight, deadline %d ms", c->inflight.len,
                     c->cfg->shutdown_deadline_ms);
        }
        if (c->stopping && (c->inflight.len + c->sagas.len == 0 || now >= deadline)) {
            if (c->inflight.len + c->sagas.len > 0)
                log_warn("stopping with %zu transactions and %zu sagas unfinished; recovery resumes them at next "
                         "start",
                         c->inflight.len, c->sagas.len);
            break;
        }
        long timeout = 1000;
        int64_t nt = timers_next(&c->timers);
        if (nt >= 0)
            timeout = nt <= now ? 0 : (long)(nt - now);
        if (timeout > 100 && c->stopping)
            timeout = 100;
        if (timeout > 1000)
            timeout = 1000;
        zmq_pollitem_t items[2] = {
            {c->router, 0, ZMQ_POLLIN, 0},
            {journal_socket(c->journal), 0, ZMQ_POLLIN, 0},
        };
        int n = zmq_poll(items, 2, timeout);
        if (n < 0 && errno != EINTR) {
            log_error("zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        if (n > 0 && (items[1].revents & ZMQ_POLLIN))
            process_durable(c);
        if (n > 0 && (items[0].revents & ZMQ_POLLIN)) {
            /* Receive until EAGAIN: asking ZMQ_EVENTS before every message
             * costs a system call each. */
            for (int k = 0; k < MAX_MSGS_PER_TURN && handle_message(c); k++)
                ;
        }
        run_timers(c);
        now = timers_now_ms();
        if (now >= next_sweep) {
            registry_sweep(c->reg, now);
            expire_done(c);
            next_sweep = now + c->cfg->heartbeat_ms;
        }
        if (now >= next_stats) {
            log_stats(c);
            next_stats = now + 60000;
        }
        journal_flush(c->journal);
        /* Durability can also be reported while we handled messages. */
        process_durable(c);
    }
}

int coord_run(const struct config *cfg, volatile sig_atomic_t *stop)
{
    struct coord *c = calloc(1, sizeof *c);
    if (c == NULL)
        return TREATY_ENOMEM;
    c->cfg = cfg;
    c->in = malloc(sizeof *c->in);
    if (c->in == NULL) {
        free(c);
        return TREATY_ENOMEM;
    }
    txmap_init(&c->inflight);
    txmap_init(&c->sagas);
    txmap_init(&c->finished);
    timers_init(&c->timers);
    srand((unsigned)timers_now_ms());
    int rc;

    struct journal_config jc = {
        .conninfo = cfg->journal_conninfo,
        .connect_initial_ms = cfg->journal_connect_initial_ms,
        .connect_max_ms = cfg->journal_connect_max_ms,
        .lazy_delay_ms = cfg->journal_lazy_delay_ms,
        .retention_s = cfg->journal_retention_s,
        .gc_interval_ms = cfg->journal_gc_interval_ms,
        .stop = (volatile int *)stop,
    };
    char err[512];
    rc = journal_connect(&jc, &c->journal, err, sizeof err);
    if (rc < 0) {
        log_error("journal: %s", err);
        goto fail_journal;
    }
    rc = recover(c);
    if (rc < 0) {
        log_error("recovery: cannot read the journal: %s", treaty_strerror(rc));
        goto fail_recover;
    }
    c->zctx = zmq_ctx_new();
    if (c->zctx == NULL) {
        rc = TREATY_ETRANSPORT;
        goto fail_recover;
    }
    rc = journal_start(c->journal, c->zctx);
    if (rc < 0) {
        log_error("journal: cannot start the writer: %s", treaty_strerror(rc));
        goto fail_start;
    }
    c->reg = registry_new(cfg->dead_after_ms);
    rc = open_router(c);
    if (rc < 0)
        goto fail_router;
    c->started_ms = timers_now_ms();
    log_info("treatyd serving on %s", cfg->listen);
    serve(c, stop);
    log_stats(c);
    rc = 0;

    zmq_close(c->router);
fail_router:
    registry_destroy(&c->reg);
fail_start:
    journal_close(&c->journal, cfg->shutdown_deadline_ms > 0 ? cfg->shutdown_deadline_ms : 1000);
    zmq_ctx_term(c->zctx);
    goto cleanup;
fail_recover:
    journal_close(&c->journal, 0);
fail_journal:
cleanup:
    for (size_t i = 0; i < c->inflight.cap; i++)
        if (c->inflight.slots[i].val)
            txn_free(c->inflight.slots[i].val);
    txmap_free(&c->inflight);
    for (size_t i = 0; i < c->sagas.cap; i++)
        if (c->sagas.slots[i].val)
            saga_free(c->sagas.slots[i].val);
    txmap_free(&c->sagas);
    while (c->done_head) {
        struct done *d = c->done_head;
        c->done_head = d->next;
        free(d->reason);
        free(d);
    }
    txmap_free(&c->finished);
    timers_free(&c->timers);
    free(c->waits);
    free(c->in);
    free(c);
    return rc;
}
