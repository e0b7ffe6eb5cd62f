/*
 * saga.h - sagas in the coordinator: forward steps, the turn-around, and
 * compensations in reverse, on the same loop, journal and registry as 2PC.
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
#include <stdint.h>

#include "journal.h"
#include "wire.h"

struct coord;
struct saga;

/* SAGA from a client (admission checks done by the caller for new txids). */
void saga_handle_submit(struct coord *c, const struct wire_in *in);
/* RESULT from a participant. */
void saga_handle_result(struct coord *c, const struct wire_in *in);
/* QUERY for a txid that is a saga in flight. */
void saga_handle_query(struct coord *c, struct saga *s, const struct wire_in *in);
/* A timer of s fired at due_ms (the caller found s by txid). */
void saga_on_timer(struct coord *c, struct saga *s, int64_t due_ms);
/* A forced record (definition or turn) with this seq is durable. */
void saga_on_durable(struct coord *c, struct saga *s, uint64_t seq);
/* Frees a saga (shutdown). */
void saga_free(struct saga *s);

/* Recovery: feed every journal record of one saga txid, in order, then finish. */
struct saga_recovery;
struct saga_recovery *saga_recovery_new(void);
void saga_recovery_add(struct saga_recovery *r, const struct journal_rec *rec);
/* Rebuilds the saga into c (resumed) unless it ended (then its outcome is
 * the journal's to tell). Resets r for the next txid. Returns 1 when a saga
 * was resumed, 0 otherwise. */
int saga_recovery_finish(struct coord *c, struct saga_recovery *r, bool ended);
void saga_recovery_free(struct saga_recovery *r);

#endif
