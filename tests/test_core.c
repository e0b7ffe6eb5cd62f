/*
 * test_core.c - the coordinator's core (coordinator/core.h) driven with no
 * socket, no Postgres and no clock: a fake struct core_io records every
 * send, append and lookup as one line of a transcript, the tests hand the
 * core messages, durable watermarks, lookup answers and times, and read the
 * transcript.
 *
 * These tests document the contract for a shell (treatyd's loop.c, the
 * simulator in tests/sim): what the core asks for, and when. In particular
 * no outcome or decision leaves before core_on_durable() reported the record
 * that decides it, and the same seed and events give the same transcript.
 */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "allowlist.h"
#include "config.h"
#include "core.h"
#include "core_admin.h"
#include "journal.h"
#include "log.h"
#include "treaty.h"
#include "wire.h"

/* ------------------------------------------------------------ the fake world */

struct fake {
    const int64_t *clock; /* the rig's time, printed at the head of every line */
    char *log;            /* the transcript: one line per call */
    size_t len, cap;
    size_t mark; /* fake_since() reads from here */
    uint64_t seq;
    bool unhealthy;
    int sends, appends, lookups;
};

static void fake_printf(struct fake *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fake_printf(struct fake *f, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cr_assert(n > 0 && (size_t)n < sizeof line);
    if (f->len + (size_t)n + 1 > f->cap) {
        f->cap = (f->cap + (size_t)n + 1) * 2;
        f->log = realloc(f->log, f->cap);
        cr_assert_not_null(f->log);
    }
    memcpy(f->log + f->len, line, (size_t)n + 1);
    f->len += (size_t)n;
}

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
    out[2 * n] = '\0';
}

static void io_send(void *ctx, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
                    const struct wire_frame *frames, size_t nframes)
{
    struct fake *f = ctx;
    char r[2 * WIRE_ROUTING_ID_MAX + 1], t[33];
    hex(h->txid, 16, t);
    snprintf(r, sizeof r, "%.*s", (int)rid_len, (const char *)rid);
    f->sends++;
    fake_printf(f, "@%lld send %s %s txid=%s branch=%u attempt=%u code=%u", (long long)*f->clock, r,
                wire_type_name(h->type), t, h->branch, h->attempt, h->code);
    for (size_t i = 0; i < nframes; i++) {
        bool text = frames[i].len > 0 && frames[i].len < 200;
        for (size_t k = 0; k < frames[i].len && text; k++)
            text = frames[i].data[k] >= 0x20 && frames[i].data[k] < 0x7f;
        if (text)
            fake_printf(f, " [%.*s]", (int)frames[i].len, (const char *)frames[i].data);
        else
            fake_printf(f, " [%zu bytes]", frames[i].len);
    }
    fake_printf(f, "\n");
}

static uint64_t io_append(void *ctx, const struct journal_rec *r, bool force)
{
    struct fake *f = ctx;
    char t[33];
    hex(r->txid, 16, t);
    f->appends++;
    f->seq++;
    fake_printf(f, "@%lld append seq=%llu %s %s txid=%s failed=%d step=%d detail=[%s] services=", (long long)*f->clock,
                (unsigned long long)f->seq, journal_kind_name(r->kind), force ? "forced" : "lazy", t, r->failed_branch,
                r->step, r->detail ? r->detail : "");
    for (unsigned i = 0; i < r->nservices; i++)
        fake_printf(f, "%s%s", i ? "," : "", r->services[i]);
    fake_printf(f, " data=%zu\n", r->data_len);
    return f->seq;
}

static void io_lookup(void *ctx, const uint8_t txid[16])
{
    struct fake *f = ctx;
    char t[33];
    hex(txid, 16, t);
    f->lookups++;
    fake_printf(f, "@%lld lookup txid=%s\n", (long long)*f->clock, t);
}

static bool io_journal_healthy(void *ctx)
{
    struct fake *f = ctx;
    return !f->unhealthy;
}

static void io_admin_reply(void *ctx, uint64_t token, const char *json, size_t len)
{
    struct fake *f = ctx;
    fake_printf(f, "@%lld admin-reply token=%llu %.*s\n", (long long)*f->clock, (unsigned long long)token, (int)len,
                json);
}

