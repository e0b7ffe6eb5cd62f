/*
 * participant_int.h - internals of treaty_participant_t shared with the
 * participant flavours built on it (pg.c). Not part of the public API.
 */
#ifndef TREATY_PARTICIPANT_INT_H
#define TREATY_PARTICIPANT_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "treaty.h"

/* Default period of the in-doubt sweep (the on_connect hook), ms. */
#define PARTICIPANT_SWEEP_MS 5000

/*
 * Extension hooks, all run on the participant's thread (the thread that
 * calls treaty_participant_process, or the SDK's own after start).
 *  on_connect: once the first WELCOME arrived (first = true), and then every
 *              sweep period (first = false) while the participant runs. This
 *              is where in-doubt branches are found and INQUIREd
 *              (treaty_participant_inquire is safe to call from it).
 *  on_destroy: called by treaty_participant_destroy after the thread has
 *              stopped and the socket is closed; releases arg.
 */
struct participant_ext {
    void (*on_connect)(void *arg, treaty_participant_t *p, bool first);
    void (*on_destroy)(void *arg);
    void *arg;
};

/* Installs ext (copied). Call before start / the first process. From then on
 * the participant owns ext->arg: on_destroy runs when it is destroyed. */
void participant_set_ext(treaty_participant_t *p, const struct participant_ext *ext);

/* Sets the in-doubt sweep period (ms, > 0). Before start only. */
void participant_set_sweep_ms(treaty_participant_t *p, int ms);

/* Kinds of saga step handlers (the values of WIRE_STEP_*). */
enum participant_step_kind { PARTICIPANT_ACTION = 1, PARTICIPANT_COMPENSATION = 2 };

/*
 * Registers fn under name for kind, replacing an earlier registration of the
 * same name and kind. free_arg (may be NULL) releases arg when the
 * registration is replaced or the participant destroyed, and also when this
 * call fails: from the call on, the participant owns arg. Before start only.
 * 0, TREATY_EINVAL, TREATY_ENOMEM, TREATY_ESTATE (started).
 */
int participant_add_step(treaty_participant_t *p, enum participant_step_kind kind, const char *name, treaty_step_fn fn,
                         void *arg, void (*free_arg)(void *));

/* The extension installed with participant_set_ext (all NULL when none). */
const struct participant_ext *participant_get_ext(const treaty_participant_t *p);

/* True when the calling thread may use the participant's socket and its
 * extension's state: the participant is not started, or this is its thread. */
bool participant_on_owner_thread(const treaty_participant_t *p);

/* Writes the handle's error text (what treaty_participant_errmsg returns). */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void participant_errorf(treaty_participant_t *p, const char *fmt, ...);

/* The same, and also to stderr whatever TREATY_SDK_LOG says ("ALERT: ..."):
 * for what an operator must see, e.g. a decision refused because the branch
 * is not in the state the decision presumes. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void participant_alertf(treaty_participant_t *p, const char *fmt, ...);

/* Messages dropped because they were malformed or unexpected. */
uint64_t participant_dropped(const treaty_participant_t *p);

/* Monotonic clock in milliseconds. */
int64_t participant_now_ms(void);

#endif /* TREATY_PARTICIPANT_INT_H */
