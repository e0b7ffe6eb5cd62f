/*
 * core_int.h - what the files of the coordinator's core share: the core's
 * state, and the helpers through which the state machines reach the world.
 *
 *   core.c       core_new/destroy, the dispatcher, admission, txid checks,
 *                journal lookups and parked requests, durable waits, the
 *                tick (timers, registry sweep), stats; the helpers below
 *   twopc.c      2PC (twopc.h; states in txn.h)
 *   saga.c       sagas (saga.h)
 *   recovery.c   core_recover_record / core_recover_done
 *   outcomes.c   finished outcomes (outcomes.h)
 *
 * twopc.c and saga.c do not call each other: each acts on the world only
 * through the helpers here, which go through struct core_io. Not a public
 * contract: one thread drives a core (core.h).
 */
#ifndef TREATY_CORE_INT_H
#define TREATY_CORE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "core.h"
#include "journal.h"
#include "outcomes.h"
#include "registry.h"
#include "timers.h"
#include "treaty.h"
#include "txhead.h"
#include "txmap.h"
#include "txn.h"
#include "util.h"
#include "wire.h"

/* A message being handled: borrowed for the call. */
struct core_in {
    const uint8_t *rid;
    size_t rid_len;
    const struct allow_entry *peer; /* the sender (core.h, core_on_message); NULL: not authenticated */
    const struct wire_msg *msg;
};

/* Why a message was dropped or refused (core_stats.denied_*). */
enum core_deny { DENY_ROLE, DENY_SERVICE, DENY_INSTANCE, DENY_SENDER, DENY_LIMIT, DENY_COUNT_ };

/* One client's share of limits.max_inflight_per_client: its transactions
 * and sagas in memory that it has not been answered about yet. Keyed in
 * core.clients by a digest of its identity (CURVE key, or routing id). */
struct client_load {
    uint8_t id[16];
    uint32_t n;
};

/* A request held until the journal says what it knows of its txid
 * (outcomes_may_be_in_journal): a copy of the message, handled again when
 * the lookup answers. */
struct parked {
    struct parked *next;
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    struct allow_entry *peer; /* a copy of the sender's entry (owned), or NULL */
    struct wire_hdr hdr;
    size_t nframes;
    size_t *lens; /* nframes lengths, then the bytes in data */
    uint8_t *data;
};

/* One journal lookup in flight (kind TX_LOOKUP) and the requests waiting for it. */
struct lookup {
    struct tx_head h;
    struct parked *head, *tail;
};

struct durable_wait {
    uint64_t seq;
    uint8_t txid[16];
};

/* Recovery's state between the first core_recover_record and
 * core_recover_done (recovery.c). recovery_free accepts NULL. */
struct recovery;
void recovery_free(struct recovery *r);

struct core {
    const struct config *cfg;
    struct core_io io;
    struct util_rng rng;
    struct core_time now; /* of the event being handled */
    struct registry *reg;
    struct txmap txs; /* txid -> struct tx_head: a struct txn, struct saga or struct lookup */
    size_t n2pc, nsagas, nlookups;
    struct outcomes done; /* finished outcomes, bounded */
    struct timers timers;
    struct durable_wait *waits; /* ring of txids awaiting a forced record */
    size_t wait_head, wait_len, wait_cap;
    uint64_t durable_seq;
    struct wire_msg *replay;       /* a parked request being handled again */
    struct wire_msg *def_msg;      /* saga.c's scratch: a definition being decoded */
    struct wire_frame *def_frames; /* likewise, WIRE_MAX_FRAMES */
    struct recovery *rec;          /* from the first core_recover_record to core_recover_done */
    bool stopping;
    struct admin_wait *admin;              /* admin requests awaiting a record or the journal (admin.c) */
    int64_t started_ms;                    /* monotonic time serving started (core_recover_done) */
    int64_t newest_ms;                     /* core_recover_newest's answer; -2: not given */
    int64_t next_sweep_ms;                 /* next registry sweep; -1 before core_recover_done */
    struct core_stats st;                  /* counters; core_get_stats fills the gauges */
    struct metrics_hist dur_2pc, dur_saga; /* submit -> outcome told, ms (core_observe_duration) */
    struct txmap clients;                  /* client identity digest -> struct client_load (owned) */
    uint8_t client_hkey[16];
    struct {
        int64_t next_ms;     /* the next line about this reason may be logged then */
        uint64_t suppressed; /* dropped since the last line */
    } deny_log[DENY_COUNT_];
};

/* An admin request the core answers later (admin.c): a show awaiting the
 * journal's records (seq 0), or a resolve awaiting its record (seq). */
struct admin_wait {
    struct admin_wait *next;
    uint64_t token;
    uint64_t seq;
    uint8_t txid[16];
    char what[48]; /* resolve: what was done, for the answer */
};
/* admin.c: answers the resolves whose record is durable (core_on_durable);
 * frees the waits (core_destroy). */
void admin_on_durable(struct core *c);
void admin_free(struct core *c);

/* ------------------------------------------------------------ the map */