/* The transcript since the last call (and moves the mark). */
static const char *fake_since(struct fake *f)
{
    const char *s = f->log ? f->log + f->mark : "";
    f->mark = f->len;
    return s;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* ------------------------------------------------------------ a core and its clock */

#define T0_WALL 1800000000000LL /* 2027-01-15: the wall time recovery ends */
#define T0_MONO 5000000LL

struct rig {
    struct config cfg;
    struct fake fake;
    struct core *core;
    int64_t ms; /* time since recovery ended */
};

static struct core_time at(const struct rig *r)
{
    struct core_time t = {T0_MONO + r->ms, T0_WALL + r->ms};
    return t;
}

static void rig_start(struct rig *r, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    config_defaults(&r->cfg);
    r->fake.clock = &r->ms;
    struct core_io io = {&r->fake, io_send, io_append, io_lookup, io_journal_healthy, io_admin_reply, NULL};
    r->core = core_new(&r->cfg, &io, seed);
    cr_assert_not_null(r->core);
}

static void advance(struct rig *r, int64_t ms)
{
    r->ms += ms;
    core_on_tick(r->core, at(r));
}

/* Recovery with no records, then serving starts; 11 s later the txids made
 * now are younger than anything an earlier run could have accepted
 * (txid.max_future_s = 10), so the core needs no journal lookup for them. */
static void rig_serve(struct rig *r)
{
    cr_assert_eq(core_recover_done(r->core, at(r)), 0);
    advance(r, 11000);
}

static void rig_free(struct rig *r)
{
    core_destroy(&r->core);
    cr_assert_null(r->core);
    free(r->fake.log);
}

static void durable(struct rig *r, uint64_t seq)
{
    core_on_durable(r->core, seq, at(r));
}

/* A UUIDv7 txid made at wall time ms (Unix), told apart by n. */
static void txid_at(uint8_t id[16], long long ms, unsigned n)
{
    memset(id, 0, 16);
    for (int i = 0; i < 6; i++)
        id[i] = (uint8_t)(ms >> (40 - 8 * i));
    id[6] = 0x70;
    id[8] = 0x80;
    memcpy(id + 12, &n, sizeof n);
}

/* A txid made now (see rig_serve). */
static void fresh_txid(const struct rig *r, uint8_t id[16], unsigned n)
{
    txid_at(id, T0_WALL + r->ms, n);
}

/* Decodes (header, frames) as loop.c's wire_recv would and hands it to the core. */
static void deliver_try(struct rig *r, const char *rid, uint8_t type, const uint8_t *txid, unsigned branch,
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
    uint8_t hb[WIRE_HDR_LEN];
    wire_encode_hdr(&h, hb);
    struct wire_frame hf = {hb, sizeof hb};
    static struct wire_msg m; /* the test's, not the core's */
    int rc = wire_decode(&hf, frames, n, 1 << 20, &m);
    cr_assert_eq(rc, 0, "test message does not decode: %s", treaty_strerror(rc));
    core_on_message(r->core, (const uint8_t *)rid, strlen(rid), NULL, &m, at(r));
}

static void deliver(struct rig *r, const char *rid, uint8_t type, const uint8_t *txid, unsigned branch, unsigned code,
                    const struct wire_frame *frames, size_t n)
{
    deliver_try(r, rid, type, txid, branch, 0, code, frames, n);
}

static void hello(struct rig *r, const char *rid, const char *service)
{
    struct wire_frame f[2] = {wire_str(service), wire_str(rid)};
    deliver(r, rid, WIRE_HELLO, NULL, 0, 0, f, 2);
}

/* SUBMIT with one branch per service (payload "pay<i>") and a prepare timeout. */
static void submit(struct rig *r, const char *client, const uint8_t *txid, uint32_t timeout_ms,
                   const char *const *services, size_t nb)
{
    uint8_t tb[4];
    wire_put_u32(tb, timeout_ms);
    struct wire_frame f[1 + 2 * 8];
    char pay[8][8];
    f[0] = (struct wire_frame){tb, 4};
    for (size_t i = 0; i < nb; i++) {
        snprintf(pay[i], sizeof pay[i], "pay%zu", i);
        f[1 + 2 * i] = wire_str(services[i]);
        f[2 + 2 * i] = wire_str(pay[i]);
    }
    deliver(r, client, WIRE_SUBMIT, txid, 0, 0, f, 1 + 2 * nb);
}

static void vote(struct rig *r, const char *rid, const uint8_t *txid, unsigned branch, bool yes)
{
    struct wire_frame f = wire_str(yes ? "" : "no funds");
    deliver(r, rid, WIRE_VOTE, txid, branch, yes ? TREATY_VOTE_YES : TREATY_VOTE_NO, &f, 1);
}

static void ack(struct rig *r, const char *rid, const uint8_t *txid, unsigned branch, unsigned status)
{
    deliver(r, rid, WIRE_ACK, txid, branch, status, NULL, 0);
}

static void query(struct rig *r, const char *client, const uint8_t *txid)
{
    deliver(r, client, WIRE_QUERY, txid, 0, 0, NULL, 0);
}

/* A SAGA of nsteps steps, step i on services[i] (action "do", compensation "undo"), one group each. */
static void saga(struct rig *r, const char *client, const uint8_t *txid, const char *const *services, size_t nsteps)
{
    uint8_t db[4], pol[8][WIRE_POLICY_LEN];
    wire_put_u32(db, 0);
    struct wire_frame f[1 + WIRE_SAGA_FRAMES_PER_STEP * 8];
    f[0] = (struct wire_frame){db, 4};
    for (size_t i = 0; i < nsteps; i++) {
        struct wire_policy p = {.group = (uint16_t)i};
        wire_encode_policy(&p, pol[i]);
        struct wire_frame *s = &f[1 + i * WIRE_SAGA_FRAMES_PER_STEP];
        s[0] = wire_str(services[i]);
        s[1] = wire_str("do");
        s[2] = wire_str("a-payload");
        s[3] = wire_str("undo");
        s[4] = wire_str("c-payload");
        s[5] = (struct wire_frame){pol[i], WIRE_POLICY_LEN};
    }
    deliver(r, client, WIRE_SAGA, txid, 0, 0, f, 1 + WIRE_SAGA_FRAMES_PER_STEP * nsteps);
}

/* RESULT echoes the try (attempt) it answers. */
static void result_try(struct rig *r, const char *rid, const uint8_t *txid, unsigned step, unsigned attempt,
                       unsigned kind, unsigned res)
{
    struct wire_frame f = wire_str("");
    deliver_try(r, rid, WIRE_RESULT, txid, step, attempt, WIRE_RESULT(kind, res), &f, 1);
}

static void result(struct rig *r, const char *rid, const uint8_t *txid, unsigned step, unsigned kind, unsigned res)
{
    result_try(r, rid, txid, step, 0, kind, res);
}

static const char *const AB[] = {"svc-a", "svc-b"};

/* Two participants (p1: svc-a, p2: svc-b) say HELLO; their WELCOMEs are read. */
static void two_participants(struct rig *r)
{
    hello(r, "p1", "svc-a");
    hello(r, "p2", "svc-b");
    const char *s = fake_since(&r->fake);
    cr_assert_eq(count(s, "WELCOME"), 2, "%s", s);
}

static void quiet_logs(void)
{
    log_set_level(LOG_LEVEL_ERROR);
}

/* ------------------------------------------------------------ 2PC */

Test(core_2pc, commit_is_told_only_after_the_commit_record_is_durable, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 1);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);

    submit(&r, "c1", tx, 5000, AB, 2);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 PREPARE") && strstr(s, "branch=0") && strstr(s, "[pay0]"), "%s", s);
    cr_assert(strstr(s, "send p2 PREPARE") && strstr(s, "[pay1]"), "%s", s);
    cr_assert_eq(count(s, "append"), 0, "nothing is journaled before the votes: %s", s);

    vote(&r, "p1", tx, 0, true);
    cr_assert_str_empty(fake_since(&r.fake), "one vote decides nothing");
    vote(&r, "p2", tx, 1, true);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=1 commit forced") && strstr(s, "services=svc-a,svc-b"), "%s", s);
    cr_assert_eq(count(s, "send"), 0, "the commit point is the record: nothing is sent before it is durable: %s", s);

    /* Time passes, a resubmission and a query come: still nothing that
     * states the outcome. */
    advance(&r, 4000);
    submit(&r, "c1", tx, 5000, AB, 2);
    query(&r, "c2", tx);
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "OUTCOME"), 1, "%s", s);
    cr_assert(strstr(s, "send c2 OUTCOME") && strstr(s, "code=3"), "the query hears PENDING only: %s", s);
    cr_assert_eq(count(s, "COMMIT"), 0, "%s", s);

    durable(&r, 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 OUTCOME") && strstr(s, "code=1"), "the client hears COMMITTED now: %s", s);
    cr_assert(strstr(s, "send p1 COMMIT") && strstr(s, "send p2 COMMIT"), "%s", s);
    cr_assert_eq(count(s, "append"), 0, "%s", s);

    ack(&r, "p1", tx, 0, TREATY_STATUS_COMMITTED);
    cr_assert_eq(core_unfinished(r.core), 1);
    ack(&r, "p2", tx, 1, TREATY_STATUS_COMMITTED);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=2 end lazy"), "END is lazy: %s", s);
    cr_assert_eq(core_unfinished(r.core), 0);

    /* Finished: answered from the outcome cache, without the journal. */
    query(&r, "c3", tx);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c3 OUTCOME") && strstr(s, "code=1"), "%s", s);
    cr_assert_eq(r.fake.lookups, 0);

    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.submitted, 1);
    cr_assert_eq(st.committed, 1);
    cr_assert_eq(st.outcomes_cached, 1);
    cr_assert_eq(st.instances, 2);
    rig_free(&r);
}

