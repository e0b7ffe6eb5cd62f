/*
 * core.c - the coordinator's core: the one dispatcher, admission and txid
 * checks, journal lookups and the requests parked on them, durable waits,
 * the tick (timers, registry sweep), stats; and the helpers through which
 * twopc.c and saga.c reach the world (core_int.h). See core.h for the
 * contract.
 *
 * Events:
 *   message  -> first authorization (core.h): a role that may not send the
 *               type, or a key no longer listed, is dropped here; HELLO's
 *               service and instance binding are checked in handle_hello,
 *               the sender of a VOTE, ACK, INQUIRE or RESULT in twopc.c and
 *               saga.c (core_from, core_may_serve), the client's share of
 *               transactions in flight in core_admit. Then
 *               the txid is looked up once in the transaction map (2PC,
 *               saga, or a journal lookup in flight); a request whose answer
 *               depends on what the journal knows of a txid held nowhere in
 *               memory is parked on a lookup (below); anything else goes to
 *               twopc.c or saga.c by message type and what the txid is.
 *   durable  -> the transactions and sagas that awaited a record up to the
 *               reported seq go on (twopc_on_durable, saga_on_durable): this
 *               is where every answer that states an outcome or decision is
 *               released.
 *   lookup   -> what the journal holds of a txid: an outcome goes to the
 *               cache, then the parked requests are handled again as if
 *               they had just arrived (or refused when the journal could not
 *               be read).
 *   tick     -> due timers (prepare deadlines, decision re-sends, saga
 *               retries, try timeouts and deadlines); every
 *               registry.heartbeat_ms the registry drops silent instances.
 *
 * Journal lookups: a request that may start a transaction, or be answered
 * "aborted" by presumption (SUBMIT, SAGA, QUERY, INQUIRE, VOTE YES), about a
 * txid no transaction in memory and no cached outcome knows, but which the
 * journal may hold (outcomes_may_be_in_journal: made before this process
 * could have seen it all), waits for io->lookup to answer. Otherwise a
 * txid whose run finished and left the cache would run again, or a
 * committed one be presumed aborted.
 */
#include "core.h"
#include "core_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "allowlist.h"
#include "log.h"
#include "outcomes.h"
#include "registry.h"
#include "saga.h"
#include "timers.h"
#include "treaty.h"
#include "twopc.h"
#include "txhead.h"
#include "txmap.h"
#include "txn.h"
#include "util.h"
#include "wire.h"

/* ------------------------------------------------------------ the map */

struct tx_head *core_get(const struct core *c, const uint8_t txid[16])
{
    return txmap_get(&c->txs, txid);
}

static size_t *kind_count(struct core *c, uint8_t kind)
{
    switch (kind) {
    case TX_2PC:
        return &c->n2pc;
    case TX_SAGA:
        return &c->nsagas;
    default:
        return &c->nlookups;
    }
}

void core_put(struct core *c, struct tx_head *h)
{
    txmap_put(&c->txs, h->txid, h);
    (*kind_count(c, h->kind))++;
}

void core_forget(struct core *c, struct tx_head *h)
{
    core_client_done(c, h);
    if (txmap_del(&c->txs, h->txid) != NULL)
        (*kind_count(c, h->kind))--;
}

size_t core_inflight(const struct core *c)
{
    return c->n2pc + c->nsagas;
}

/* ------------------------------------------------------------ the world */

const char *core_fmt_txid(const uint8_t *txid, char *buf)
{
    return treaty_txid_format((const treaty_txid_t *)txid, buf);
}

void core_send(struct core *c, const uint8_t *rid, size_t rid_len, uint8_t type, const uint8_t *txid, unsigned branch,
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
    c->io.send(c->io.ctx, rid, rid_len, &h, frames, n);
}

void core_reply_error(struct core *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid, int err, const char *fmt,
                      ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    struct wire_frame f = wire_str(text);
    core_send(c, rid, rid_len, WIRE_ERROR, txid, 0, 0, (unsigned)-err, &f, 1);
}

void core_reply_outcome(struct core *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid, enum treaty_status st,
                        int failed_branch, const char *reason)
{
    struct wire_frame f = wire_str(reason ? reason : "");
    core_send(c, rid, rid_len, WIRE_OUTCOME, txid, failed_branch < 0 ? TREATY_NO_BRANCH : (unsigned)failed_branch, 0,
              st, &f, 1);
}

uint64_t core_append(struct core *c, const struct journal_rec *r, bool force)
{
    return c->io.append(c->io.ctx, r, force);
}

bool core_journal_healthy(struct core *c)
{
    return c->io.journal_healthy(c->io.ctx);
}

