/*
 * fault.h - named crash points for failure-injection tests.
 *
 * FAULT_POINT("coord.after_commit_durable") makes the process SIGKILL itself
 * when the environment variable TREATY_CRASH_AT names that point ("name", or
 * "name:N" to crash on the N-th time it is reached). Compiled in only when
 * TREATY_FAULTS is defined (the default development and test build); empty
 * in release builds (make RELEASE=1).
 *
 * Points (see docs/protocol.md for where each sits):
 *   coord.before_decision        all YES votes in, COMMIT record not yet appended
 *   coord.after_commit_durable   COMMIT record durable, nothing sent yet
 *   coord.between_commit_sends   first COMMIT sent, the others not yet
 *   coord.saga_between_groups    saga forward: a group finished, the next not started
 *   coord.saga_after_turn        saga turn record durable, no compensation sent yet
 *   coord.saga_during_compensation  right after a compensation was sent
 *   participant.after_prepare    PREPARE TRANSACTION done, vote not yet sent
 *   participant.before_commit    COMMIT received, COMMIT PREPARED not yet run
 *   participant.after_commit     COMMIT PREPARED done, ACK not yet sent
 */
#ifndef TREATY_FAULT_H
#define TREATY_FAULT_H

#ifdef TREATY_FAULTS
void fault_point(const char *name);
#define FAULT_POINT(name) fault_point(name)
#else
#define FAULT_POINT(name) ((void)0)
#endif

#endif
