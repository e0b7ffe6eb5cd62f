/*
 * admin.c - the core's side of treatyctl (core_admin.h): requests parsed
 * and held to their caps, answers built as JSON (jansson), resolves carried
 * out through twopc.c and saga.c behind a forced AUDIT record.
 */
#include "core_admin.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core_int.h"
#include "log.h"
#include "saga.h"
#include "treaty.h"
#include "twopc.h"
#include "txn.h"

/* ------------------------------------------------------------ answers */

static void reply(struct core *c, uint64_t token, json_t *o)
{
    if (o == NULL) /* a json_pack that failed: a bug, not the operator's */
        o = json_pack("{s:b, s:s, s:s}", "ok", 0, "error", "internal", "message", "the answer could not be built");
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == NULL)
        util_out_of_memory();
    if (c->io.admin_reply != NULL)
        c->io.admin_reply(c->io.ctx, token, s, strlen(s));
    free(s);
}

__attribute__((format(printf, 4, 5))) static void reply_error(struct core *c, uint64_t token, const char *code,
                                                              const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply(c, token, json_pack("{s:b, s:s, s:s}", "ok", 0, "error", code, "message", msg));
}

/* Answers an error and leaves the calling command. */
#define REFUSE(...)                                                                                                    \
    do {                                                                                                               \
        reply_error(__VA_ARGS__);                                                                                      \
        return;                                                                                                        \
    } while (0)

/* A JSON string of text from peers or the journal (reasons, errors, details:
 * maybe not UTF-8, maybe cut in a character): bytes that are not valid UTF-8
 * become '?'. NULL gives null. */
static json_t *jstr(const char *s)
{
    if (s == NULL)
        return json_null();
    json_t *v = json_string(s);
    if (v != NULL)
        return v;
    size_t n = strlen(s);
    char *t = util_xmalloc(n + 1);
    for (size_t i = 0; i <= n; i++)
        t[i] = (unsigned char)s[i] >= 0x80 ? '?' : s[i];
    v = json_string(t);
    free(t);
    return v;
}

static json_t *txid_json(const uint8_t *txid)
{
    char id[TREATY_TXID_STRLEN];
    return json_string(core_fmt_txid(txid, id));
}

/* The name of the live instance with routing id rid, or NULL. */
struct find_rid {
    const uint8_t *rid;
    size_t rid_len;
    const struct instance *found;
};

static void find_rid_cb(void *arg, const struct instance *in)
{
    struct find_rid *f = arg;
    if (f->found == NULL && in->rid_len == f->rid_len && memcmp(in->rid, f->rid, f->rid_len) == 0)
        f->found = in;
}

static json_t *instance_json(const struct core *c, const uint8_t *rid, size_t rid_len)
{
    if (rid_len == 0)
        return json_null();
    struct find_rid f = {rid, rid_len, NULL};
    registry_each(c->reg, find_rid_cb, &f);
    return f.found ? json_string(f.found->name) : json_string("(gone)");
}

/* ------------------------------------------------------------ classes */

/* The list filters (docs/treatyctl.md): what an operator looks for. */
enum cls {
    CLS_IN_FLIGHT = 1,    /* everything here */
    CLS_IN_DOUBT = 2,     /* 2PC without a durable decision */
    CLS_DECIDING = 4,     /* 2PC decided, telling its participants; saga finishing */
    CLS_COMPENSATING = 8, /* saga turning around or compensating */
    CLS_STUCK = 16,       /* saga with a compensation that keeps failing */
};

static const char *const saga_phase_names[] = {"starting", "forward", "turning", "compensating", "finishing"};

static unsigned classes(const struct core *c, const struct tx_head *h, const char **state)
{
    unsigned k = CLS_IN_FLIGHT;
    if (h->kind == TX_2PC) {
        const struct txn *t = (const struct txn *)h;
        *state = txn_state_name(t->state);
        if (t->state == TXN_NEW || t->state == TXN_PREPARING || t->state == TXN_LOGGING_COMMIT)
            k |= CLS_IN_DOUBT;
        else
            k |= CLS_DECIDING;
        return k;
    }
    struct saga_view v;
    saga_view((const struct saga *)h, &v);
    (void)c;
    *state = saga_phase_names[v.phase];
    if (v.phase == SAGA_PHASE_TURNING || v.phase == SAGA_PHASE_COMPENSATING)
        k |= CLS_COMPENSATING;
    if (v.phase == SAGA_PHASE_FINISHING)
        k |= CLS_DECIDING;
    if (v.stuck)
        k |= CLS_STUCK;
    return k;
}

