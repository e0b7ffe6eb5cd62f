/*
 * twopc.c - two-phase commit, presumed abort (see txn.h for the states).
 *
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
 *               nowhere (after a journal lookup when it may be there, which
 *               the dispatcher in core.c has made), record an ABORT first
 *               (presumed abort, made durable) and answer then
 *
 * The rule behind every answer: an outcome or decision told to anyone -
 * client, participant - follows a durable record of it (core_on_durable
 * reported its seq), and no later record contradicts it. An unknown txid
 * gets "aborted" only after its ABORT record is durable, so a later SUBMIT
 * of it is answered "aborted" instead of running; a txid older than
 * txid.max_age_s (whose records the collector may have removed) is refused,
 * never run (TREATY_EEXPIRED).
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
#include "twopc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_int.h"
#include "fault.h"
#include "journal.h"
#include "log.h"
#include "outcomes.h"
#include "registry.h"
#include "treaty.h"
#include "txn.h"
#include "util.h"
#include "wire.h"

/* Exponential backoff, capped (the jitter is added where it is used). */
static int next_backoff(const struct core *c, int cur)
{
    int n = cur * 2;
    if (n > c->cfg->resend_max_ms || n <= 0)
        n = c->cfg->resend_max_ms;
    return n;
}

static void expect_durable(struct core *c, struct txn *t, uint64_t seq)
{
    t->record_seq = seq;
    core_expect_durable(c, &t->h, seq);
}

/* ------------------------------------------------------------ decisions */

static void tell_waiters(struct core *c, struct txn *t, enum treaty_status st)
{
    struct waiter *w = t->waiters;
    while (w) {
        struct waiter *n = w->next;
        core_reply_outcome(c, w->rid, w->rid_len, t->h.txid, st, t->failed_branch, t->reason);
        free(w);
        w = n;
    }
    t->waiters = NULL;
}

/* The decision is durable: answer the participants that asked for it. */
static void tell_inquirers(struct core *c, struct txn *t)
{
    uint8_t type = t->state == TXN_COMMITTING ? WIRE_COMMIT : WIRE_ABORT;
    struct waiter *w = t->inquirers;
    while (w) {
        struct waiter *n = w->next;
        core_send(c, w->rid, w->rid_len, type, t->h.txid, w->branch, 0, 0, NULL, 0);
        free(w);
        w = n;
    }
    t->inquirers = NULL;
}

/* Sends the decision to branch i: to the instance it went to last (the one
 * that prepared it, or asked about it) when that one is still live, else to
 * any live instance of the service (they share the database that holds the
 * prepared transaction) - whose ACK is then the one that counts. */
static void send_decision(struct core *c, struct txn *t, unsigned i)
{
    struct branch *b = &t->branches[i];
    uint8_t type = t->state == TXN_COMMITTING ? WIRE_COMMIT : WIRE_ABORT;
    if (b->to.rid_len == 0 || !registry_is_live(c->reg, b->service, b->to.rid, b->to.rid_len)) {
        const struct instance *in = registry_pick(c->reg, b->service);
        if (in == NULL)
            return; /* nobody to tell now; the re-send timer tries again */
        core_sent_to(&b->to, in);
    }
    if (b->attempt > 0)
        c->st.decision_resends++;
    core_send(c, b->to.rid, b->to.rid_len, type, t->h.txid, i, b->attempt++, 0, NULL, 0);
}

static void send_decisions(struct core *c, struct txn *t)
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
    core_arm_timer(c, &t->h, c->now.mono_ms + core_jitter(c, t->resend_ms));
    t->resend_ms = next_backoff(c, t->resend_ms);
}