Test(core_2pc, a_missed_deadline_aborts_and_tells_once_the_abort_is_durable, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 2);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 2);
    submit(&r, "c1", tx, 1000, AB, 2);
    vote(&r, "p1", tx, 0, true);
    fake_since(&r.fake);
    cr_assert_eq(core_next_tick(r.core), at(&r).mono_ms + 1000, "the prepare deadline is the next tick");

    advance(&r, 999);
    cr_assert_str_empty(fake_since(&r.fake));
    advance(&r, 1);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=1 abort forced") && strstr(s, "failed=1"), "%s", s);
    cr_assert_eq(count(s, "send"), 0, "no ABORT before the record is durable: %s", s);

    durable(&r, 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 OUTCOME") && strstr(s, "code=2"), "%s", s);
    cr_assert(strstr(s, "send p1 ABORT") && strstr(s, "send p2 ABORT"), "both were sent PREPARE: %s", s);
    rig_free(&r);
}

Test(core_2pc, an_inquiry_about_an_unknown_fresh_txid_records_an_abort_before_the_answer, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 3);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 3);

    deliver(&r, "p1", WIRE_INQUIRE, tx, 0, 0, NULL, 0);
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "lookup"), 0, "made after the start: the journal cannot know it: %s", s);
    cr_assert(strstr(s, "append seq=1 abort forced") && strstr(s, "services= "), "presumed abort, recorded: %s", s);
    cr_assert_eq(count(s, "send"), 0, "no answer before the record is durable: %s", s);

    /* A SUBMIT of the txid meanwhile waits for the same record. */
    submit(&r, "c1", tx, 0, AB, 2);
    cr_assert_str_empty(fake_since(&r.fake));

    durable(&r, 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 ABORT") && strstr(s, "branch=0"), "%s", s);
    cr_assert(strstr(s, "send c1 OUTCOME") && strstr(s, "code=2"), "the txid can never run now: %s", s);
    cr_assert_eq(count(s, "PREPARE"), 0, "%s", s);

    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.presumed_aborts, 1);
    cr_assert_eq(st.inquiries, 1);
    rig_free(&r);
}

Test(core_2pc, a_txid_the_journal_may_know_is_looked_up_before_it_is_answered_or_run, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 4);
    rig_serve(&r);
    two_participants(&r);
    uint8_t old_committed[16], old_unknown[16];
    /* Made a minute before this run started: an earlier run may have finished it. */
    txid_at(old_committed, T0_WALL - 60000, 1);
    txid_at(old_unknown, T0_WALL - 60000, 2);

    submit(&r, "c1", old_committed, 0, AB, 2);
    submit(&r, "c1", old_committed, 0, AB, 2); /* a re-send while it waits: one lookup, one answer */
    submit(&r, "c2", old_unknown, 0, AB, 2);
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "lookup"), 2, "%s", s);
    cr_assert_eq(count(s, "send"), 0, "%s", s);

    struct journal_lookup_result lr;
    memset(&lr, 0, sizeof lr);
    memcpy(lr.txid, old_committed, 16);
    lr.outcome = JOURNAL_OUTCOME_COMMITTED;
    lr.failed_branch = -1;
    core_on_lookup(r.core, &lr, at(&r));
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "send c1 OUTCOME"), 1, "%s", s);
    cr_assert(strstr(s, "code=1") && !strstr(s, "PREPARE"), "committed in an earlier run, not run again: %s", s);

    memcpy(lr.txid, old_unknown, 16);
    lr.outcome = JOURNAL_OUTCOME_NONE;
    core_on_lookup(r.core, &lr, at(&r));
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 PREPARE") && strstr(s, "send p2 PREPARE"), "unknown to the journal: it runs: %s", s);

    /* A lookup that fails refuses the client (EBUSY), never guesses. */
    uint8_t old3[16];
    txid_at(old3, T0_WALL - 60000, 3);
    query(&r, "c3", old3);
    fake_since(&r.fake);
    memcpy(lr.txid, old3, 16);
    lr.error = TREATY_EPG;
    core_on_lookup(r.core, &lr, at(&r));
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c3 ERROR") && strstr(s, "code=9"), "EBUSY: %s", s);
    cr_assert_eq(count(s, "append"), 0, "%s", s);
    rig_free(&r);
}

Test(core_2pc, txids_made_after_the_newest_on_record_run_without_a_lookup, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 14);
    /* The journal's newest txid was made 30 s before this run started. */
    core_recover_newest(r.core, T0_WALL - 30000);
    cr_assert_eq(core_recover_done(r.core, at(&r)), 0);
    advance(&r, 1);
    two_participants(&r);
    fake_since(&r.fake);

    uint8_t fresh[16], before_start[16], at_newest[16];
    fresh_txid(&r, fresh, 1);                  /* right after the start */
    txid_at(before_start, T0_WALL - 20000, 2); /* made after the newest, before the start */
    txid_at(at_newest, T0_WALL - 30000, 3);    /* as old as the newest: may be it */
    submit(&r, "c1", fresh, 0, AB, 2);
    submit(&r, "c2", before_start, 0, AB, 2);
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "lookup"), 0, "%s", s);
    cr_assert_eq(count(s, "PREPARE"), 4, "both run at once: %s", s);
    submit(&r, "c3", at_newest, 0, AB, 2);
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "lookup"), 1, "%s", s);
    cr_assert_eq(count(s, "PREPARE"), 0, "%s", s);
    rig_free(&r);

    /* Without the newest txid, everything made up to txid.max_future_s
     * after the start is looked up. */
    rig_start(&r, 15);
    cr_assert_eq(core_recover_done(r.core, at(&r)), 0);
    advance(&r, 1);
    two_participants(&r);
    fake_since(&r.fake);
    fresh_txid(&r, fresh, 1);
    submit(&r, "c1", fresh, 0, AB, 2);
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "lookup"), 1, "%s", s);
    rig_free(&r);
}

Test(core_2pc, txids_outside_the_window_are_refused, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 5);
    rig_serve(&r);
    two_participants(&r);
    r.ms = 3600 * 1000; /* an hour after the start */
    uint8_t old[16], ahead[16];
    txid_at(old, T0_WALL + r.ms - 1801 * 1000LL, 1); /* txid.max_age_s = 1800 */
    txid_at(ahead, T0_WALL + r.ms + 11 * 1000LL, 2); /* txid.max_future_s = 10 */
    submit(&r, "c1", old, 0, AB, 2);
    submit(&r, "c2", ahead, 0, AB, 2);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 ERROR") && strstr(s, "max_age_s"), "%s", s);
    cr_assert(strstr(s, "send c2 ERROR") && strstr(s, "future"), "%s", s);
    cr_assert_eq(count(s, "PREPARE") + count(s, "append"), 0, "%s", s);
    rig_free(&r);
}

Test(core_2pc, recovery_resends_a_durable_commit_until_every_branch_acks, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 6);
    uint8_t tx[16];
    txid_at(tx, T0_WALL - 5000, 9);
    const char *services[] = {"svc-a", "svc-b"};
    struct journal_rec rec = {
        .kind = JOURNAL_COMMIT, .nservices = 2, .services = services, .failed_branch = -1, .step = -1};
    memcpy(rec.txid, tx, 16);
    cr_assert_eq(core_recover_record(r.core, &rec, 0), 0);
    cr_assert_eq(core_recover_done(r.core, at(&r)), 1);
    cr_assert_str_empty(fake_since(&r.fake), "recovery itself sends nothing");
    cr_assert_eq(core_unfinished(r.core), 1);
    two_participants(&r);

    advance(&r, r.cfg.resend_initial_ms);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 COMMIT") && strstr(s, "send p2 COMMIT"), "%s", s);
    /* Answers about it come from memory: no lookup. */
    query(&r, "c1", tx);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 OUTCOME") && strstr(s, "code=1"), "%s", s);
    ack(&r, "p1", tx, 0, TREATY_STATUS_COMMITTED);
    ack(&r, "p2", tx, 1, TREATY_STATUS_COMMITTED);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=1 end lazy"), "%s", s);
    cr_assert_eq(core_unfinished(r.core), 0);
    rig_free(&r);
}

