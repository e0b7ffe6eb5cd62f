/*
 * saga.c - see saga.h for the lifecycle, the step states and the crash
 * windows. Part of the core (core_int.h): no I/O, time from c->now, jitter
 * from the core's PRNG.
 */
#include "saga.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core_int.h"
#include "fault.h"
#include "journal.h"
#include "log.h"
#include "registry.h"
#include "treaty.h"
#include "txn.h"
#include "util.h"
#include "wire.h"

enum saga_state {
    SAGA_LOGGING_DEF = 0, /* definition appended, not yet durable: nothing runs */
    SAGA_FORWARD,         /* running the actions of group `group` */
    SAGA_LOGGING_TURN,    /* decided to compensate; turn record not yet durable */
    SAGA_COMPENSATING,    /* running the compensations of group `group`, descending */
    SAGA_LOGGING_END,     /* all work done; END (the outcome) appended, not yet durable: nobody told */
    SAGA_DONE,            /* END durable, clients told; about to be freed */
    SAGA_STATE_COUNT_
};

static const char *const saga_state_names[SAGA_STATE_COUNT_] = {
    "logging-definition", "forward", "logging-turn", "compensating", "logging-end", "done",
};

static const bool saga_legal[SAGA_STATE_COUNT_][SAGA_STATE_COUNT_] = {
    [SAGA_LOGGING_DEF] = {[SAGA_FORWARD] = true},
    [SAGA_FORWARD] = {[SAGA_LOGGING_TURN] = true, [SAGA_LOGGING_END] = true},
    [SAGA_LOGGING_TURN] = {[SAGA_COMPENSATING] = true},
    [SAGA_COMPENSATING] = {[SAGA_LOGGING_END] = true},
    [SAGA_LOGGING_END] = {[SAGA_DONE] = true},
    [SAGA_DONE] = {0},
};

static const char *const step_state_names[STEP_STATE_COUNT_] = {
    "idle", "running", "done", "failed", "compensating", "compensated",
};

/* step_legal[from][to]; see saga.h for the picture */
static const bool step_legal[STEP_STATE_COUNT_][STEP_STATE_COUNT_] = {
    /* forward; recovery: a completion or compensation recorded, or a step counted as started */
    [STEP_IDLE] = {[STEP_RUNNING] = true, [STEP_DONE] = true, [STEP_COMPENSATED] = true, [STEP_COMPENSATING] = true},
    [STEP_RUNNING] = {[STEP_DONE] = true, [STEP_FAILED] = true, [STEP_COMPENSATING] = true},
    [STEP_DONE] = {[STEP_COMPENSATING] = true},
    [STEP_FAILED] = {[STEP_COMPENSATING] = true},
    [STEP_COMPENSATING] = {[STEP_COMPENSATED] = true},
    [STEP_COMPENSATED] = {0},
};

struct saga_step {
    char service[WIRE_NAME_MAX + 1];
    char action[WIRE_NAME_MAX + 1];
    char comp[WIRE_NAME_MAX + 1];
    struct wire_frame payload, comp_payload; /* point into saga->def */
    struct wire_policy pol;
    struct sent_to to;  /* the instance its last STEP went to: the one whose RESULT counts */
    uint8_t state;      /* enum saga_step_state: change it with step_set_state */
    bool started;       /* an action was (maybe) sent: it must be compensated on turn-around */
    bool waiting_retry; /* due_ms is a retry, not a try timeout */
    uint16_t attempts;  /* action tries sent */
    uint32_t comp_attempts;
    int backoff_ms;
    int64_t due_ms; /* retry or try-timeout time, -1 none */
    char *last_error;
    uint64_t given_up_seq; /* an operator gave its stuck compensation up: that STEP record is awaited (0 none) */
};

struct saga {
    struct tx_head h; /* txid, kind TX_SAGA, the saga's one timer (earliest step or deadline time) */
    enum saga_state state;
    uint16_t nsteps;
    int group; /* current group (forward: ascending; compensating: descending) */
    int max_group;
    int failed_step; /* -1 none */
    char *reason;    /* why it turned around */
    bool stuck;
    bool resume_pending;  /* recovered: (re)start the current group at the first timer */
    uint8_t final_status; /* LOGGING_END: TREATY_STATUS_COMPLETED or _COMPENSATED */
    uint64_t record_seq;  /* forced record awaited */
    int64_t deadline_ms;  /* forward deadline on the monotonic clock, -1 none */
    int64_t submitted_ms; /* when the SAGA that started it came (monotonic), for the duration histogram; -1:
                             not submitted to this process (recovered) */
    uint8_t *def;         /* encoded definition (owned); frames point into it */
    size_t def_len;
    struct waiter *waiters;
    struct saga_step steps[];
};

/* ------------------------------------------------------------ small helpers */

static const char *state_name(enum saga_state s)
{
    return (unsigned)s < SAGA_STATE_COUNT_ ? saga_state_names[s] : "?";
}

static void set_state(struct saga *s, enum saga_state to)
{
    if ((unsigned)to >= SAGA_STATE_COUNT_ || !saga_legal[s->state][to]) {
        log_txn(LOG_LEVEL_ERROR, s->h.txid, "saga: illegal state transition %s -> %s", state_name(s->state),
                state_name(to));
        abort();
    }
    s->state = to;
}

const char *saga_step_state_name(enum saga_step_state s)
{
    return (unsigned)s < STEP_STATE_COUNT_ ? step_state_names[s] : "?";
}

