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
 *            -> append ABORT (forced); once it is durable tell the clients
 *               ABORTED and send ABORT to the prepared branches
 *   ACK      -> when every branch acknowledged: append END (lazy), forget the
 *               transaction, keep its outcome in the bounded cache (outcomes.h)
 *   INQUIRE  -> answer once the decision is durable; for a txid we hold
 *               nowhere (after a journal lookup when it may be there), record
 *               an ABORT first (presumed abort, made durable) and answer then
 *
 * The rule behind every answer: an outcome or decision told to anyone -
 * client, participant - follows a durable record of it, and no later record
 * contradicts it. An unknown txid gets "aborted" only after its ABORT record
 * is durable, so a later SUBMIT of it is answered "aborted" instead of
 * running; a txid older than txid.max_age_s (whose records the collector may
 * have removed) is refused, never run (TREATY_EEXPIRED).
 *
 * Crash windows (what recovery does):
 *   - before the COMMIT record is durable: no COMMIT record, so the restarted
 *     coordinator knows nothing; participants INQUIRE, an ABORT record is
 *     written for the txid, and then they are told ABORT.
 *   - after it is durable, before or while sending: recovery finds COMMIT
 *     without END and re-sends COMMIT until every branch ACKs.
 *   - after the last ACK, before END is durable: recovery re-sends COMMIT;
 *     participants answer idempotently (COMMIT PREPARED of a missing gid,
 *     whose barrier row shows it committed).
 *   - after an ABORT record was appended, before it is durable: nothing was
 *     sent or told; the txid is unknown after the restart (as above).
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
#include "util.h"
#include "wire.h"

/* ------------------------------------------------------------ helpers */

int coord_check_new_txid(struct coord *c, const struct wire_in *in)
{
    const uint8_t *txid = in->msg.hdr.txid;
    long long made = treaty_txid_time_ms((const treaty_txid_t *)txid);
    int64_t now = util_wall_ms();
    if (made < 0) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EINVAL,
                          "txid is not time-ordered (UUIDv7): make txids with treaty_txid_generate");
        return TREATY_EINVAL;
    }
    if (made > now + (int64_t)c->cfg->txid_max_future_s * 1000) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EINVAL,
                          "txid was made %lld ms in the future of the coordinator's clock (txid.max_future_s = %d): "
                          "check the clocks",
                          (long long)(made - now), c->cfg->txid_max_future_s);
        return TREATY_EINVAL;
    }
    if (made < now - (int64_t)c->cfg->txid_max_age_s * 1000) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EEXPIRED,
                          "txid was made %lld s ago, beyond txid.max_age_s = %d: its outcome may be forgotten, so it "
                          "cannot run (again); use a new txid",
                          (long long)((now - made) / 1000), c->cfg->txid_max_age_s);
        return TREATY_EEXPIRED;
    }
    return 0;
}

