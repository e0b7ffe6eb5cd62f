/*
 * test_sdk_core.c - the SDK's protocol cores with no socket, no clock and no
 * PostgreSQL: the participant core (participant_core.h), the client core
 * (client_core.h) and the Postgres participant's decisions (pg_core.h) over
 * a small in-memory database that implements pg_ops.h (struct fdb below).
 *
 * These tests are also the simulator's manual. Each one drives a core the
 * way tests/sim does: build it with an io that records what it sends, feed
 * it decoded messages (made with the real codec) and the time, and look at
 * what came out. The fake database is a minimal model of what pg_ops.h
 * promises - committed rows, open and prepared transactions holding rows,
 * "held" for a key another transaction holds, the purge horizon - and the
 * Postgres cases are the ones tests/test_sdk.c checks against a real
 * PostgreSQL, decided here by the same code.
 */
#include <criterion/criterion.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_core.h"
#include "participant_core.h"
#include "pg_core.h"
#include "pg_ops.h"
#include "treaty.h"
#include "wire.h"

/* ------------------------------------------------------------ the outside */

#define SENT_MAX 64
#define SENT_FRAMES 24
#define SENT_FRAME_MAX 128

/* One message a core sent, copied. */
struct sent {
    struct wire_hdr hdr;
    size_t nframes;
    size_t len[SENT_FRAMES];
    char frame[SENT_FRAMES][SENT_FRAME_MAX]; /* NUL-terminated copies (truncated) */
};

/* What a core did to the world: its io records everything. */
struct world {
    struct sent sent[SENT_MAX];
    int nsent;
    bool refuse;  /* the transport drops every send ("not connected") */
    bool discard; /* sends are counted (nsent), not kept */
    char log[PCORE_LOG_MAX];
    int nlogs;
    int nalerts;
};

static int world_send(void *ctx, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes,
                      const char **why)
{
    struct world *w = ctx;
    if (w->refuse) {
        *why = "not connected";
        return TREATY_ETRANSPORT;
    }
    if (w->discard) {
        w->nsent++;
        return 0;
    }
    cr_assert_lt(w->nsent, SENT_MAX, "the core sent too much");
    struct sent *s = &w->sent[w->nsent++];
    memset(s, 0, sizeof *s);
    s->hdr = *h;
    s->nframes = nframes;
    for (size_t i = 0; i < nframes && i < SENT_FRAMES; i++) {
        size_t n = frames[i].len < SENT_FRAME_MAX - 1 ? frames[i].len : SENT_FRAME_MAX - 1;
        s->len[i] = frames[i].len;
        if (n > 0)
            memcpy(s->frame[i], frames[i].data, n);
    }
    return 0;
}

static void world_plog(void *ctx, enum pcore_level level, const char *text)
{
    struct world *w = ctx;
    snprintf(w->log, sizeof w->log, "%s", text);
    w->nlogs++;
    if (level == PCORE_ALERT)
        w->nalerts++;
}

static void world_clog(void *ctx, const char *text)
{
    world_plog(ctx, PCORE_NOTE, text);
}

/* The last message sent, which must be of type. */
static const struct sent *last(const struct world *w, uint8_t type)
{
    cr_assert_gt(w->nsent, 0, "nothing was sent");
    const struct sent *s = &w->sent[w->nsent - 1];
    cr_assert_eq(s->hdr.type, type, "sent %s, expected %s", wire_type_name(s->hdr.type), wire_type_name(type));
    return s;
}

static bool logged(const struct world *w, const char *text)
{
    return strstr(w->log, text) != NULL;
}

/* A decoded message, made and checked by the real codec, as a shell would
 * hand it to a core. Frames are NUL-terminated strings (NULL: none), or
 * for WELCOME the heartbeat. The message and its frames live until the next
 * call. */
static const struct wire_msg *msg(uint8_t type, const treaty_txid_t *id, unsigned branch, unsigned attempt,
                                  unsigned code, const char *f0, const char *f1)
{
    static struct wire_msg m;
    static uint8_t hdr[WIRE_HDR_LEN];
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (id != NULL)
        memcpy(h.txid, id->b, 16);
    h.branch = (uint16_t)branch;
    h.attempt = (uint16_t)attempt;
    h.code = (uint16_t)code;
    wire_encode_hdr(&h, hdr);
    struct wire_frame fh = {hdr, sizeof hdr}, f[2];
    size_t n = 0;
    if (f0 != NULL)
        f[n++] = wire_str(f0);
    if (f1 != NULL)
        f[n++] = wire_str(f1);
    int rc = wire_decode(&fh, f, n, 1u << 20, &m);
    cr_assert_eq(rc, 0, "the test made a malformed %s", wire_type_name(type));
    return &m;
}

static const struct wire_msg *welcome(uint32_t heartbeat_ms)
{
    static struct wire_msg m;
    static uint8_t hdr[WIRE_HDR_LEN], hb[4];
    struct wire_hdr h = {.type = WIRE_WELCOME};
    wire_encode_hdr(&h, hdr);
    wire_put_u32(hb, heartbeat_ms);
    struct wire_frame fh = {hdr, sizeof hdr}, f = {hb, 4};
    cr_assert_eq(wire_decode(&fh, &f, 1, 1u << 20, &m), 0);
    return &m;
}

/* A UUIDv7 txid created at Unix ms t (n tells txids of one ms apart). */
static treaty_txid_t txid_at(long long t, unsigned n)
{
    treaty_txid_t id;
    memset(&id, 0, sizeof id);
    for (int i = 0; i < 6; i++)
        id.b[i] = (uint8_t)(t >> (8 * (5 - i)));
    id.b[6] = 0x70;
    id.b[8] = 0x80;
    id.b[14] = (uint8_t)(n >> 8);
    id.b[15] = (uint8_t)n;
    cr_assert_eq(treaty_txid_time_ms(&id), t);
    return id;
}

static bool same_txid(const uint8_t *a, const treaty_txid_t *b)
{
    return memcmp(a, b->b, TREATY_TXID_LEN) == 0;
}

/* ===================================================== participant core */

struct hs {
    int prepares, commits, aborts;
    treaty_branch_t last;
    char payload[64];
    struct pcore *core; /* for handlers that log their own words */
};

/* payload "yes" -> YES, "no" -> NO ("nope"), "err" -> no vote, "own" -> no
 * vote with its own text logged, else 42. */
static int h_prepare(void *arg, const treaty_branch_t *b, char *reason)
{
    struct hs *t = arg;
    t->prepares++;
    t->last = *b;
    snprintf(t->payload, sizeof t->payload, "%.*s", (int)b->len, (const char *)b->payload);
    if (strcmp(t->payload, "yes") == 0)
        return TREATY_VOTE_YES;
    if (strcmp(t->payload, "no") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "nope");
        return TREATY_VOTE_NO;
    }
    if (strcmp(t->payload, "err") == 0)
        return TREATY_EBUSY;
    if (strcmp(t->payload, "own") == 0) {
        pcore_log(t->core, PCORE_NOTE, "the handler's own words");
        return TREATY_EBUSY;
    }
    return 42;
}

/* branch 99 fails (no ACK) */
static int h_commit(void *arg, const treaty_branch_t *b)
{
    struct hs *t = arg;
    t->commits++;
    return b->branch == 99 ? TREATY_EBUSY : 0;
}

static int h_abort(void *arg, const treaty_branch_t *b)
{
    struct hs *t = arg;
    t->aborts++;
    return b->branch == 99 ? TREATY_EBUSY : 0;
}

static struct pcore *plain_core(struct world *w, struct hs *t, int64_t now)
{
    treaty_handlers_t h = {h_prepare, h_commit, h_abort, t};
    struct pcore_io io = {w, world_send, world_plog};
    struct pcore *c = NULL;
    cr_assert_eq(pcore_new("inventory", "inv-1", &h, &io, now, &c), 0);
    if (t != NULL)
        t->core = c;
    return c;
}

Test(pcore, hello_is_due_at_once_then_every_heartbeat)
{
    static struct world w;
    struct hs t = {0};
    struct pcore *c = plain_core(&w, &t, 1000);
    cr_assert_eq(pcore_next_tick(c), 1000, "the first HELLO is due at the time given to new");
    cr_assert_eq(w.nsent, 0, "new sends nothing");

    pcore_on_tick(c, 1000);
    const struct sent *s = last(&w, WIRE_HELLO);
    cr_assert_str_eq(s->frame[0], "inventory");
    cr_assert_str_eq(s->frame[1], "inv-1");
    static const uint8_t zero[16];
    cr_assert_eq(memcmp(s->hdr.txid, zero, 16), 0);
    cr_assert_eq(pcore_next_tick(c), 1000 + PCORE_HEARTBEAT_MS);
    pcore_on_tick(c, 1500);
    cr_assert_eq(w.nsent, 1, "nothing due at 1500");
    pcore_on_tick(c, 2000);
    cr_assert_eq(w.nsent, 2);

    /* not connected: HELLO is tried again soon, not a heartbeat later */
    w.refuse = true;
    pcore_on_tick(c, 3000);
    cr_assert_eq(pcore_next_tick(c), 3000 + PCORE_HELLO_RETRY_MS);
    w.refuse = false;
    pcore_on_tick(c, 3000 + PCORE_HELLO_RETRY_MS);
    cr_assert_eq(w.nsent, 3);
    pcore_destroy(&c);
    cr_assert_null(c);
    pcore_destroy(&c);
}

struct sweeps {
    int first, periodic;
};

static void on_connect(void *arg, struct pcore *c, bool first)
{
    struct sweeps *s = arg;
    (void)c;
    if (first)
        s->first++;
    else
        s->periodic++;
}