bool saga_step_transition_ok(enum saga_step_state from, enum saga_step_state to)
{
    if ((unsigned)from >= STEP_STATE_COUNT_ || (unsigned)to >= STEP_STATE_COUNT_)
        return false;
    return step_legal[from][to];
}

/* Moves step i of s to `to`; an illegal move is a programmer error: logged
 * loudly and the daemon aborts (recovery restores a sane state). */
static void step_set_state(struct saga *s, unsigned i, enum saga_step_state to)
{
    struct saga_step *st = &s->steps[i];
    if (!saga_step_transition_ok((enum saga_step_state)st->state, to)) {
        log_txn(LOG_LEVEL_ERROR, s->h.txid, "saga: step %u: illegal state transition %s -> %s", i,
                saga_step_state_name((enum saga_step_state)st->state), saga_step_state_name(to));
        abort();
    }
    st->state = (uint8_t)to;
}

static void add_waiter(struct saga *s, const uint8_t *rid, size_t rid_len)
{
    waiter_add(&s->waiters, rid, rid_len);
}

/* Tells every waiting client; keep_waiters for STUCK (not final at the coordinator). */
static void tell_waiters(struct core *c, struct saga *s, enum treaty_status st, bool keep_waiters)
{
    struct waiter *w = s->waiters;
    while (w) {
        struct waiter *n = w->next;
        core_reply_outcome(c, w->rid, w->rid_len, s->h.txid, st, s->failed_step, s->reason);
        if (!keep_waiters)
            free(w);
        w = n;
    }
    if (!keep_waiters)
        s->waiters = NULL;
}

bool saga_is_compensating(const struct saga *s)
{
    return s->state == SAGA_LOGGING_TURN || s->state == SAGA_COMPENSATING;
}

bool saga_is_stuck(const struct saga *s)
{
    return s->stuck;
}

void saga_free(struct saga *s)
{
    if (s == NULL)
        return;
    waiter_free_all(&s->waiters);
    for (unsigned i = 0; i < s->nsteps; i++)
        free(s->steps[i].last_error);
    free(s->reason);
    free(s->def);
    free(s);
}

static void set_error(struct saga_step *st, const char *text)
{
    free(st->last_error);
    st->last_error = util_xstrdup(text);
}

/* Keeps the saga's single timer at the earliest step or deadline time. */
static void rearm(struct core *c, struct saga *s)
{
    int64_t due = -1;
    for (unsigned i = 0; i < s->nsteps; i++) {
        int64_t d = s->steps[i].due_ms;
        if (d >= 0 && (due < 0 || d < due))
            due = d;
    }
    if (s->state == SAGA_FORWARD && s->deadline_ms >= 0 && (due < 0 || s->deadline_ms < due))
        due = s->deadline_ms;
    if (due >= 0 && due != s->h.timer_due_ms) {
        core_arm_timer(c, &s->h, due);
    } else if (due < 0) {
        s->h.timer_due_ms = -1;
    }
}

static int next_backoff(const struct saga_step *st)
{
    int cap = (int)st->pol.max_backoff_ms;
    int b = st->backoff_ms <= 0 ? (int)st->pol.first_backoff_ms : st->backoff_ms * 2;
    if (b > cap || b <= 0)
        b = cap;
    return b;
}

/* ------------------------------------------------------------ definition codec */

/* def = u32 nframes, then per frame u32 length + bytes: the SAGA message's frames. */
static uint8_t *encode_def(const struct wire_msg *m, size_t *len)
{
    size_t n = 4;
    for (size_t i = 0; i < m->nframes; i++)
        n += 4 + m->frames[i].len;
    uint8_t *b = util_xmalloc(n);
    size_t off = 0;
    wire_put_u32(b, (uint32_t)m->nframes);
    off = 4;
    for (size_t i = 0; i < m->nframes; i++) {
        wire_put_u32(b + off, (uint32_t)m->frames[i].len);
        off += 4;
        if (m->frames[i].len)
            memcpy(b + off, m->frames[i].data, m->frames[i].len);
        off += m->frames[i].len;
    }
    *len = n;
    return b;
}

static uint32_t cap_u32(uint32_t v, int cap)
{
    return v > (uint32_t)cap ? (uint32_t)cap : v;
}

/* Decodes def (owned by the caller until success, then by the saga) into a
 * new saga, with the retry policies' defaults filled in and every number held
 * to cfg's caps (a definition from the journal may predate them; a new one
 * was refused beyond them by check_caps). NULL when the bytes are not a
 * valid definition. */