const char *coord_fmt_txid(const uint8_t *txid, char *buf)
{
    return treaty_txid_format((const treaty_txid_t *)txid, buf);
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
        struct durable_wait *nw = util_xmalloc(ncap * sizeof *nw);
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
                         const char *reason)
{
    outcomes_put(&c->done, txid, st, failed_branch, reason);
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

/* The decision is durable: answer the participants that asked for it. */
static void tell_inquirers(struct coord *c, struct txn *t)
{
    uint8_t type = t->state == TXN_COMMITTING ? WIRE_COMMIT : WIRE_ABORT;
    struct waiter *w = t->inquirers;
    while (w) {
        struct waiter *n = w->next;
        coord_send(c, w->rid, w->rid_len, type, t->txid, w->branch, 0, 0, NULL, 0);
        free(w);
        w = n;
    }
    t->inquirers = NULL;
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
    set_timer(c, t, util_mono_ms() + coord_jitter(t->resend_ms));
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
    /* finish() runs only once the decision is durable: clients still waiting
     * (a recovered or resubmitted txn) get the outcome now, and the outcome
     * may be remembered (an evicted one is read back from the journal). */
    tell_waiters(c, t, st);
    tell_inquirers(c, t);
    coord_remember_done(c, t->txid, st, t->failed_branch, t->reason);
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
    t->reason = util_xstrdup(reason);
    log_info("txn %s: abort (branch %d: %s)", coord_fmt_txid(t->txid, id), failed_branch, reason);
    /* Forced, and nothing is sent or told before it is durable. If we crash
     * before then, the txid is unknown after the restart: an INQUIRE or a
     * resubmission finds no record, and an ABORT record is written before
     * any "abort" is answered (presumed abort, recorded). An ABORT sent now
     * instead could outlive the lost record: the txid could then run again,
     * and the late ABORT roll back a branch a twin instance of the service
     * had just voted YES for in the new run. */
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
    t->timer_due_ms = -1; /* the prepare deadline no longer applies; re-sends start once durable */
}

/* Records an abort for a txid that holds no transaction here (nobody
 * submitted it, or its run was lost with the coordinator before any
 * decision): presumed abort, made durable before anyone is told, so the txid
 * can never run later. Whoever asked waits on the returned txn (waiters,
 * inquirers); a SUBMIT of the txid meanwhile waits too. */
static struct txn *presume_abort(struct coord *c, const uint8_t *txid, const char *why)
{
    char id[TREATY_TXID_STRLEN];
    struct txn *t = txn_new(txid, 0);
    t->presumed = true;
    txmap_put(&c->inflight, txid, t);
    c->st.presumed_aborts++;
    log_info("txn %s: no record of it; recording an abort (presumed abort: %s)", coord_fmt_txid(txid, id), why);
    txn_set_state(t, TXN_ABORTING);
    t->reason = util_xstrdup("no record of this transaction (presumed abort)");
    expect_durable(c, t, append_decision(c, t, JOURNAL_ABORT));
    return t;
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
        tell_inquirers(c, t);
        t->resend_ms = 0;
        send_decisions(c, t);
    } else if (t->state == TXN_ABORTING) {
        tell_waiters(c, t, TREATY_STATUS_ABORTED);
        tell_inquirers(c, t);
        if (t->nacked == t->nbranches) {
            finish(c, t);
            return;
        }
        t->resend_ms = 0;
        send_decisions(c, t);
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
    const struct outcome *d = outcomes_get(&c->done, txid);
    if (d != NULL) {
        coord_reply_outcome(c, in->rid, in->rid_len, txid, d->status, d->failed_branch, d->reason);
        return;
    }
    if (txmap_get(&c->sagas, txid) != NULL) {
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EINVAL, "txid is in use by a saga");
        return;
    }
    /* A new transaction (dispatch() has asked the journal when it might know it). */
    if (coord_check_new_txid(c, in) < 0 || coord_admit(c, in) < 0)
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
    if (timeout_ms > (uint32_t)c->cfg->max_timeout_ms) {
        c->st.refused++;
        coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG,
                          "prepare timeout of %u ms exceeds twopc.max_timeout_ms = %d", timeout_ms,
                          c->cfg->max_timeout_ms);
        return;
    }

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
    set_timer(c, t, util_mono_ms() + timeout_ms);
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
    const struct outcome *d = outcomes_get(&c->done, txid);
    if (d != NULL) {
        coord_reply_outcome(c, in->rid, in->rid_len, txid, d->status, d->failed_branch, d->reason);
        return;
    }
    /* Unknown here and (dispatch() asked) in the journal. "Aborted" is an
     * answer that must hold: record it first. Not for a txid whose records
     * may already be collected (too old) or that no client could have
     * submitted yet (from the future): those are refused. */
    if (coord_check_new_txid(c, in) < 0 || coord_admit(c, in) < 0)
        return;
    t = presume_abort(c, txid, "queried");
    txn_add_waiter(t, in->rid, in->rid_len);
}

/* ------------------------------------------------------------ participant messages */

/* Tells one participant the decision on (txid, branch), in answer to a late
 * YES vote or an INQUIRE: at once when it is durable, else once it is. A txid
 * we hold nowhere (dispatch() asked the journal) gets an abort recorded first
 * (presumed abort). A transaction still undecided gets no answer: its
 * decision will be sent. */