Test(pcore, welcome_adopts_the_heartbeat_and_starts_the_sweep)
{
    static struct world w;
    struct hs t = {0};
    struct sweeps sw = {0};
    struct pcore *c = plain_core(&w, &t, 0);
    struct pcore_ext ext = {on_connect, NULL, &sw};
    pcore_set_ext(c, &ext);
    pcore_set_sweep_ms(c, 300);
    pcore_on_tick(c, 0);
    cr_assert_eq(pcore_next_tick(c), 1000, "no sweep before a WELCOME");

    pcore_on_message(c, welcome(50), 10);
    cr_assert_eq(sw.first, 1, "the first WELCOME looks for in-doubt branches at once");
    cr_assert_eq(pcore_next_tick(c), 60, "HELLO pulled in to the new heartbeat");
    pcore_on_tick(c, 60);
    cr_assert_eq(last(&w, WIRE_HELLO)->hdr.type, WIRE_HELLO);
    cr_assert_eq(pcore_next_tick(c), 110);

    pcore_on_message(c, welcome(50), 100); /* within 3 heartbeats: the same session */
    pcore_on_message(c, welcome(5), 120);  /* a heartbeat out of bounds is not adopted */
    cr_assert_eq(sw.first, 1);
    pcore_on_tick(c, 310);
    cr_assert_eq(sw.periodic, 1, "the sweep runs every period");
    pcore_on_message(c, welcome(50), 500); /* silent for more than 3 heartbeats: reconnected */
    cr_assert_eq(sw.first, 2, "a WELCOME after a silence looks again at once");
    cr_assert_eq(pcore_next_tick(c), 360, "the heartbeat stayed 50 ms");
    pcore_destroy(&c);
}

Test(pcore, prepare_calls_the_handler_and_votes)
{
    static struct world w;
    struct hs t = {0};
    struct pcore *c = plain_core(&w, &t, 0);
    treaty_txid_t a = txid_at(1000, 1);

    pcore_on_message(c, msg(WIRE_PREPARE, &a, 3, 2, 0, "yes", NULL), 0);
    const struct sent *s = last(&w, WIRE_VOTE);
    cr_assert(same_txid(s->hdr.txid, &a));
    cr_assert_eq(s->hdr.branch, 3);
    cr_assert_eq(s->hdr.attempt, 2, "attempt is echoed");
    cr_assert_eq(s->hdr.code, TREATY_VOTE_YES);
    cr_assert_str_eq(s->frame[0], "");
    cr_assert_str_eq(t.payload, "yes");
    cr_assert_eq(t.last.branch, 3);

    pcore_on_message(c, msg(WIRE_PREPARE, &a, 0, 0, 0, "no", NULL), 0);
    cr_assert_eq(last(&w, WIRE_VOTE)->hdr.code, TREATY_VOTE_NO);
    cr_assert_str_eq(last(&w, WIRE_VOTE)->frame[0], "nope");

    /* a handler error sends no vote: the coordinator's timeout aborts */
    int n = w.nsent;
    pcore_on_message(c, msg(WIRE_PREPARE, &a, 1, 0, 0, "err", NULL), 0);
    cr_assert_eq(w.nsent, n, "no vote after a handler error");
    cr_assert(logged(&w, "sent no vote: TREATY_EBUSY"), "log: %s", w.log);
    pcore_on_message(c, msg(WIRE_PREPARE, &a, 1, 0, 0, "own", NULL), 0);
    cr_assert_eq(w.nsent, n);
    cr_assert_str_eq(w.log, "the handler's own words", "the handler's text is kept");

    /* not a vote: NO is always safe */
    pcore_on_message(c, msg(WIRE_PREPARE, &a, 1, 0, 0, "other", NULL), 0);
    cr_assert_eq(last(&w, WIRE_VOTE)->hdr.code, TREATY_VOTE_NO);
    cr_assert_str_eq(last(&w, WIRE_VOTE)->frame[0], "prepare handler returned 42, not a vote");
    cr_assert_eq(t.prepares, 5);

    /* the vote could not be sent: logged, nothing else (a re-sent PREPARE
     * asks again) */
    w.refuse = true;
    pcore_on_message(c, msg(WIRE_PREPARE, &a, 4, 0, 0, "yes", NULL), 0);
    cr_assert(logged(&w, "VOTE") && logged(&w, "not sent: not connected"), "log: %s", w.log);
    pcore_destroy(&c);
}

Test(pcore, decisions_are_acknowledged_only_when_applied)
{
    static struct world w;
    struct hs t = {0};
    struct pcore *c = plain_core(&w, &t, 0);
    treaty_txid_t a = txid_at(1000, 1);

    pcore_on_message(c, msg(WIRE_COMMIT, &a, 5, 1, 0, NULL, NULL), 0);
    const struct sent *s = last(&w, WIRE_ACK);
    cr_assert_eq(s->hdr.code, TREATY_STATUS_COMMITTED);
    cr_assert_eq(s->hdr.branch, 5);
    cr_assert_eq(s->hdr.attempt, 1);
    int n = w.nsent;
    pcore_on_message(c, msg(WIRE_COMMIT, &a, 99, 0, 0, NULL, NULL), 0);
    cr_assert_eq(w.nsent, n, "a failed commit handler is not acknowledged");
    cr_assert(logged(&w, "not acknowledged"), "log: %s", w.log);
    pcore_on_message(c, msg(WIRE_ABORT, &a, 7, 0, 0, NULL, NULL), 0);
    cr_assert_eq(last(&w, WIRE_ACK)->hdr.code, TREATY_STATUS_ABORTED);
    cr_assert_eq(t.commits, 2);
    cr_assert_eq(t.aborts, 1);
    pcore_destroy(&c);
}

Test(pcore, a_saga_only_participant_votes_no_and_drops_commit)
{
    static struct world w;
    struct pcore_io io = {&w, world_send, world_plog};
    struct pcore *c = NULL;
    cr_assert_eq(pcore_new("shop", "shop-1", NULL, &io, 0, &c), 0);
    treaty_txid_t a = txid_at(1000, 1);

    pcore_on_message(c, msg(WIRE_PREPARE, &a, 0, 0, 0, "yes", NULL), 0);
    cr_assert_eq(last(&w, WIRE_VOTE)->hdr.code, TREATY_VOTE_NO);
    cr_assert_str_eq(last(&w, WIRE_VOTE)->frame[0], "this participant does not take part in 2PC");
    pcore_on_message(c, msg(WIRE_ABORT, &a, 0, 0, 0, NULL, NULL), 0);
    cr_assert_eq(last(&w, WIRE_ACK)->hdr.code, TREATY_STATUS_ABORTED, "nothing was applied: ABORT is true");
    int n = w.nsent;
    pcore_on_message(c, msg(WIRE_COMMIT, &a, 0, 0, 0, NULL, NULL), 0);
    cr_assert_eq(w.nsent, n, "no coordinator can decide commit against a NO");
    cr_assert_eq(pcore_dropped(c), 1);
    pcore_destroy(&c);
}

struct steps_seen {
    int calls;
    treaty_step_t last;
    char name[WIRE_NAME_MAX + 1];
    char payload[64];
};

/* payload "ok" -> OK, "fail" -> FAILED ("insufficient funds"), "err" ->
 * transient with a reason, "7" -> not a step result */
static int record_step(void *arg, const treaty_step_t *s, char *reason)
{
    struct steps_seen *seen = arg;
    seen->calls++;
    seen->last = *s;
    snprintf(seen->name, sizeof seen->name, "%s", s->name);
    snprintf(seen->payload, sizeof seen->payload, "%.*s", (int)s->len, (const char *)s->payload);
    if (strcmp(seen->payload, "fail") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "insufficient funds");
        return TREATY_STEP_FAILED;
    }
    if (strcmp(seen->payload, "err") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "database busy");
        return TREATY_EBUSY;
    }
    if (strcmp(seen->payload, "7") == 0)
        return 7;
    return TREATY_STEP_OK;
}

static int freed;
static void count_free(void *arg)
{
    (void)arg;
    freed++;
}

static unsigned result_of(const struct sent *s, unsigned kind)
{
    cr_assert_eq(WIRE_RESULT_KIND(s->hdr.code), kind);
    return WIRE_RESULT_VALUE(s->hdr.code);
}

