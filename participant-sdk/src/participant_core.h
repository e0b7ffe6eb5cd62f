/*
 * participant_core.h - the participant's protocol core: HELLO and the
 * heartbeat, WELCOME and the in-doubt sweep, PREPARE -> VOTE, COMMIT/ABORT ->
 * ACK, STEP -> RESULT, INQUIRE, with no I/O, no clock and no randomness.
 *
 * A shell drives it: participant.c (a ZeroMQ DEALER socket, the SDK's thread
 * or the caller's loop, errmsg, the monotonic clock) and the deterministic
 * simulator (tests/sim: a simulated network and clock). The shell hands the
 * core events - a decoded message, a message that did not decode, time
 * passing - and the core acts only through struct pcore_io: send a message,
 * log a text. Time comes in with every event that needs it (now: monotonic
 * milliseconds, any origin, never decreasing). Given the same events and the
 * same handler results, the core makes the same calls.
 *
 * Handlers stay synchronous callbacks: treaty_handlers_t (prepare, commit,
 * abort) and the saga step handlers registered by name. They are user code
 * with I/O of their own (pg_core.h: a Postgres branch), called by the core
 * inside pcore_on_message, on the thread that drives the core, one message
 * at a time. A handler may call pcore_inquire and pcore_log on its core; it
 * must not call pcore_on_* (no re-entry) or destroy the core.
 *
 * Lifecycle
 *   1. pcore_new(service, instance, handlers, io, now): nothing is sent yet;
 *      the first HELLO is due at now.
 *   2. pcore_add_step() / pcore_set_ext() / pcore_set_sweep_ms(): before the
 *      first event.
 *   3. serving: pcore_on_tick() whenever pcore_next_tick() is due (calling it
 *      more often is harmless), pcore_on_message() / pcore_on_malformed() for
 *      every message from the coordinator, in arrival order.
 *   4. pcore_destroy(): frees the core, the step handlers' args (their
 *      free_arg) and the extension (its on_destroy).
 *
 * What the core does, event by event
 *   tick, HELLO due:  HELLO(service, instance). Sent: next one a heartbeat
 *                     later. Not sent (io->send failed: not connected): again
 *                     after min(heartbeat, PCORE_HELLO_RETRY_MS). HELLO is the
 *                     heartbeat and also how the instance re-registers with a
 *                     coordinator that restarted.
 *   tick, sweep due:  (only after a WELCOME, with an on_connect hook)
 *                     on_connect(first = false); next sweep a period later.
 *   WELCOME(hb):      adopt hb as the heartbeat when it is within
 *                     [PCORE_HEARTBEAT_MIN_MS, PCORE_HEARTBEAT_MAX_MS] (and
 *                     pull the next HELLO in to now + hb if it was later).
 *                     The first WELCOME, or one after more than
 *                     PCORE_RECONNECT_BEATS heartbeats without any (the
 *                     coordinator restarted or was unreachable): on_connect
 *                     (first = true) at once, next sweep a period later.
 *   PREPARE:          prepare handler -> VOTE(code = its vote, reason) with
 *                     txid, branch and attempt echoed. A negative return:
 *                     no vote (the coordinator's prepare timeout aborts). Any
 *                     other non-vote value: NO with a reason. Without 2PC
 *                     handlers: NO, "this participant does not take part in
 *                     2PC".
 *   COMMIT / ABORT:   commit / abort handler -> ACK(COMMITTED / ABORTED) when
 *                     it returned 0, nothing when negative (the coordinator
 *                     re-sends). Without 2PC handlers: ABORT is acknowledged
 *                     (nothing was applied), COMMIT dropped and counted (this
 *                     participant votes NO to everything, so no coordinator
 *                     can decide commit).
 *   STEP(kind, name): the handler registered under that kind and name ->
 *                     RESULT(WIRE_RESULT(kind, ok / failed / transient),
 *                     reason), txid, step and attempt echoed; always sent.
 *                     No such handler: an action FAILED, a compensation
 *                     TRANSIENT ("no <kind> handler named <name>"). A
 *                     compensation's TREATY_STEP_FAILED, a negative return
 *                     and any other value are TRANSIENT.
 *   ERROR:            logged.
 *   anything else, and malformed messages: dropped, counted
 *                     (pcore_dropped), logged.
 *
 * Crash windows. Durability lives in the handlers; the core only moves
 * messages, and everything it knows is rebuilt from nothing after a crash
 * (pcore_new). The windows that matter sit between a handler's durable step
 * and the reply the core sends after it returns:
 *   - after a YES handler returned, before VOTE left: the branch is prepared
 *     but unvoted; the coordinator aborts on its prepare timeout or re-sends
 *     PREPARE (answered again), and the sweep after a restart INQUIREs.
 *   - after COMMIT/ABORT was applied, before ACK left: the coordinator
 *     re-sends the decision; the handler applies it again (idempotent).
 *   - after a step handler returned, before RESULT left: the coordinator's
 *     try timeout re-sends the STEP; the handler must answer as the first
 *     time (pg_core.h's barrier does).
 * A lost send (io->send failing, or the network losing it) is the same
 * window without the crash.
 *
 * Ownership: every pointer passed in is borrowed for the call unless said
 * otherwise. Thread safety: one thread drives a core (events, add_step,
 * inquire); pcore_log and pcore_dropped may also be called from other
 * threads. No global state: any number of cores live in one process.
 */
#ifndef TREATY_PARTICIPANT_CORE_H
#define TREATY_PARTICIPANT_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "treaty.h"
#include "wire.h"