static void answer_decision(struct coord *c, const struct wire_in *in)
{
    const uint8_t *txid = in->msg.hdr.txid;
    unsigned branch = in->msg.hdr.branch;
    struct txn *t = txmap_get(&c->inflight, txid);
    if (t != NULL) {
        if (t->state == TXN_LOGGING_COMMIT || t->state == TXN_PREPARING)
            return; /* not decided yet: the decision will be sent */
        if (!t->decision_durable) {
            txn_add_inquirer(t, in->rid, in->rid_len, branch);
            return;
        }
        uint8_t type = t->state == TXN_COMMITTING ? WIRE_COMMIT : WIRE_ABORT;
        coord_send(c, in->rid, in->rid_len, type, txid, branch, 0, 0, NULL, 0);
        return;
    }
    if (txmap_get(&c->sagas, txid) != NULL)
        return; /* a saga's txid: no 2PC branch of it exists */
    const struct outcome *d = outcomes_get(&c->done, txid);
    if (d != NULL) {
        coord_send(c, in->rid, in->rid_len, d->status == TREATY_STATUS_COMMITTED ? WIRE_COMMIT : WIRE_ABORT, txid,
                   branch, 0, 0, NULL, 0);
        return;
    }
    if (!journal_healthy(c->journal) || c->inflight.len + c->sagas.len >= (size_t)c->cfg->max_inflight)
        return; /* asked again by the participant's sweep */
    t = presume_abort(c, txid, "a participant asked");
    txn_add_inquirer(t, in->rid, in->rid_len, branch);
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
    registry_hello(c->reg, &m->frames[0], &m->frames[1], in->rid, in->rid_len, util_mono_ms());
    uint8_t hb[4];
    wire_put_u32(hb, (uint32_t)c->cfg->heartbeat_ms);
    struct wire_frame f = {hb, 4};
    coord_send(c, in->rid, in->rid_len, WIRE_WELCOME, NULL, 0, 0, 0, &f, 1);
}

/* ------------------------------------------------------------ dispatch and journal lookups */

static void handle(struct coord *c, const struct wire_in *in)
{
    switch (in->msg.hdr.type) {
    case WIRE_SUBMIT:
        handle_submit(c, in);
        break;
    case WIRE_QUERY:
        handle_query(c, in);
        break;
    case WIRE_HELLO:
        handle_hello(c, in);
        break;
    case WIRE_VOTE:
        handle_vote(c, in);
        break;
    case WIRE_ACK:
        handle_ack(c, in);
        break;
    case WIRE_INQUIRE:
        handle_inquire(c, in);
        break;
    case WIRE_SAGA:
        saga_handle_submit(c, in);
        break;
    case WIRE_RESULT:
        saga_handle_result(c, in);
        break;
    default:
        c->st.malformed++;
        coord_reply_error(c, in->rid, in->rid_len, in->msg.hdr.txid, TREATY_EPROTO,
                          "message type %s is not accepted by the coordinator", wire_type_name(in->msg.hdr.type));
        break;
    }
}

static bool from_client(const struct wire_in *in)
{
    uint8_t t = in->msg.hdr.type;
    return t == WIRE_SUBMIT || t == WIRE_SAGA || t == WIRE_QUERY;
}

/* True when the answer to in depends on what the journal knows of its txid:
 * a request that may start a transaction, or be answered "aborted" by
 * presumption, about a txid no transaction in memory and no cached outcome
 * knows, which the journal may hold (outcomes_may_be_in_journal). (A parked
 * request is replayed through handle(), after its lookup.) */
static bool needs_lookup(struct coord *c, const struct wire_in *in)
{
    const uint8_t *txid = in->msg.hdr.txid;
    uint8_t type = in->msg.hdr.type;
    bool asks = from_client(in) || type == WIRE_INQUIRE || (type == WIRE_VOTE && in->msg.hdr.code == TREATY_VOTE_YES);
    if (!asks)
        return false;
    if (txmap_get(&c->inflight, txid) != NULL || txmap_get(&c->sagas, txid) != NULL ||
        outcomes_get(&c->done, txid) != NULL)
        return false;
    return txmap_get(&c->lookups, txid) != NULL || outcomes_may_be_in_journal(&c->done, txid);
}