Test(core, a_malformed_message_is_answered_with_an_error, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 7);
    rig_serve(&r);
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.txid[0] = 0xab;
    core_on_malformed(r.core, (const uint8_t *)"x1", 2, &h, TREATY_EVERSION, at(&r));
    core_on_malformed(r.core, (const uint8_t *)"", 0, NULL, TREATY_EPROTO, at(&r));
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "send"), 1, "nobody to answer without a routing id: %s", s);
    cr_assert(strstr(s, "send x1 ERROR txid=ab") && strstr(s, "unsupported protocol version"), "%s", s);
    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.malformed, 2);
    rig_free(&r);
}

Test(core, stopping_refuses_new_work_and_an_unhealthy_journal_too, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 8);
    rig_serve(&r);
    two_participants(&r);
    uint8_t a[16], b[16];
    fresh_txid(&r, a, 1);
    fresh_txid(&r, b, 2);
    r.fake.unhealthy = true;
    submit(&r, "c1", a, 0, AB, 2);
    r.fake.unhealthy = false;
    core_stop(r.core);
    submit(&r, "c2", b, 0, AB, 2);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 ERROR") && strstr(s, "journal unavailable"), "%s", s);
    cr_assert(strstr(s, "send c2 ERROR") && strstr(s, "shutting down"), "%s", s);
    cr_assert_eq(count(s, "PREPARE"), 0, "%s", s);
    rig_free(&r);
}

/* ------------------------------------------------------------ sagas */

Test(core_saga, a_saga_whose_end_is_not_durable_tells_nobody, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 9);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);

    saga(&r, "c1", tx, AB, 2);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=1 saga forced") && strstr(s, "services=svc-a,svc-b"), "%s", s);
    cr_assert_eq(count(s, "send"), 0, "no step before the definition is durable: %s", s);

    durable(&r, 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 STEP") && strstr(s, "[do] [a-payload]"), "%s", s);
    cr_assert_eq(count(s, "STEP"), 1, "group 1 waits for group 0: %s", s);

    result(&r, "p1", tx, 0, WIRE_STEP_ACTION, WIRE_RESULT_OK);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=2 step lazy") && strstr(s, "step=0 detail=[action]"), "%s", s);
    cr_assert(strstr(s, "send p2 STEP"), "%s", s);

    result(&r, "p2", tx, 1, WIRE_STEP_ACTION, WIRE_RESULT_OK);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=3 end forced") && strstr(s, "detail=[completed]"), "%s", s);
    cr_assert_eq(count(s, "step lazy"), 0, "the last step's record is left to END: %s", s);
    cr_assert_eq(count(s, "send"), 0, "completed, but nobody is told before END is durable: %s", s);

    /* Everything done, END not durable: a query, a resubmission, time. */
    query(&r, "c2", tx);
    saga(&r, "c1", tx, AB, 2);
    advance(&r, 60000);
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "OUTCOME"), 1, "%s", s);
    cr_assert(strstr(s, "send c2 OUTCOME") && strstr(s, "code=3"), "the query hears PENDING: %s", s);

    durable(&r, 3);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 OUTCOME") && strstr(s, "code=5"), "COMPLETED once END is durable: %s", s);
    cr_assert_eq(core_unfinished(r.core), 0);
    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.sagas_completed, 1);
    rig_free(&r);
}

Test(core_saga, a_failed_step_turns_around_after_the_turn_record_is_durable, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 10);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 2);
    saga(&r, "c1", tx, AB, 2);
    durable(&r, 1);
    result(&r, "p1", tx, 0, WIRE_STEP_ACTION, WIRE_RESULT_OK);
    result(&r, "p2", tx, 1, WIRE_STEP_ACTION, WIRE_RESULT_FAILED);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=3 turn forced") && strstr(s, "failed=1"), "%s", s);
    cr_assert_eq(count(s, "[undo]"), 0, "no compensation before the turn is durable: %s", s);

    durable(&r, 3);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p2 STEP") && strstr(s, "[undo] [c-payload]"), "the failing step first: %s", s);
    cr_assert_eq(count(s, "STEP"), 1, "%s", s);
    result(&r, "p2", tx, 1, WIRE_STEP_COMPENSATION, WIRE_RESULT_OK);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 STEP") && strstr(s, "[undo]"), "%s", s);
    result(&r, "p1", tx, 0, WIRE_STEP_COMPENSATION, WIRE_RESULT_OK);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "end forced") && strstr(s, "detail=[compensated]"), "%s", s);
    cr_assert_eq(count(s, "OUTCOME"), 0, "%s", s);
    durable(&r, r.fake.seq);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 OUTCOME") && strstr(s, "code=6"), "%s", s);
    rig_free(&r);
}

Test(core_saga, recovery_counts_every_step_started, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 11);
    uint8_t tx[16];
    txid_at(tx, T0_WALL - 5000, 5);
    const char *svc[] = {"svc-a", "svc-b"};

    /* Recovery: a definition and a TURN, nothing recorded done. Both steps
     * count as started and are compensated, group 1 first. */
    struct journal_rec def = {.kind = JOURNAL_SAGA, .failed_branch = -1, .step = -1};
    memcpy(def.txid, tx, 16);
    /* Re-encode the definition exactly as saga.c does: u32 nframes, then u32 length + bytes. */
    uint8_t buf[1024];
    size_t off = 4;
    const char *frames[] = {NULL,    "svc-a", "do",        "a-payload", "undo",      "c-payload", NULL,
                            "svc-b", "do",    "a-payload", "undo",      "c-payload", NULL};
    wire_put_u32(buf, 13);
    for (int i = 0; i < 13; i++) {
        uint8_t pol[WIRE_POLICY_LEN];
        const uint8_t *d;
        size_t n;
        if (i == 0) {
            static const uint8_t zero[4];
            d = zero;
            n = 4;
        } else if (frames[i] == NULL) {
            struct wire_policy p = {.group = (uint16_t)(i / 6 - 1)};
            wire_encode_policy(&p, pol);
            d = pol;
            n = WIRE_POLICY_LEN;
        } else {
            d = (const uint8_t *)frames[i];
            n = strlen(frames[i]);
        }
        wire_put_u32(buf + off, (uint32_t)n);
        memcpy(buf + off + 4, d, n);
        off += 4 + n;
    }
    def.data = buf;
    def.data_len = off;
    def.nservices = 2;
    def.services = svc;
    struct journal_rec turn = {.kind = JOURNAL_TURN, .failed_branch = 1, .step = -1, .detail = "step 1 failed"};
    memcpy(turn.txid, tx, 16);
    cr_assert_eq(core_recover_record(r.core, &def, 0), 0);
    cr_assert_eq(core_recover_record(r.core, &turn, 0), 0);
    cr_assert_eq(core_recover_done(r.core, at(&r)), 1);
    two_participants(&r);
    advance(&r, r.cfg.resend_initial_ms);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p2 STEP") && strstr(s, "code=2"), "compensation of step 1: %s", s);
    result(&r, "p2", tx, 1, WIRE_STEP_COMPENSATION, WIRE_RESULT_OK);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 STEP") && strstr(s, "code=2"), "step 0 counts as started too: %s", s);
    rig_free(&r);
}

