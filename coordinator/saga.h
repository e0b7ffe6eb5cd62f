/*
 * saga.h - sagas in the coordinator: forward steps, the turn-around, and
 * compensations in reverse, in the same core as 2PC (core_int.h).
 *
 * Lifecycle of a saga:
 *
 *   (new) --SAGA--> LOGGING_DEF --definition durable--> FORWARD --last group done--> LOGGING_END
 *                                                          |                            |
 *              business failure / retries exhausted / deadline                 END durable: clients told
 *                                                          v                            v
 *                                  LOGGING_TURN --turn durable--> COMPENSATING --all done--> LOGGING_END --> DONE
 *
 *   (recovery) --> FORWARD (definition, no turn) or COMPENSATING (turn record)
 *
 * A step's own states (enum saga_step_state below, with its table of legal
 * transitions):
 *
 *   IDLE --action sent--> RUNNING --OK--> DONE
 *                            |
 *                            +--FAILED / retries exhausted--> FAILED
 *   RUNNING, DONE, FAILED (started) --turn-around--> COMPENSATING --OK--> COMPENSATED
 *   (recovery) IDLE --> DONE (its completion recorded), COMPENSATED (its
 *              compensation recorded), or COMPENSATING (counted as started)
 *
 * Steps of one group run in parallel; groups run in ascending order and
 * compensate in descending order. A step's action is retried with
 * exponential, jittered backoff up to its max_attempts; a compensation is
 * retried until it succeeds, and after saga.stuck_after_attempts failures it
 * is marked stuck (logged, reported) and retried every saga.stuck_retry_ms.
 * Retry policies and the deadline are held to the saga.max_* caps: a SAGA
 * asking for more is refused.
 *
 * Answers: a client hears "completed" or "compensated" only after the END
 * record saying so is durable (forced), so no later run can contradict it.
 *
 * Crash windows:
 *   - before the definition is durable: nothing ran (no STEP is sent before
 *     it); the client's resubmission starts it afresh.
 *   - forward, step completions not yet durable (they are lazy): recovery
 *     runs those steps again; the participant's barrier answers duplicates
 *     with the first result. Which steps were sent is not journaled, so
 *     recovery counts every step as started: if the saga then turns around,
 *     every step is compensated (a compensation of a step that never ran is
 *     a null compensation at the barrier, which also keeps that action from
 *     running later).
 *   - after the turn record is durable: recovery compensates every step.
 *   - all work done, END not durable: nobody was told; recovery runs the
 *     remaining work again (duplicates are no-ops at the barrier) and decides
 *     again.
 */
#ifndef TREATY_SAGA_H
#define TREATY_SAGA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct core;
struct core_in;
struct saga;

enum saga_step_state {
    STEP_IDLE = 0,     /* not started */
    STEP_RUNNING,      /* action sent (or waiting for a retry or an instance), awaiting RESULT or timeout */
    STEP_DONE,         /* action succeeded */
    STEP_FAILED,       /* action failed (business) or exhausted its retries */
    STEP_COMPENSATING, /* compensation sent or waiting for its retry */
    STEP_COMPENSATED,  /* compensation succeeded */
    STEP_STATE_COUNT_
};

/* "idle", "running", ...; "?" for a value out of range. */
const char *saga_step_state_name(enum saga_step_state s);
/* True when from -> to is in the step transition table. */
bool saga_step_transition_ok(enum saga_step_state from, enum saga_step_state to);

/* The dispatcher's entry points (core.c): s is what the core holds of the
 * message's txid as a saga, or NULL; in is borrowed for the call. */
/* SAGA of a txid that is not a 2PC transaction here (admission checks are
 * made here for a new txid). */
void saga_submit(struct core *c, const struct core_in *in, struct saga *s);
/* RESULT from a participant. */
void saga_result(struct core *c, const struct core_in *in, struct saga *s);
/* QUERY of a saga in flight. */
void saga_query(struct core *c, const struct core_in *in, struct saga *s);
/* s's timer fired (the dispatcher checked it is s's current one). */
void saga_on_timer(struct core *c, struct saga *s);
/* Journal seq, which s may await (definition, turn or END), is durable. */
void saga_on_durable(struct core *c, struct saga *s, uint64_t seq);
/* Frees a saga (core_destroy). Accepts NULL. */
void saga_free(struct saga *s);
/* For metrics: s turned around and is not finished (its turn record is
 * being written, or it is compensating). */
bool saga_is_compensating(const struct saga *s);
/* For metrics: a compensation of s is stuck (saga.stuck_after_attempts). */
bool saga_is_stuck(const struct saga *s);

/* Recovery (recovery.c): a saga's definition record without END, with what
 * its records say: which actions and compensations were recorded done
 * (nsteps flags each, or NULL), and whether and where it turned around.
 * Rebuilds it in the core's map, to (re)start its current group when its
 * timer first fires (recovery arms it), and takes *def (sets it to NULL).
 * NULL, with an error logged and *def left to the caller, when the
 * definition cannot be read. */
struct saga *saga_resume(struct core *c, const uint8_t txid[16], uint8_t **def, size_t def_len,
                         const uint8_t *action_done, const uint8_t *comp_done, bool turned, int failed_step,
                         const char *reason);

/* ------------------------------------------------------------ operators
 *
 * What treatyctl sees of a saga and may do to it (core_admin.h). */

enum saga_phase {
    SAGA_PHASE_STARTING = 0, /* its definition is being forced: nothing ran */
    SAGA_PHASE_FORWARD,      /* running its actions */
    SAGA_PHASE_TURNING,      /* its TURN record is being forced */
    SAGA_PHASE_COMPENSATING, /* running its compensations */
    SAGA_PHASE_FINISHING,    /* its END record is being forced: nobody told yet */
};

struct saga_view {
    enum saga_phase phase;
    bool stuck;         /* a compensation has failed saga.stuck_after_attempts tries or more */
    int failed_step;    /* the step that turned it around, -1 none */
    const char *reason; /* why it turned around, or NULL; borrowed */
    unsigned nsteps;
};

struct saga_step_view {
    const char *service, *action, *compensation; /* borrowed */
    enum saga_step_state state;
    unsigned group;
    bool started;           /* its action may have been sent */
    bool stuck;             /* compensating, failed saga.stuck_after_attempts tries or more */
    bool given_up;          /* an operator gave its compensation up; its record is being forced */
    unsigned attempts;      /* action tries sent */
    unsigned comp_attempts; /* compensation tries sent */
    const char *last_error; /* borrowed, or NULL */
    const uint8_t *rid;     /* the instance its last STEP went to; borrowed */
    size_t rid_len;         /* 0: none yet */
};

/* Fill v (borrowing from s, valid until s changes). */
void saga_view(const struct saga *s, struct saga_view *v);
void saga_step_view(const struct core *c, const struct saga *s, unsigned i, struct saga_step_view *v);

/* An operator turns s around (phase FORWARD only), as a failed step would:
 * the TURN record (failed step -1, reason) is appended, forced, and nothing
 * is compensated before it is durable. Returns its seq, or 0 when s is not
 * going forward (nothing done). */
uint64_t saga_admin_turn(struct core *c, struct saga *s, const char *reason);
/* An operator gives up the compensation of step i (compensating, not given
 * up already) as done by hand: it is not tried again, its STEP
 * "compensation" record is appended, forced, and once that is durable the
 * step counts as compensated and the compensation of the earlier groups
 * goes on. Returns the record's seq, or 0 when step i is not compensating
 * (nothing done). Whether it is stuck is the caller's rule. */
uint64_t saga_admin_give_up(struct core *c, struct saga *s, unsigned i);

#endif