void core_count_refusal(struct core *c, uint8_t type, enum core_refusal why)
{
    c->st.refused++;
    c->st.refusals[why]++;
    if (type == WIRE_SUBMIT)
        c->st.refused_2pc++;
    else if (type == WIRE_SAGA)
        c->st.refused_saga++;
}

void core_observe_duration(struct core *c, uint8_t kind, int64_t submitted_ms)
{
    if (submitted_ms < 0)
        return;
    int64_t ms = c->now.mono_ms - submitted_ms;
    metrics_hist_observe(kind == TX_SAGA ? &c->dur_saga : &c->dur_2pc, ms > 0 ? (uint64_t)ms : 0);
}

int core_jitter(struct core *c, int ms)
{
    return util_rng_jitter(&c->rng, ms);
}

void core_arm_timer(struct core *c, struct tx_head *h, int64_t due_ms)
{
    h->timer_due_ms = due_ms;
    timers_add(&c->timers, due_ms, h->txid);
}

void core_expect_durable(struct core *c, const struct tx_head *h, uint64_t seq)
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
    memcpy(w->txid, h->txid, 16);
    c->wait_len++;
}

void core_remember_done(struct core *c, const uint8_t *txid, enum treaty_status st, int failed_branch,
                        const char *reason)
{
    outcomes_put(&c->done, txid, st, failed_branch, reason);
}

bool core_reply_done(struct core *c, const struct core_in *in)
{
    const uint8_t *txid = in->msg->hdr.txid;
    const struct outcome *d = outcomes_get(&c->done, txid);
    if (d == NULL)
        return false;
    core_reply_outcome(c, in->rid, in->rid_len, txid, d->status, d->failed_branch, d->reason);
    return true;
}

int core_check_new_txid(struct core *c, const struct core_in *in)
{
    const uint8_t *txid = in->msg->hdr.txid;
    long long made = treaty_txid_time_ms((const treaty_txid_t *)txid);
    int64_t now = c->now.wall_ms;
    if (made < 0) {
        core_count_refusal(c, in->msg->hdr.type, CORE_REFUSED_TXID);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EINVAL,
                         "txid is not time-ordered (UUIDv7): make txids with treaty_txid_generate");
        return TREATY_EINVAL;
    }
    if (made > now + (int64_t)c->cfg->txid_max_future_s * 1000) {
        core_count_refusal(c, in->msg->hdr.type, CORE_REFUSED_TXID);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EINVAL,
                         "txid was made %lld ms in the future of the coordinator's clock (txid.max_future_s = %d): "
                         "check the clocks",
                         (long long)(made - now), c->cfg->txid_max_future_s);
        return TREATY_EINVAL;
    }
    if (made < now - (int64_t)c->cfg->txid_max_age_s * 1000) {
        core_count_refusal(c, in->msg->hdr.type, CORE_REFUSED_EXPIRED);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EEXPIRED,
                         "txid was made %lld s ago, beyond txid.max_age_s = %d: its outcome may be forgotten, so it "
                         "cannot run (again); use a new txid",
                         (long long)((now - made) / 1000), c->cfg->txid_max_age_s);
        return TREATY_EEXPIRED;
    }
    return 0;
}

/* ------------------------------------------------------------ clients' shares */

/* The 128-bit keyed digest (SipHash-2-4 with 128-bit output, under the
 * core's random key) of in's sender's identity: its CURVE key, or its
 * routing id, tagged apart. Keyed, so that no peer can choose an identity
 * that shares another's entry. */
static void client_id(const struct core *c, const struct core_in *in, uint8_t id[16])
{
    uint8_t buf[1 + WIRE_ROUTING_ID_MAX];
    size_t n = in->peer != NULL ? sizeof in->peer->key : in->rid_len;
    if (n > sizeof buf - 1)
        n = sizeof buf - 1;
    buf[0] = in->peer != NULL ? 'K' : 'R';
    memcpy(buf + 1, in->peer != NULL ? in->peer->key : in->rid, n);
    crypto_shorthash_siphashx24(id, buf, 1 + n, c->client_hkey);
}

void core_client_charge(struct core *c, struct tx_head *h, const uint8_t id[16])
{
    struct client_load *l = txmap_get(&c->clients, id);
    if (l == NULL) {
        l = util_xcalloc(1, sizeof *l);
        memcpy(l->id, id, 16);
        txmap_put(&c->clients, id, l);
    }
    l->n++;
    h->client = l;
}

void core_client_done(struct core *c, struct tx_head *h)
{
    struct client_load *l = h->client;
    if (l == NULL)
        return;
    h->client = NULL;
    if (--l->n == 0) {
        txmap_del(&c->clients, l->id);
        free(l);
    }
}