static void finish(struct core *c, struct txn *t)
{
    enum treaty_status st = t->state == TXN_COMMITTING ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED;
    txn_set_state(t, TXN_DONE);
    struct journal_rec r;
    memset(&r, 0, sizeof r);
    memcpy(r.txid, t->h.txid, 16);
    r.kind = JOURNAL_END;
    r.failed_branch = -1;
    /* Lazy: if END is lost in a crash, recovery re-sends the decision and the
     * participants acknowledge again (decisions are idempotent). */
    core_append(c, &r, false);
    log_txn(LOG_LEVEL_DEBUG, t->h.txid, "txn: finished %s", treaty_status_name(st));
    /* finish() runs only once the decision is durable: clients still waiting
     * (a recovered or resubmitted txn) get the outcome now, and the outcome
     * may be remembered (an evicted one is read back from the journal). */
    tell_waiters(c, t, st);
    tell_inquirers(c, t);
    core_remember_done(c, t->h.txid, st, t->failed_branch, t->reason);
    core_forget(c, &t->h);
    txn_free(t);
}

static uint64_t append_decision(struct core *c, struct txn *t, enum journal_kind kind)
{
    const char *services[WIRE_MAX_BRANCHES];
    bool any_prepared = false;
    for (unsigned i = 0; i < t->nbranches; i++) {
        services[i] = t->branches[i].service;
        any_prepared |= t->branches[i].prepared;
    }
    struct journal_rec r;
    memset(&r, 0, sizeof r);
    memcpy(r.txid, t->h.txid, 16);
    r.kind = kind;
    /* An abort decided before any PREPARE was sent (no live instance) has
     * nobody to tell: its record lists no services, so recovery finishes it
     * at once instead of waiting for acknowledgements that cannot come. */
    r.nservices = kind == JOURNAL_ABORT && !any_prepared ? 0 : t->nbranches;
    r.services = services;
    r.detail = t->reason;
    r.failed_branch = t->failed_branch;
    return core_append(c, &r, true);
}

static void decide_abort(struct core *c, struct txn *t, int failed_branch, const char *reason)
{
    txn_set_state(t, TXN_ABORTING);
    t->failed_branch = failed_branch;
    free(t->reason);
    t->reason = util_xstrdup(reason);
    log_txn(LOG_LEVEL_INFO, t->h.txid, "txn: abort (branch %d: %s)", failed_branch, reason);
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
    t->h.timer_due_ms = -1; /* the prepare deadline no longer applies; re-sends start once durable */
}

/* Records an abort for a txid that holds no transaction here (nobody
 * submitted it, or its run was lost with the coordinator before any
 * decision): presumed abort, made durable before anyone is told, so the txid
 * can never run later. Whoever asked waits on the returned txn (waiters,
 * inquirers); a SUBMIT of the txid meanwhile waits too. */
static struct txn *presume_abort(struct core *c, const uint8_t *txid, const char *why)
{
    struct txn *t = txn_new(txid, 0);
    t->presumed = true;
    core_put(c, &t->h);
    c->st.presumed_aborts++;
    log_txn(LOG_LEVEL_INFO, txid, "txn: no record of it; recording an abort (presumed abort: %s)", why);
    txn_set_state(t, TXN_ABORTING);
    t->reason = util_xstrdup("no record of this transaction (presumed abort)");
    expect_durable(c, t, append_decision(c, t, JOURNAL_ABORT));
    return t;
}

static void decide_commit(struct core *c, struct txn *t)
{
    FAULT_POINT("coord.before_decision");
    txn_set_state(t, TXN_LOGGING_COMMIT);
    /* The commit point: once this record's Postgres commit returns, the
     * transaction commits whatever crashes. Nothing is sent until then
     * (see twopc_on_durable). */
    expect_durable(c, t, append_decision(c, t, JOURNAL_COMMIT));
    t->h.timer_due_ms = -1; /* the prepare deadline no longer applies */
}