/* ------------------------------------------------------------ determinism */

/* One scripted run, a millisecond per tick: a 2PC transaction whose
 * participants never acknowledge, so that the decision is re-sent with
 * jittered backoff, and a saga whose step keeps failing transiently (jittered
 * retries). The participants say HELLO every second. */
/* Answers a STEP in the transcript since the mark with TRANSIENT. */
static void step_fails_transiently(struct rig *r, const uint8_t *stx)
{
    const char *s = strstr(fake_since(&r->fake), "STEP");
    unsigned attempt;
    if (s != NULL) {
        cr_assert_eq(sscanf(strstr(s, "attempt="), "attempt=%u", &attempt), 1);
        result_try(r, "p1", stx, 0, attempt, WIRE_STEP_ACTION, WIRE_RESULT_TRANSIENT);
    }
}

static void script_tick(struct rig *r, const uint8_t *stx)
{
    r->fake.mark = r->fake.len;
    advance(r, 1);
    step_fails_transiently(r, stx);
    if (r->ms % 1000 == 0) {
        hello(r, "p1", "svc-a");
        hello(r, "p2", "svc-b");
    }
}

static void script(struct rig *r)
{
    uint8_t tx[16], stx[16];
    rig_serve(r);
    two_participants(r);
    fresh_txid(r, tx, 1);
    submit(r, "c1", tx, 1000, AB, 2);
    vote(r, "p1", tx, 0, true);
    vote(r, "p2", tx, 1, true);
    durable(r, r->fake.seq);
    fresh_txid(r, stx, 2);
    saga(r, "c2", stx, AB, 1);
    r->fake.mark = r->fake.len;
    durable(r, r->fake.seq);
    step_fails_transiently(r, stx);
    for (int i = 0; i < 8000; i++)
        script_tick(r, stx);
}

Test(core, the_same_seed_gives_the_same_calls, .init = quiet_logs)
{
    struct rig a, b, c;
    rig_start(&a, 42);
    rig_start(&b, 42);
    rig_start(&c, 43);
    script(&a);
    script(&b);
    script(&c);
    cr_assert_gt(count(a.fake.log, "COMMIT"), 8, "the decision was re-sent: %s", a.fake.log);
    cr_assert_geq(count(a.fake.log, "STEP"), 3, "the step was retried: %s", a.fake.log);
    cr_assert_str_eq(a.fake.log, b.fake.log, "one seed, one transcript");
    cr_assert_str_neq(a.fake.log, c.fake.log, "the seed draws the jitter");
    rig_free(&a);
    rig_free(&b);
    rig_free(&c);
}

/* Several cores live in one process (the simulator runs one per simulated
 * coordinator): driven in lockstep, each behaves as if alone. */
Test(core, cores_in_one_process_share_nothing, .init = quiet_logs)
{
    struct rig alone, x, y;
    rig_start(&alone, 7);
    script(&alone);
    rig_start(&x, 7);
    rig_start(&y, 8);
    uint8_t tx[2][16], stx[2][16];
    struct rig *rigs[2] = {&x, &y};
    for (int k = 0; k < 2; k++) {
        struct rig *r = rigs[k];
        rig_serve(r);
        two_participants(r);
        fresh_txid(r, tx[k], 1);
        submit(r, "c1", tx[k], 1000, AB, 2);
    }
    for (int k = 0; k < 2; k++) {
        vote(rigs[k], "p1", tx[k], 0, true);
        vote(rigs[k], "p2", tx[k], 1, true);
    }
    for (int k = 0; k < 2; k++) {
        durable(rigs[k], rigs[k]->fake.seq);
        fresh_txid(rigs[k], stx[k], 2);
        saga(rigs[k], "c2", stx[k], AB, 1);
    }
    for (int k = 0; k < 2; k++) {
        rigs[k]->fake.mark = rigs[k]->fake.len;
        durable(rigs[k], rigs[k]->fake.seq);
        step_fails_transiently(rigs[k], stx[k]);
    }
    for (int i = 0; i < 8000; i++)
        for (int k = 0; k < 2; k++)
            script_tick(rigs[k], stx[k]);
    cr_assert_str_eq(x.fake.log, alone.fake.log);
    rig_free(&alone);
    rig_free(&x);
    rig_free(&y);
}

/* ------------------------------------------------------------ authorization (no authentication) */

static void hello_as(struct rig *r, const char *rid, const char *service, const char *instance)
{
    struct wire_frame f[2] = {wire_str(service), wire_str(instance)};
    deliver(r, rid, WIRE_HELLO, NULL, 0, 0, f, 2);
}

/* Seen: a fake participant said HELLO as bank-a/a1 and took over its
 * routing. Without authentication the name is bound to the connection that
 * registered it until that one is silent for registry.dead_after_ms. */
Test(core_auth, a_live_instance_name_is_not_taken_over_by_another_connection, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 21);
    rig_serve(&r);
    hello_as(&r, "p1", "svc-a", "a1");
    fake_since(&r.fake);
    hello_as(&r, "evil", "svc-a", "a1");
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send evil ERROR") && strstr(s, "code=9"), "refused (EBUSY): %s", s);
    cr_assert_eq(count(s, "WELCOME"), 0, "%s", s);
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    submit(&r, "c1", tx, 5000, AB, 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 PREPARE") && !strstr(s, "send evil"), "the branch goes to a1's owner: %s", s);

    /* Once a1's owner has been silent for dead_after_ms, the name is free. */
    advance(&r, r.cfg.dead_after_ms + 1);
    hello_as(&r, "p1-restarted", "svc-a", "a1");
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1-restarted WELCOME"), "%s", s);
    rig_free(&r);
}

/* Seen: VOTE, ACK, INQUIRE and RESULT were accepted from any sender. */
Test(core_auth, a_vote_counts_only_from_the_instance_prepare_went_to, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 22);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    submit(&r, "c1", tx, 5000, AB, 2);
    fake_since(&r.fake);
    vote(&r, "c1", tx, 0, true);   /* a client */
    vote(&r, "evil", tx, 1, true); /* a stranger */
    vote(&r, "p2", tx, 0, true);   /* the wrong participant */
    vote(&r, "p2", tx, 0, false);  /* ... saying NO */
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "append"), 0, "no decision from votes of others: %s", s);
    vote(&r, "p1", tx, 0, true);
    vote(&r, "p2", tx, 1, true);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=1 commit forced"), "%s", s);
    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.denied_sender, 4);
    rig_free(&r);
}