int core_admit(struct core *c, const struct core_in *in, uint8_t client[16])
{
    const uint8_t *txid = in->msg->hdr.txid;
    if (c->stopping) {
        core_count_refusal(c, in->msg->hdr.type, CORE_REFUSED_STOPPING);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "coordinator is shutting down");
        return TREATY_EBUSY;
    }
    if (!core_journal_healthy(c)) {
        core_count_refusal(c, in->msg->hdr.type, CORE_REFUSED_JOURNAL);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "journal unavailable: PostgreSQL unreachable");
        return TREATY_EBUSY;
    }
    if (core_inflight(c) >= (size_t)c->cfg->max_inflight) {
        core_count_refusal(c, in->msg->hdr.type, CORE_REFUSED_INFLIGHT);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "too many transactions in flight (limit %d)",
                         c->cfg->max_inflight);
        return TREATY_EBUSY;
    }
    client_id(c, in, client);
    const struct client_load *l = txmap_get(&c->clients, client);
    if (l != NULL && l->n >= (uint32_t)c->cfg->max_inflight_per_client) {
        core_count_refusal(c, in->msg->hdr.type, CORE_REFUSED_CLIENT_LIMIT);
        core_deny(c, DENY_LIMIT, in, "%s: %u of its transactions in flight already", wire_type_name(in->msg->hdr.type),
                  l->n);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY,
                         "too many transactions in flight from this client (limits.max_inflight_per_client = %d): "
                         "wait for answers, then retry",
                         c->cfg->max_inflight_per_client);
        return TREATY_EBUSY;
    }
    return 0;
}

/* ------------------------------------------------------------ authorization */

static const char *const deny_names[DENY_COUNT_] = {"role", "service", "instance", "sender", "client limit"};