static void parked_free(struct parked *p)
{
    free(p->lens);
    free(p->data);
    free(p);
}

/* Keeps a copy of in until the journal lookup of its txid answers, asking
 * for one unless it is already under way. */
static void park(struct coord *c, const struct wire_in *in)
{
    const uint8_t *txid = in->msg.hdr.txid;
    struct lookup *l = txmap_get(&c->lookups, txid);
    if (l == NULL) {
        const char *busy = !journal_healthy(c->journal) ? "journal unavailable: PostgreSQL unreachable"
                           : c->lookups.len >= (size_t)c->cfg->max_inflight
                               ? "too many journal lookups in flight (limits.max_inflight)"
                               : NULL;
        if (busy != NULL) {
            if (from_client(in)) {
                c->st.refused++;
                coord_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "%s", busy);
            }
            return; /* a participant asks again */
        }
        l = util_xcalloc(1, sizeof *l);
        memcpy(l->txid, txid, 16);
        txmap_put(&c->lookups, txid, l);
        journal_lookup(c->journal, txid);
        c->st.lookups++;
    }
    /* A peer re-sending while it waits is answered once: keep one copy. */
    for (struct parked *q = l->head; q; q = q->next)
        if (q->hdr.type == in->msg.hdr.type && q->hdr.branch == in->msg.hdr.branch && q->rid_len == in->rid_len &&
            memcmp(q->rid, in->rid, in->rid_len) == 0)
            return;
    struct parked *p = util_xcalloc(1, sizeof *p);
    size_t total = 0;
    for (size_t i = 0; i < in->msg.nframes; i++)
        total += in->msg.frames[i].len;
    p->lens = util_xcalloc(in->msg.nframes + 1, sizeof *p->lens);
    p->data = util_xmalloc(total + 1);
    memcpy(p->rid, in->rid, in->rid_len);
    p->rid_len = in->rid_len;
    p->hdr = in->msg.hdr;
    p->nframes = in->msg.nframes;
    size_t off = 0;
    for (size_t i = 0; i < in->msg.nframes; i++) {
        p->lens[i] = in->msg.frames[i].len;
        if (p->lens[i] > 0)
            memcpy(p->data + off, in->msg.frames[i].data, p->lens[i]);
        off += p->lens[i];
    }
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
}

static void dispatch(struct coord *c, const struct wire_in *in)
{
    if (needs_lookup(c, in)) {
        park(c, in);
        return;
    }
    handle(c, in);
}

/* Handles a parked request again, now that its lookup answered. */
static void replay(struct coord *c, const struct parked *p)
{
    struct wire_in *in = c->replay;
    memcpy(in->rid, p->rid, p->rid_len);
    in->rid_len = p->rid_len;
    in->nparts = 0;
    in->msg.hdr = p->hdr;
    in->msg.nframes = p->nframes;
    size_t off = 0;
    for (size_t i = 0; i < p->nframes; i++) {
        in->msg.frames[i].data = p->data + off;
        in->msg.frames[i].len = p->lens[i];
        off += p->lens[i];
    }
    handle(c, in);
}