static bool uses_service(const struct core *c, const struct tx_head *h, const char *service)
{
    if (h->kind == TX_2PC) {
        const struct txn *t = (const struct txn *)h;
        for (unsigned i = 0; i < t->nbranches; i++)
            if (strcmp(t->branches[i].service, service) == 0)
                return true;
        return false;
    }
    const struct saga *s = (const struct saga *)h;
    struct saga_view v;
    saga_view(s, &v);
    for (unsigned i = 0; i < v.nsteps; i++) {
        struct saga_step_view sv;
        saga_step_view(c, s, i, &sv);
        if (strcmp(sv.service, service) == 0)
            return true;
    }
    return false;
}

static int64_t age_ms(const struct core *c, const uint8_t *txid)
{
    long long made = treaty_txid_time_ms((const treaty_txid_t *)txid);
    return made < 0 ? -1 : c->now.wall_ms - made;
}

/* What memory holds of h: state and its branches or steps. */
static json_t *tx_json(const struct core *c, const struct tx_head *h, bool detail)
{
    const char *state = "?";
    unsigned k = classes(c, h, &state);
    json_t *o =
        json_pack("{s:o, s:s, s:s, s:I, s:b}", "txid", txid_json(h->txid), "kind", h->kind == TX_2PC ? "2pc" : "saga",
                  "state", state, "age_ms", (json_int_t)age_ms(c, h->txid), "stuck", (k & CLS_STUCK) != 0);
    json_t *svcs = json_array();
    json_t *parts = detail ? json_array() : NULL;
    if (h->kind == TX_2PC) {
        const struct txn *t = (const struct txn *)h;
        static const char *const votes[] = {"none", "yes", "no"};
        for (unsigned i = 0; i < t->nbranches; i++) {
            const struct branch *b = &t->branches[i];
            json_array_append_new(svcs, json_string(b->service));
            if (parts)
                json_array_append_new(
                    parts, json_pack("{s:I, s:s, s:o, s:s, s:b, s:b}", "branch", (json_int_t)i, "service", b->service,
                                     "instance", instance_json(c, b->to.rid, b->to.rid_len), "vote",
                                     votes[b->vote <= 2 ? b->vote : 0], "prepared", b->prepared, "acked", b->acked));
        }
        if (detail) {
            json_object_set_new(o, "decision_durable", json_boolean(t->decision_durable));
            json_object_set_new(o, "failed_branch", json_integer(t->failed_branch));
            json_object_set_new(o, "reason", jstr(t->reason));
            json_object_set_new(o, "branches", parts);
        }
    } else {
        const struct saga *s = (const struct saga *)h;
        struct saga_view v;
        saga_view(s, &v);
        for (unsigned i = 0; i < v.nsteps; i++) {
            struct saga_step_view sv;
            saga_step_view(c, s, i, &sv);
            json_array_append_new(svcs, json_string(sv.service));
            if (parts)
                json_array_append_new(
                    parts,
                    json_pack("{s:I, s:s, s:s, s:s, s:s, s:I, s:o, s:b, s:b, s:I, s:I, s:o}", "step", (json_int_t)i,
                              "service", sv.service, "action", sv.action, "compensation", sv.compensation, "state",
                              saga_step_state_name(sv.state), "group", (json_int_t)sv.group, "instance",
                              instance_json(c, sv.rid, sv.rid_len), "stuck", sv.stuck, "given_up", sv.given_up,
                              "attempts", (json_int_t)sv.attempts, "compensation_attempts",
                              (json_int_t)sv.comp_attempts, "last_error", jstr(sv.last_error)));
        }
        if (detail) {
            json_object_set_new(o, "failed_step", json_integer(v.failed_step));
            json_object_set_new(o, "reason", jstr(v.reason));
            json_object_set_new(o, "steps", parts);
        }
    }
    json_object_set_new(o, "services", svcs);
    return o;
}

/* ------------------------------------------------------------ commands */