const char *core_fmt_peer(const struct core_in *in, char *buf, size_t len)
{
    if (in->peer != NULL) {
        char z[ALLOW_KEY_TEXT_LEN + 1];
        if (zmq_z85_encode(z, in->peer->key, ALLOW_KEY_LEN) == NULL)
            snprintf(z, sizeof z, "?");
        snprintf(buf, len, "key %s (%s)", z, allow_roles_name(in->peer->roles));
        return buf;
    }
    size_t n = snprintf(buf, len, "routing id ");
    for (size_t i = 0; i < in->rid_len && i < 16 && n + 3 < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%02x", in->rid[i]);
    if (in->rid_len > 16 && n + 4 < len)
        snprintf(buf + n, len - n, "...");
    return buf;
}

void core_deny(struct core *c, enum core_deny why, const struct core_in *in, const char *fmt, ...)
{
    switch (why) {
    case DENY_ROLE:
        c->st.denied_role++;
        break;
    case DENY_SERVICE:
        c->st.denied_service++;
        break;
    case DENY_INSTANCE:
        c->st.denied_instance++;
        break;
    case DENY_SENDER:
        c->st.denied_sender++;
        break;
    case DENY_LIMIT:
    case DENY_COUNT_:
        c->st.denied_limit++;
        break;
    }
    /* At most one line a second per reason: a hostile peer must not flood
     * the log (the counters see everything). */
    if (c->now.mono_ms < c->deny_log[why].next_ms) {
        c->deny_log[why].suppressed++;
        return;
    }
    char text[384], who[96], more[96] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (c->deny_log[why].suppressed > 0)
        snprintf(more, sizeof more, " (and %llu more refused for this reason in the last second)",
                 (unsigned long long)c->deny_log[why].suppressed);
    log_warn("refused (%s) %s, from %s%s", deny_names[why], text, core_fmt_peer(in, who, sizeof who), more);
    c->deny_log[why].next_ms = c->now.mono_ms + 1000;
    c->deny_log[why].suppressed = 0;
}

void core_sent_to(struct sent_to *to, const struct instance *i)
{
    to->rid_len = i->rid_len <= BRANCH_RID_MAX ? (uint8_t)i->rid_len : 0;
    memcpy(to->rid, i->rid, to->rid_len);
    to->keyed = i->keyed;
    memcpy(to->key, i->key, sizeof to->key);
}

void core_sent_to_sender(struct sent_to *to, const struct core_in *in)
{
    to->rid_len = in->rid_len <= BRANCH_RID_MAX ? (uint8_t)in->rid_len : 0;
    memcpy(to->rid, in->rid, to->rid_len);
    to->keyed = in->peer != NULL;
    if (in->peer != NULL)
        memcpy(to->key, in->peer->key, sizeof to->key);
}

bool core_from(const struct sent_to *to, const struct core_in *in)
{
    if (to->keyed)
        return in->peer != NULL && memcmp(to->key, in->peer->key, sizeof to->key) == 0;
    return in->peer == NULL && to->rid_len > 0 && to->rid_len == in->rid_len &&
           memcmp(to->rid, in->rid, in->rid_len) == 0;
}

bool core_may_serve(const struct core *c, const struct core_in *in, const char *service)
{
    if (in->peer != NULL)
        return allow_entry_has_service(in->peer, service);
    return registry_is_live(c->reg, service, in->rid, in->rid_len);
}

/* ------------------------------------------------------------ new, destroy */

/* Buckets of the duration histograms (ms): 1 ms .. 10 min. */
static const uint64_t duration_bounds_ms[] = {1,    2,    5,    10,    25,    50,    100,    250,   500,
                                              1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000};
#define DURATION_BUCKETS ((unsigned)(sizeof duration_bounds_ms / sizeof duration_bounds_ms[0]))

struct core *core_new(const struct config *cfg, const struct core_io *io, uint64_t seed)
{
    struct core *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->replay = malloc(sizeof *c->replay);
    c->def_msg = malloc(sizeof *c->def_msg);
    c->def_frames = calloc(WIRE_MAX_FRAMES, sizeof *c->def_frames);
    c->reg = registry_new(cfg->dead_after_ms);
    if (c->replay == NULL || c->def_msg == NULL || c->def_frames == NULL || c->reg == NULL) {
        registry_destroy(&c->reg);
        free(c->def_frames);
        free(c->def_msg);
        free(c->replay);
        free(c);
        return NULL;
    }
    c->cfg = cfg;
    c->io = *io;
    c->newest_ms = -2; /* unknown until core_recover_newest */
    util_rng_seed(&c->rng, seed);
    /* The maps' hash keys come from the seed too: one seed, one layout. */
    uint8_t key[TXMAP_KEY_BYTES];
    util_rng_bytes(&c->rng, key, sizeof key);
    txmap_init(&c->txs, key);
    util_rng_bytes(&c->rng, key, sizeof key);
    outcomes_init(&c->done, (size_t)cfg->outcome_cache, key);
    util_rng_bytes(&c->rng, key, sizeof key);
    txmap_init(&c->clients, key);
    util_rng_bytes(&c->rng, c->client_hkey, sizeof c->client_hkey);
    timers_init(&c->timers);
    c->next_sweep_ms = -1;
    metrics_hist_init(&c->dur_2pc, duration_bounds_ms, DURATION_BUCKETS);
    metrics_hist_init(&c->dur_saga, duration_bounds_ms, DURATION_BUCKETS);
    return c;
}

static void parked_free(struct parked *p)
{
    free(p->peer);
    free(p->lens);
    free(p->data);
    free(p);
}

static void lookup_free(struct lookup *l)
{
    while (l->head) {
        struct parked *p = l->head;
        l->head = p->next;
        parked_free(p);
    }
    free(l);
}

void core_destroy(struct core **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    struct core *c = *cp;
    for (size_t i = 0; i < c->txs.cap; i++) {
        struct tx_head *h = c->txs.slots[i].val;
        if (h == NULL)
            continue;
        if (h->kind == TX_2PC)
            txn_free((struct txn *)h);
        else if (h->kind == TX_SAGA)
            saga_free((struct saga *)h);
        else
            lookup_free((struct lookup *)h);
    }
    txmap_free(&c->txs);
    admin_free(c);
    for (size_t i = 0; i < c->clients.cap; i++)
        free(c->clients.slots[i].val);
    txmap_free(&c->clients);
    outcomes_free(&c->done);
    timers_free(&c->timers);
    registry_destroy(&c->reg);
    recovery_free(c->rec);
    free(c->waits);
    free(c->def_frames);
    free(c->def_msg);
    free(c->replay);
    free(c);
    *cp = NULL;
}

/* ------------------------------------------------------------ dispatch */

/* HELLO: the peer may register only services it is listed for, and only a
 * name nobody else holds while it lives (registry.h). A refused HELLO is
 * answered with ERROR (so that a misconfigured participant says why in its
 * log) and changes nothing. */
static void handle_hello(struct core *c, const struct core_in *in)
{
    const struct wire_msg *m = in->msg;
    char svc[WIRE_NAME_MAX + 1], name[WIRE_NAME_MAX + 1];
    wire_copy_text(&m->frames[0], svc, sizeof svc);
    wire_copy_text(&m->frames[1], name, sizeof name);
    if (in->peer != NULL && !allow_entry_has_service(in->peer, svc)) {
        core_deny(c, DENY_SERVICE, in, "HELLO as %s/%s: the key is a participant of \"%s\" only", svc, name,
                  in->peer->services);
        core_reply_error(c, in->rid, in->rid_len, NULL, TREATY_EINVAL,
                         "this key may not register service %s (see the coordinator's allow-list)", svc);
        return;
    }
    if (in->rid_len > BRANCH_RID_MAX) {
        core_deny(c, DENY_INSTANCE, in, "HELLO as %s/%s: a routing id of %zu bytes", svc, name, in->rid_len);
        core_reply_error(c, in->rid, in->rid_len, NULL, TREATY_EINVAL,
                         "a participant's routing id may have at most %d bytes (set a shorter ZMQ_ROUTING_ID, or none)",
                         BRANCH_RID_MAX);
        return;
    }
    enum registry_hello_result res = registry_hello(c->reg, svc, name, in->rid, in->rid_len,
                                                    in->peer != NULL ? in->peer->key : NULL, c->now.mono_ms);
    if (res == REGISTRY_TAKEN) {
        core_deny(c, DENY_INSTANCE, in, "HELLO as %s/%s: the name is registered by another peer", svc, name);
        core_reply_error(c, in->rid, in->rid_len, NULL, TREATY_EBUSY,
                         "instance %s/%s is registered by another peer; it is free once that one has been silent for "
                         "registry.dead_after_ms (%d ms)",
                         svc, name, c->cfg->dead_after_ms);
        return;
    }
    uint8_t hb[4];
    wire_put_u32(hb, (uint32_t)c->cfg->heartbeat_ms);
    struct wire_frame f = {hb, 4};
    core_send(c, in->rid, in->rid_len, WIRE_WELCOME, NULL, 0, 0, 0, &f, 1);
}

/* Handles one message about a txid the core holds as h (NULL: nothing, or
 * only a lookup in flight). */
static void handle(struct core *c, const struct core_in *in, struct tx_head *h)
{
    struct txn *t = h != NULL && h->kind == TX_2PC ? (struct txn *)h : NULL;
    struct saga *s = h != NULL && h->kind == TX_SAGA ? (struct saga *)h : NULL;
    const struct wire_hdr *hdr = &in->msg->hdr;
    switch (hdr->type) {
    case WIRE_SUBMIT:
        if (s != NULL)
            core_reply_error(c, in->rid, in->rid_len, hdr->txid, TREATY_EINVAL, "txid is in use by a saga");
        else
            twopc_submit(c, in, t);
        break;
    case WIRE_QUERY:
        if (s != NULL)
            saga_query(c, in, s);
        else
            twopc_query(c, in, t);
        break;
    case WIRE_HELLO:
        handle_hello(c, in);
        break;
    case WIRE_VOTE:
        /* A saga's txid has no 2PC branch: a stray vote, nothing to answer. */
        if (s != NULL)
            c->st.late_votes++;
        else
            twopc_vote(c, in, t);
        break;
    case WIRE_ACK:
        twopc_ack(c, in, t);
        break;
    case WIRE_INQUIRE:
        if (s != NULL)
            c->st.inquiries++; /* likewise: no 2PC branch of it exists */
        else
            twopc_inquire(c, in, t);
        break;
    case WIRE_SAGA:
        if (t != NULL)
            twopc_saga_submitted(c, in, t);
        else
            saga_submit(c, in, s);
        break;
    case WIRE_RESULT:
        saga_result(c, in, s);
        break;
    default:
        c->st.malformed++;
        core_reply_error(c, in->rid, in->rid_len, hdr->txid, TREATY_EPROTO,
                         "message type %s is not accepted by the coordinator", wire_type_name(hdr->type));
        break;
    }
}

static bool from_client(uint8_t type)
{
    return type == WIRE_SUBMIT || type == WIRE_SAGA || type == WIRE_QUERY;
}

/* The roles that may send a message of type; 0 for the types nobody sends
 * to the coordinator (answered with ERROR EPROTO by handle()). */
static unsigned roles_for(uint8_t type)
{
    switch (type) {
    case WIRE_SUBMIT:
    case WIRE_SAGA:
    case WIRE_QUERY:
        return ALLOW_CLIENT;
    case WIRE_HELLO:
    case WIRE_VOTE:
    case WIRE_ACK:
    case WIRE_INQUIRE:
    case WIRE_RESULT:
        return ALLOW_PARTICIPANT;
    default:
        return 0;
    }
}

/* True when the answer to in depends on what the journal knows of its txid:
 * a request that may start a transaction, or be answered "aborted" by
 * presumption, about a txid no transaction in memory and no cached outcome
 * knows, which the journal may hold (outcomes_may_be_in_journal). (A parked
 * request is handled again after its lookup without this check.) */
static bool needs_lookup(const struct core *c, const struct core_in *in, const struct tx_head *h)
{
    const struct wire_hdr *hdr = &in->msg->hdr;
    bool asks =
        from_client(hdr->type) || hdr->type == WIRE_INQUIRE || (hdr->type == WIRE_VOTE && hdr->code == TREATY_VOTE_YES);
    if (!asks)
        return false;
    if (h != NULL && h->kind != TX_LOOKUP)
        return false;
    if (outcomes_get(&c->done, hdr->txid) != NULL)
        return false;
    return h != NULL || outcomes_may_be_in_journal(&c->done, hdr->txid);
}

/* Keeps a copy of in until the journal lookup of its txid answers, asking
 * for one unless it is already under way (l). */
static void park(struct core *c, const struct core_in *in, struct lookup *l)
{
    const struct wire_msg *m = in->msg;
    const uint8_t *txid = m->hdr.txid;
    if (l == NULL) {
        bool healthy = core_journal_healthy(c);
        const char *busy = !healthy ? "journal unavailable: PostgreSQL unreachable"
                           : c->nlookups >= (size_t)c->cfg->max_inflight
                               ? "too many journal lookups in flight (limits.max_inflight)"
                               : NULL;
        if (busy != NULL) {
            if (from_client(m->hdr.type)) {
                core_count_refusal(c, m->hdr.type, healthy ? CORE_REFUSED_INFLIGHT : CORE_REFUSED_JOURNAL);
                core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EBUSY, "%s", busy);
            }
            return; /* a participant asks again */
        }
        l = util_xcalloc(1, sizeof *l);
        memcpy(l->h.txid, txid, 16);
        l->h.kind = TX_LOOKUP;
        l->h.timer_due_ms = -1;
        core_put(c, &l->h);
        c->io.lookup(c->io.ctx, txid);
        c->st.lookups++;
    }
    /* A peer re-sending while it waits is answered once: keep one copy. */
    for (struct parked *q = l->head; q; q = q->next)
        if (q->hdr.type == m->hdr.type && q->hdr.branch == m->hdr.branch && q->rid_len == in->rid_len &&
            memcmp(q->rid, in->rid, in->rid_len) == 0)
            return;
    struct parked *p = util_xcalloc(1, sizeof *p);
    if (in->peer != NULL) {
        p->peer = util_xmalloc(sizeof *p->peer);
        *p->peer = *in->peer;
    }
    size_t total = 0;
    for (size_t i = 0; i < m->nframes; i++)
        total += m->frames[i].len;
    p->lens = util_xcalloc(m->nframes + 1, sizeof *p->lens);
    p->data = util_xmalloc(total + 1);
    memcpy(p->rid, in->rid, in->rid_len);
    p->rid_len = in->rid_len;
    p->hdr = m->hdr;
    p->nframes = m->nframes;
    size_t off = 0;
    for (size_t i = 0; i < m->nframes; i++) {
        p->lens[i] = m->frames[i].len;
        if (p->lens[i] > 0)
            memcpy(p->data + off, m->frames[i].data, p->lens[i]);
        off += p->lens[i];
    }
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
}