Test(core_auth, an_ack_counts_only_from_the_instance_the_decision_went_to, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 23);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    submit(&r, "c1", tx, 5000, AB, 2);
    vote(&r, "p1", tx, 0, true);
    vote(&r, "p2", tx, 1, true);
    durable(&r, 1);
    fake_since(&r.fake);
    ack(&r, "evil", tx, 0, TREATY_STATUS_COMMITTED);
    ack(&r, "p2", tx, 0, TREATY_STATUS_COMMITTED);
    ack(&r, "p2", tx, 1, TREATY_STATUS_COMMITTED);
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "append"), 0, "branch 0 is not acknowledged by others: %s", s);
    cr_assert_eq(core_unfinished(r.core), 1);
    ack(&r, "p1", tx, 0, TREATY_STATUS_COMMITTED);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=2 end lazy"), "%s", s);
    rig_free(&r);
}

/* A decision goes to another live instance of the service when the one that
 * prepared is gone; that one may acknowledge it. */
Test(core_auth, a_decision_resent_to_another_instance_may_be_acknowledged_by_it, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 24);
    rig_serve(&r);
    hello_as(&r, "p1", "svc-a", "a1");
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    submit(&r, "c1", tx, 5000, AB, 1);
    vote(&r, "p1", tx, 0, true);
    durable(&r, 1);
    fake_since(&r.fake);
    /* a1 falls silent; a2 of the same service (same database) lives */
    for (int i = 0; i < 12; i++) {
        advance(&r, 1000);
        hello_as(&r, "p1b", "svc-a", "a2");
    }
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1b COMMIT"), "%s", s);
    ack(&r, "p1", tx, 0, TREATY_STATUS_COMMITTED); /* the one it no longer goes to */
    cr_assert_eq(core_unfinished(r.core), 1);
    ack(&r, "p1b", tx, 0, TREATY_STATUS_COMMITTED);
    cr_assert_eq(core_unfinished(r.core), 0);
    rig_free(&r);
}

Test(core_auth, an_inquiry_counts_as_a_vote_only_from_an_instance_of_the_branch_service, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 25);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    submit(&r, "c1", tx, 5000, AB, 2);
    vote(&r, "p2", tx, 1, true);
    fake_since(&r.fake);
    deliver(&r, "p2", WIRE_INQUIRE, tx, 0, 0, NULL, 0);   /* svc-b asks about svc-a's branch */
    deliver(&r, "evil", WIRE_INQUIRE, tx, 0, 0, NULL, 0); /* not registered at all */
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "append"), 0, "%s", s);
    hello_as(&r, "p1b", "svc-a", "a2");
    deliver(&r, "p1b", WIRE_INQUIRE, tx, 0, 0, NULL, 0); /* another instance of svc-a: counts, as ever */
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=1 commit forced"), "%s", s);
    rig_free(&r);
}

Test(core_auth, a_result_counts_only_from_the_instance_the_step_went_to, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 26);
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    saga(&r, "c1", tx, AB, 2);
    durable(&r, 1);
    fake_since(&r.fake);
    result(&r, "evil", tx, 0, WIRE_STEP_ACTION, WIRE_RESULT_OK);
    result(&r, "p2", tx, 0, WIRE_STEP_ACTION, WIRE_RESULT_OK);
    result(&r, "c1", tx, 0, WIRE_STEP_ACTION, WIRE_RESULT_FAILED);
    const char *s = fake_since(&r.fake);
    cr_assert_eq(count(s, "append") + count(s, "STEP"), 0, "step 0 runs on: %s", s);
    result(&r, "p1", tx, 0, WIRE_STEP_ACTION, WIRE_RESULT_OK);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p2 STEP"), "%s", s);
    rig_free(&r);
}

/* One client cannot take all of limits.max_inflight. */
Test(core_auth, a_client_beyond_its_share_of_transactions_in_flight_is_refused, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 27);
    r.cfg.max_inflight_per_client = 2;
    rig_serve(&r);
    two_participants(&r);
    uint8_t tx[4][16];
    for (unsigned i = 0; i < 4; i++)
        fresh_txid(&r, tx[i], i + 1);
    submit(&r, "c1", tx[0], 5000, AB, 2);
    saga(&r, "c1", tx[1], AB, 1);
    fake_since(&r.fake);
    submit(&r, "c1", tx[2], 5000, AB, 2);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 ERROR") && strstr(s, "code=9") && strstr(s, "limits.max_inflight_per_client = 2"),
              "%s", s);
    cr_assert_eq(count(s, "PREPARE"), 0, "%s", s);
    submit(&r, "c1", tx[0], 5000, AB, 2); /* a resubmission is not a new one */
    submit(&r, "c2", tx[2], 5000, AB, 2); /* another client has its own share */
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "ERROR"), 0, "%s", s);
    cr_assert_eq(count(s, "PREPARE"), 2, "%s", s);
    /* c1's transaction ends: its share comes back */
    vote(&r, "p1", tx[0], 0, false);
    durable(&r, r.fake.seq);
    submit(&r, "c1", tx[3], 5000, AB, 2);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1 OUTCOME") && count(s, "PREPARE") == 2 && !strstr(s, "ERROR"), "%s", s);
    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.denied_limit, 1);
    rig_free(&r);
}

/* ------------------------------------------------------------ authorization (authenticated peers) */

/* The same as deliver, from an authenticated peer. */
static void deliver_as(struct rig *r, const char *rid, const struct allow_entry *peer, uint8_t type,
                       const uint8_t *txid, unsigned branch, unsigned code, const struct wire_frame *frames, size_t n)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid)
        memcpy(h.txid, txid, 16);
    h.branch = (uint16_t)branch;
    h.code = (uint16_t)code;
    uint8_t hb[WIRE_HDR_LEN];
    wire_encode_hdr(&h, hb);
    struct wire_frame hf = {hb, sizeof hb};
    static struct wire_msg m;
    cr_assert_eq(wire_decode(&hf, frames, n, 1 << 20, &m), 0);
    core_on_message(r->core, (const uint8_t *)rid, strlen(rid), peer, &m, at(r));
}

static struct allow_entry key_of_peer(uint8_t fill, unsigned roles, const char *services)
{
    struct allow_entry e;
    memset(&e, 0, sizeof e);
    memset(e.key, fill, sizeof e.key);
    e.roles = roles;
    snprintf(e.services, sizeof e.services, "%s", services ? services : "");
    return e;
}

static void hello_key(struct rig *r, const char *rid, const struct allow_entry *k, const char *svc, const char *inst)
{
    struct wire_frame f[2] = {wire_str(svc), wire_str(inst)};
    deliver_as(r, rid, k, WIRE_HELLO, NULL, 0, 0, f, 2);
}

static void submit_as(struct rig *r, const char *rid, const struct allow_entry *k, const uint8_t *tx, size_t nb)
{
    uint8_t tb[4];
    wire_put_u32(tb, 5000);
    struct wire_frame f[5] = {{tb, 4}, wire_str("svc-a"), wire_str("pay0"), wire_str("svc-b"), wire_str("pay1")};
    deliver_as(r, rid, k, WIRE_SUBMIT, tx, 0, 0, f, 1 + 2 * nb);
}