static struct saga *saga_from_def(struct core *c, const uint8_t txid[16], uint8_t *def, size_t def_len, char *err,
                                  size_t errlen)
{
    const struct config *cfg = c->cfg;
    struct wire_frame *frames = c->def_frames; /* scratch, WIRE_MAX_FRAMES */
    struct wire_frame f4;
    uint32_t n;
    if (def_len < 4) {
        snprintf(err, errlen, "definition too short");
        return NULL;
    }
    f4.data = def;
    f4.len = 4;
    wire_get_u32(&f4, &n);
    if (n > WIRE_MAX_FRAMES) {
        snprintf(err, errlen, "definition has %u frames", n);
        return NULL;
    }
    size_t off = 4;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t l;
        if (def_len - off < 4) {
            snprintf(err, errlen, "definition truncated");
            return NULL;
        }
        f4.data = def + off;
        wire_get_u32(&f4, &l);
        off += 4;
        if (def_len - off < l) {
            snprintf(err, errlen, "definition truncated");
            return NULL;
        }
        frames[i].data = def + off;
        frames[i].len = l;
        off += l;
    }
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = WIRE_SAGA;
    memcpy(h.txid, txid, 16);
    uint8_t hb[WIRE_HDR_LEN];
    wire_encode_hdr(&h, hb);
    struct wire_frame hf = {hb, sizeof hb};
    const struct wire_msg *m = c->def_msg;
    int rc = wire_decode(&hf, frames, n, (size_t)-1, c->def_msg);
    if (rc < 0) {
        snprintf(err, errlen, "invalid definition: %s", treaty_strerror(rc));
        return NULL;
    }
    size_t nsteps = (m->nframes - 1) / WIRE_SAGA_FRAMES_PER_STEP;
    struct saga *s = util_xcalloc(1, sizeof *s + nsteps * sizeof s->steps[0]);
    memcpy(s->h.txid, txid, 16);
    s->h.kind = TX_SAGA;
    s->nsteps = (uint16_t)nsteps;
    s->failed_step = -1;
    s->deadline_ms = -1;
    s->submitted_ms = -1;
    s->h.timer_due_ms = -1;
    uint32_t deadline = 0;
    wire_get_u32(&m->frames[0], &deadline);
    if (deadline > 0)
        s->deadline_ms = c->now.mono_ms + cap_u32(deadline, cfg->saga_max_deadline_ms);
    int prev_group = -1;
    for (size_t i = 0; i < nsteps; i++) {
        const struct wire_frame *f = &m->frames[1 + i * WIRE_SAGA_FRAMES_PER_STEP];
        struct saga_step *st = &s->steps[i];
        memcpy(st->service, f[0].data, f[0].len);
        memcpy(st->action, f[1].data, f[1].len);
        st->payload = f[2];
        memcpy(st->comp, f[3].data, f[3].len);
        st->comp_payload = f[4];
        wire_decode_policy(&f[5], &st->pol);
        if (st->pol.max_attempts == 0)
            st->pol.max_attempts = 3;
        if (st->pol.first_backoff_ms == 0)
            st->pol.first_backoff_ms = 100;
        if (st->pol.max_backoff_ms == 0)
            st->pol.max_backoff_ms = 5000;
        if (st->pol.max_backoff_ms < st->pol.first_backoff_ms)
            st->pol.max_backoff_ms = st->pol.first_backoff_ms;
        if (st->pol.try_timeout_ms == 0)
            st->pol.try_timeout_ms = 5000;
        if (st->pol.max_attempts > cfg->saga_max_attempts)
            st->pol.max_attempts = (uint16_t)cfg->saga_max_attempts;
        st->pol.first_backoff_ms = cap_u32(st->pol.first_backoff_ms, cfg->saga_max_backoff_ms);
        st->pol.max_backoff_ms = cap_u32(st->pol.max_backoff_ms, cfg->saga_max_backoff_ms);
        st->pol.try_timeout_ms = cap_u32(st->pol.try_timeout_ms, cfg->saga_max_try_timeout_ms);
        if ((int)st->pol.group < prev_group) {
            snprintf(err, errlen, "step %zu: group %u after group %d (groups must not decrease)", i, st->pol.group,
                     prev_group);
            free(s);
            return NULL;
        }
        prev_group = st->pol.group;
        st->due_ms = -1;
    }
    s->max_group = prev_group;
    s->group = s->steps[0].pol.group;
    s->def = def;
    s->def_len = def_len;
    return s;
}

/* ------------------------------------------------------------ journal */

static void step_services(const struct saga *s, const char **out)
{
    for (unsigned i = 0; i < s->nsteps; i++)
        out[i] = s->steps[i].service;
}

static uint64_t append(struct core *c, struct saga *s, enum journal_kind kind, int step, const char *detail, bool force)
{
    const char *services[WIRE_MAX_STEPS];
    struct journal_rec r;
    memset(&r, 0, sizeof r);
    memcpy(r.txid, s->h.txid, 16);
    r.kind = kind;
    r.failed_branch = -1;
    r.step = -1;
    r.detail = detail;
    if (kind == JOURNAL_SAGA) {
        step_services(s, services);
        r.nservices = s->nsteps;
        r.services = services;
        r.data = s->def;
        r.data_len = s->def_len;
    } else if (kind == JOURNAL_STEP) {
        r.step = step;
    } else if (kind == JOURNAL_TURN) {
        r.failed_branch = step;
    }
    return core_append(c, &r, force);
}

/* ------------------------------------------------------------ running steps */

static bool group_bounds(const struct saga *s, int group, unsigned *lo, unsigned *hi)
{
    unsigned i = 0;
    while (i < s->nsteps && (int)s->steps[i].pol.group != group)
        i++;
    if (i == s->nsteps)
        return false;
    *lo = i;
    while (i < s->nsteps && (int)s->steps[i].pol.group == group)
        i++;
    *hi = i;
    return true;
}

static void step_failed_try(struct core *c, struct saga *s, unsigned i, const char *why);