Test(pcore, steps_go_to_the_handler_of_their_name_and_kind)
{
    static struct world w;
    static struct steps_seen reserve, release;
    struct pcore_io io = {&w, world_send, world_plog};
    struct pcore *c = NULL;
    cr_assert_eq(pcore_new("shop", "shop-1", NULL, &io, 0, &c), 0);
    cr_assert_eq(pcore_add_step(c, PCORE_ACTION, "reserve", record_step, &release, count_free), 0);
    cr_assert_eq(pcore_add_step(c, PCORE_ACTION, "reserve", record_step, &reserve, count_free), 0);
    cr_assert_eq(freed, 1, "a replaced registration releases its arg");
    cr_assert_eq(pcore_add_step(c, PCORE_COMPENSATION, "release", record_step, &release, NULL), 0);
    cr_assert_eq(pcore_add_step(c, PCORE_ACTION, "bad name", record_step, NULL, count_free), TREATY_EINVAL);
    cr_assert_eq(freed, 2, "a failed registration releases its arg too");
    treaty_txid_t a = txid_at(1000, 1);

    pcore_on_message(c, msg(WIRE_STEP, &a, 2, 4, WIRE_STEP_ACTION, "reserve", "ok"), 0);
    const struct sent *s = last(&w, WIRE_RESULT);
    cr_assert_eq(result_of(s, WIRE_STEP_ACTION), WIRE_RESULT_OK);
    cr_assert_eq(s->hdr.branch, 2);
    cr_assert_eq(s->hdr.attempt, 4);
    cr_assert_str_eq(s->frame[0], "");
    cr_assert_str_eq(reserve.name, "reserve");
    cr_assert_eq(reserve.last.step, 2);
    cr_assert_eq(reserve.last.attempt, 4);

    pcore_on_message(c, msg(WIRE_STEP, &a, 3, 0, WIRE_STEP_ACTION, "reserve", "fail"), 0);
    cr_assert_eq(result_of(last(&w, WIRE_RESULT), WIRE_STEP_ACTION), WIRE_RESULT_FAILED);
    cr_assert_str_eq(last(&w, WIRE_RESULT)->frame[0], "insufficient funds");
    pcore_on_message(c, msg(WIRE_STEP, &a, 3, 1, WIRE_STEP_ACTION, "reserve", "err"), 0);
    cr_assert_eq(result_of(last(&w, WIRE_RESULT), WIRE_STEP_ACTION), WIRE_RESULT_TRANSIENT);
    cr_assert_str_eq(last(&w, WIRE_RESULT)->frame[0], "database busy");
    pcore_on_message(c, msg(WIRE_STEP, &a, 3, 2, WIRE_STEP_ACTION, "reserve", "7"), 0);
    cr_assert_eq(result_of(last(&w, WIRE_RESULT), WIRE_STEP_ACTION), WIRE_RESULT_TRANSIENT);
    cr_assert_str_eq(last(&w, WIRE_RESULT)->frame[0], "action handler reserve returned 7, not a step result");

    /* a compensation cannot fail for a business reason: transient */
    pcore_on_message(c, msg(WIRE_STEP, &a, 2, 0, WIRE_STEP_COMPENSATION, "release", "fail"), 0);
    cr_assert_eq(result_of(last(&w, WIRE_RESULT), WIRE_STEP_COMPENSATION), WIRE_RESULT_TRANSIENT);

    /* nobody serves the name: an action fails, a compensation is retried */
    pcore_on_message(c, msg(WIRE_STEP, &a, 0, 0, WIRE_STEP_ACTION, "nope", "ok"), 0);
    cr_assert_eq(result_of(last(&w, WIRE_RESULT), WIRE_STEP_ACTION), WIRE_RESULT_FAILED);
    cr_assert_str_eq(last(&w, WIRE_RESULT)->frame[0], "no action handler named nope");
    pcore_on_message(c, msg(WIRE_STEP, &a, 0, 0, WIRE_STEP_COMPENSATION, "reserve", "ok"), 0);
    cr_assert_eq(result_of(last(&w, WIRE_RESULT), WIRE_STEP_COMPENSATION), WIRE_RESULT_TRANSIENT, "names are per kind");
    cr_assert_str_eq(last(&w, WIRE_RESULT)->frame[0], "no compensation handler named reserve");
    cr_assert_eq(reserve.calls, 4);
    cr_assert_eq(release.calls, 1);

    pcore_destroy(&c);
    cr_assert_eq(freed, 3, "destroy releases the registrations' args");
}

Test(pcore, unexpected_and_malformed_messages_are_dropped_and_counted)
{
    static struct world w;
    struct hs t = {0};
    struct pcore *c = plain_core(&w, &t, 0);
    treaty_txid_t a = txid_at(1000, 1);

    pcore_on_message(c, msg(WIRE_ERROR, &a, 0, 0, (unsigned)-TREATY_EBUSY, "busy", NULL), 0);
    cr_assert(logged(&w, "coordinator error TREATY_EBUSY: busy"), "log: %s", w.log);
    cr_assert_eq(pcore_dropped(c), 0);
    pcore_on_message(c, msg(WIRE_VOTE, &a, 0, 0, TREATY_VOTE_YES, "", NULL), 0);
    cr_assert_eq(pcore_dropped(c), 1);
    cr_assert(logged(&w, "dropped unexpected VOTE"), "log: %s", w.log);
    pcore_on_malformed(c, TREATY_EPROTO);
    cr_assert_eq(pcore_dropped(c), 2);
    cr_assert_eq(w.nsent, 0, "nothing is answered");
    cr_assert_eq(t.prepares, 0);
    pcore_destroy(&c);
}

Test(pcore, inquire_and_two_cores_in_one_process)
{
    static struct world w1, w2;
    struct hs t1 = {0}, t2 = {0};
    struct pcore *c1 = plain_core(&w1, &t1, 0), *c2 = plain_core(&w2, &t2, 500);
    treaty_txid_t a = txid_at(1000, 1);

    cr_assert_eq(pcore_inquire(c1, &a, 4), 0);
    cr_assert_eq(last(&w1, WIRE_INQUIRE)->hdr.branch, 4);
    cr_assert(same_txid(last(&w1, WIRE_INQUIRE)->hdr.txid, &a));
    cr_assert_eq(pcore_inquire(c1, &a, 70000), TREATY_EINVAL);
    w1.refuse = true;
    cr_assert_eq(pcore_inquire(c1, &a, 4), TREATY_ETRANSPORT);

    /* no state is shared: c2 saw none of that */
    cr_assert_eq(w2.nsent, 0);
    cr_assert_eq(pcore_next_tick(c2), 500);
    pcore_on_message(c2, msg(WIRE_PREPARE, &a, 0, 0, 0, "yes", NULL), 0);
    cr_assert_eq(t2.prepares, 1);
    cr_assert_eq(t1.prepares, 0);
    pcore_destroy(&c1);
    pcore_destroy(&c2);
}

/* ========================================================== client core */

static treaty_txn_t *two_branch_txn(const treaty_txid_t *id)
{
    treaty_txn_t *t = NULL;
    cr_assert_eq(treaty_txn_new_with_id(id, &t), 0);
    cr_assert_eq(treaty_txn_add_branch(t, "bank", "debit 10", 8), 0);
    cr_assert_eq(treaty_txn_add_branch(t, "inventory", "", 0), 0);
    return t;
}

static struct ccore *client_core(struct world *w, uint64_t seed)
{
    struct ccore_io io = {w, world_send, world_clog};
    struct ccore *c = ccore_new(&io, seed);
    cr_assert_not_null(c);
    return c;
}

static const struct wire_msg *outcome(const treaty_txid_t *id, unsigned branch, unsigned status, const char *reason)
{
    return msg(WIRE_OUTCOME, id, branch, 0, status, reason, NULL);
}

Test(ccore, submit_resends_at_its_due_time_and_completes_on_outcome)
{
    static struct world w;
    struct ccore *c = client_core(&w, 1);
    treaty_txid_t a = txid_at(1000, 1);
    treaty_txn_t *t = two_branch_txn(&a);
    struct ccore_req *r = NULL;

    cr_assert_eq(ccore_submit(c, t, 20000, NULL, NULL, 0, &r), 0);
    treaty_txn_destroy(&t); /* the request keeps its own copy */
    const struct sent *s = last(&w, WIRE_SUBMIT);
    cr_assert_eq(s->hdr.attempt, 0);
    cr_assert(same_txid(s->hdr.txid, &a));
    cr_assert_eq(s->nframes, 5);
    uint32_t prepare_deadline;
    struct wire_frame tf = {(const uint8_t *)s->frame[0], s->len[0]};
    cr_assert(wire_get_u32(&tf, &prepare_deadline));
    cr_assert_eq(prepare_deadline, 19000, "the prepare deadline leaves a margin: a quarter, at most 1 s");
    cr_assert_str_eq(s->frame[1], "bank");
    cr_assert_str_eq(s->frame[2], "debit 10");
    cr_assert_str_eq(s->frame[3], "inventory");
    cr_assert_eq(s->len[4], 0);

    int64_t due = ccore_next_tick(c);
    cr_assert(due >= CCORE_RESEND_MIN_MS && due < CCORE_RESEND_MIN_MS + CCORE_RESEND_JITTER_MS, "re-send at %lld",
              (long long)due);
    ccore_on_tick(c, due - 1);
    cr_assert_eq(w.nsent, 1, "nothing before its due time");
    ccore_on_tick(c, due);
    cr_assert_eq(w.nsent, 2);
    s = last(&w, WIRE_SUBMIT);
    cr_assert_eq(s->hdr.attempt, 1, "attempt counts the re-sends");
    cr_assert_str_eq(s->frame[2], "debit 10", "the same request");
    cr_assert_gt(ccore_next_tick(c), due);

    ccore_on_message(c, outcome(&a, TREATY_NO_BRANCH, TREATY_STATUS_PENDING, ""));
    cr_assert_not(ccore_req_done(r), "PENDING does not answer a SUBMIT");
    ccore_on_message(c, outcome(&a, 1, TREATY_STATUS_ABORTED, "branch 1 voted no"));
    cr_assert(ccore_req_done(r));
    cr_assert_eq(ccore_next_tick(c), -1, "nothing waits");
    treaty_outcome_t out;
    cr_assert_eq(ccore_take(c, &r, &out), 0);
    cr_assert_null(r);
    cr_assert_eq(out.status, TREATY_STATUS_ABORTED);
    cr_assert_eq(out.failed_branch, 1);
    cr_assert_str_eq(out.reason, "branch 1 voted no");
    cr_assert(memcmp(&out.txid, &a, sizeof a) == 0);
    ccore_destroy(&c);
    cr_assert_null(c);
}

struct cb {
    int calls;
    treaty_outcome_t out;
};

static void on_outcome(void *arg, const treaty_outcome_t *o)
{
    struct cb *r = arg;
    r->calls++;
    r->out = *o;
}

Test(ccore, callbacks_run_only_in_run_callbacks)
{
    static struct world w;
    struct ccore *c = client_core(&w, 1);
    treaty_txid_t a = txid_at(1000, 1), b = txid_at(1000, 2);
    treaty_txn_t *t = two_branch_txn(&a);
    struct cb ra = {0}, rb = {0};

    cr_assert_eq(ccore_submit(c, t, 20000, on_outcome, &ra, 0, NULL), 0);
    cr_assert_eq(ccore_query(c, &b, 300, on_outcome, &rb, 0, NULL), 0);
    treaty_txn_destroy(&t);
    ccore_on_message(c, outcome(&a, TREATY_NO_BRANCH, TREATY_STATUS_COMMITTED, ""));
    ccore_on_tick(c, 300); /* b's deadline */
    cr_assert_eq(ra.calls + rb.calls, 0, "no callback inside on_message or on_tick");
    cr_assert(ccore_has_callbacks(c));
    cr_assert_eq(ccore_run_callbacks(c), 2);
    cr_assert_eq(ra.calls, 1);
    cr_assert_eq(ra.out.status, TREATY_STATUS_COMMITTED);
    cr_assert_eq(rb.calls, 1);
    cr_assert_eq(rb.out.status, TREATY_STATUS_UNKNOWN);
    cr_assert_str_eq(rb.out.reason, "no answer from the coordinator within 300 ms");
    cr_assert_not(ccore_has_callbacks(c));
    cr_assert_eq(ccore_run_callbacks(c), 0);
    cr_assert_eq(ccore_next_tick(c), -1);

    /* a late answer finds nobody waiting */
    ccore_on_message(c, outcome(&b, TREATY_NO_BRANCH, TREATY_STATUS_ABORTED, ""));
    cr_assert_eq(ccore_stale(c), 1);
    ccore_destroy(&c);
}