void core_on_message(struct core *c, const uint8_t *rid, size_t rid_len, const struct allow_entry *peer,
                     const struct wire_msg *m, struct core_time now)
{
    c->now = now;
    struct core_in in = {rid, rid_len, peer, m};
    unsigned need = roles_for(m->hdr.type);
    if (peer != NULL && (peer->roles == 0 || (need != 0 && (peer->roles & need) == 0))) {
        char id[TREATY_TXID_STRLEN];
        core_deny(c, DENY_ROLE, &in, "%s about txid %s: %s", wire_type_name(m->hdr.type),
                  core_fmt_txid(m->hdr.txid, id),
                  peer->roles == 0       ? "the key is not on the allow-list (any more)"
                  : need == ALLOW_CLIENT ? "only clients may send it"
                                         : "only participants may send it");
        return;
    }
    struct tx_head *h = m->hdr.type == WIRE_HELLO ? NULL : core_get(c, m->hdr.txid);
    if (needs_lookup(c, &in, h)) {
        park(c, &in, (struct lookup *)h);
        return;
    }
    handle(c, &in, h);
}

void core_on_malformed(struct core *c, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h, int err,
                       struct core_time now)
{
    c->now = now;
    c->st.malformed++;
    if (rid_len == 0) {
        log_warn("dropped a malformed message: %s", treaty_strerror(err));
        return;
    }
    log_warn("rejected a message from a peer: %s", treaty_strerror(err));
    const char *what = err == TREATY_ETOOBIG    ? "message exceeds a limit (payload bytes or frame count)"
                       : err == TREATY_EVERSION ? "unsupported protocol version"
                                                : "malformed message";
    core_reply_error(c, rid, rid_len, h != NULL ? h->txid : NULL, err, "%s", what);
}