static void send_step(struct core *c, struct saga *s, unsigned i, bool compensation)
{
    struct saga_step *st = &s->steps[i];
    int64_t now = c->now.mono_ms;
    const struct instance *in = registry_pick(c->reg, st->service);
    unsigned attempt = compensation ? st->comp_attempts : st->attempts;
    if (compensation)
        st->comp_attempts++;
    else
        st->attempts++;
    if (in == NULL && now < c->started_ms + c->cfg->dead_after_ms) {
        /* Just started: participants are still saying HELLO. Wait for the
         * registry to fill without spending one of the step's tries. */
        if (compensation)
            st->comp_attempts--;
        else
            st->attempts--;
        st->waiting_retry = true;
        st->due_ms = now + c->cfg->heartbeat_ms;
        return;
    }
    if (in == NULL) {
        char why[128];
        snprintf(why, sizeof why, "no live instance of service %s", st->service);
        st->waiting_retry = false;
        /* counts as a failed try: retried with backoff, or the saga turns around */
        step_failed_try(c, s, i, why);
        return;
    }
    core_sent_to(&st->to, in); /* its RESULT counts from this instance only */
    struct wire_frame f[2];
    if (compensation) {
        f[0] = wire_str(st->comp);
        f[1] = st->comp_payload;
    } else {
        f[0] = wire_str(st->action);
        f[1] = st->payload;
        st->started = true;
    }
    core_send(c, in->rid, in->rid_len, WIRE_STEP, s->h.txid, i, attempt & 0xffff,
              compensation ? WIRE_STEP_COMPENSATION : WIRE_STEP_ACTION, f, 2);
    st->waiting_retry = false;
    st->due_ms = now + st->pol.try_timeout_ms;
}

/* Every step is done, or every started one compensated: the outcome is
 * decided. It is told to nobody before its END record is durable (forced):
 * a client told "completed" must never see the saga compensated, which a
 * crash before a lazy END would allow (recovery would run the saga again,
 * and a step whose service is then down past its retries would turn it
 * around). If we crash before END is durable, nobody was told, and recovery
 * runs the remaining work again through the barrier. */
static void finish(struct core *c, struct saga *s, enum treaty_status st)
{
    set_state(s, SAGA_LOGGING_END);
    s->final_status = (uint8_t)st;
    for (unsigned i = 0; i < s->nsteps; i++)
        s->steps[i].due_ms = -1;
    s->h.timer_due_ms = -1;
    s->record_seq = append(c, s, JOURNAL_END, -1, st == TREATY_STATUS_COMPLETED ? "completed" : "compensated", true);
    core_expect_durable(c, &s->h, s->record_seq);
}

/* The END record is durable: tell, remember, forget. */
static void finished(struct core *c, struct saga *s)
{
    enum treaty_status st = (enum treaty_status)s->final_status;
    set_state(s, SAGA_DONE);
    if (st == TREATY_STATUS_COMPLETED)
        c->st.sagas_completed++;
    else
        c->st.sagas_compensated++;
    log_txn(LOG_LEVEL_INFO, s->h.txid, "saga: %s%s%s", treaty_status_name(st), s->reason ? ": " : "",
            s->reason ? s->reason : "");
    core_observe_duration(c, TX_SAGA, s->submitted_ms);
    tell_waiters(c, s, st, false);
    core_remember_done(c, s->h.txid, st, s->failed_step, s->reason);
    core_forget(c, &s->h);
    saga_free(s);
}

static void start_forward_group(struct core *c, struct saga *s);
static void start_compensation_group(struct core *c, struct saga *s);

static void turn_around(struct core *c, struct saga *s, int failed_step, const char *reason)
{
    set_state(s, SAGA_LOGGING_TURN);
    s->failed_step = failed_step;
    free(s->reason);
    s->reason = util_xstrdup(reason);
    log_txn(LOG_LEVEL_INFO, s->h.txid, "saga: turning around at step %d: %s", failed_step, reason);
    /* Forced, and nothing is compensated before it is durable: a crash before
     * then resumes forward, and an action refused by the barrier turns the
     * saga around again. */
    s->record_seq = append(c, s, JOURNAL_TURN, failed_step, reason, true);
    core_expect_durable(c, &s->h, s->record_seq);
    /* Running actions keep their timers off: their late results are ignored
     * and every started step is compensated. */
    for (unsigned i = 0; i < s->nsteps; i++)
        s->steps[i].due_ms = -1;
}

static void start_forward_group(struct core *c, struct saga *s)
{
    for (;;) {
        unsigned lo, hi;
        if (s->group > s->max_group) {
            finish(c, s, TREATY_STATUS_COMPLETED);
            return;
        }
        if (!group_bounds(s, s->group, &lo, &hi)) {
            s->group++;
            continue;
        }
        bool pending = false;
        for (unsigned i = lo; i < hi; i++) {
            struct saga_step *st = &s->steps[i];
            if (st->state == STEP_DONE)
                continue;
            pending = true;
            if (st->state == STEP_IDLE) {
                step_set_state(s, i, STEP_RUNNING);
                send_step(c, s, i, false);
                if (s->state != SAGA_FORWARD)
                    return; /* that step turned the saga around */
            }
        }
        if (pending)
            break;
        s->group++;
    }
    rearm(c, s);
}