Test(ccore, query_takes_pending_and_a_blocking_request_times_out)
{
    static struct world w;
    struct ccore *c = client_core(&w, 1);
    treaty_txid_t a = txid_at(1000, 1), b = txid_at(1000, 2);
    struct ccore_req *q = NULL, *r = NULL;
    treaty_outcome_t out;

    cr_assert_eq(ccore_query(c, &a, 5000, NULL, NULL, 100, &q), 0);
    cr_assert_eq(last(&w, WIRE_QUERY)->nframes, 0);
    ccore_on_message(c, outcome(&a, TREATY_NO_BRANCH, TREATY_STATUS_PENDING, ""));
    cr_assert_eq(ccore_take(c, &q, &out), 0);
    cr_assert_eq(out.status, TREATY_STATUS_PENDING, "PENDING answers a QUERY");

    cr_assert_eq(ccore_query(c, &b, 300, NULL, NULL, 100, &r), 0);
    ccore_on_tick(c, 399);
    cr_assert_not(ccore_req_done(r));
    ccore_on_tick(c, 400);
    cr_assert(ccore_req_done(r));
    cr_assert_eq(ccore_take(c, &r, &out), TREATY_ETIMEDOUT);
    cr_assert_eq(out.status, TREATY_STATUS_UNKNOWN);

    /* abandoned before its answer (the shell's transport failed) */
    cr_assert_eq(ccore_query(c, &b, 300, NULL, NULL, 500, &r), 0);
    cr_assert_eq(ccore_take(c, &r, &out), TREATY_ESTATE);
    cr_assert_eq(ccore_next_tick(c), -1);
    ccore_destroy(&c);
}

Test(ccore, an_error_reply_is_an_answer_and_stuck_ends_a_saga)
{
    static struct world w;
    struct ccore *c = client_core(&w, 1);
    treaty_txid_t a = txid_at(1000, 1), b = txid_at(1000, 2);
    treaty_txn_t *t = two_branch_txn(&a);
    treaty_saga_t *sg = NULL;
    struct ccore_req *r = NULL, *rs = NULL;
    treaty_outcome_t out;

    cr_assert_eq(ccore_submit(c, t, 20000, NULL, NULL, 0, &r), 0);
    ccore_on_message(c, msg(WIRE_ERROR, &a, 0, 0, (unsigned)-TREATY_EBUSY, "coordinator busy", NULL));
    cr_assert_eq(ccore_take(c, &r, &out), 0);
    cr_assert_eq(out.error, TREATY_EBUSY);
    cr_assert_eq(out.status, TREATY_STATUS_NONE);
    cr_assert_str_eq(out.reason, "coordinator busy");

    cr_assert_eq(treaty_saga_new_with_id(&b, &sg), 0);
    cr_assert_geq(treaty_saga_add_step(sg, "bank", "debit", "10", 2, "refund", "10", 2), 0);
    cr_assert_geq(treaty_saga_add_parallel_step(sg, "shop", "reserve", "", 0, "release", "", 0), 0);
    cr_assert_eq(treaty_saga_set_deadline(sg, 7000), 0);
    cr_assert_eq(ccore_run_saga(c, sg, 20000, NULL, NULL, 0, &rs), 0);
    treaty_saga_destroy(&sg);
    const struct sent *s = last(&w, WIRE_SAGA);
    cr_assert_eq(s->nframes, 1 + 2 * WIRE_SAGA_FRAMES_PER_STEP);
    cr_assert_str_eq(s->frame[1], "bank");
    cr_assert_str_eq(s->frame[8], "reserve");
    ccore_on_tick(c, ccore_next_tick(c));
    cr_assert_str_eq(last(&w, WIRE_SAGA)->frame[8], "reserve", "re-sent from the request's own copy");
    ccore_on_message(c, outcome(&b, TREATY_NO_BRANCH, TREATY_STATUS_PENDING, ""));
    cr_assert_not(ccore_req_done(rs), "PENDING does not answer a SAGA");
    ccore_on_message(c, outcome(&b, 1, TREATY_STATUS_STUCK, "compensation release keeps failing"));
    cr_assert_eq(ccore_take(c, &rs, &out), 0);
    cr_assert_eq(out.status, TREATY_STATUS_STUCK, "STUCK is final for the client");

    /* what is not a reply is dropped and counted */
    ccore_on_message(c, msg(WIRE_PREPARE, &a, 0, 0, 0, "x", NULL));
    ccore_on_malformed(c, TREATY_EPROTO);
    cr_assert_eq(ccore_malformed(c), 2);
    treaty_txn_destroy(&t);
    ccore_destroy(&c);
}

Test(ccore, arguments_and_one_reply_for_every_request_of_its_txid)
{
    static struct world w;
    struct ccore *c = client_core(&w, 1);
    treaty_txid_t a = txid_at(1000, 1);
    treaty_txn_t *t = two_branch_txn(&a), *empty = NULL;
    struct ccore_req *r = NULL;
    struct cb rq = {0};

    cr_assert_eq(treaty_txn_new_with_id(&a, &empty), 0);
    cr_assert_eq(ccore_submit(c, empty, 1000, NULL, NULL, 0, &r), TREATY_EINVAL);
    cr_assert_str_eq(w.log, "transaction has no branches");
    cr_assert_eq(ccore_submit(c, t, 0, NULL, NULL, 0, &r), TREATY_EINVAL, "timeout_ms > 0");
    cr_assert_eq(ccore_submit(c, t, 1000, NULL, NULL, 0, NULL), TREATY_EINVAL, "blocking needs out");

    cr_assert_eq(ccore_submit(c, t, 20000, NULL, NULL, 0, &r), 0);
    cr_assert_eq(ccore_query(c, &a, 20000, on_outcome, &rq, 0, NULL), 0);
    ccore_on_message(c, outcome(&a, TREATY_NO_BRANCH, TREATY_STATUS_COMMITTED, ""));
    cr_assert(ccore_req_done(r));
    cr_assert_eq(ccore_run_callbacks(c), 1);
    cr_assert_eq(rq.out.status, TREATY_STATUS_COMMITTED);
    treaty_outcome_t out;
    cr_assert_eq(ccore_take(c, &r, &out), 0);
    cr_assert_eq(out.status, TREATY_STATUS_COMMITTED);
    treaty_txn_destroy(&t);
    treaty_txn_destroy(&empty);
    ccore_destroy(&c);
}

/* The times of the first n re-sends of one request. */
static void resend_times(uint64_t seed, int64_t *at, int n)
{
    static struct world w;
    memset(&w, 0, sizeof w);
    struct ccore *c = client_core(&w, seed);
    treaty_txid_t a = txid_at(1000, 1);
    cr_assert_eq(ccore_query(c, &a, 1000000, on_outcome, &(struct cb){0}, 0, NULL), 0);
    for (int i = 0; i < n; i++) {
        at[i] = ccore_next_tick(c);
        ccore_on_tick(c, at[i]);
    }
    cr_assert_eq(w.nsent, n + 1);
    ccore_destroy(&c);
}

Test(ccore, jitter_comes_from_the_seed_and_a_failed_send_is_resent)
{
    int64_t x[20], y[20], z[20];
    resend_times(42, x, 20);
    resend_times(42, y, 20);
    resend_times(43, z, 20);
    cr_assert_eq(memcmp(x, y, sizeof x), 0, "the same seed, the same schedule");
    cr_assert_neq(memcmp(x, z, sizeof x), 0, "another seed, another schedule");
    for (int i = 1; i < 20; i++)
        cr_assert(x[i] - x[i - 1] >= CCORE_RESEND_MIN_MS &&
                  x[i] - x[i - 1] < CCORE_RESEND_MIN_MS + CCORE_RESEND_JITTER_MS);

    static struct world w;
    struct ccore *c = client_core(&w, 7);
    treaty_txid_t a = txid_at(1000, 1);
    struct ccore_req *r = NULL;
    w.refuse = true;
    cr_assert_eq(ccore_query(c, &a, 5000, NULL, NULL, 0, &r), 0, "a failed send is not an error");
    cr_assert(logged(&w, "send QUERY failed (will re-send): not connected"), "log: %s", w.log);
    w.refuse = false;
    ccore_on_tick(c, ccore_next_tick(c));
    cr_assert_eq(last(&w, WIRE_QUERY)->hdr.attempt, 1);
    ccore_take(c, &r, NULL);
    ccore_destroy(&c);
}

#define MANY 2000

