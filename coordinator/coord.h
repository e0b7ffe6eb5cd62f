/*
 * coord.h - the coordinator: one ZeroMQ ROUTER, the journal, the registry and
 * the 2PC state machines, driven by one event loop on the calling thread.
 *
 *   coord_run():
 *     1. connect the journal (retrying while Postgres is unreachable)
 *     2. recovery: rebuild unfinished transactions from the journal
 *     3. bind the ROUTER and serve until *stop becomes non-zero
 *     4. on stop: refuse new transactions, let in-flight ones finish until
 *        shutdown_deadline_ms, flush the journal, return
 *
 * Durability rule, everywhere in coord.c: a reply that depends on a journal
 * record is sent only after journal_durable() has passed that record's seq.
 */
#ifndef TREATY_COORD_H
#define TREATY_COORD_H

#include <signal.h>

#include "config.h"

/* Returns 0 after a clean stop, or a negative TREATY_E* when start-up failed
 * (message already logged). */
int coord_run(const struct config *cfg, volatile sig_atomic_t *stop);

#endif