static void cmd_status(struct core *c, uint64_t token)
{
    size_t n2pc[5] = {0}, nsaga[5] = {0};
    for (size_t i = 0; i < c->txs.cap; i++) {
        const struct tx_head *h = c->txs.slots[i].val;
        if (h == NULL || (h->kind != TX_2PC && h->kind != TX_SAGA))
            continue;
        const char *st;
        unsigned k = classes(c, h, &st);
        size_t *n = h->kind == TX_2PC ? n2pc : nsaga;
        for (unsigned b = 0; b < 5; b++)
            if (k & (1u << b))
                n[b]++;
    }
    json_t *counts = json_pack("{s:I, s:I, s:I, s:I, s:I}", "in-flight", (json_int_t)(n2pc[0] + nsaga[0]), "in-doubt",
                               (json_int_t)n2pc[1], "deciding", (json_int_t)(n2pc[2] + nsaga[2]), "compensating",
                               (json_int_t)nsaga[3], "stuck", (json_int_t)nsaga[4]);
    char version[32];
    snprintf(version, sizeof version, "%d.%d.%d", TREATY_VERSION_MAJOR, TREATY_VERSION_MINOR, TREATY_VERSION_PATCH);
    reply(c, token,
          json_pack("{s:b, s:b, s:b, s:b, s:I, s:s, s:I, s:I, s:I, s:I, s:o}", "ok", 1, "up", 1, "journal_reachable",
                    core_journal_healthy(c), "stopping", c->stopping, "uptime_ms",
                    (json_int_t)(c->started_ms > 0 ? c->now.mono_ms - c->started_ms : 0), "version", version,
                    "journal_schema", (json_int_t)JOURNAL_SCHEMA_VERSION, "instances",
                    (json_int_t)registry_count(c->reg), "twopc_in_flight", (json_int_t)c->n2pc, "sagas_in_flight",
                    (json_int_t)c->nsagas, "counts", counts));
}

static int parse_class(const char *s, unsigned *out)
{
    static const struct {
        const char *name;
        unsigned k;
    } names[] = {{"in-flight", CLS_IN_FLIGHT},
                 {"in-doubt", CLS_IN_DOUBT},
                 {"deciding", CLS_DECIDING},
                 {"compensating", CLS_COMPENSATING},
                 {"stuck", CLS_STUCK}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].k;
            return 0;
        }
    return -1;
}

static void cmd_list(struct core *c, uint64_t token, json_t *req)
{
    unsigned want = CLS_IN_FLIGHT;
    json_int_t older = 0, limit = c->cfg->admin_max_list;
    json_t *v;
    const char *service = NULL;
    if ((v = json_object_get(req, "state")) != NULL && (!json_is_string(v) || parse_class(json_string_value(v), &want)))
        REFUSE(c, token, "invalid", "state: one of in-flight, in-doubt, deciding, compensating, stuck");
    if ((v = json_object_get(req, "older_than_ms")) != NULL &&
        (!json_is_integer(v) || (older = json_integer_value(v)) < 0 || older > ADMIN_MAX_AGE_MS))
        REFUSE(c, token, "invalid", "older_than_ms: an integer in [0, %lld]", ADMIN_MAX_AGE_MS);
    if ((v = json_object_get(req, "limit")) != NULL &&
        (!json_is_integer(v) || (limit = json_integer_value(v)) < 1 || limit > c->cfg->admin_max_list))
        REFUSE(c, token, "invalid", "limit: an integer in [1, %d] (admin.max_list)", c->cfg->admin_max_list);
    if ((v = json_object_get(req, "service")) != NULL &&
        (!json_is_string(v) || json_string_length(v) < 1 || json_string_length(v) > WIRE_NAME_MAX))
        REFUSE(c, token, "invalid", "service: a name of 1 to %d bytes", WIRE_NAME_MAX);
    if (v != NULL)
        service = json_string_value(v);
    json_t *txs = json_array();
    size_t matched = 0;
    for (size_t i = 0; i < c->txs.cap; i++) {
        const struct tx_head *h = c->txs.slots[i].val;
        if (h == NULL || (h->kind != TX_2PC && h->kind != TX_SAGA))
            continue;
        const char *st;
        if (!(classes(c, h, &st) & want) || age_ms(c, h->txid) < older || (service && !uses_service(c, h, service)))
            continue;
        if (++matched <= (size_t)limit)
            json_array_append_new(txs, tx_json(c, h, false));
    }
    reply(c, token,
          json_pack("{s:b, s:o, s:I, s:b}", "ok", 1, "transactions", txs, "matched", (json_int_t)matched, "truncated",
                    matched > (size_t)limit));
}