Test(ccore, many_requests_complete_once_each_in_due_order)
{
    static struct world w;
    static struct cb res[MANY];
    static treaty_txid_t ids[MANY];
    struct ccore *c = client_core(&w, 3);
    w.discard = true;
    for (int i = 0; i < MANY; i++) {
        ids[i] = txid_at(1000, (unsigned)i);
        /* deadlines 100..MANY*7 ms apart, in scrambled order */
        int timeout = 100 + (int)((unsigned)i * 7919u % MANY) * 3;
        cr_assert_eq(ccore_query(c, &ids[i], timeout, on_outcome, &res[i], 0, NULL), 0);
    }
    cr_assert_eq(w.nsent, MANY, "each sent once at its start");
    /* answer every other one in reverse order, let the rest time out */
    for (int i = MANY - 1; i >= 0; i -= 2)
        ccore_on_message(c, outcome(&ids[i], TREATY_NO_BRANCH, TREATY_STATUS_COMMITTED, ""));
    int64_t now = 0;
    while (ccore_next_tick(c) >= 0) {
        cr_assert_geq(ccore_next_tick(c), now, "the heap goes forward");
        now = ccore_next_tick(c);
        ccore_on_tick(c, now);
    }
    cr_assert_eq(ccore_run_callbacks(c), MANY);
    for (int i = 0; i < MANY; i++) {
        cr_assert_eq(res[i].calls, 1, "request %d: %d callbacks", i, res[i].calls);
        cr_assert(memcmp(&res[i].out.txid, &ids[i], sizeof ids[i]) == 0);
        cr_assert_eq(res[i].out.status, i % 2 ? TREATY_STATUS_COMMITTED : TREATY_STATUS_UNKNOWN);
    }
    ccore_destroy(&c);
}

/* ================================================ the Postgres decisions */

/*
 * struct fdb: one database in memory, shared by sessions (struct fsess, one
 * per participant: two sessions on one fdb are two instances of a service
 * sharing their database). What pg_ops.h says, and no more:
 *   - a barrier row is owned by a transaction (tx > 0: open in a session,
 *     or prepared) until it commits (tx 0); an insert of a key another
 *     transaction owns is HELD at once (the lock timeout, without the wait);
 *   - business changes are counted: a transaction's count joins the
 *     database's when it commits;
 *   - the horizon and the purge work on txid times (UUIDv7) and on the
 *     fake's wall clock (db.now_ms).
 */
#define FDB_ROWS 64
#define FDB_PREPARED 8

struct frow {
    bool used;
    treaty_txid_t txid;
    unsigned branch;
    int op;     /* 0 prepare, 1 action, 2 compensation */
    int result; /* enum pg_action (PG_ACTION_NONE: NULL) */
    char reason[TREATY_REASON_MAX];
    long long created_ms;
    int tx; /* 0: committed */
};

struct fprep {
    bool used;
    char gid[PG_GID_MAX];
    int tx;
    int changes;
};

struct fdb {
    struct frow rows[FDB_ROWS];
    struct fprep prepared[FDB_PREPARED];
    long long horizon; /* -1: never purged */
    long long now_ms;
    int changes; /* committed business changes */
    int next_tx;
};

struct fsess {
    struct fdb *db;
    int tx;         /* the open transaction, 0: none */
    bool failed;    /* a statement in it failed */
    bool savepoint; /* step_work_begin's savepoint exists */
    int changes;    /* business changes in the open transaction */
    int at_savepoint;
    bool lost; /* the connection is gone */
    int lose;  /* the next op to fail by losing the connection: 1 = the next, 0 = none */
    bool down; /* ready() fails: the database is unavailable */
    char err[TREATY_REASON_MAX];
    int crashes; /* crash points reached */
    char crash[3][32];
};

static void fdb_init(struct fdb *db)
{
    memset(db, 0, sizeof *db);
    db->horizon = -1;
    db->now_ms = 1000000;
    db->next_tx = 1;
}

static int op_of(enum pg_step_op op)
{
    return op == PG_STEP_ACTION ? 1 : 2;
}

static struct frow *find_row(struct fdb *db, const treaty_txid_t *txid, unsigned branch, int op)
{
    for (int i = 0; i < FDB_ROWS; i++) {
        struct frow *r = &db->rows[i];
        if (r->used && r->branch == branch && r->op == op && memcmp(&r->txid, txid, sizeof *txid) == 0)
            return r;
    }
    return NULL;
}

static int fs_fail(struct fsess *s, const char *what)
{
    snprintf(s->err, sizeof s->err, "%s", what);
    return TREATY_EPG;
}

static void fs_end(struct fsess *s, bool commit)
{
    for (int i = 0; i < FDB_ROWS; i++) {
        struct frow *r = &s->db->rows[i];
        if (r->used && s->tx != 0 && r->tx == s->tx) {
            if (commit)
                r->tx = 0;
            else
                r->used = false;
        }
    }
    if (commit)
        s->db->changes += s->changes;
    s->tx = 0;
    s->failed = s->savepoint = false;
    s->changes = 0;
}

/* Loses the connection if a test asked for it at this op. */
static bool fs_losing(struct fsess *s)
{
    if (s->lose == 0 || --s->lose != 0)
        return false;
    fs_end(s, false); /* the server rolls back what was open */
    s->lost = true;
    snprintf(s->err, sizeof s->err, "server closed the connection unexpectedly (SQLSTATE none)");
    return true;
}

static void fs_begin(struct fsess *s)
{
    s->tx = s->db->next_tx++;
    s->failed = s->savepoint = false;
    s->changes = 0;
}

/* Inserts a row for the open transaction: 0 inserted, 1 exists, 2 held. */
static int fs_insert(struct fsess *s, const treaty_txid_t *txid, unsigned branch, int op, int result)
{
    struct frow *r = find_row(s->db, txid, branch, op);
    if (r != NULL)
        return r->tx == 0 || r->tx == s->tx ? 1 : 2;
    for (int i = 0; i < FDB_ROWS; i++) {
        r = &s->db->rows[i];
        if (!r->used) {
            memset(r, 0, sizeof *r);
            r->used = true;
            r->txid = *txid;
            r->branch = branch;
            r->op = op;
            r->result = result;
            r->created_ms = s->db->now_ms;
            r->tx = s->tx;
            return 0;
        }
    }
    cr_assert_fail("the fake database is full");
    return 2;
}

static int f_ready(void *ctx, bool saga)
{
    struct fsess *s = ctx;
    (void)saga;
    if (s->down)
        return fs_fail(s, "database unavailable; reconnecting in 100 ms");
    s->lost = false; /* reconnected: a new session */
    fs_end(s, false);
    return 0;
}

static bool f_lost(void *ctx)
{
    return ((struct fsess *)ctx)->lost;
}

static const char *f_errtext(void *ctx)
{
    return ((struct fsess *)ctx)->err;
}

static enum pg_txn f_txn_state(void *ctx)
{
    struct fsess *s = ctx;
    return s->lost ? PG_TXN_LOST : s->tx == 0 ? PG_TXN_IDLE : s->failed ? PG_TXN_FAILED : PG_TXN_OPEN;
}

static void f_rollback(void *ctx)
{
    fs_end(ctx, false);
}

static struct pg_conn *f_session(void *ctx)
{
    return (struct pg_conn *)ctx; /* the work functions convert it back */
}

static void f_crash_point(void *ctx, const char *name)
{
    struct fsess *s = ctx;
    if (s->crashes < 3)
        snprintf(s->crash[s->crashes], sizeof s->crash[0], "%s", name);
    s->crashes++;
}

static struct fprep *find_prepared(struct fdb *db, const char *gid)
{
    for (int i = 0; i < FDB_PREPARED; i++)
        if (db->prepared[i].used && strcmp(db->prepared[i].gid, gid) == 0)
            return &db->prepared[i];
    return NULL;
}

static int f_branch_begin(void *ctx, const treaty_txid_t *txid, unsigned branch, const char *gid, long long *horizon_ms)
{
    struct fsess *s = ctx;
    if (fs_losing(s))
        return TREATY_EPG;
    if (find_prepared(s->db, gid) != NULL)
        return PG_BEGIN_PREPARED;
    fs_begin(s);
    int rc = fs_insert(s, txid, branch, 0, PG_ACTION_NONE);
    if (rc != 0) {
        fs_end(s, false);
        if (rc == 2)
            snprintf(s->err, sizeof s->err, "barrier row held by another transaction: lock timeout (SQLSTATE 55P03)");
        return rc == 2 ? PG_BEGIN_HELD : PG_BEGIN_COMMITTED;
    }
    *horizon_ms = s->db->horizon;
    return PG_BEGIN_OPEN;
}

static int f_branch_prepare(void *ctx, const char *gid)
{
    struct fsess *s = ctx;
    if (s->failed) {
        fs_end(s, false);
        return PG_END_ROLLED_BACK;
    }
    for (int i = 0; i < FDB_PREPARED; i++) {
        struct fprep *p = &s->db->prepared[i];
        if (!p->used) {
            p->used = true;
            snprintf(p->gid, sizeof p->gid, "%s", gid);
            p->tx = s->tx; /* its rows stay owned by tx: held */
            p->changes = s->changes;
            s->tx = 0;
            s->changes = 0;
            return PG_END_DONE;
        }
    }
    fs_end(s, false);
    return fs_fail(s, "PREPARE TRANSACTION: maximum number of prepared transactions reached (SQLSTATE 53200)");
}

/* What a session does to a prepared transaction: COMMIT / ROLLBACK PREPARED. */
static void fdb_finish(struct fdb *db, struct fprep *p, bool commit)
{
    for (int i = 0; i < FDB_ROWS; i++) {
        struct frow *r = &db->rows[i];
        if (r->used && r->tx == p->tx) {
            if (commit)
                r->tx = 0;
            else
                r->used = false;
        }
    }
    if (commit)
        db->changes += p->changes;
    p->used = false;
}

static int f_branch_finish(void *ctx, const char *gid, bool commit)
{
    struct fsess *s = ctx;
    if (fs_losing(s))
        return TREATY_EPG;
    struct fprep *p = find_prepared(s->db, gid);
    if (p == NULL)
        return PG_FINISH_NO_GID;
    fdb_finish(s->db, p, commit);
    return PG_FINISH_DONE;
}

static int f_branch_witness(void *ctx, const treaty_txid_t *txid, unsigned branch, long long *horizon_ms)
{
    struct fsess *s = ctx;
    struct frow *r = find_row(s->db, txid, branch, 0);
    *horizon_ms = s->db->horizon;
    if (r == NULL)
        return PG_WITNESS_ABSENT;
    return r->tx == 0 ? PG_WITNESS_COMMITTED : PG_WITNESS_HELD;
}