static void start_compensation_group(struct core *c, struct saga *s)
{
    for (;;) {
        unsigned lo, hi;
        if (s->group < 0) {
            finish(c, s, TREATY_STATUS_COMPENSATED);
            return;
        }
        if (!group_bounds(s, s->group, &lo, &hi)) {
            s->group--;
            continue;
        }
        bool pending = false;
        for (unsigned i = lo; i < hi; i++) {
            struct saga_step *st = &s->steps[i];
            if (!st->started || st->state == STEP_COMPENSATED)
                continue;
            pending = true;
            if (st->state != STEP_COMPENSATING) {
                step_set_state(s, i, STEP_COMPENSATING);
                st->backoff_ms = 0;
                send_step(c, s, i, true);
                FAULT_POINT("coord.saga_during_compensation");
            }
        }
        if (pending)
            break;
        s->group--;
    }
    rearm(c, s);
}

static void given_up_durable(struct core *c, struct saga *s, unsigned i);

void saga_on_durable(struct core *c, struct saga *s, uint64_t seq)
{
    for (unsigned i = 0; i < s->nsteps; i++)
        if (s->steps[i].given_up_seq == seq) {
            given_up_durable(c, s, i);
            return;
        }
    if (seq != s->record_seq)
        return;
    if (s->state == SAGA_LOGGING_DEF) {
        set_state(s, SAGA_FORWARD);
        start_forward_group(c, s);
    } else if (s->state == SAGA_LOGGING_TURN) {
        FAULT_POINT("coord.saga_after_turn");
        set_state(s, SAGA_COMPENSATING);
        s->group = s->max_group;
        start_compensation_group(c, s);
    } else if (s->state == SAGA_LOGGING_END) {
        finished(c, s);
    }
}

/* ------------------------------------------------------------ messages */

/* Every number a client sends has a configured cap: a saga asking for more
 * is refused (TREATY_ETOOBIG, naming the step, the field and the cap), not
 * cut down behind its back. 0, or an ERROR was sent. */
static int check_caps(struct core *c, const struct core_in *in, size_t nsteps)
{
    const struct wire_msg *m = in->msg;
    const struct config *cfg = c->cfg;
    uint32_t deadline = 0;
    wire_get_u32(&m->frames[0], &deadline);
    const char *field = NULL;
    long long got = 0, cap = 0;
    size_t step = 0;
    if (deadline > (uint32_t)cfg->saga_max_deadline_ms) {
        core_count_refusal(c, m->hdr.type, CORE_REFUSED_LIMIT);
        core_reply_error(c, in->rid, in->rid_len, m->hdr.txid, TREATY_ETOOBIG,
                         "saga deadline of %u ms exceeds saga.max_deadline_ms = %d", deadline,
                         cfg->saga_max_deadline_ms);
        return TREATY_ETOOBIG;
    }
    for (step = 0; step < nsteps && field == NULL; step++) {
        struct wire_policy pol;
        wire_decode_policy(&m->frames[1 + step * WIRE_SAGA_FRAMES_PER_STEP + 5], &pol);
        if (pol.max_attempts > cfg->saga_max_attempts)
            field = "max_attempts", got = pol.max_attempts, cap = cfg->saga_max_attempts;
        else if (pol.first_backoff_ms > (uint32_t)cfg->saga_max_backoff_ms)
            field = "first_backoff_ms", got = pol.first_backoff_ms, cap = cfg->saga_max_backoff_ms;
        else if (pol.max_backoff_ms > (uint32_t)cfg->saga_max_backoff_ms)
            field = "max_backoff_ms", got = pol.max_backoff_ms, cap = cfg->saga_max_backoff_ms;
        else if (pol.try_timeout_ms > (uint32_t)cfg->saga_max_try_timeout_ms)
            field = "try_timeout_ms", got = pol.try_timeout_ms, cap = cfg->saga_max_try_timeout_ms;
    }
    if (field == NULL)
        return 0;
    core_count_refusal(c, m->hdr.type, CORE_REFUSED_LIMIT);
    core_reply_error(c, in->rid, in->rid_len, m->hdr.txid, TREATY_ETOOBIG,
                     "step %zu: retry %s of %lld exceeds the coordinator's cap of %lld (saga.%s)", step - 1, field, got,
                     cap,
                     strcmp(field, "max_attempts") == 0     ? "max_attempts"
                     : strcmp(field, "try_timeout_ms") == 0 ? "max_try_timeout_ms"
                                                            : "max_backoff_ms");
    return TREATY_ETOOBIG;
}