/* ------------------------------------------------------------ journal lookups */

/* Handles a parked request again, now that its lookup answered. */
static void replay(struct core *c, const struct parked *p)
{
    struct wire_msg *m = c->replay;
    m->hdr = p->hdr;
    m->nframes = p->nframes;
    size_t off = 0;
    for (size_t i = 0; i < p->nframes; i++) {
        m->frames[i].data = p->data + off;
        m->frames[i].len = p->lens[i];
        off += p->lens[i];
    }
    struct core_in in = {p->rid, p->rid_len, p->peer, m};
    handle(c, &in, core_get(c, m->hdr.txid));
}

void core_on_lookup(struct core *c, const struct journal_lookup_result *r, struct core_time now)
{
    c->now = now;
    struct tx_head *h = core_get(c, r->txid);
    if (h == NULL || h->kind != TX_LOOKUP)
        return;
    struct lookup *l = (struct lookup *)h;
    core_forget(c, &l->h);
    const char *refuse = NULL;
    enum core_refusal why = CORE_REFUSED_JOURNAL;
    if (r->error != 0) {
        c->st.lookup_errors++;
        refuse = "journal unavailable: cannot read what it knows of this txid";
    } else {
        switch (r->outcome) {
        case JOURNAL_OUTCOME_COMMITTED:
            core_remember_done(c, r->txid, TREATY_STATUS_COMMITTED, r->failed_branch, NULL);
            break;
        case JOURNAL_OUTCOME_ABORTED:
            core_remember_done(c, r->txid, TREATY_STATUS_ABORTED, r->failed_branch, r->detail);
            break;
        case JOURNAL_OUTCOME_COMPLETED:
            core_remember_done(c, r->txid, TREATY_STATUS_COMPLETED, -1, NULL);
            break;
        case JOURNAL_OUTCOME_COMPENSATED:
            core_remember_done(c, r->txid, TREATY_STATUS_COMPENSATED, r->failed_branch, r->detail);
            break;
        case JOURNAL_OUTCOME_UNFINISHED:
            /* Recovery holds every unfinished transaction in memory: records
             * nobody holds are a journal we cannot explain. Answer nothing
             * that could contradict them. */
            log_txn(LOG_LEVEL_ERROR, r->txid,
                    "txn: the journal holds records of it but no outcome, and it is not in memory; refusing "
                    "requests about it (an operator should look)");
            refuse = "the journal holds unfinished records of this txid that the coordinator does not hold";
            why = CORE_REFUSED_UNEXPLAINED;
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
        } else if (from_client(p->hdr.type)) {
            core_count_refusal(c, p->hdr.type, why);
            core_reply_error(c, p->rid, p->rid_len, r->txid, TREATY_EBUSY, "%s", refuse);
        }
        parked_free(p);
        p = n;
    }
    l->head = NULL;
    free(l);
}