static void on_lookup(void *arg, const struct journal_lookup_result *r)
{
    struct coord *c = arg;
    char id[TREATY_TXID_STRLEN];
    struct lookup *l = txmap_del(&c->lookups, r->txid);
    if (l == NULL)
        return;
    const char *refuse = NULL;
    if (r->error != 0) {
        c->st.lookup_errors++;
        refuse = "journal unavailable: cannot read what it knows of this txid";
    } else {
        switch (r->outcome) {
        case JOURNAL_OUTCOME_COMMITTED:
            coord_remember_done(c, r->txid, TREATY_STATUS_COMMITTED, r->failed_branch, NULL);
            break;
        case JOURNAL_OUTCOME_ABORTED:
            coord_remember_done(c, r->txid, TREATY_STATUS_ABORTED, r->failed_branch, r->detail);
            break;
        case JOURNAL_OUTCOME_COMPLETED:
            coord_remember_done(c, r->txid, TREATY_STATUS_COMPLETED, -1, NULL);
            break;
        case JOURNAL_OUTCOME_COMPENSATED:
            coord_remember_done(c, r->txid, TREATY_STATUS_COMPENSATED, r->failed_branch, r->detail);
            break;
        case JOURNAL_OUTCOME_UNFINISHED:
            /* Recovery holds every unfinished transaction in memory: records
             * nobody holds are a journal we cannot explain. Answer nothing
             * that could contradict them. */
            log_error("txn %s: the journal holds records of it but no outcome, and it is not in memory; refusing "
                      "requests about it (an operator should look)",
                      coord_fmt_txid(r->txid, id));
            refuse = "the journal holds unfinished records of this txid that the coordinator does not hold";
            break;
        case JOURNAL_OUTCOME_NONE:
            break;
        }
    }
    struct parked *p = l->head;
    while (p) {
        struct parked *n = p->next;
        if (refuse == NULL) {
            replay(c, p);
        } else if (p->hdr.type == WIRE_SUBMIT || p->hdr.type == WIRE_SAGA || p->hdr.type == WIRE_QUERY) {
            c->st.refused++;
            coord_reply_error(c, p->rid, p->rid_len, r->txid, TREATY_EBUSY, "%s", refuse);
        }
        parked_free(p);
        p = n;
    }
    free(l);
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
    dispatch(c, c->in);
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
    int64_t now = util_mono_ms();
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
    bool ended; /* an END record: finished (journal_scan gives only unfinished runs; kept as a guard) */
    unsigned nservices;
    char services[WIRE_MAX_BRANCHES][WIRE_NAME_MAX + 1];
    char detail[TREATY_REASON_MAX];
    int failed_branch;
    size_t resumed;
};

static void scan_finish_txn(struct scan_state *s)
{
    struct coord *c = s->c;
    if (!s->have)
        return;
    s->have = false;
    if (s->is_saga) {
        s->is_saga = false;
        if (saga_recovery_finish(c, s->saga, s->ended))
            s->resumed++;
        return;
    }
    if (s->ended)
        return; /* finished: its outcome is read back by journal_lookup when asked */
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
        t->reason = util_xstrdup(s->detail);
    }
    txmap_put(&c->inflight, s->txid, t);
    /* First re-send soon: participants are reconnecting right now. */
    t->resend_ms = c->cfg->resend_initial_ms;
    set_timer(c, t, util_mono_ms() + c->cfg->resend_initial_ms);
    s->resumed++;
    c->st.recovered++;
}

static int scan_cb(void *arg, const struct journal_rec *r, long long finished_at)
{
    struct scan_state *s = arg;
    (void)finished_at;
    if (s->have && memcmp(s->txid, r->txid, 16) != 0)
        scan_finish_txn(s);
    if (!s->have) {
        s->have = true;
        memcpy(s->txid, r->txid, 16);
        s->commit = s->abort = false;
        s->ended = false;
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
        s->ended = true;
        break;
    }
    return 0;
}