#define PCORE_HEARTBEAT_MS 1000   /* heartbeat until a WELCOME says otherwise */
#define PCORE_HEARTBEAT_MIN_MS 10 /* bounds on what a WELCOME may set */
#define PCORE_HEARTBEAT_MAX_MS 600000
#define PCORE_RECONNECT_BEATS 3  /* WELCOME after more than this many silent heartbeats: reconnected */
#define PCORE_HELLO_RETRY_MS 250 /* HELLO could not be sent */
#define PCORE_SWEEP_MS 5000      /* default period of the in-doubt sweep (on_connect) */
#define PCORE_LOG_MAX 256        /* longest text given to io->log, NUL included */

struct pcore;

enum pcore_level {
    PCORE_NOTE = 0, /* what lands in the handle's errmsg: a refused or failed request, a dropped message */
    PCORE_ALERT = 1 /* also for an operator, always: a decision refused because the branch contradicts it */
};

/* Everything the core does to the world. */
struct pcore_io {
    void *ctx;
    /* Sends one message to the coordinator. frames are borrowed for the
     * call. Returns 0 when the message was handed to the transport (it may
     * still be lost), or a negative TREATY_E* when it was dropped at once
     * (not connected, queue full); then *why may be set to a static text
     * saying why (else it is left NULL). */
    int (*send)(void *ctx, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes, const char **why);
    /* One line of text (no control characters, < PCORE_LOG_MAX bytes),
     * borrowed for the call. May be called from any thread that calls
     * pcore_log. */
    void (*log)(void *ctx, enum pcore_level level, const char *text);
};

/* Kinds of saga step handlers (the values of WIRE_STEP_*). */
enum pcore_step_kind { PCORE_ACTION = WIRE_STEP_ACTION, PCORE_COMPENSATION = WIRE_STEP_COMPENSATION };

/*
 * An extension (pg_core.h installs one). Hooks run on the thread that
 * drives the core.
 *  on_connect: at the first WELCOME and at one after a silence (first =
 *              true), then every sweep period (first = false). This is where
 *              in-doubt branches are found and INQUIREd (pcore_inquire).
 *  on_destroy: by pcore_destroy, last; releases arg.
 */
struct pcore_ext {
    void (*on_connect)(void *arg, struct pcore *c, bool first);
    void (*on_destroy)(void *arg);
    void *arg;
};

/*
 * A core for service and instance (each 1..WIRE_NAME_MAX chars of
 * [A-Za-z0-9._-], copied), serving 2PC with h (copied; NULL for a saga-only
 * participant; when given, prepare, commit and abort are all non-NULL),
 * acting through io (copied). now: the first HELLO is due then. Caller owns
 * *out. 0, TREATY_EINVAL (*out NULL), TREATY_ENOMEM.
 */
int pcore_new(const char *service, const char *instance, const treaty_handlers_t *h, const struct pcore_io *io,
              int64_t now, struct pcore **out);
/* Frees c: step handlers' free_arg, then the extension's on_destroy.
 * Accepts NULL and *c NULL; sets *c to NULL. Sends nothing. */
void pcore_destroy(struct pcore **c);

/*
 * Registers fn under name (1..WIRE_NAME_MAX chars of [A-Za-z0-9._-],
 * copied) for kind, replacing an earlier registration of the same name and
 * kind (whose free_arg then runs). From the call on the core owns arg:
 * free_arg (may be NULL) releases it when the registration is replaced, the
 * core destroyed, or this call fails. 0, TREATY_EINVAL, TREATY_ENOMEM.
 */
int pcore_add_step(struct pcore *c, enum pcore_step_kind kind, const char *name, treaty_step_fn fn, void *arg,
                   void (*free_arg)(void *));

/* Installs ext (copied); from then on the core owns ext->arg (on_destroy). */
void pcore_set_ext(struct pcore *c, const struct pcore_ext *ext);
/* The installed extension (all NULL when none). Never NULL. */
const struct pcore_ext *pcore_get_ext(const struct pcore *c);
/* Sets the sweep period (ms; ignored unless > 0). */
void pcore_set_sweep_ms(struct pcore *c, int ms);

/* A decoded message from the coordinator (borrowed for the call; frames
 * as wire_decode checked them), at now. May call handlers and io->send. */
void pcore_on_message(struct pcore *c, const struct wire_msg *m, int64_t now);
/* A message that did not decode (err: wire_decode's error): dropped,
 * counted, logged. */
void pcore_on_malformed(struct pcore *c, int err);
/* Time passed: sends a due HELLO, runs a due sweep. */
void pcore_on_tick(struct pcore *c, int64_t now);
/* When pcore_on_tick has work next (the same clock as now). */
int64_t pcore_next_tick(const struct pcore *c);

/* Sends INQUIRE for branch of id (answered later by COMMIT or ABORT).
 * 0, TREATY_EINVAL (branch > 65535), or the send's error (logged). */
int pcore_inquire(struct pcore *c, const treaty_txid_t *id, unsigned branch);

/* Formats a text (one line, truncated to PCORE_LOG_MAX - 1 bytes, control
 * characters replaced by spaces) and gives it to io->log. */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void pcore_log(struct pcore *c, enum pcore_level level, const char *fmt, ...);
#if defined(__GNUC__)
__attribute__((format(printf, 3, 0)))
#endif
void pcore_vlog(struct pcore *c, enum pcore_level level, const char *fmt, va_list ap);

/* Messages dropped because they were malformed or unexpected. */
uint64_t pcore_dropped(const struct pcore *c);
/* The names given to pcore_new (borrowed from c, immutable). */
const char *pcore_service(const struct pcore *c);
const char *pcore_instance(const struct pcore *c);

#endif /* TREATY_PARTICIPANT_CORE_H */