static void vote_as(struct rig *r, const char *rid, const struct allow_entry *k, const uint8_t *tx, unsigned branch)
{
    struct wire_frame f = wire_str("");
    deliver_as(r, rid, k, WIRE_VOTE, tx, branch, TREATY_VOTE_YES, &f, 1);
}

Test(core_auth, a_message_counts_only_from_a_role_allowed_to_send_it, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 31);
    rig_serve(&r);
    struct allow_entry cli = key_of_peer(1, ALLOW_CLIENT, NULL), pa = key_of_peer(2, ALLOW_PARTICIPANT, "svc-a"),
                       pb = key_of_peer(3, ALLOW_PARTICIPANT, "svc-b"), adm = key_of_peer(4, ALLOW_ADMIN, NULL),
                       gone = key_of_peer(5, 0, NULL);
    hello_key(&r, "cli", &cli, "svc-a", "x");   /* a client key */
    hello_key(&r, "adm", &adm, "svc-a", "x");   /* an admin key */
    hello_key(&r, "gone", &gone, "svc-a", "x"); /* a key revoked since it connected */
    const char *s = fake_since(&r.fake);
    cr_assert_str_empty(s, "dropped, no reply: %s", s);
    hello_key(&r, "p1", &pa, "svc-a", "a1");
    hello_key(&r, "p2", &pb, "svc-b", "b1");
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "WELCOME"), 2, "%s", s);

    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    submit_as(&r, "p1", &pa, tx, 2); /* a participant key submits */
    submit_as(&r, "gone", &gone, tx, 2);
    s = fake_since(&r.fake);
    cr_assert_str_empty(s, "%s", s);
    submit_as(&r, "cli", &cli, tx, 2);
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "PREPARE"), 2, "%s", s);

    vote_as(&r, "cli", &cli, tx, 0); /* the client votes for a branch */
    vote_as(&r, "cli", &cli, tx, 1);
    vote_as(&r, "p2", &pb, tx, 0);   /* svc-b votes for svc-a's branch */
    vote_as(&r, "p1", &gone, tx, 0); /* a1's routing id, another (revoked) key */
    deliver_as(&r, "cli", &cli, WIRE_INQUIRE, tx, 0, 0, NULL, 0);
    s = fake_since(&r.fake);
    cr_assert_str_empty(s, "no vote counted, nothing answered: %s", s);
    vote_as(&r, "p1", &pa, tx, 0);
    vote_as(&r, "p2", &pb, tx, 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "append seq=1 commit forced"), "%s", s);

    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.denied_role, 9, "%llu", (unsigned long long)st.denied_role);
    cr_assert_eq(st.denied_sender, 1, "%llu", (unsigned long long)st.denied_sender);
    rig_free(&r);
}

Test(core_auth, a_participant_key_registers_only_its_services, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 32);
    rig_serve(&r);
    struct allow_entry pa = key_of_peer(2, ALLOW_PARTICIPANT, "svc-a,svc-c");
    hello_key(&r, "p1", &pa, "svc-b", "b1");
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 ERROR") && strstr(s, "code=1") && strstr(s, "may not register service svc-b"), "%s",
              s);
    cr_assert_eq(count(s, "WELCOME"), 0, "%s", s);
    hello_key(&r, "p1", &pa, "svc-c", "c1");
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 WELCOME"), "%s", s);
    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.denied_service, 1);
    cr_assert_eq(st.instances, 1);
    rig_free(&r);
}

/* With CURVE the name belongs to the key: a restarted participant (a new
 * connection, the same key) has it back at once; another key never while
 * it lives, and the routing id does not matter. */
Test(core_auth, an_instance_name_is_bound_to_the_key_that_registered_it, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 33);
    rig_serve(&r);
    struct allow_entry k1 = key_of_peer(2, ALLOW_PARTICIPANT, "svc-a"), k2 = key_of_peer(3, ALLOW_PARTICIPANT, "svc-a");
    hello_key(&r, "p1", &k1, "svc-a", "a1");
    hello_key(&r, "p1-new", &k1, "svc-a", "a1");
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1-new WELCOME"), "the same key from a new connection, at once: %s", s);
    hello_key(&r, "p2", &k2, "svc-a", "a1");
    hello_key(&r, "p1-new", &k2, "svc-a", "a1"); /* even from the owner's routing id */
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "ERROR"), 2, "%s", s);
    cr_assert(strstr(s, "code=9") && strstr(s, "registered by another peer"), "%s", s);

    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    struct allow_entry cli = key_of_peer(1, ALLOW_CLIENT, NULL);
    submit_as(&r, "c1", &cli, tx, 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1-new PREPARE"), "%s", s);
    /* A vote from a1's key counts from any of its connections: the
     * participant restarted between PREPARE and VOTE. */
    vote_as(&r, "p1-newer", &k1, tx, 0);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "commit forced"), "%s", s);
    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.denied_instance, 2);
    rig_free(&r);
}

/* The share of limits.max_inflight_per_client belongs to the key, whatever
 * connection the client uses. */
Test(core_auth, a_client_key_has_one_share_on_every_connection, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 34);
    r.cfg.max_inflight_per_client = 1;
    rig_serve(&r);
    struct allow_entry pa = key_of_peer(2, ALLOW_PARTICIPANT, "svc-a"), c1 = key_of_peer(7, ALLOW_CLIENT, NULL),
                       c2 = key_of_peer(8, ALLOW_CLIENT, NULL);
    hello_key(&r, "p1", &pa, "svc-a", "a1");
    uint8_t tx[3][16];
    for (unsigned i = 0; i < 3; i++)
        fresh_txid(&r, tx[i], i + 1);
    submit_as(&r, "c1-conn1", &c1, tx[0], 1);
    fake_since(&r.fake);
    submit_as(&r, "c1-conn2", &c1, tx[1], 1);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send c1-conn2 ERROR") && strstr(s, "max_inflight_per_client = 1"), "%s", s);
    submit_as(&r, "c1-conn1", &c2, tx[1], 1); /* another key on that routing id */
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "PREPARE") && !strstr(s, "ERROR"), "%s", s);
    vote_as(&r, "p1", &pa, tx[0], 0);
    durable(&r, r.fake.seq);
    fake_since(&r.fake);
    submit_as(&r, "c1-conn2", &c1, tx[2], 1);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "PREPARE") && !strstr(s, "ERROR"), "the first was answered: %s", s);
    rig_free(&r);
}

/* A reload of the allow-list drops the instances of revoked keys at once
 * (their messages are refused anyway: roles come with every message). */