/* ------------------------------------------------------------ durable records */

void core_on_durable(struct core *c, uint64_t seq, struct core_time now)
{
    c->now = now;
    if (seq <= c->durable_seq)
        return;
    c->durable_seq = seq;
    while (c->wait_len > 0) {
        struct durable_wait w = c->waits[c->wait_head];
        if (w.seq > seq)
            break;
        c->wait_head = (c->wait_head + 1) % c->wait_cap;
        c->wait_len--;
        struct tx_head *h = core_get(c, w.txid);
        if (h == NULL)
            continue;
        if (h->kind == TX_2PC)
            twopc_on_durable(c, (struct txn *)h, w.seq);
        else if (h->kind == TX_SAGA)
            saga_on_durable(c, (struct saga *)h, w.seq);
    }
    admin_on_durable(c);
}

/* ------------------------------------------------------------ time */

void core_on_tick(struct core *c, struct core_time now)
{
    c->now = now;
    struct timer_entry e;
    while (timers_pop_due(&c->timers, now.mono_ms, &e)) {
        struct tx_head *h = core_get(c, e.txid);
        if (h == NULL || h->timer_due_ms != e.due_ms)
            continue; /* finished, cancelled or rescheduled */
        h->timer_due_ms = -1;
        if (h->kind == TX_2PC)
            twopc_on_timer(c, (struct txn *)h);
        else if (h->kind == TX_SAGA)
            saga_on_timer(c, (struct saga *)h);
    }
    if (c->next_sweep_ms >= 0 && now.mono_ms >= c->next_sweep_ms) {
        registry_sweep(c->reg, now.mono_ms);
        c->next_sweep_ms = now.mono_ms + c->cfg->heartbeat_ms;
    }
}

static bool still_allowed(void *arg, const struct instance *i)
{
    const struct allow_entry *e = allowlist_find(arg, i->key);
    return e != NULL && allow_entry_has_service(e, i->service);
}