struct svc_ctx {
    struct core *c;
    json_t *arr;
};

/* Branches and steps in flight on instance in: sent there, not answered. */
static size_t in_flight_on(const struct core *c, const struct instance *in)
{
    size_t n = 0;
    for (size_t i = 0; i < c->txs.cap; i++) {
        const struct tx_head *h = c->txs.slots[i].val;
        if (h == NULL)
            continue;
        if (h->kind == TX_2PC) {
            const struct txn *t = (const struct txn *)h;
            for (unsigned b = 0; b < t->nbranches; b++) {
                const struct branch *br = &t->branches[b];
                if (br->prepared && !br->acked && br->to.rid_len == in->rid_len &&
                    memcmp(br->to.rid, in->rid, in->rid_len) == 0)
                    n++;
            }
        } else if (h->kind == TX_SAGA) {
            const struct saga *s = (const struct saga *)h;
            struct saga_view v;
            saga_view(s, &v);
            for (unsigned k = 0; k < v.nsteps; k++) {
                struct saga_step_view sv;
                saga_step_view(c, s, k, &sv);
                if ((sv.state == STEP_RUNNING || sv.state == STEP_COMPENSATING) && sv.rid_len == in->rid_len &&
                    memcmp(sv.rid, in->rid, in->rid_len) == 0)
                    n++;
            }
        }
    }
    return n;
}

static void svc_cb(void *arg, const struct instance *in)
{
    struct svc_ctx *x = arg;
    json_array_append_new(x->arr, json_pack("{s:s, s:s, s:I, s:I}", "service", in->service, "instance", in->name,
                                            "last_heartbeat_ms_ago", (json_int_t)(x->c->now.mono_ms - in->last_seen_ms),
                                            "in_flight", (json_int_t)in_flight_on(x->c, in)));
}

static void cmd_services(struct core *c, uint64_t token)
{
    struct svc_ctx x = {c, json_array()};
    registry_each(c->reg, svc_cb, &x);
    reply(c, token, json_pack("{s:b, s:o}", "ok", 1, "instances", x.arr));
}

static int get_txid(json_t *req, uint8_t txid[16])
{
    json_t *v = json_object_get(req, "txid");
    if (!json_is_string(v) || json_string_length(v) != TREATY_TXID_STRLEN - 1)
        return -1;
    return treaty_txid_parse(json_string_value(v), (treaty_txid_t *)txid) == 0 ? 0 : -1;
}

static struct admin_wait *wait_add(struct core *c, uint64_t token, const uint8_t txid[16], uint64_t seq,
                                   const char *what)
{
    struct admin_wait *w = util_xcalloc(1, sizeof *w);
    w->token = token;
    w->seq = seq;
    memcpy(w->txid, txid, 16);
    snprintf(w->what, sizeof w->what, "%s", what);
    w->next = c->admin;
    c->admin = w;
    return w;
}

static void cmd_show(struct core *c, uint64_t token, json_t *req)
{
    uint8_t txid[16];
    if (get_txid(req, txid) != 0)
        REFUSE(c, token, "invalid", "txid: a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    if (c->io.read_records == NULL) { /* no journal to read: memory only */
        struct journal_records r = {.token = token};
        memcpy(r.txid, txid, 16);
        r.error = TREATY_EPG;
        wait_add(c, token, txid, 0, "show");
        core_on_records(c, &r, c->now);
        return;
    }
    wait_add(c, token, txid, 0, "show");
    c->io.read_records(c->io.ctx, txid, token);
}

