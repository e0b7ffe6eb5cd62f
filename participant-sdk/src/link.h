/*
 * link.h - the SDK's connection to the coordinator: one ZeroMQ DEALER socket
 * in a context of its own, with CURVE client keys when they are given, and a
 * socket monitor that watches its handshakes. Used by the client and the
 * participant shells (client.c, participant.c). Not part of the public API.
 *
 * Why a monitor: a refused handshake is silent at the socket (messages are
 * just never delivered), and libzmq 4.3 gives up on the endpoint for good
 * after a ZAP refusal or a ZMTP protocol error (the session ends; it never
 * reconnects). The monitor reports, per connection attempt:
 *   HANDSHAKE_SUCCEEDED
 *   HANDSHAKE_FAILED_AUTH       the coordinator's ZAP handler refused this
 *                               peer's key (value: the ZAP status, 300/400/500)
 *   HANDSHAKE_FAILED_PROTOCOL   a ZMTP error, e.g. a mechanism mismatch
 *                               (CURVE against plaintext, either way)
 *   HANDSHAKE_FAILED_NO_DETAIL  the coordinator closed the connection during
 *                               the handshake: what a CURVE server does with
 *                               a HELLO encrypted to another key (libzmq then
 *                               reconnects by itself, every 100 ms)
 * link_poll turns them into LINK_UP (a handshake succeeded) and
 * LINK_REFUSED (a failure that retrying at once will not mend: any AUTH or
 * PROTOCOL failure, or the LINK_CLOSED_LIMIT'th NO_DETAIL in a row without a
 * success - one alone could be a coordinator killed mid-handshake), with
 * link_why() saying what happened and what to check. After an AUTH or
 * PROTOCOL failure it connects the endpoint again itself: LINK_RETRY_MIN_MS
 * later, the wait doubling up to LINK_RETRY_MAX_MS while refusals continue,
 * or at once on link_retry_now().
 *
 * The keys are given to libzmq (which keeps its own copy) and not kept
 * here. Thread safety: none; one thread at a time uses a link (a socket may
 * move between threads with a full memory barrier, e.g. pthread_create or
 * pthread_join).
 */
#ifndef TREATY_LINK_H
#define TREATY_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "treaty.h"

#define LINK_CLOSED_LIMIT 3     /* NO_DETAIL failures in a row that count as a refusal */
#define LINK_RETRY_MIN_MS 500   /* first re-connect after a refusal */
#define LINK_RETRY_MAX_MS 30000 /* cap of the doubling */
#define LINK_WHY_MAX 256        /* longest link_why(), NUL included */

struct link;

enum link_event {
    LINK_NONE = 0,   /* nothing that changes the picture */
    LINK_UP = 1,     /* a handshake succeeded (the last event read) */
    LINK_REFUSED = 2 /* a handshake failed for good (the last event read): see link_why */
};

/* A DEALER socket (ZMQ_LINGER 0, ZMQ_IMMEDIATE immediate) with CURVE client
 * keys from sec when sec and sec->server_public_key are not NULL (checked
 * by the caller with treaty_security_check), monitored, connected to
 * endpoint. Returns 0; TREATY_EINVAL for an endpoint libzmq refuses
 * (malformed, unknown transport); TREATY_ENOMEM; TREATY_ETRANSPORT. On
 * failure *out is NULL and err[errlen] says why. */
int link_open(const char *endpoint, bool immediate, const treaty_security_t *sec, struct link **out, char *err,
              size_t errlen);
/* Stops the monitor, closes the sockets (unsent messages dropped) and the
 * context. Accepts NULL and *l NULL; sets *l to NULL. */
void link_close(struct link **l);

/* The DEALER socket (borrowed: lives as long as the link). */
void *link_socket(const struct link *l);
/* The monitor's socket, to poll for ZMQ_POLLIN next to link_socket(): when
 * readable, link_poll has events to read. */
void *link_monitor(const struct link *l);

/* Reads every waiting monitor event and, when a re-connect is due at now
 * (monotonic ms), connects again. Returns what the last event that counts
 * says (LINK_NONE when none). Never blocks. */
enum link_event link_poll(struct link *l, int64_t now);
/* When link_poll has a re-connect to do (same clock as now), or -1. */
int64_t link_next_due(const struct link *l);
/* A re-connect that waits for its time is done now. */
void link_retry_now(struct link *l);
/* True while the last handshake failed and none succeeded since (after
 * LINK_REFUSED until LINK_UP). */
bool link_refused(const struct link *l);
/* What the last refusal was, for an errmsg; "" before any. Borrowed. */
const char *link_why(const struct link *l);

#endif /* TREATY_LINK_H */