/* What the core holds of txid (any kind), or NULL. */
struct tx_head *core_get(const struct core *c, const uint8_t txid[16]);
/* Adds h (owned by the core from now on) under h->txid, which must be free. */
void core_put(struct core *c, struct tx_head *h);
/* Removes h from the map (the caller frees it). */
void core_forget(struct core *c, struct tx_head *h);
/* 2PC transactions and sagas in memory (lookups not counted). */
size_t core_inflight(const struct core *c);

/* ------------------------------------------------------------ the world */

const char *core_fmt_txid(const uint8_t *txid, char *buf);
void core_send(struct core *c, const uint8_t *rid, size_t rid_len, uint8_t type, const uint8_t *txid, unsigned branch,
               unsigned attempt, unsigned code, const struct wire_frame *frames, size_t n);
void core_reply_error(struct core *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid, int err, const char *fmt,
                      ...) __attribute__((format(printf, 6, 7)));
void core_reply_outcome(struct core *c, const uint8_t *rid, size_t rid_len, const uint8_t *txid, enum treaty_status st,
                        int failed_branch, const char *reason);
/* Appends r to the journal; returns its seq (core_on_durable reports it). */
uint64_t core_append(struct core *c, const struct journal_rec *r, bool force);
/* Calls twopc_on_durable / saga_on_durable for h once journal seq is durable. */
void core_expect_durable(struct core *c, const struct tx_head *h, uint64_t seq);
/* Sets h's timer to due_ms (monotonic); an earlier timer of h is cancelled. */
void core_arm_timer(struct core *c, struct tx_head *h, int64_t due_ms);
/* ms with +-25% jitter, from the core's PRNG. */
int core_jitter(struct core *c, int ms);
/* Answers in's client from the outcomes of finished transactions; false
 * when its txid has none there. */
bool core_reply_done(struct core *c, const struct core_in *in);
/* Remembers the outcome of a finished transaction (its deciding record is durable). */
void core_remember_done(struct core *c, const uint8_t *txid, enum treaty_status st, int failed_branch,
                        const char *reason);
/* Refuses (ERROR reply) a txid that may not start a new transaction or be
 * presumed aborted now: not time-ordered (TREATY_EINVAL), made more than
 * txid.max_future_s ahead of our clock (TREATY_EINVAL) or more than
 * txid.max_age_s ago (TREATY_EEXPIRED). 0 when it may. */
int core_check_new_txid(struct core *c, const struct core_in *in);
/* Common admission checks for new work (stopping, journal health,
 * limits.max_inflight, and the client's limits.max_inflight_per_client): 0,
 * with the sender's client id in client (for core_client_charge), or an
 * ERROR was sent. */
int core_admit(struct core *c, const struct core_in *in, uint8_t client[16]);
/* h (just put in the map) counts against the share of client (core_admit's)
 * of limits.max_inflight_per_client until core_client_done (or
 * core_forget). */
void core_client_charge(struct core *c, struct tx_head *h, const uint8_t client[16]);
/* h's client has been answered (its outcome is durable): its share comes
 * back. Idempotent. */
void core_client_done(struct core *c, struct tx_head *h);

/* ------------------------------------------------------------ authorization */

/* Counts a message dropped or refused for why, with no other effect, and
 * logs "refused <what>" with the sender - at most one line a second per
 * reason, which says how many more there were since the last. */
void core_deny(struct core *c, enum core_deny why, const struct core_in *in, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Records that a request (PREPARE, a decision, STEP) went to instance i: its
 * answers count from it from now on. */
void core_sent_to(struct sent_to *to, const struct instance *i);
/* Records that a decision goes to in's sender (an INQUIRE from an instance
 * of the service, core_may_serve), whose ACK counts from now on. */
void core_sent_to_sender(struct sent_to *to, const struct core_in *in);
/* True when in's sender is the instance the request went to. */
bool core_from(const struct sent_to *to, const struct core_in *in);
/* True when in's sender may answer for service: with authentication, its
 * key is listed for the service; without, its routing id is a live
 * instance of it. */
bool core_may_serve(const struct core *c, const struct core_in *in, const char *service);
/* "key <Z85>" or "routing id <hex>" of in's sender, into buf. */
const char *core_fmt_peer(const struct core_in *in, char *buf, size_t len);
/* False while the journal cannot write (io->journal_healthy). */
bool core_journal_healthy(struct core *c);
/* Counts a refusal (stats) of a request of message type `type` (a SUBMIT
 * counts as a refused 2PC transaction, a SAGA as a refused saga) for reason
 * why. The caller sends the ERROR. */
void core_count_refusal(struct core *c, uint8_t type, enum core_refusal why);
/* The outcome of a transaction (kind TX_2PC or TX_SAGA) submitted at
 * monotonic time submitted_ms is being told: counts its duration in the
 * histogram. submitted_ms < 0 (recovered, presumed) counts nothing. */
void core_observe_duration(struct core *c, uint8_t kind, int64_t submitted_ms);

#endif