void core_on_records(struct core *c, const struct journal_records *r, struct core_time now)
{
    c->now = now;
    struct admin_wait **pp = &c->admin, *w = NULL;
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->seq == 0 && (*pp)->token == r->token) {
            w = *pp;
            *pp = w->next;
            break;
        }
    if (w == NULL)
        return;
    uint64_t token = w->token;
    free(w);
    const struct tx_head *h = core_get(c, r->txid);
    if (h != NULL && h->kind != TX_2PC && h->kind != TX_SAGA)
        h = NULL;
    const struct outcome *d = outcomes_get(&c->done, r->txid);
    if (h == NULL && d == NULL && r->n == 0) {
        if (r->error != 0)
            REFUSE(c, token, "journal",
                   "not in flight here, and the journal cannot be read now (PostgreSQL unreachable)");
        char id[TREATY_TXID_STRLEN];
        REFUSE(c, token, "not-found", "no transaction %s here nor in the journal", core_fmt_txid(r->txid, id));
    }
    json_t *o = h ? tx_json(c, h, true) : json_pack("{s:o, s:n}", "txid", txid_json(r->txid), "state");
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "in_memory", json_boolean(h != NULL));
    if (h == NULL)
        json_object_set_new(o, "state", json_string(d ? "finished" : "finished or not run here"));
    if (d != NULL)
        json_object_set_new(o, "outcome", json_string(treaty_status_name((enum treaty_status)d->status)));
    json_t *recs = json_array();
    for (unsigned i = 0; i < r->n; i++) {
        const struct journal_record_row *w2 = &r->rows[i];
        json_array_append_new(recs, json_pack("{s:I, s:s, s:I, s:o, s:o, s:I, s:I}", "seq", (json_int_t)w2->seq, "kind",
                                              journal_kind_name(w2->kind), "written_ms", (json_int_t)w2->written_ms,
                                              "services", jstr(w2->services), "detail", jstr(w2->detail), "failed",
                                              (json_int_t)w2->failed_branch, "step", (json_int_t)w2->step));
    }
    json_object_set_new(o, "records", recs);
    json_object_set_new(o, "records_truncated", json_boolean(r->truncated));
    json_object_set_new(o, "journal_error", r->error ? json_string(treaty_strerror(r->error)) : json_null());
    reply(c, token, o);
}

static const char *text(json_t *req, const char *key)
{
    json_t *v = json_object_get(req, key);
    if (!json_is_string(v) || json_string_length(v) < 1 || json_string_length(v) > ADMIN_TEXT_MAX)
        return NULL;
    const char *s = json_string_value(v);
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20)
            return NULL;
    return s;
}