static int f_list_prepared(void *ctx, int min_age_ms, void (*each)(void *arg, const char *gid), void *arg)
{
    struct fsess *s = ctx;
    (void)min_age_ms;
    for (int i = 0; i < FDB_PREPARED; i++)
        if (s->db->prepared[i].used && strncmp(s->db->prepared[i].gid, "treaty:", 7) == 0)
            each(arg, s->db->prepared[i].gid);
    return 0;
}

static int f_step_begin(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op)
{
    struct fsess *s = ctx;
    if (fs_losing(s))
        return TREATY_EPG;
    fs_begin(s);
    int rc = fs_insert(s, txid, step, op_of(op), PG_ACTION_NONE);
    if (rc == 2) {
        fs_end(s, false);
        snprintf(s->err, sizeof s->err, "%s barrier row held by another transaction: lock timeout (SQLSTATE 55P03)",
                 op == PG_STEP_ACTION ? "action" : "compensation");
        return PG_ROW_HELD;
    }
    return rc == 0 ? PG_ROW_INSERTED : PG_ROW_EXISTS;
}

static int f_step_read_action(void *ctx, const treaty_txid_t *txid, unsigned step, char *reason)
{
    struct fsess *s = ctx;
    struct frow *r = find_row(s->db, txid, step, 1);
    if (r == NULL || (r->tx != 0 && r->tx != s->tx))
        return PG_ACTION_GONE;
    if (reason != NULL)
        snprintf(reason, TREATY_REASON_MAX, "%s", r->reason);
    return r->result;
}

static int f_step_block_action(void *ctx, const treaty_txid_t *txid, unsigned step)
{
    struct fsess *s = ctx;
    int rc = fs_insert(s, txid, step, 1, PG_ACTION_BLOCKED);
    if (rc == 2) {
        fs_end(s, false);
        return PG_ROW_HELD;
    }
    return rc == 0 ? PG_ROW_INSERTED : PG_ROW_EXISTS;
}

static int f_step_work_begin(void *ctx, bool savepoint, long long *horizon_ms)
{
    struct fsess *s = ctx;
    if (savepoint) {
        s->savepoint = true;
        s->at_savepoint = s->changes;
    }
    if (horizon_ms != NULL)
        *horizon_ms = s->db->horizon;
    return 0;
}

static int f_step_horizon(void *ctx, long long *horizon_ms)
{
    *horizon_ms = ((struct fsess *)ctx)->db->horizon;
    return 0;
}

static int f_step_undo_work(void *ctx)
{
    struct fsess *s = ctx;
    if (!s->savepoint || s->tx == 0) {
        fs_end(s, false);
        return fs_fail(s, "the action handler's savepoint is gone (did it end the transaction?)");
    }
    s->changes = s->at_savepoint;
    return 0;
}

static int f_step_record(void *ctx, const treaty_txid_t *txid, unsigned step, enum pg_step_op op, bool ok,
                         const char *reason)
{
    struct fsess *s = ctx;
    struct frow *r = find_row(s->db, txid, step, op_of(op));
    if (r == NULL || s->tx == 0 || r->tx != s->tx)
        return PG_RECORD_OTHER;
    r->result = ok ? PG_ACTION_OK : PG_ACTION_FAILED;
    snprintf(r->reason, sizeof r->reason, "%s", reason != NULL ? reason : "");
    return PG_RECORD_DONE;
}

static int f_step_commit(void *ctx)
{
    struct fsess *s = ctx;
    if (s->failed) {
        fs_end(s, false);
        return PG_END_ROLLED_BACK;
    }
    fs_end(s, true);
    return PG_END_DONE;
}

static long f_purge(void *ctx, unsigned older_than_s)
{
    struct fsess *s = ctx;
    long long cut = s->db->now_ms - (long long)older_than_s * 1000;
    if (cut > s->db->horizon)
        s->db->horizon = cut;
    long n = 0;
    for (int i = 0; i < FDB_ROWS; i++) {
        struct frow *r = &s->db->rows[i];
        long long t = treaty_txid_time_ms(&r->txid);
        if (r->used && r->tx == 0 && r->created_ms < cut && t >= 0 && t < cut) {
            r->used = false;
            n++;
        }
    }
    return n;
}

static const struct pg_ops fake_ops = {
    .ready = f_ready,
    .lost = f_lost,
    .errtext = f_errtext,
    .txn_state = f_txn_state,
    .rollback = f_rollback,
    .session = f_session,
    .crash_point = f_crash_point,
    .destroy = NULL, /* the test owns its sessions */
    .branch_begin = f_branch_begin,
    .branch_prepare = f_branch_prepare,
    .branch_finish = f_branch_finish,
    .branch_witness = f_branch_witness,
    .list_prepared = f_list_prepared,
    .step_begin = f_step_begin,
    .step_read_action = f_step_read_action,
    .step_block_action = f_step_block_action,
    .step_work_begin = f_step_work_begin,
    .step_horizon = f_step_horizon,
    .step_undo_work = f_step_undo_work,
    .step_record = f_step_record,
    .step_commit = f_step_commit,
    .purge = f_purge,
};

/* ------------------------------------------------- the user's code, fake */

static int work_calls;

/* Work on the fake: one business change. Payload "no" votes NO, "err" is an
 * error, "end" commits the transaction itself, "fail" leaves it failed and
 * still says YES. */
static int fwork(void *arg, struct pg_conn *conn, const treaty_branch_t *b, char *reason)
{
    struct fsess *s = (struct fsess *)conn;
    char payload[32];
    (void)arg;
    work_calls++;
    snprintf(payload, sizeof payload, "%.*s", (int)b->len, (const char *)b->payload);
    cr_assert_neq(s->tx, 0, "work runs inside the branch's transaction");
    s->changes++;
    if (strcmp(payload, "no") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "refused: no");
        return TREATY_VOTE_NO;
    }
    if (strcmp(payload, "err") == 0)
        return TREATY_EBUSY;
    if (strcmp(payload, "end") == 0)
        fs_end(s, true);
    if (strcmp(payload, "fail") == 0)
        s->failed = true;
    return TREATY_VOTE_YES;
}

static int debit_calls, refund_calls;

/* A debit: one business change. Payload "fail": business failure, "err":
 * transient, "commit": ends the transaction itself, "commit-begin": and
 * begins another. */
static int fdebit(void *arg, struct pg_conn *conn, const treaty_step_t *st, char *reason)
{
    struct fsess *s = (struct fsess *)conn;
    char payload[32];
    (void)arg;
    debit_calls++;
    snprintf(payload, sizeof payload, "%.*s", (int)st->len, (const char *)st->payload);
    s->changes++;
    if (strcmp(payload, "fail") == 0) {
        snprintf(reason, TREATY_REASON_MAX, "insufficient funds");
        return TREATY_STEP_FAILED;
    }
    if (strcmp(payload, "err") == 0)
        return TREATY_EBUSY;
    if (strcmp(payload, "commit") == 0)
        fs_end(s, true);
    if (strcmp(payload, "commit-begin") == 0) {
        fs_end(s, true);
        fs_begin(s);
    }
    return TREATY_STEP_OK;
}

static int frefund(void *arg, struct pg_conn *conn, const treaty_step_t *st, char *reason)
{
    struct fsess *s = (struct fsess *)conn;
    (void)arg;
    (void)st;
    (void)reason;
    refund_calls++;
    s->changes--;
    return TREATY_STEP_OK;
}

/* A Postgres participant made from the cores over a fake session: what the
 * simulator builds for every service instance. */
static struct pcore *pg_participant(struct world *w, struct fsess *s, struct fdb *db, const char *instance)
{
    memset(s, 0, sizeof *s);
    s->db = db;
    struct pcore_io io = {w, world_send, world_plog};
    struct pcore *c = NULL;
    cr_assert_eq(pg_core_participant_new("bank", instance, &io, &fake_ops, s, fwork, NULL, 0, &c), 0);
    cr_assert_eq(pg_core_on_step(c, PCORE_ACTION, "debit", fdebit, NULL), 0);
    cr_assert_eq(pg_core_on_step(c, PCORE_COMPENSATION, "refund", frefund, NULL), 0);
    work_calls = debit_calls = refund_calls = 0;
    return c;
}

static void prepare(struct pcore *c, const treaty_txid_t *id, unsigned branch, const char *payload)
{
    pcore_on_message(c, msg(WIRE_PREPARE, id, branch, 0, 0, payload, NULL), 0);
}

static void decide(struct pcore *c, const treaty_txid_t *id, unsigned branch, bool commit)
{
    pcore_on_message(c, msg(commit ? WIRE_COMMIT : WIRE_ABORT, id, branch, 0, 0, NULL, NULL), 0);
}

/* The last reply was a VOTE of vote for id/branch (and its reason). */
static const char *voted(const struct world *w, int before, const treaty_txid_t *id, unsigned branch, unsigned vote)
{
    cr_assert_eq(w->nsent, before + 1, "no VOTE was sent");
    const struct sent *s = last(w, WIRE_VOTE);
    cr_assert(same_txid(s->hdr.txid, id));
    cr_assert_eq(s->hdr.branch, branch);
    cr_assert_eq(s->hdr.code, vote, "vote %u, expected %u (reason '%s')", s->hdr.code, vote, s->frame[0]);
    return s->frame[0];
}

static void acked(const struct world *w, int before, unsigned status)
{
    cr_assert_eq(w->nsent, before + 1, "no ACK was sent (log: %s)", w->log);
    cr_assert_eq(last(w, WIRE_ACK)->hdr.code, status);
}

static long long now_txid_ms(const struct fdb *db)
{
    return db->now_ms;
}