Test(core_auth, a_reloaded_allow_list_drops_instances_of_revoked_keys, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 35);
    rig_serve(&r);
    char z1[41], z2[41], text[256];
    struct allow_entry k1 = key_of_peer(2, ALLOW_PARTICIPANT, "svc-a"), k2 = key_of_peer(3, ALLOW_PARTICIPANT, "svc-a");
    hello_key(&r, "p1", &k1, "svc-a", "a1");
    hello_key(&r, "p2", &k2, "svc-a", "a2");
    cr_assert_not_null(zmq_z85_encode(z1, k1.key, 32));
    cr_assert_not_null(zmq_z85_encode(z2, k2.key, 32));
    snprintf(text, sizeof text, "%s participant svc-a\n%s participant svc-b\n", z1, z2);
    struct allowlist *a = NULL;
    char err[128];
    cr_assert_eq(allowlist_parse(text, strlen(text), &a, err, sizeof err), 0, "%s", err);
    core_on_allowlist(r.core, a, at(&r));
    struct core_stats st;
    core_get_stats(r.core, &st);
    cr_assert_eq(st.instances, 1, "k2 may no longer register svc-a");
    uint8_t tx[16];
    fresh_txid(&r, tx, 1);
    struct allow_entry cli = key_of_peer(1, ALLOW_CLIENT, NULL);
    fake_since(&r.fake);
    submit_as(&r, "c1", &cli, tx, 1);
    submit_as(&r, "c1", &cli, tx, 1);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "send p1 PREPARE") && !strstr(s, "send p2"), "%s", s);
    allowlist_free(&a);
    rig_free(&r);
}

/* ------------------------------------------------------------ operators (core_admin.h) */

static void admin(struct rig *r, uint64_t token, const char *json)
{
    core_on_admin(r->core, token, json, strlen(json), at(r));
}

Test(core_admin, resolve_abort_forces_an_audit_record_before_the_abort_and_answers_once_both_are_durable,
     .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 1);
    rig_serve(&r);
    two_participants(&r);
    uint8_t id[16];
    char sid[TREATY_TXID_STRLEN], req[512];
    fresh_txid(&r, id, 1);
    treaty_txid_format((const treaty_txid_t *)id, sid);
    submit(&r, "c1", id, 60000, AB, 2);
    vote(&r, "p1", id, 0, true); /* p2 never votes */
    fake_since(&r.fake);

    snprintf(req, sizeof req,
             "{\"cmd\":\"resolve\",\"txid\":\"%s\",\"action\":\"abort\",\"who\":\"alice\",\"why\":\"hung\"}", sid);
    admin(&r, 7, req);
    const char *s = fake_since(&r.fake);
    const char *audit = strstr(s, "append seq=1 audit forced"), *abort = strstr(s, "append seq=2 abort forced");
    cr_assert(audit && abort && audit < abort, "want the forced audit record, then the forced ABORT:\n%s", s);
    cr_assert(strstr(audit, "detail=[abort by alice: hung]") != NULL, "audit detail:\n%s", s);
    cr_assert_eq(count(s, "admin-reply"), 0, "answered before the records are durable:\n%s", s);
    cr_assert_eq(count(s, "send"), 0, "sent something before the ABORT is durable:\n%s", s);

    durable(&r, 1); /* only the audit record */
    s = fake_since(&r.fake);
    cr_assert_eq(count(s, "admin-reply"), 0, "answered with only the audit record durable:\n%s", s);
    durable(&r, 2);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "admin-reply token=7 {\"ok\":true") != NULL, "no answer once both are durable:\n%s", s);
    cr_assert(count(s, "ABORT") >= 1 && count(s, "OUTCOME") >= 1, "the abort was not carried out:\n%s", s);

    /* Decided now: refused, and nothing appended. */
    admin(&r, 8, req);
    s = fake_since(&r.fake);
    cr_assert(strstr(s, "\"error\":\"refused\"") != NULL && count(s, "append") == 0, "%s", s);
    rig_free(&r);
}

Test(core_admin, resolve_abort_is_refused_once_the_commit_record_is_appended, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 1);
    rig_serve(&r);
    two_participants(&r);
    uint8_t id[16];
    char sid[TREATY_TXID_STRLEN], req[512];
    fresh_txid(&r, id, 1);
    treaty_txid_format((const treaty_txid_t *)id, sid);
    submit(&r, "c1", id, 60000, AB, 2);
    vote(&r, "p1", id, 0, true);
    vote(&r, "p2", id, 1, true); /* COMMIT appended, not durable yet */
    fake_since(&r.fake);
    snprintf(req, sizeof req, "{\"cmd\":\"resolve\",\"txid\":\"%s\",\"action\":\"abort\",\"who\":\"a\",\"why\":\"b\"}",
             sid);
    admin(&r, 1, req);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "\"error\":\"refused\"") != NULL && strstr(s, "COMMIT") != NULL, "%s", s);
    cr_assert_eq(count(s, "append"), 0, "a refused resolve appended a record:\n%s", s);
    rig_free(&r);
}

Test(core_admin, requests_over_their_caps_are_answered_invalid, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 1);
    rig_serve(&r);
    static const char *const bad[] = {
        "not json",
        "[1]",
        "{\"cmd\":\"nope\"}",
        "{\"cmd\":\"list\",\"limit\":1001}",
        "{\"cmd\":\"list\",\"limit\":0}",
        "{\"cmd\":\"list\",\"older_than_ms\":-1}",
        "{\"cmd\":\"list\",\"older_than_ms\":99999999999999}",
        "{\"cmd\":\"list\",\"state\":\"weird\"}",
        "{\"cmd\":\"show\",\"txid\":\"xyz\"}",
        "{\"cmd\":\"resolve\",\"txid\":\"01a22b04-4d18-75c3-9065-7ae41895c02d\",\"action\":\"abort\",\"who\":\"\","
        "\"why\":\"x\"}",
        "{\"cmd\":\"resolve\",\"txid\":\"01a22b04-4d18-75c3-9065-7ae41895c02d\",\"action\":\"give-up\",\"step\":999,"
        "\"who\":\"a\",\"why\":\"x\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        admin(&r, i, bad[i]);
        const char *s = fake_since(&r.fake);
        cr_assert(strstr(s, "\"error\":\"invalid\"") != NULL, "request %s: %s", bad[i], s);
    }
    char big[ADMIN_REQUEST_MAX + 2];
    memset(big, ' ', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    admin(&r, 99, big);
    cr_assert(strstr(fake_since(&r.fake), "\"error\":\"invalid\"") != NULL);
    rig_free(&r);
}

Test(core_admin, show_answers_json_even_when_a_reason_is_not_utf8, .init = quiet_logs)
{
    struct rig r;
    rig_start(&r, 1);
    rig_serve(&r);
    two_participants(&r);
    uint8_t id[16];
    char sid[TREATY_TXID_STRLEN], req[256];
    fresh_txid(&r, id, 1);
    treaty_txid_format((const treaty_txid_t *)id, sid);
    submit(&r, "c1", id, 60000, AB, 2);
    struct wire_frame f = wire_str("bad \xff\xfe bytes");
    deliver(&r, "p1", WIRE_VOTE, id, 0, TREATY_VOTE_NO, &f, 1);
    durable(&r, 1); /* the ABORT: aborting, waiting for p2's ACK */
    fake_since(&r.fake);
    snprintf(req, sizeof req, "{\"cmd\":\"show\",\"txid\":\"%s\"}", sid);
    admin(&r, 3, req);
    const char *s = fake_since(&r.fake);
    cr_assert(strstr(s, "admin-reply token=3 {") != NULL && strstr(s, "\"ok\":true") != NULL, "%s", s);
    cr_assert(strstr(s, "bad ?? bytes") != NULL, "the reason's bad bytes not replaced:\n%s", s);
    cr_assert(strstr(s, "\"state\":\"aborting\"") != NULL, "%s", s);
    rig_free(&r);
}
