/*
 * loop.h - treatyd's shell: the coordinator's core (core.h) connected to one
 * ZeroMQ ROUTER, the PostgreSQL journal and the real clocks, driven by one
 * event loop on the calling thread.
 *
 *   loop_run():
 *     1. connect the journal (retrying while Postgres is unreachable; waiting
 *        while another coordinator holds it)
 *     2. recovery: the journal's unfinished runs fed to the core
 *     3. bind the ROUTER and serve until *stop becomes non-zero
 *     4. on stop: the core refuses new transactions; in-flight ones may
 *        finish until shutdown_deadline_ms; flush the journal, return
 *
 * The loop makes no protocol decision: it hands the core every message,
 * every advance of the journal's durable watermark, every lookup answer and
 * the time, and carries out what the core asks through struct core_io.
 */
#ifndef TREATY_LOOP_H
#define TREATY_LOOP_H

#include <signal.h>

#include "config.h"

/* Returns 0 after a clean stop, or a negative TREATY_E* (message already
 * logged) when start-up failed, the transport failed, or another coordinator
 * took the journal (TREATY_ESTATE, journal_deposed). */
int loop_run(const struct config *cfg, volatile sig_atomic_t *stop);

#endif