Test(pg_core, prepare_then_commit_applies_acks_and_names_its_crash_windows)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);
    char gid[PG_GID_MAX];
    pg_gid_make(&a, 1, gid);

    int n = w.nsent;
    prepare(c, &a, 1, "debit 10");
    voted(&w, n, &a, 1, TREATY_VOTE_YES);
    cr_assert_not_null(find_prepared(&db, gid), "durable but undecided: prepared");
    cr_assert_eq(db.changes, 0, "not visible yet");
    cr_assert_str_eq(s.crash[0], "participant.after_prepare");

    n = w.nsent;
    decide(c, &a, 1, true);
    acked(&w, n, TREATY_STATUS_COMMITTED);
    cr_assert_null(find_prepared(&db, gid));
    cr_assert_eq(db.changes, 1);
    cr_assert_str_eq(s.crash[1], "participant.before_commit");
    cr_assert_str_eq(s.crash[2], "participant.after_commit");

    /* a duplicate COMMIT (its ACK was lost): no gid, the row is committed */
    n = w.nsent;
    decide(c, &a, 1, true);
    acked(&w, n, TREATY_STATUS_COMMITTED);
    cr_assert_eq(db.changes, 1);
    cr_assert_eq(work_calls, 1);
    pcore_destroy(&c);
}

Test(pg_core, a_duplicate_prepare_never_runs_work_twice)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);

    int n = w.nsent;
    prepare(c, &a, 0, "credit 5");
    voted(&w, n, &a, 0, TREATY_VOTE_YES);
    n = w.nsent;
    prepare(c, &a, 0, "credit 5"); /* re-sent while prepared */
    voted(&w, n, &a, 0, TREATY_VOTE_YES);
    cr_assert_eq(work_calls, 1, "work ran again for a duplicate PREPARE");

    decide(c, &a, 0, true);
    n = w.nsent;
    prepare(c, &a, 0, "credit 5"); /* stale, after the commit */
    cr_assert_eq(w.nsent, n, "no vote for a branch that committed");
    cr_assert(logged(&w, "already committed; no vote"), "log: %s", w.log);
    cr_assert_eq(work_calls, 1);
    cr_assert_eq(db.changes, 1);
    pcore_destroy(&c);
}

Test(pg_core, work_that_says_no_fails_or_misbehaves_is_rolled_back)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1), b = txid_at(now_txid_ms(&db), 2), d = txid_at(now_txid_ms(&db), 3),
                  e = txid_at(now_txid_ms(&db), 4);

    int n = w.nsent;
    prepare(c, &a, 2, "no");
    cr_assert_str_eq(voted(&w, n, &a, 2, TREATY_VOTE_NO), "refused: no");
    n = w.nsent;
    prepare(c, &b, 0, "err");
    cr_assert_eq(w.nsent, n, "an error sends no vote");
    cr_assert(logged(&w, "rolled back, no vote"), "log: %s", w.log);
    n = w.nsent;
    prepare(c, &d, 0, "end");
    cr_assert_str_eq(voted(&w, n, &d, 0, TREATY_VOTE_NO), "work voted YES but the transaction was ended by work");
    n = w.nsent;
    prepare(c, &e, 0, "fail");
    cr_assert_str_eq(voted(&w, n, &e, 0, TREATY_VOTE_NO), "work voted YES but the transaction was failed");
    cr_assert_null(find_row(&db, &a, 2, 0), "no barrier row for a rolled-back branch");
    cr_assert_null(find_row(&db, &b, 0, 0));
    cr_assert_eq(db.changes, 1, "only the work that ended its transaction itself got through");

    /* the NO-voted branch is aborted: nothing to roll back, still ACKed */
    n = w.nsent;
    decide(c, &a, 2, false);
    acked(&w, n, TREATY_STATUS_ABORTED);
    pcore_destroy(&c);
}

/* The witness decides a decision that finds no prepared transaction. */
Test(pg_core, commit_that_finds_no_gid_acks_only_when_the_witness_says_committed)
{
    static struct world w, tw;
    static struct fdb db;
    struct fsess s, ts;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    struct pcore *twin = pg_participant(&tw, &ts, &db, "bank-2"); /* sharing the database */
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1), b = txid_at(now_txid_ms(&db), 2);
    char gid[PG_GID_MAX];

    /* a was prepared here and rolled back by the twin, told ABORT */
    prepare(c, &a, 0, "debit 10");
    pg_gid_make(&a, 0, gid);
    fdb_finish(&db, find_prepared(&db, gid), false);
    int n = w.nsent;
    decide(c, &a, 0, true);
    cr_assert_eq(w.nsent, n, "a COMMIT of a branch that was rolled back must not be acknowledged");
    cr_assert_eq(w.nalerts, 1);
    cr_assert(logged(&w, "neither prepared nor committed"), "log: %s", w.log);
    cr_assert_eq(db.changes, 0);

    /* the twin is preparing b (its transaction holds the row): nothing can
     * be said yet; once it prepared, the re-sent COMMIT commits it */
    fs_begin(&ts);
    cr_assert_eq(fs_insert(&ts, &b, 0, 0, PG_ACTION_NONE), 0);
    n = w.nsent;
    decide(c, &b, 0, true);
    cr_assert_eq(w.nsent, n, "not while the twin holds the branch");
    cr_assert(logged(&w, "held by another transaction"), "log: %s", w.log);
    pg_gid_make(&b, 0, gid);
    ts.changes = 1;
    cr_assert_eq(f_branch_prepare(&ts, gid), PG_END_DONE);
    decide(c, &b, 0, true);
    acked(&w, n, TREATY_STATUS_COMMITTED);
    cr_assert_eq(db.changes, 1);

    /* committed: a duplicate COMMIT is acknowledged, an ABORT is an alert */
    n = w.nsent;
    decide(c, &b, 0, true);
    acked(&w, n, TREATY_STATUS_COMMITTED);
    n = w.nsent;
    decide(c, &b, 0, false);
    cr_assert_eq(w.nsent, n, "an ABORT of a committed branch is never acknowledged");
    cr_assert_eq(w.nalerts, 2);
    /* an ABORT of a branch never prepared here: presumed abort, ACKed */
    treaty_txid_t u = txid_at(now_txid_ms(&db), 9);
    n = w.nsent;
    decide(c, &u, 9, false);
    acked(&w, n, TREATY_STATUS_ABORTED);
    pcore_destroy(&c);
    pcore_destroy(&twin);
}

Test(pg_core, the_purge_horizon_decides_what_a_missing_row_cannot)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t old = txid_at(now_txid_ms(&db) - 5000, 1), done = txid_at(now_txid_ms(&db) - 5000, 2);

    /* done commits; then a purge of everything older than 1 s */
    prepare(c, &done, 0, "debit");
    decide(c, &done, 0, true);
    db.now_ms += 2000;
    cr_assert_eq(pg_core_purge(c, 1), 1, "the committed branch's row");
    cr_assert_eq(db.horizon, db.now_ms - 1000);

    /* a PREPARE older than the horizon: maybe a late duplicate of a branch
     * whose row was purged. NO, and work does not run. */
    int n = w.nsent;
    prepare(c, &old, 0, "debit");
    const char *why = voted(&w, n, &old, 0, TREATY_VOTE_NO);
    cr_assert(strstr(why, "older than the barrier's purge horizon") != NULL, "reason: %s", why);
    cr_assert_eq(work_calls, 1);
    cr_assert_null(find_row(&db, &old, 0, 0));

    /* a COMMIT of an old txid with neither gid nor row cannot be judged:
     * acknowledged, with a warning (not an alert) */
    n = w.nsent;
    decide(c, &done, 0, true);
    acked(&w, n, TREATY_STATUS_COMMITTED);
    cr_assert(logged(&w, "purge horizon"), "log: %s", w.log);
    cr_assert_eq(w.nalerts, 0);

    /* a txid made after the purge prepares as usual */
    treaty_txid_t fresh = txid_at(now_txid_ms(&db), 3);
    n = w.nsent;
    prepare(c, &fresh, 0, "debit");
    voted(&w, n, &fresh, 0, TREATY_VOTE_YES);

    /* the purge refuses to end a handler's transaction; only Postgres
     * participants purge */
    fs_begin(&s);
    cr_assert_eq(pg_core_purge(c, 1), TREATY_ESTATE);
    fs_end(&s, false);
    static struct world pw;
    struct hs t = {0};
    struct pcore *plain = plain_core(&pw, &t, 0);
    cr_assert_eq(pg_core_purge(plain, 1), TREATY_EINVAL);
    cr_assert_eq(pg_core_on_step(plain, PCORE_ACTION, "debit", fdebit, NULL), TREATY_EINVAL);
    pcore_destroy(&plain);
    pcore_destroy(&c);
}

Test(pg_core, a_lost_connection_is_retried_once_and_a_down_database_sends_nothing)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1), b = txid_at(now_txid_ms(&db), 2);

    prepare(c, &a, 0, "debit");
    s.lose = 1; /* COMMIT PREPARED meets a restarted Postgres */
    int n = w.nsent;
    decide(c, &a, 0, true);
    acked(&w, n, TREATY_STATUS_COMMITTED);
    cr_assert_eq(db.changes, 1, "committed by the retry");

    s.lose = 1;
    n = w.nsent;
    prepare(c, &b, 0, "debit");
    voted(&w, n, &b, 0, TREATY_VOTE_YES);

    s.down = true;
    n = w.nsent;
    decide(c, &b, 0, true);
    cr_assert_eq(w.nsent, n, "no ACK while the database is down");
    cr_assert(logged(&w, "database unavailable"), "log: %s", w.log);
    s.down = false;
    decide(c, &b, 0, true);
    acked(&w, n, TREATY_STATUS_COMMITTED);
    pcore_destroy(&c);
}