static int recover(struct coord *c)
{
    struct scan_state *s = util_xcalloc(1, sizeof *s);
    s->c = c;
    s->saga = saga_recovery_new();
    int64_t t0 = util_mono_ms();
    int rc = journal_scan(c->journal, scan_cb, s);
    if (rc == 0)
        scan_finish_txn(s);
    log_info("recovery: %zu unfinished transactions resumed (%lld ms)", s->resumed, (long long)(util_mono_ms() - t0));
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
    int64_t now = util_mono_ms();
    double busy = now > c->stats_at_ms && c->stats_at_ms > 0
                      ? (double)(js.write_us - c->stats_write_us) / 10.0 / (double)(now - c->stats_at_ms)
                      : 0;
    c->stats_at_ms = now;
    c->stats_write_us = js.write_us;
    log_info("stats: submitted=%llu committed=%llu aborted=%llu in_flight=%zu refused=%llu malformed=%llu "
             "late_votes=%llu inquiries=%llu recovered=%llu journal_batches=%llu journal_records=%llu "
             "forced_batches=%llu journal_busy=%.0f%% instances=%zu sagas=%llu sagas_completed=%llu "
             "sagas_compensated=%llu sagas_stuck=%llu sagas_in_flight=%zu step_retries=%llu presumed_aborts=%llu "
             "outcomes_cached=%zu outcomes_evicted=%llu lookups=%llu lookup_errors=%llu",
             (unsigned long long)c->st.submitted, (unsigned long long)c->st.committed,
             (unsigned long long)c->st.aborted, c->inflight.len, (unsigned long long)c->st.refused,
             (unsigned long long)c->st.malformed, (unsigned long long)c->st.late_votes,
             (unsigned long long)c->st.inquiries, (unsigned long long)c->st.recovered, (unsigned long long)js.batches,
             (unsigned long long)js.records, (unsigned long long)js.forced_batches, busy, registry_count(c->reg),
             (unsigned long long)c->st.sagas, (unsigned long long)c->st.sagas_completed,
             (unsigned long long)c->st.sagas_compensated, (unsigned long long)c->st.sagas_stuck, c->sagas.len,
             (unsigned long long)c->st.step_retries, (unsigned long long)c->st.presumed_aborts, c->done.map.len,
             (unsigned long long)c->done.evicted, (unsigned long long)c->st.lookups,
             (unsigned long long)c->st.lookup_errors);
}

static void serve(struct coord *c, volatile sig_atomic_t *stop)
{
    int64_t next_sweep = util_mono_ms() + c->cfg->heartbeat_ms;
    int64_t next_stats = util_mono_ms() + 60000;
    c->stats_at_ms = util_mono_ms();
    int64_t deadline = -1;

    for (;;) {
        int64_t now = util_mono_ms();
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
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) {
            process_durable(c);
            journal_lookup_results(c->journal, on_lookup, c);
        }
        if (n > 0 && (items[0].revents & ZMQ_POLLIN)) {
            /* Receive until EAGAIN: asking ZMQ_EVENTS before every message
             * costs a system call each. */
            for (int k = 0; k < MAX_MSGS_PER_TURN && handle_message(c); k++)
                ;
        }
        run_timers(c);
        now = util_mono_ms();
        if (now >= next_sweep) {
            registry_sweep(c->reg, now);
            next_sweep = now + c->cfg->heartbeat_ms;
        }
        if (now >= next_stats) {
            log_stats(c);
            next_stats = now + 60000;
        }
        journal_flush(c->journal);
        /* Durability and lookups can also be answered while we handled messages. */
        process_durable(c);
        journal_lookup_results(c->journal, on_lookup, c);
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
    c->replay = malloc(sizeof *c->replay);
    if (c->replay == NULL) {
        free(c->in);
        free(c);
        return TREATY_ENOMEM;
    }
    txmap_init(&c->inflight);
    txmap_init(&c->sagas);
    txmap_init(&c->lookups);
    outcomes_init(&c->done, (size_t)cfg->outcome_cache, util_wall_ms(), (int64_t)cfg->txid_max_future_s * 1000);
    timers_init(&c->timers);
    srand((unsigned)util_mono_ms());
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
    c->started_ms = util_mono_ms();
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
    for (size_t i = 0; i < c->lookups.cap; i++) {
        struct lookup *l = c->lookups.slots[i].val;
        if (l == NULL)
            continue;
        while (l->head) {
            struct parked *p = l->head;
            l->head = p->next;
            parked_free(p);
        }
        free(l);
    }
    txmap_free(&c->lookups);
    outcomes_free(&c->done);
    timers_free(&c->timers);
    free(c->waits);
    free(c->replay);
    free(c->in);
    free(c);
    return rc;
}