void saga_submit(struct core *c, const struct core_in *in, struct saga *s)
{
    const struct wire_msg *m = in->msg;
    const uint8_t *txid = m->hdr.txid;
    char err[160];

    if (s != NULL) {
        if (s->stuck)
            core_reply_outcome(c, in->rid, in->rid_len, txid, TREATY_STATUS_STUCK, s->failed_step, s->reason);
        add_waiter(s, in->rid, in->rid_len);
        return;
    }
    if (core_reply_done(c, in))
        return;
    /* A new saga (the dispatcher has asked the journal when it might know
     * it; a txid that is a 2PC transaction here went to twopc.c). */
    uint8_t client[16];
    if (core_check_new_txid(c, in) < 0 || core_admit(c, in, client) < 0)
        return;
    size_t nsteps = (m->nframes - 1) / WIRE_SAGA_FRAMES_PER_STEP;
    if (nsteps > (size_t)c->cfg->max_steps) {
        core_count_refusal(c, m->hdr.type, CORE_REFUSED_LIMIT);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG, "%zu steps exceed the limit of %d", nsteps,
                         c->cfg->max_steps);
        return;
    }
    for (size_t i = 0; i < nsteps; i++) {
        const struct wire_frame *f = &m->frames[1 + i * WIRE_SAGA_FRAMES_PER_STEP];
        size_t big = f[2].len > f[4].len ? f[2].len : f[4].len;
        if (big > (size_t)c->cfg->max_payload_bytes) {
            core_count_refusal(c, m->hdr.type, CORE_REFUSED_LIMIT);
            core_reply_error(c, in->rid, in->rid_len, txid, TREATY_ETOOBIG,
                             "step %zu payload of %zu bytes exceeds the limit of %d", i, big,
                             c->cfg->max_payload_bytes);
            return;
        }
    }
    if (check_caps(c, in, nsteps) < 0)
        return;
    size_t def_len;
    uint8_t *def = encode_def(m, &def_len);
    s = saga_from_def(c, txid, def, def_len, err, sizeof err);
    if (s == NULL) {
        free(def);
        core_count_refusal(c, m->hdr.type, CORE_REFUSED_INVALID);
        core_reply_error(c, in->rid, in->rid_len, txid, TREATY_EPROTO, "%s", err);
        return;
    }
    core_put(c, &s->h);
    core_client_charge(c, &s->h, client); /* until END is durable and the client told (core_forget) */
    add_waiter(s, in->rid, in->rid_len);
    c->st.sagas++;
    s->submitted_ms = c->now.mono_ms;
    log_txn(LOG_LEVEL_DEBUG, txid, "saga: %u steps submitted", s->nsteps);
    /* The definition is forced before the first step runs: a step that ran
     * is always part of a saga that recovery knows. */
    s->record_seq = append(c, s, JOURNAL_SAGA, -1, NULL, true);
    core_expect_durable(c, &s->h, s->record_seq);
}

void saga_query(struct core *c, const struct core_in *in, struct saga *s)
{
    enum treaty_status st = s->stuck ? TREATY_STATUS_STUCK : TREATY_STATUS_PENDING;
    core_reply_outcome(c, in->rid, in->rid_len, s->h.txid, st, s->failed_step, s->reason);
}

static void step_failed_try(struct core *c, struct saga *s, unsigned i, const char *why)
{
    struct saga_step *st = &s->steps[i];
    set_error(st, why);
    int64_t now = c->now.mono_ms;
    if (st->state == STEP_RUNNING) {
        if (st->attempts >= st->pol.max_attempts) {
            char reason[TREATY_REASON_MAX + 2 * WIRE_NAME_MAX + 64];
            snprintf(reason, sizeof reason, "step %u (%s.%s) failed after %u attempts: %s", i, st->service, st->action,
                     st->attempts, why);
            step_set_state(s, i, STEP_FAILED);
            turn_around(c, s, (int)i, reason);
            return;
        }
        c->st.step_retries++;
        st->backoff_ms = next_backoff(st);
        st->waiting_retry = true;
        st->due_ms = now + core_jitter(c, st->backoff_ms);
        log_txn(LOG_LEVEL_INFO, s->h.txid, "saga: step %u attempt %u failed (%s); retry in %d ms", i, st->attempts, why,
                st->backoff_ms);
    } else if (st->state == STEP_COMPENSATING) {
        c->st.step_retries++;
        int wait_ms;
        if (st->comp_attempts >= (uint32_t)c->cfg->stuck_after_attempts) {
            if (!s->stuck) {
                s->stuck = true;
                c->st.sagas_stuck++;
                log_txn(LOG_LEVEL_ERROR, s->h.txid,
                        "saga: compensation of step %u (%s.%s) is stuck after %u attempts: %s; still "
                        "retrying every %d ms, an operator should look",
                        i, st->service, st->comp, st->comp_attempts, why, c->cfg->stuck_retry_ms);
                tell_waiters(c, s, TREATY_STATUS_STUCK, true);
            }
            wait_ms = c->cfg->stuck_retry_ms;
        } else {
            st->backoff_ms = next_backoff(st);
            wait_ms = core_jitter(c, st->backoff_ms);
            log_txn(LOG_LEVEL_INFO, s->h.txid, "saga: compensation of step %u attempt %u failed (%s); retry in %d ms",
                    i, st->comp_attempts, why, wait_ms);
        }
        st->waiting_retry = true;
        st->due_ms = now + wait_ms;
    }
    rearm(c, s);
}

static bool group_done(const struct saga *s, bool forward)
{
    unsigned lo, hi;
    if (!group_bounds(s, s->group, &lo, &hi))
        return true;
    for (unsigned i = lo; i < hi; i++) {
        const struct saga_step *st = &s->steps[i];
        if (forward && st->state != STEP_DONE)
            return false;
        if (!forward && st->started && st->state != STEP_COMPENSATED)
            return false;
    }
    return true;
}

/* True when the step just settled was the saga's last piece of work: every
 * step done (forward), or every started step compensated. The caller then
 * reaches finish() in the same call, so END goes into the same batch as the
 * step's record would, and that record is left out: END says more (the saga
 * is over) and, if the batch is lost, a lost lazy STEP record is what
 * recovery copes with anyway (the step runs again through the barrier). One
 * journal row less per saga. */
static bool last_work(const struct saga *s, bool forward)
{
    for (unsigned i = 0; i < s->nsteps; i++) {
        const struct saga_step *st = &s->steps[i];
        if (forward ? st->state != STEP_DONE : st->started && st->state != STEP_COMPENSATED)
            return false;
    }
    return true;
}