static void cmd_resolve(struct core *c, uint64_t token, json_t *req)
{
    uint8_t txid[16];
    char id[TREATY_TXID_STRLEN];
    if (get_txid(req, txid) != 0)
        REFUSE(c, token, "invalid", "txid: a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    core_fmt_txid(txid, id);
    const char *who = text(req, "who"), *why = text(req, "why");
    json_t *a = json_object_get(req, "action");
    const char *action = json_is_string(a) ? json_string_value(a) : "";
    if (who == NULL || why == NULL)
        REFUSE(c, token, "invalid", "who and why: text of 1 to %d bytes without control characters", ADMIN_TEXT_MAX);
    bool do_abort = strcmp(action, "abort") == 0, give_up = strcmp(action, "give-up") == 0;
    if (!do_abort && !give_up)
        REFUSE(c, token, "invalid", "action: abort or give-up");
    json_int_t step = -1;
    json_t *sv = json_object_get(req, "step");
    if (give_up && (!json_is_integer(sv) || (step = json_integer_value(sv)) < 0 || step >= c->cfg->max_steps))
        REFUSE(c, token, "invalid", "give-up needs step: an integer in [0, %d)", c->cfg->max_steps);
    struct tx_head *h = core_get(c, txid);
    if (h == NULL || (h->kind != TX_2PC && h->kind != TX_SAGA)) {
        const struct outcome *d = outcomes_get(&c->done, txid);
        REFUSE(c, token, "refused", "%s is not in flight here (%s%s): a finished transaction cannot be resolved", id,
               d ? "finished: " : "finished or unknown", d ? treaty_status_name((enum treaty_status)d->status) : "");
    }
    if (!core_journal_healthy(c))
        REFUSE(c, token, "journal", "the journal cannot be written now (PostgreSQL unreachable)");

    char detail[TREATY_REASON_MAX + 1];
    snprintf(detail, sizeof detail, "%s by %s: %s", action, who, why);
    char reason[TREATY_REASON_MAX + 1];
    snprintf(reason, sizeof reason, "resolved by an operator (%s): %s", who, why);
    struct journal_rec audit = {.kind = JOURNAL_AUDIT, .detail = detail, .failed_branch = -1, .step = (int)step};
    memcpy(audit.txid, txid, 16);
    uint64_t seq = 0;
    if (h->kind == TX_2PC) {
        struct txn *t = (struct txn *)h;
        if (give_up)
            REFUSE(c, token, "invalid", "give-up is for a saga's compensation; %s is a 2PC", id);
        if (t->state != TXN_PREPARING)
            REFUSE(c, token, "refused", "%s is %s: %s", id, txn_state_name(t->state),
                   t->state == TXN_ABORTING ? "already decided abort"
                   : t->state == TXN_NEW    ? "not prepared yet; try again"
                                            : "a COMMIT decision is (being) recorded and must be carried "
                                              "out: aborting now would break atomicity");
        core_append(c, &audit, true);
        seq = twopc_admin_abort(c, t, reason);
    } else {
        struct saga *s = (struct saga *)h;
        struct saga_view v;
        saga_view(s, &v);
        if (do_abort) {
            if (v.phase != SAGA_PHASE_FORWARD)
                REFUSE(c, token, "refused", "saga %s is %s: only a saga going forward can be turned around", id,
                       saga_phase_names[v.phase]);
            core_append(c, &audit, true);
            seq = saga_admin_turn(c, s, reason);
        } else {
            if ((unsigned)step >= v.nsteps)
                REFUSE(c, token, "invalid", "saga %s has %u steps", id, v.nsteps);
            struct saga_step_view st;
            saga_step_view(c, s, (unsigned)step, &st);
            if (v.phase != SAGA_PHASE_COMPENSATING || st.state != STEP_COMPENSATING)
                REFUSE(c, token, "refused",
                       "step %d of saga %s is %s (saga %s): only a compensation "
                       "under way can be given up",
                       (int)step, id, saga_step_state_name(st.state), saga_phase_names[v.phase]);
            if (!st.stuck)
                REFUSE(c, token, "refused",
                       "the compensation of step %d is not stuck (%u failed tries, "
                       "saga.stuck_after_attempts = %d): it is still being retried",
                       (int)step, st.comp_attempts, c->cfg->stuck_after_attempts);
            if (st.given_up)
                REFUSE(c, token, "refused", "the compensation of step %d is already being given up", (int)step);
            core_append(c, &audit, true);
            seq = saga_admin_give_up(c, s, (unsigned)step);
        }
    }
    if (seq == 0) { /* cannot happen: every state was checked above */
        log_error("admin: resolve %s of %s did nothing after its audit record", action, id);
        REFUSE(c, token, "refused", "nothing was done");
    }
    log_warn("admin: %s %s by %s: %s (waiting for its record)", action, id, who, why);
    wait_add(c, token, txid, seq, action);
}

void admin_on_durable(struct core *c)
{
    struct admin_wait **pp = &c->admin;
    while (*pp) {
        struct admin_wait *w = *pp;
        if (w->seq == 0 || w->seq > c->durable_seq) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        reply(c, w->token,
              json_pack("{s:b, s:o, s:s, s:I}", "ok", 1, "txid", txid_json(w->txid), "resolved", w->what, "seq",
                        (json_int_t)w->seq));
        free(w);
    }
}

void admin_free(struct core *c)
{
    while (c->admin) {
        struct admin_wait *w = c->admin;
        c->admin = w->next;
        free(w);
    }
}

void core_on_admin(struct core *c, uint64_t token, const char *req, size_t len, struct core_time now)
{
    c->now = now;
    if (len > ADMIN_REQUEST_MAX)
        REFUSE(c, token, "invalid", "request larger than %d bytes", ADMIN_REQUEST_MAX);
    json_error_t e;
    json_t *o = json_loadb(req, len, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(o)) {
        json_decref(o);
        REFUSE(c, token, "invalid", "not a JSON object: %s", o ? "" : e.text);
    }
    const char *cmd = json_string_value(json_object_get(o, "cmd"));
    if (cmd == NULL)
        reply_error(c, token, "invalid", "cmd: missing");
    else if (strcmp(cmd, "status") == 0)
        cmd_status(c, token);
    else if (strcmp(cmd, "list") == 0)
        cmd_list(c, token, o);
    else if (strcmp(cmd, "show") == 0)
        cmd_show(c, token, o);
    else if (strcmp(cmd, "services") == 0)
        cmd_services(c, token);
    else if (strcmp(cmd, "resolve") == 0)
        cmd_resolve(c, token, o);
    else
        reply_error(c, token, "invalid", "cmd: unknown command");
    json_decref(o);
}