void twopc_on_durable(struct core *c, struct txn *t, uint64_t seq)
{
    if (t->record_seq != seq || t->decision_durable)
        return; /* not the record t awaits, or already handled */
    t->decision_durable = true;
    core_client_done(c, &t->h); /* the client hears the outcome now: its share comes back */
    if (t->state == TXN_LOGGING_COMMIT) {
        FAULT_POINT("coord.after_commit_durable");
        txn_set_state(t, TXN_COMMITTING);
        c->st.committed++;
        core_observe_duration(c, TX_2PC, t->submitted_ms);
        t->submitted_ms = -1;
        tell_waiters(c, t, TREATY_STATUS_COMMITTED);
        tell_inquirers(c, t);
        t->resend_ms = 0;
        send_decisions(c, t);
    } else if (t->state == TXN_ABORTING) {
        core_observe_duration(c, TX_2PC, t->submitted_ms);
        t->submitted_ms = -1;
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

/* ------------------------------------------------------------ client requests */

void twopc_submit(struct core *c, const struct core_in *in, struct txn *t)
{
    const struct wire_msg *m = in->msg;
    const uint8_t *txid = m->hdr.txid;

    if (t != NULL) {
        /* A resubmission: same txid, same transaction. Answer when decided. */
        if (t->decision_durable)
            core_reply_outcome(c, in->rid, in->rid_len, txid,
                               t->state == TXN_COMMITTING ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED,
                               t->failed_branch, t->reason);
        else
            txn_add_waiter(t, in->rid, in->rid_len);
        return;
    }
    if (core_reply_done(c, in))
        return;
    /* A new transaction (the dispatcher has asked the journal when it might know it). */
    uint8_t client[16];
    if (core_check_new_txid(c, in) < 0 || core_admit(c, in, client) < 0)
        return;
    size_t nb = (m->nframes - 1) / 2;
    if (nb > (size_t)c->cfg->max_branches) {
        core_count_refusal(c, m->hdr.type, CORE_REFUSED_LIMIT);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG, "%zu branches exceed the limit of %d", nb,
                         c->cfg->max_branches);
        return;
    }
    for (size_t i = 0; i < nb; i++) {
        size_t len = m->frames[2 + 2 * i].len;
        if (len > (size_t)c->cfg->max_payload_bytes) {
            core_count_refusal(c, m->hdr.type, CORE_REFUSED_LIMIT);
            core_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG,
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
        core_count_refusal(c, m->hdr.type, CORE_REFUSED_LIMIT);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG,
                         "prepare timeout of %u ms exceeds twopc.max_timeout_ms = %d", timeout_ms,
                         c->cfg->max_timeout_ms);
        return;
    }

    t = txn_new(txid, (unsigned)nb);
    core_put(c, &t->h);
    core_client_charge(c, &t->h, client);
    txn_add_waiter(t, in->rid, in->rid_len);
    c->st.submitted++;
    t->submitted_ms = c->now.mono_ms;

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
    log_txn(LOG_LEVEL_DEBUG, txid, "txn: prepare %zu branches", nb);
    for (size_t i = 0; i < nb; i++) {
        struct branch *b = &t->branches[i];
        core_sent_to(&b->to, chosen[i]); /* its VOTE counts from this instance only */
        b->prepared = true;
        core_send(c, chosen[i]->rid, chosen[i]->rid_len, WIRE_PREPARE, txid, (unsigned)i, 0, 0, &m->frames[2 + 2 * i],
                  1);
    }
    core_arm_timer(c, &t->h, c->now.mono_ms + timeout_ms);
}

void twopc_saga_submitted(struct core *c, const struct core_in *in, struct txn *t)
{
    if (t->presumed) /* its abort is being recorded: the answer once it is durable */
        txn_add_waiter(t, in->rid, in->rid_len);
    else
        core_reply_error(c, in->rid, in->rid_len, t->h.txid, TREATY_EINVAL, "txid is in use by a 2PC transaction");
}

void twopc_query(struct core *c, const struct core_in *in, struct txn *t)
{
    const uint8_t *txid = in->msg->hdr.txid;
    if (t != NULL) {
        enum treaty_status st = TREATY_STATUS_PENDING;
        if (t->decision_durable)
            st = t->state == TXN_ABORTING ? TREATY_STATUS_ABORTED : TREATY_STATUS_COMMITTED;
        core_reply_outcome(c, in->rid, in->rid_len, txid, st, t->failed_branch, t->reason);
        return;
    }
    if (core_reply_done(c, in))
        return;
    /* Unknown here and (the dispatcher asked) in the journal. "Aborted" is an
     * answer that must hold: record it first. Not for a txid whose records
     * may already be collected (too old) or that no client could have
     * submitted yet (from the future): those are refused. */
    uint8_t client[16];
    if (core_check_new_txid(c, in) < 0 || core_admit(c, in, client) < 0)
        return;
    t = presume_abort(c, txid, "queried");
    core_client_charge(c, &t->h, client);
    txn_add_waiter(t, in->rid, in->rid_len);
}

/* ------------------------------------------------------------ participant messages */

/* True when in's sender may ask about (or answer for) branch of t: an
 * instance of the branch's service (core_may_serve). A transaction with no
 * branches (a presumed abort, or an abort recorded before any PREPARE) has
 * none to check: any participant may hear "abort". Dropped and counted
 * otherwise. */
static bool may_ask(struct core *c, const struct core_in *in, const struct txn *t)
{
    unsigned branch = in->msg->hdr.branch;
    if (t->nbranches == 0)
        return true;
    if (branch < t->nbranches && core_may_serve(c, in, t->branches[branch].service))
        return true;
    char id[TREATY_TXID_STRLEN];
    core_deny(c, DENY_SENDER, in, "%s for txn %s branch %u (%s): not an instance of that service",
              wire_type_name(in->msg->hdr.type), core_fmt_txid(t->h.txid, id), branch,
              branch < t->nbranches ? t->branches[branch].service : "no such branch");
    return false;
}

/* Tells one participant the decision on (txid, branch), in answer to a late
 * YES vote or an INQUIRE: at once when it is durable, else once it is. A txid
 * we hold nowhere (the dispatcher asked the journal) gets an abort recorded
 * first (presumed abort). A transaction still undecided gets no answer: its
 * decision will be sent. For a transaction we hold, only an instance of the
 * branch's service is answered, and its ACK is the one that counts from now
 * on (the decision went to it). */
static void answer_decision(struct core *c, const struct core_in *in, struct txn *t)
{
    const uint8_t *txid = in->msg->hdr.txid;
    unsigned branch = in->msg->hdr.branch;
    if (t != NULL) {
        if (!may_ask(c, in, t))
            return;
        if (t->state == TXN_LOGGING_COMMIT || t->state == TXN_PREPARING)
            return; /* not decided yet: the decision will be sent */
        if (branch < t->nbranches && !t->branches[branch].acked)
            core_sent_to_sender(&t->branches[branch].to, in);
        if (!t->decision_durable) {
            txn_add_inquirer(t, in->rid, in->rid_len, branch);
            return;
        }
        uint8_t type = t->state == TXN_COMMITTING ? WIRE_COMMIT : WIRE_ABORT;
        core_send(c, in->rid, in->rid_len, type, txid, branch, 0, 0, NULL, 0);
        return;
    }
    const struct outcome *d = outcomes_get(&c->done, txid);
    if (d != NULL) {
        core_send(c, in->rid, in->rid_len, d->status == TREATY_STATUS_COMMITTED ? WIRE_COMMIT : WIRE_ABORT, txid,
                  branch, 0, 0, NULL, 0);
        return;
    }
    if (!core_journal_healthy(c) || core_inflight(c) >= (size_t)c->cfg->max_inflight)
        return; /* asked again by the participant's sweep */
    t = presume_abort(c, txid, "a participant asked");
    txn_add_inquirer(t, in->rid, in->rid_len, branch);
}

static void record_vote(struct core *c, struct txn *t, unsigned branch, bool yes, const char *reason)
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

void twopc_vote(struct core *c, const struct core_in *in, struct txn *t)
{
    const struct wire_msg *m = in->msg;
    bool yes = m->hdr.code == TREATY_VOTE_YES;
    if (t == NULL || t->state != TXN_PREPARING || m->hdr.branch >= t->nbranches) {
        /* A late or stray vote. A YES means a prepared transaction waits for a
         * decision at that participant: give it the decision. */
        c->st.late_votes++;
        if (yes)
            answer_decision(c, in, t);
        return;
    }
    if (t->branches[m->hdr.branch].vote != VOTE_NONE)
        return; /* a duplicate (or the INQUIRE that counted as its vote came first) */
    if (!core_from(&t->branches[m->hdr.branch].to, in)) {
        char id[TREATY_TXID_STRLEN];
        core_deny(c, DENY_SENDER, in, "VOTE %s for txn %s branch %u: PREPARE went to another instance",
                  yes ? "YES" : "NO", core_fmt_txid(t->h.txid, id), m->hdr.branch);
        return;
    }
    char reason[TREATY_REASON_MAX];
    wire_copy_text(&m->frames[0], reason, sizeof reason);
    record_vote(c, t, m->hdr.branch, yes, reason);
}

void twopc_ack(struct core *c, const struct core_in *in, struct txn *t)
{
    const struct wire_msg *m = in->msg;
    if (t == NULL || m->hdr.branch >= t->nbranches)
        return; /* already finished: a duplicate ACK */
    bool want_commit = t->state == TXN_COMMITTING;
    if (t->state != TXN_COMMITTING && t->state != TXN_ABORTING)
        return;
    struct branch *b = &t->branches[m->hdr.branch];
    if (b->acked)
        return;
    /* The sender first: a forged ACK is refused (core_deny logs at most a
     * line a second), never logged line by line below. */
    if (!core_from(&b->to, in)) {
        char id[TREATY_TXID_STRLEN];
        core_deny(c, DENY_SENDER, in, "ACK for txn %s branch %u: the decision went to another instance",
                  core_fmt_txid(t->h.txid, id), m->hdr.branch);
        return;
    }
    if ((m->hdr.code == TREATY_STATUS_COMMITTED) != want_commit) {
        log_txn(LOG_LEVEL_WARN, t->h.txid, "txn: branch %u acknowledged %s but the decision is %s; ignored",
                m->hdr.branch, treaty_status_name(m->hdr.code), want_commit ? "commit" : "abort");
        return;
    }
    b->acked = true;
    t->nacked++;
    if (t->nacked == t->nbranches && t->decision_durable)
        finish(c, t);
}

void twopc_inquire(struct core *c, const struct core_in *in, struct txn *t)
{
    const struct wire_msg *m = in->msg;
    c->st.inquiries++;
    if (t != NULL && t->state == TXN_PREPARING) {
        /* The participant holds a prepared transaction for this branch: that
         * is a YES vote whose message was lost (or it restarted before
         * voting) - when it comes from an instance of the branch's service,
         * which shares the database the branch was prepared in. */
        if (may_ask(c, in, t)) {
            struct branch *b = &t->branches[m->hdr.branch];
            core_sent_to_sender(&b->to, in);
            record_vote(c, t, m->hdr.branch, true, NULL);
        }
        return;
    }
    answer_decision(c, in, t);
}

/* ------------------------------------------------------------ timers */

void twopc_on_timer(struct core *c, struct txn *t)
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

/* ------------------------------------------------------------ recovery */

struct txn *twopc_resume(struct core *c, const uint8_t txid[16], bool commit, unsigned nservices,
                         const char (*services)[WIRE_NAME_MAX + 1], const char *detail, int failed_branch)
{
    struct txn *t = txn_new(txid, nservices);
    for (unsigned i = 0; i < nservices; i++) {
        memcpy(t->branches[i].service, services[i], sizeof t->branches[i].service);
        t->branches[i].prepared = true;
    }
    t->decision_durable = true;
    t->failed_branch = failed_branch;
    if (commit) {
        txn_set_state(t, TXN_COMMITTING);
    } else {
        txn_set_state(t, TXN_ABORTING);
        t->reason = util_xstrdup(detail);
    }
    core_put(c, &t->h);
    /* The first re-send comes soon after recovery (it arms the timer):
     * participants are reconnecting right now. */
    t->resend_ms = c->cfg->resend_initial_ms;
    c->st.recovered++;
    return t;
}

/* ------------------------------------------------------------ operators */

uint64_t twopc_admin_abort(struct core *c, struct txn *t, const char *reason)
{
    if (t->state != TXN_PREPARING)
        return 0;
    /* Exactly as the prepare deadline would: the ABORT record is forced, and
     * nothing is sent or told before it is durable (decide_abort). */
    decide_abort(c, t, -1, reason);
    return t->record_seq;
}