void saga_result(struct core *c, const struct core_in *in, struct saga *s)
{
    const struct wire_msg *m = in->msg;
    if (s == NULL || m->hdr.branch >= s->nsteps) {
        c->st.late_votes++;
        return; /* finished or unknown: a late duplicate */
    }
    unsigned i = m->hdr.branch;
    struct saga_step *st = &s->steps[i];
    unsigned kind = WIRE_RESULT_KIND(m->hdr.code), r = WIRE_RESULT_VALUE(m->hdr.code);
    if (!core_from(&st->to, in)) {
        char id[TREATY_TXID_STRLEN];
        core_deny(c, DENY_SENDER, in, "RESULT for saga %s step %u: its STEP went to another instance (or none)",
                  core_fmt_txid(s->h.txid, id), i);
        return;
    }
    char reason[TREATY_REASON_MAX];
    wire_copy_text(&m->frames[0], reason, sizeof reason);

    if (kind == WIRE_STEP_ACTION) {
        if (s->state != SAGA_FORWARD || st->state != STEP_RUNNING)
            return; /* late: already done, failed, or the saga turned around */
        /* OK and FAILED are the barrier's lasting answer, whichever try they
         * answer; TRANSIENT counts only for the current try. */
        if (r == WIRE_RESULT_OK) {
            step_set_state(s, i, STEP_DONE);
            st->due_ms = -1;
            if (!last_work(s, true))
                append(c, s, JOURNAL_STEP, (int)i, "action", false);
            if (group_done(s, true)) {
                s->group++;
                FAULT_POINT("coord.saga_between_groups");
                start_forward_group(c, s);
            } else {
                rearm(c, s);
            }
        } else if (r == WIRE_RESULT_FAILED) {
            step_set_state(s, i, STEP_FAILED);
            char why[TREATY_REASON_MAX + 2 * WIRE_NAME_MAX + 32];
            snprintf(why, sizeof why, "step %u (%s.%s) failed: %s", i, st->service, st->action,
                     reason[0] ? reason : "no reason given");
            set_error(st, reason);
            turn_around(c, s, (int)i, why);
        } else if (m->hdr.attempt == ((st->attempts - 1) & 0xffff) && !st->waiting_retry) {
            step_failed_try(c, s, i, reason[0] ? reason : "transient error");
        }
        return;
    }
    /* compensation */
    if (s->state != SAGA_COMPENSATING || st->state != STEP_COMPENSATING)
        return;
    if (st->given_up_seq != 0 && r != WIRE_RESULT_OK)
        return; /* an operator gave it up: no more tries (an OK still counts) */
    if (r == WIRE_RESULT_OK) {
        step_set_state(s, i, STEP_COMPENSATED);
        st->due_ms = -1;
        if (!last_work(s, false))
            append(c, s, JOURNAL_STEP, (int)i, "compensation", false);
        if (group_done(s, false)) {
            s->group--;
            start_compensation_group(c, s);
        } else {
            rearm(c, s);
        }
    } else if (m->hdr.attempt == ((st->comp_attempts - 1) & 0xffff) && !st->waiting_retry) {
        step_failed_try(c, s, i, reason[0] ? reason : "compensation failed");
    }
}

void saga_on_timer(struct core *c, struct saga *s)
{
    if (s->resume_pending) {
        /* a recovered saga: (re)start its current group */
        s->resume_pending = false;
        if (s->state == SAGA_FORWARD)
            start_forward_group(c, s);
        else if (s->state == SAGA_COMPENSATING)
            start_compensation_group(c, s);
        return;
    }
    int64_t now = c->now.mono_ms;
    if (s->state == SAGA_FORWARD && s->deadline_ms >= 0 && now >= s->deadline_ms) {
        int step = -1;
        for (unsigned i = 0; i < s->nsteps; i++)
            if (s->steps[i].state == STEP_RUNNING) {
                step = (int)i;
                break;
            }
        turn_around(c, s, step, "saga deadline exceeded");
        return;
    }
    for (unsigned i = 0; i < s->nsteps && (s->state == SAGA_FORWARD || s->state == SAGA_COMPENSATING); i++) {
        struct saga_step *st = &s->steps[i];
        if (st->due_ms < 0 || st->due_ms > now)
            continue;
        st->due_ms = -1;
        bool comp = st->state == STEP_COMPENSATING;
        if (st->waiting_retry) {
            if (st->state == STEP_RUNNING || comp)
                send_step(c, s, i, comp);
        } else {
            step_failed_try(c, s, i, "no answer within the try timeout");
        }
    }
    if (s->state == SAGA_FORWARD || s->state == SAGA_COMPENSATING)
        rearm(c, s);
}

/* ------------------------------------------------------------ recovery */

