/*
 * participant_int.h - internals of treaty_participant_t (the shell in
 * participant.c around the protocol core of participant_core.h) shared with
 * the participant flavours built on it (pg_libpq.c). Not part of the public
 * API.
 */
#ifndef TREATY_PARTICIPANT_INT_H
#define TREATY_PARTICIPANT_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "participant_core.h"
#include "treaty.h"

/* The protocol core inside p (borrowed: lives as long as p). Install
 * extensions (pcore_set_ext) and step handlers through it before start;
 * treaty_participant_destroy destroys it. */
struct pcore *participant_core(const treaty_participant_t *p);

/* True once treaty_participant_start ran and until stop joined the thread:
 * the core belongs to the SDK thread then (no more registrations). */
bool participant_started(const treaty_participant_t *p);

/* True when the calling thread may use the participant's socket, its core
 * and its extension's state: the participant is not started, or this is its
 * thread. */
bool participant_on_owner_thread(const treaty_participant_t *p);

/* Writes the handle's error text (what treaty_participant_errmsg returns),
 * through the core's log (pcore_log, PCORE_NOTE). Any thread. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void participant_errorf(treaty_participant_t *p, const char *fmt, ...);

/* Monotonic clock in milliseconds: the time given to the core. */
int64_t participant_now_ms(void);

#endif /* TREATY_PARTICIPANT_INT_H */