void core_config_changed(struct core *c)
{
    registry_set_dead_after(c->reg, c->cfg->dead_after_ms);
}

void core_on_allowlist(struct core *c, const struct allowlist *a, struct core_time now)
{
    c->now = now;
    size_t n = registry_drop_if(c->reg, still_allowed, (void *)a);
    if (n > 0)
        log_info("allow-list: %zu instances dropped from the registry (their keys were revoked)", n);
}

int64_t core_next_tick(const struct core *c)
{
    int64_t t = timers_next(&c->timers);
    if (c->next_sweep_ms >= 0 && (t < 0 || c->next_sweep_ms < t))
        t = c->next_sweep_ms;
    return t;
}

/* ------------------------------------------------------------ stopping, stats */

void core_stop(struct core *c)
{
    c->stopping = true;
}

size_t core_unfinished(const struct core *c)
{
    return core_inflight(c);
}

static const char *const refusal_names[CORE_REFUSAL_COUNT_] = {
    [CORE_REFUSED_STOPPING] = "stopping",
    [CORE_REFUSED_JOURNAL] = "journal_unavailable",
    [CORE_REFUSED_INFLIGHT] = "inflight_limit",
    [CORE_REFUSED_TXID] = "txid_invalid",
    [CORE_REFUSED_EXPIRED] = "txid_expired",
    [CORE_REFUSED_LIMIT] = "over_limit",
    [CORE_REFUSED_INVALID] = "invalid_request",
    [CORE_REFUSED_CLIENT_LIMIT] = "client_limit",
    [CORE_REFUSED_UNEXPLAINED] = "journal_unexplained",
};

const char *core_refusal_name(enum core_refusal r)
{
    return (unsigned)r < CORE_REFUSAL_COUNT_ ? refusal_names[r] : "?";
}

/* A 2PC transaction is in doubt while a branch that may hold a prepared
 * transaction at its participant has not acknowledged a decision: PREPARE
 * sent and a YES vote in (still preparing), every vote in (the commit being
 * recorded), or a decision sent and not yet acknowledged (an abort marks
 * the branches with nothing to undo acknowledged at once). Returns how many
 * of its branches are. */
static size_t in_doubt_branches(const struct txn *t)
{
    size_t n = 0;
    switch (t->state) {
    case TXN_PREPARING:
        for (unsigned i = 0; i < t->nbranches; i++)
            n += t->branches[i].vote == VOTE_YES;
        return n;
    case TXN_LOGGING_COMMIT:
        return t->nbranches;
    case TXN_COMMITTING:
    case TXN_ABORTING:
        for (unsigned i = 0; i < t->nbranches; i++)
            n += !t->branches[i].acked;
        return n;
    default:
        return 0;
    }
}

void core_get_metrics(const struct core *c, struct core_time now, struct core_metrics *out)
{
    memset(out, 0, sizeof *out);
    out->in_doubt_oldest_ms = -1;
    long long oldest_made = -1;
    for (size_t i = 0; i < c->txs.cap; i++) {
        const struct tx_head *h = c->txs.slots[i].val;
        if (h == NULL)
            continue;
        if (h->kind == TX_2PC) {
            size_t n = in_doubt_branches((const struct txn *)h);
            if (n == 0)
                continue;
            out->in_doubt_txns++;
            out->in_doubt_branches += n;
            long long made = treaty_txid_time_ms((const treaty_txid_t *)h->txid);
            if (made >= 0 && (oldest_made < 0 || made < oldest_made))
                oldest_made = made;
        } else if (h->kind == TX_SAGA) {
            const struct saga *s = (const struct saga *)h;
            out->sagas_compensating += saga_is_compensating(s);
            out->sagas_stuck += saga_is_stuck(s);
        }
    }
    if (out->in_doubt_txns > 0)
        out->in_doubt_oldest_ms = oldest_made >= 0 && now.wall_ms > oldest_made ? now.wall_ms - oldest_made : 0;
    metrics_hist_read(&c->dur_2pc, &out->duration_2pc);
    metrics_hist_read(&c->dur_saga, &out->duration_saga);
}

size_t core_services(const struct core *c, size_t max, core_service_fn fn, void *arg)
{
    size_t n = registry_nservices(c->reg);
    for (size_t i = 0; i < n && i < max; i++) {
        size_t live = 0;
        const char *name = registry_service_at(c->reg, i, &live);
        fn(arg, name, live);
    }
    return n;
}

void core_get_stats(const struct core *c, struct core_stats *out)
{
    *out = c->st;
    out->inflight_2pc = c->n2pc;
    out->inflight_sagas = c->nsagas;
    out->outcomes_cached = c->done.map.len;
    out->outcomes_evicted = c->done.evicted;
    out->instances = registry_count(c->reg);
}