struct saga *saga_resume(struct core *c, const uint8_t txid[16], uint8_t **def, size_t def_len,
                         const uint8_t *action_done, const uint8_t *comp_done, bool turned, int failed_step,
                         const char *reason)
{
    char err[160];
    struct saga *s = saga_from_def(c, txid, *def, def_len, err, sizeof err);
    if (s == NULL) {
        log_txn(LOG_LEVEL_ERROR, txid,
                "recovery: a saga has an unreadable definition (%s); left in the journal for "
                "an operator",
                err);
        return NULL;
    }
    *def = NULL;         /* owned by s now */
    s->deadline_ms = -1; /* the deadline was for the first run */
    /*
     * Which steps were sent is not journaled (only completions, lazily): any
     * step's action may have been sent before the crash - the steps of the
     * group that was running, and, when a completion record was lost, those
     * of later groups too. So every step counts as started: a turn-around
     * compensates them all, and the barrier turns the compensation of a step
     * that never ran into a no-op (and keeps that action from running later).
     */
    for (unsigned i = 0; i < s->nsteps; i++) {
        s->steps[i].started = true;
        if (turned && comp_done != NULL && comp_done[i])
            step_set_state(s, i, STEP_COMPENSATED);
        else if (action_done != NULL && action_done[i])
            step_set_state(s, i, STEP_DONE);
    }
    if (turned) {
        s->failed_step = failed_step;
        s->reason = util_xstrdup(reason);
        s->state = SAGA_LOGGING_TURN; /* the turn record is durable: as if it had just become so */
        set_state(s, SAGA_COMPENSATING);
        s->group = s->max_group;
    } else {
        set_state(s, SAGA_FORWARD);
        while (s->group <= s->max_group && group_done(s, true))
            s->group++;
    }
    core_put(c, &s->h);
    /* Start at the first timer (recovery arms it), once participants have
     * had a moment to say HELLO. */
    s->resume_pending = true;
    c->st.recovered++;
    return s;
}

/* ------------------------------------------------------------ operators (core_admin.h) */

void saga_view(const struct saga *s, struct saga_view *v)
{
    static const enum saga_phase phases[SAGA_STATE_COUNT_] = {
        [SAGA_LOGGING_DEF] = SAGA_PHASE_STARTING,  [SAGA_FORWARD] = SAGA_PHASE_FORWARD,
        [SAGA_LOGGING_TURN] = SAGA_PHASE_TURNING,  [SAGA_COMPENSATING] = SAGA_PHASE_COMPENSATING,
        [SAGA_LOGGING_END] = SAGA_PHASE_FINISHING, [SAGA_DONE] = SAGA_PHASE_FINISHING,
    };
    v->phase = phases[s->state];
    v->stuck = s->stuck;
    v->failed_step = s->failed_step;
    v->reason = s->reason;
    v->nsteps = s->nsteps;
}

void saga_step_view(const struct core *c, const struct saga *s, unsigned i, struct saga_step_view *v)
{
    const struct saga_step *st = &s->steps[i];
    v->service = st->service;
    v->action = st->action;
    v->compensation = st->comp;
    v->state = (enum saga_step_state)st->state;
    v->group = st->pol.group;
    v->started = st->started;
    v->stuck = st->state == STEP_COMPENSATING && st->comp_attempts >= (uint32_t)c->cfg->stuck_after_attempts;
    v->given_up = st->given_up_seq != 0;
    v->attempts = st->attempts;
    v->comp_attempts = st->comp_attempts;
    v->last_error = st->last_error;
    v->rid = st->to.rid;
    v->rid_len = st->to.rid_len;
}

uint64_t saga_admin_turn(struct core *c, struct saga *s, const char *reason)
{
    if (s->state != SAGA_FORWARD)
        return 0;
    /* As a failed step or the deadline would: the TURN record is forced,
     * and nothing is compensated before it is durable. */
    turn_around(c, s, -1, reason);
    return s->record_seq;
}

uint64_t saga_admin_give_up(struct core *c, struct saga *s, unsigned i)
{
    struct saga_step *st = &s->steps[i];
    if (s->state != SAGA_COMPENSATING || i >= s->nsteps || st->state != STEP_COMPENSATING || st->given_up_seq != 0)
        return 0;
    /* No more tries from now on; the step counts as compensated once its
     * STEP record is durable (given_up_durable), and only then does the
     * compensation of the earlier groups go on: a crash before that resumes
     * with the step still to compensate (the operator was not answered).
     * The record is the one a compensation that succeeded leaves, so
     * recovery counts the step compensated like any other. */
    st->due_ms = -1;
    st->waiting_retry = false;
    st->given_up_seq = append(c, s, JOURNAL_STEP, (int)i, "compensation", true);
    core_expect_durable(c, &s->h, st->given_up_seq);
    rearm(c, s);
    return st->given_up_seq;
}

/* The record of a compensation given up is durable: the step counts as
 * compensated, the saga's compensation goes on. */
static void given_up_durable(struct core *c, struct saga *s, unsigned i)
{
    char id[TREATY_TXID_STRLEN];
    struct saga_step *st = &s->steps[i];
    st->given_up_seq = 0;
    if (s->state != SAGA_COMPENSATING || st->state != STEP_COMPENSATING)
        return; /* its compensation succeeded meanwhile */
    step_set_state(s, i, STEP_COMPENSATED);
    st->due_ms = -1;
    log_warn("saga %s: compensation of step %u (%s.%s) given up by an operator, counted as done by hand",
             core_fmt_txid(s->h.txid, id), i, st->service, st->comp);
    s->stuck = false;
    for (unsigned k = 0; k < s->nsteps; k++)
        if (s->steps[k].state == STEP_COMPENSATING &&
            s->steps[k].comp_attempts >= (uint32_t)c->cfg->stuck_after_attempts)
            s->stuck = true;
    if (group_done(s, false)) {
        s->group--;
        start_compensation_group(c, s);
    } else {
        rearm(c, s);
    }
}
