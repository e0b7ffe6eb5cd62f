/*
 * loop.h - treatyd's shell: the coordinator's core (core.h) connected to one
 * ZeroMQ ROUTER, the PostgreSQL journal and the real clocks, driven by one
 * event loop on the calling thread.
 *
 *   loop_run():
 *     1. with security.curve: read the key pair and the allow-list
 *        (security.h); a problem stops start-up
 *     2. connect the journal (retrying while Postgres is unreachable; waiting
 *        while another coordinator holds it)
 *     3. recovery: the journal's unfinished runs fed to the core
 *        (logging progress every second, and STATUS= to systemd)
 *     4. bind the ZAP handler (with CURVE), then the ROUTER, tell systemd
 *        READY=1, and serve until *stop becomes non-zero; each time *reload
 *        becomes non-zero (SIGHUP) every item of the reload set is read
 *        again, all or nothing (reload.h)
 *     5. on stop (STOPPING=1 to systemd): the core refuses new transactions; in-flight ones may
 *        finish until shutdown_deadline_ms; flush the journal, return
 *
 * The loop makes no protocol decision: it hands the core every message
 * (with its sender's allow-list entry when CURVE is on), every advance of
 * the journal's durable watermark, every lookup answer and the time, and
 * carries out what the core asks through struct core_io.
 */
#ifndef TREATY_LOOP_H
#define TREATY_LOOP_H

#include <signal.h>

#include "config.h"
#include "reload.h"

/* Returns 0 after a clean stop, or a negative TREATY_E* (message already
 * logged) when start-up failed, the transport failed, or another coordinator
 * took the journal (TREATY_ESTATE, journal_deposed). The loop sets *reload
 * back to 0 when it acts on it.
 *
 * items: the reload set SIGHUP runs (borrowed; normally holding the
 * configuration item, whose live config is cfg). With security.curve the
 * loop adds the allow-list to it once serving starts; that item refers to
 * the loop and must not be run after loop_run returns. Reloaded keys are
 * read from cfg by the loop and the core from the next event on. */
int loop_run(const struct config *cfg, struct reload *items, volatile sig_atomic_t *stop,
             volatile sig_atomic_t *reload);

#endif