Test(pg_core, the_sweep_inquires_every_prepared_branch)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);
    prepare(c, &a, 4, "in doubt");
    struct fprep *other = &db.prepared[FDB_PREPARED - 1];
    other->used = true;
    snprintf(other->gid, sizeof other->gid, "treaty:not-a-uuid:1");

    int n = w.nsent;
    pcore_on_message(c, welcome(1000), 0);
    cr_assert_eq(w.nsent, n + 1, "one INQUIRE, for the one Treaty gid");
    const struct sent *q = last(&w, WIRE_INQUIRE);
    cr_assert(same_txid(q->hdr.txid, &a));
    cr_assert_eq(q->hdr.branch, 4);
    cr_assert(logged(&w, "is not Treaty's; left alone"), "log: %s", w.log);
    /* and again every sweep period */
    pcore_on_tick(c, PCORE_SWEEP_MS);
    cr_assert_eq(last(&w, WIRE_INQUIRE)->hdr.branch, 4);
    pcore_destroy(&c);
}

/* ------------------------------------------------------------ saga steps */

static void step(struct pcore *c, const treaty_txid_t *id, unsigned kind, unsigned k, const char *name,
                 const char *payload)
{
    pcore_on_message(c, msg(WIRE_STEP, id, k, 0, kind, name, payload), 0);
}

/* The last RESULT: its value, and its reason into *why. */
static unsigned answered(const struct world *w, unsigned kind, const char **why)
{
    const struct sent *s = last(w, WIRE_RESULT);
    if (why != NULL)
        *why = s->frame[0];
    return result_of(s, kind);
}

static int row_result(struct fdb *db, const treaty_txid_t *id, unsigned k, int op)
{
    struct frow *r = find_row(db, id, k, op);
    return r == NULL ? -1 : r->result;
}

Test(pg_saga_core, a_duplicate_action_is_applied_once)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);

    step(c, &a, WIRE_STEP_ACTION, 0, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, NULL), WIRE_RESULT_OK);
    cr_assert_eq(db.changes, 1);
    cr_assert_eq(row_result(&db, &a, 0, 1), PG_ACTION_OK);
    step(c, &a, WIRE_STEP_ACTION, 0, "debit", ""); /* its RESULT was lost */
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, NULL), WIRE_RESULT_OK);
    cr_assert_eq(debit_calls, 1, "the duplicate action ran again");
    cr_assert_eq(db.changes, 1);
    pcore_destroy(&c);
}

Test(pg_saga_core, a_compensation_before_its_action_is_null_and_refuses_the_late_action)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    const char *why;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);

    step(c, &a, WIRE_STEP_COMPENSATION, 3, "refund", "");
    cr_assert_eq(answered(&w, WIRE_STEP_COMPENSATION, NULL), WIRE_RESULT_OK);
    cr_assert_eq(refund_calls, 0, "a null compensation runs no handler");
    cr_assert_eq(row_result(&db, &a, 3, 1), PG_ACTION_BLOCKED);
    cr_assert_neq(row_result(&db, &a, 3, 2), -1);

    step(c, &a, WIRE_STEP_ACTION, 3, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, &why), WIRE_RESULT_FAILED);
    cr_assert_str_eq(why, "compensated before the action arrived (hanging action refused)");
    cr_assert_eq(debit_calls, 0);
    cr_assert_eq(db.changes, 0);
    pcore_destroy(&c);
}

Test(pg_saga_core, a_failed_action_keeps_its_row_and_its_compensation_is_a_noop)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    const char *why;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);

    step(c, &a, WIRE_STEP_ACTION, 1, "debit", "fail");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, &why), WIRE_RESULT_FAILED);
    cr_assert_str_eq(why, "insufficient funds");
    cr_assert_eq(db.changes, 0, "the business change rolled back to the savepoint");
    cr_assert_eq(row_result(&db, &a, 1, 1), PG_ACTION_FAILED, "the attempt is recorded");
    cr_assert_str_eq(find_row(&db, &a, 1, 1)->reason, "insufficient funds");

    step(c, &a, WIRE_STEP_ACTION, 1, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, &why), WIRE_RESULT_FAILED);
    cr_assert_str_eq(why, "insufficient funds", "a duplicate answers the first result");
    step(c, &a, WIRE_STEP_COMPENSATION, 1, "refund", "");
    cr_assert_eq(answered(&w, WIRE_STEP_COMPENSATION, NULL), WIRE_RESULT_OK);
    cr_assert_eq(refund_calls, 0);
    cr_assert_eq(debit_calls, 1);
    pcore_destroy(&c);
}

Test(pg_saga_core, a_compensation_undoes_once_and_a_stray_action_answers_its_first_result)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);

    step(c, &a, WIRE_STEP_ACTION, 0, "debit", "");
    step(c, &a, WIRE_STEP_COMPENSATION, 0, "refund", "");
    cr_assert_eq(answered(&w, WIRE_STEP_COMPENSATION, NULL), WIRE_RESULT_OK);
    cr_assert_eq(db.changes, 0, "debited and refunded");
    cr_assert_eq(row_result(&db, &a, 0, 2), PG_ACTION_OK);
    step(c, &a, WIRE_STEP_COMPENSATION, 0, "refund", "");
    cr_assert_eq(answered(&w, WIRE_STEP_COMPENSATION, NULL), WIRE_RESULT_OK);
    step(c, &a, WIRE_STEP_ACTION, 0, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, NULL), WIRE_RESULT_OK);
    cr_assert_eq(refund_calls, 1, "the duplicate compensation ran again");
    cr_assert_eq(debit_calls, 1);
    cr_assert_eq(db.changes, 0);
    pcore_destroy(&c);
}

Test(pg_saga_core, transient_and_misbehaving_handlers_leave_nothing)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    const char *why;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1), b = txid_at(now_txid_ms(&db), 2);

    step(c, &a, WIRE_STEP_ACTION, 0, "debit", "err");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, NULL), WIRE_RESULT_TRANSIENT);
    cr_assert_eq(row_result(&db, &a, 0, 1), -1, "no row: the next try starts afresh");
    cr_assert_eq(db.changes, 0);
    step(c, &a, WIRE_STEP_ACTION, 0, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, NULL), WIRE_RESULT_OK);
    cr_assert_eq(db.changes, 1);

    /* a handler that ends the step's transaction bypasses the barrier: caught */
    step(c, &b, WIRE_STEP_ACTION, 0, "debit", "commit");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, &why), WIRE_RESULT_TRANSIENT);
    cr_assert(strstr(why, "ended the step's transaction itself") != NULL, "reason: %s", why);
    step(c, &b, WIRE_STEP_ACTION, 1, "debit", "commit-begin");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, &why), WIRE_RESULT_TRANSIENT);
    pcore_destroy(&c);
}

Test(pg_saga_core, a_late_action_after_its_compensation_and_a_purge_is_refused)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    const char *why;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db) - 5000, 1);

    step(c, &a, WIRE_STEP_COMPENSATION, 3, "refund", "");
    cr_assert_eq(answered(&w, WIRE_STEP_COMPENSATION, NULL), WIRE_RESULT_OK);
    db.now_ms += 2000;
    cr_assert_eq(pg_core_purge(c, 1), 2, "the blocked action row and the compensation row");

    /* without its rows the action would run: a hanging action. Older than
     * the horizon, it is refused, and nothing is written. */
    step(c, &a, WIRE_STEP_ACTION, 3, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, &why), WIRE_RESULT_FAILED);
    cr_assert(strstr(why, "older than the barrier's purge horizon") != NULL, "reason: %s", why);
    cr_assert_eq(debit_calls, 0, "the late action ran");
    cr_assert_eq(row_result(&db, &a, 3, 1), -1);
    step(c, &a, WIRE_STEP_ACTION, 3, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, NULL), WIRE_RESULT_FAILED, "a re-send alike");
    pcore_destroy(&c);
}

Test(pg_saga_core, a_compensation_past_the_horizon_without_rows_is_not_a_null_compensation)
{
    static struct world w;
    static struct fdb db;
    struct fsess s;
    const char *why;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    treaty_txid_t a = txid_at(now_txid_ms(&db) - 5000, 1);

    step(c, &a, WIRE_STEP_ACTION, 1, "debit", "");
    db.now_ms += 2000;
    cr_assert_eq(pg_core_purge(c, 1), 1, "the action's row");

    step(c, &a, WIRE_STEP_COMPENSATION, 1, "refund", "");
    cr_assert_eq(answered(&w, WIRE_STEP_COMPENSATION, &why), WIRE_RESULT_TRANSIENT);
    cr_assert(strstr(why, "purge horizon") != NULL, "reason: %s", why);
    cr_assert_eq(w.nalerts, 1, "an operator must look");
    cr_assert_eq(refund_calls, 0);
    cr_assert_eq(db.changes, 1);
    cr_assert_eq(row_result(&db, &a, 1, 1), -1, "no blocking row was left");
    cr_assert_eq(row_result(&db, &a, 1, 2), -1);
    pcore_destroy(&c);
}

Test(pg_saga_core, a_row_held_by_a_twin_answers_transient)
{
    static struct world w, tw;
    static struct fdb db;
    struct fsess s, ts;
    const char *why;
    fdb_init(&db);
    struct pcore *c = pg_participant(&w, &s, &db, "bank-1");
    struct pcore *twin = pg_participant(&tw, &ts, &db, "bank-2");
    treaty_txid_t a = txid_at(now_txid_ms(&db), 1);

    fs_begin(&ts); /* the twin is running the same action right now */
    cr_assert_eq(fs_insert(&ts, &a, 0, 1, PG_ACTION_NONE), 0);
    step(c, &a, WIRE_STEP_ACTION, 0, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, &why), WIRE_RESULT_TRANSIENT);
    cr_assert(strstr(why, "held by another transaction") != NULL, "reason: %s", why);
    cr_assert_eq(debit_calls, 0);
    fs_end(&ts, false);
    step(c, &a, WIRE_STEP_ACTION, 0, "debit", "");
    cr_assert_eq(answered(&w, WIRE_STEP_ACTION, NULL), WIRE_RESULT_OK);
    pcore_destroy(&c);
    pcore_destroy(&twin);
}
