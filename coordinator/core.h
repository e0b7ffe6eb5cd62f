/*
 * core.h - the coordinator's protocol core: two-phase commit, sagas,
 * recovery, the participant registry and finished outcomes, with no I/O, no
 * clock and no randomness of its own.
 *
 * A shell drives it: treatyd's loop (loop.c: ZeroMQ, the PostgreSQL journal,
 * the real clocks) and the deterministic simulator (tests/sim: a simulated
 * network, journal and clock). The shell hands the core events - a message
 * in, records durable, a journal lookup answered, time passing - and the
 * core acts only through struct core_io: send a message, append a journal
 * record, ask the journal about a txid. Time comes in with every event
 * (struct core_time); randomness (backoff jitter, hash keys) comes from a
 * PRNG seeded once by core_new's seed. Given the same seed and the same
 * events, the core makes the same calls, byte for byte.
 *
 * Lifecycle:
 *   1. core_new(cfg, io, seed)
 *   2. recovery: core_recover_record() for every record journal_scan
 *      delivers (unfinished runs, per txid in append order), then
 *      core_recover_done(now), also when there were none: serving starts
 *      there. The resumed transactions arm their timers; sagas'
 *      "participants are still saying HELLO" grace period starts; and txids
 *      made after now.wall_ms + txid.max_future_s are known to be new (no
 *      earlier run could have accepted them), older ones are looked up.
 *   3. serving: core_on_message / core_on_malformed / core_on_durable /
 *      core_on_lookup / core_on_tick / core_on_allowlist, in any order, as
 *      they happen. The shell
 *      calls core_on_tick() when core_next_tick() is due (and may call it
 *      more often: it is idempotent for a given time).
 *   4. stopping: core_stop() refuses new transactions; the shell waits
 *      until core_unfinished() is 0 or its deadline passes.
 *   5. core_destroy().
 *
 * The rules the core keeps (twopc.c, saga.h, docs/protocol.md §6):
 * every answer that states an outcome or a decision is sent only after the
 * record deciding it was reported durable by core_on_durable(); a txid
 * unknown in memory whose outcome the journal might hold is looked up
 * (io->lookup) before it is answered or run.
 *
 * Authorization (docs/security.md, docs/protocol.md §5a): every message
 * comes with its sender as the shell knows it (struct core_peer below). A
 * message counts only from a role allowed to send it (SUBMIT, SAGA, QUERY:
 * client; HELLO, VOTE, ACK, INQUIRE, RESULT: participant); a HELLO only for
 * a service the peer is listed for, and never for an instance name another
 * peer holds while it lives; a VOTE, ACK or RESULT only from the instance
 * the request went to, for that txid and branch; an INQUIRE counts as a
 * vote only from an instance of the branch's service. Anything else is
 * dropped with no effect, counted by reason (core_stats.denied_*) and
 * logged at most once a second per reason. A client's transactions in
 * flight are limited (limits.max_inflight_per_client). Each check is O(1)
 * per message (a HELLO's is O(length of the peer's service list)).
 *
 * The core calls io only from inside the core_* calls above, and io must not
 * call back into the core: a record appended becomes durable later, by a
 * core_on_durable() of the shell's own, never from inside io->append.
 *
 * Ownership: every pointer passed in is borrowed for the call. Thread
 * safety: none; one thread drives one core. Several cores may live in one
 * process (the simulator runs one per simulated coordinator): the core keeps
 * no global state except the log level.
 */
#ifndef TREATY_CORE_H
#define TREATY_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "allowlist.h"
#include "config.h"
#include "journal.h"
#include "metrics_hist.h"
#include "wire.h"

/* The time of an event: both clocks, read once by the shell. */
struct core_time {
    int64_t mono_ms; /* monotonic: deadlines, backoffs, heartbeats */
    int64_t wall_ms; /* Unix milliseconds: txid ages (txids carry wall time) */
};

/* Everything the core does to the world. */
struct core_io {
    void *ctx;
    /* Sends one message to the peer with routing id rid. Best effort: a
     * message may be lost; the protocol re-sends what matters. frames are
     * borrowed for the call. */
    void (*send)(void *ctx, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
                 const struct wire_frame *frames, size_t nframes);
    /* Appends a record (borrowed for the call: copy it) to the journal and
     * returns its sequence number: 1, 2, 3, ... in append order, never
     * reused. force: the record must be durable before core_on_durable
     * reports it (a lazy one may wait for company); either way records
     * become durable in append order. */
    uint64_t (*append)(void *ctx, const struct journal_rec *r, bool force);
    /* Asks what the journal durably holds of txid; answered later, in any
     * order, by core_on_lookup. */
    void (*lookup)(void *ctx, const uint8_t txid[16]);
    /* False while the journal cannot write: new work is refused (EBUSY). */
    bool (*journal_healthy)(void *ctx);
    /* Operators (core_admin.h); either may be NULL in a shell without an
     * admin endpoint. admin_reply: the answer (JSON, borrowed for the call)
     * to the admin request the shell handed in with token. read_records:
     * asks for one txid's records (journal_read_records), answered later by
     * core_on_records with token. */
    void (*admin_reply)(void *ctx, uint64_t token, const char *json, size_t len);
    void (*read_records)(void *ctx, const uint8_t txid[16], uint64_t token);
};

/* Why a request was refused (an ERROR reply to a client): the label values
 * of treaty_refusals_total (core_refusal_name). */
enum core_refusal {
    CORE_REFUSED_STOPPING = 0, /* the coordinator is shutting down */
    CORE_REFUSED_JOURNAL,      /* the journal cannot be written, or a lookup could not read it */
    CORE_REFUSED_INFLIGHT,     /* limits.max_inflight (transactions, or journal lookups) */
    CORE_REFUSED_TXID,         /* the txid is not UUIDv7, or made further ahead than txid.max_future_s */
    CORE_REFUSED_EXPIRED,      /* the txid is older than txid.max_age_s */
    CORE_REFUSED_LIMIT,        /* over a configured cap: branches, steps, payload, deadline, retry policy */
    CORE_REFUSED_INVALID,      /* a saga definition that does not decode */
    CORE_REFUSED_UNEXPLAINED,  /* the journal holds unfinished records of the txid that nobody holds */
    CORE_REFUSED_CLIENT_LIMIT, /* limits.max_inflight_per_client (also counted in denied_limit) */
    CORE_REFUSAL_COUNT_
};

/* "stopping", "journal_unavailable", ...; "?" out of range. */
const char *core_refusal_name(enum core_refusal r);

/* Counters for logs and metrics. Monotonic except the gauges. */
struct core_stats {
    uint64_t submitted, committed, aborted, refused, malformed, late_votes, inquiries, recovered;
    uint64_t presumed_aborts, lookups, lookup_errors;
    uint64_t sagas, sagas_completed, sagas_compensated, sagas_stuck, step_retries;
    /* messages dropped (or refused) by authorization, by reason */
    uint64_t denied_role;     /* a type the sender's role may not send; a key no longer listed */
    uint64_t denied_service;  /* HELLO for a service the key is not listed for */
    uint64_t denied_instance; /* HELLO for a live instance name another peer holds (or an unusable routing id) */
    uint64_t denied_sender;   /* VOTE, ACK, RESULT, INQUIRE not from the instance the request went to */
    uint64_t denied_limit;    /* SUBMIT, SAGA, QUERY beyond limits.max_inflight_per_client */
    size_t inflight_2pc, inflight_sagas; /* gauges */
    size_t outcomes_cached, instances;   /* gauges */
    uint64_t outcomes_evicted;
    uint64_t decision_resends;              /* COMMIT/ABORT messages sent again to a branch */
    uint64_t refused_2pc, refused_saga;     /* refusals of a SUBMIT, of a SAGA (counted in refused) */
    uint64_t refusals[CORE_REFUSAL_COUNT_]; /* refused, by reason */
};

struct core;

/* A core for cfg (borrowed: must outlive the core), acting through io
 * (copied), with its PRNG seeded by seed. NULL only on out-of-memory. */
struct core *core_new(const struct config *cfg, const struct core_io *io, uint64_t seed);
/* Frees everything (transactions still in memory are simply dropped: the
 * journal holds what matters). Accepts NULL; sets *c to NULL. */
void core_destroy(struct core **c);

/* Recovery, step 2. The signature is journal_scan_fn's, with the core as
 * arg: journal_scan(j, core_recover_record, core). Returns 0. */
int core_recover_record(void *core, const struct journal_rec *r, long long finished_at_unix);
/* Optional, before core_recover_done: the creation time of the newest txid
 * the journal holds records of among those made by now.wall_ms +
 * txid.max_future_s (journal_newest_txid; -1: none). A txid made later is
 * known to be new: no journal lookup before it runs. Without it, every txid
 * made up to now + txid.max_future_s is looked up when nothing in memory
 * knows it (a previous run may have accepted it). */
void core_recover_newest(struct core *c, int64_t newest_ms);
/* During recovery: how many transactions and sagas were rebuilt so far (the
 * run being gathered not counted yet). 0 before the first record. */
size_t core_recover_progress(const struct core *c);
/* Ends recovery; returns the number of transactions and sagas resumed. */
size_t core_recover_done(struct core *c, struct core_time now);

/* The configuration the core reads (core_new's cfg) was changed by a
 * reload (reload.h; config.h lists the keys): the core re-reads what it
 * had copied out of it (registry.dead_after_ms). Everything else is read
 * from cfg where it is used, so it applies from the next event on. */
void core_config_changed(struct core *c);

/*
 * A decoded message from the peer with routing id rid. peer: who sent it,
 * as the shell authenticated it - the allow-list entry (allowlist.h) of the
 * CURVE public key of the sender's connection, looked up in the allow-list
 * as it is now, for every message (roles 0 when the key is no longer
 * listed: revoked since the connection was made). Instance names and a
 * client's share of transactions in flight are bound to the key. NULL when
 * the shell does not authenticate peers (no CURVE): every role and service,
 * and the routing id is the identity. Borrowed for the call.
 */
void core_on_message(struct core *c, const uint8_t *rid, size_t rid_len, const struct allow_entry *peer,
                     const struct wire_msg *m, struct core_time now);
/* The shell's allow-list was replaced by a (SIGHUP): instances registered
 * by a key no longer listed for their service are dropped now (their
 * messages are refused from now on anyway, by the per-message roles). */
void core_on_allowlist(struct core *c, const struct allowlist *a, struct core_time now);
/* A message from rid that did not decode (err: wire_decode's error; h: the
 * header as far as it decoded, for the reply's txid, or NULL). Answered with
 * ERROR; counted and logged only when rid_len is 0 (nobody to answer). */
void core_on_malformed(struct core *c, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h, int err,
                       struct core_time now);
/* Every record up to and including seq is durable. */
void core_on_durable(struct core *c, uint64_t seq, struct core_time now);
/* The journal's answer to an io->lookup. */
void core_on_lookup(struct core *c, const struct journal_lookup_result *r, struct core_time now);
/* Time passed: fires due timers (prepare deadlines, decision re-sends, saga
 * retries and deadlines), drops silent participant instances (every
 * registry.heartbeat_ms from core_recover_done on). */
void core_on_tick(struct core *c, struct core_time now);
/* When core_on_tick has work next (monotonic ms), or -1 when nothing waits. */
int64_t core_next_tick(const struct core *c);

/* Refuse new transactions from now on (SIGTERM). */
void core_stop(struct core *c);
/* Transactions and sagas still in memory (in flight or finishing). */
size_t core_unfinished(const struct core *c);
void core_get_stats(const struct core *c, struct core_stats *out);

/* What a metrics scrape needs beyond core_stats: gauges found by walking the
 * transactions in memory, and the duration histograms. */
struct core_metrics {
    size_t in_doubt_txns;       /* 2PC transactions with a branch that may be prepared at its participant and
                                   has not acknowledged a decision */
    size_t in_doubt_branches;   /* those branches */
    int64_t in_doubt_oldest_ms; /* age of the oldest in-doubt transaction by its txid's creation time
                                   (the client's clock; never negative); -1: none */
    size_t sagas_compensating;  /* sagas that turned around and are not finished */
    size_t sagas_stuck;         /* sagas with a compensation stuck now (struct core_stats counts them ever) */
    /* Submit -> outcome told, in ms on the core's clock, of the transactions
     * and sagas submitted to this process (not recovered ones). */
    struct metrics_hist_snap duration_2pc, duration_saga;
};

/* Fills *out, now being the current time. O(transactions in memory): it
 * walks them. For a scrape (a few a second at most), never per message.
 * Same thread as the other calls. */
void core_get_metrics(const struct core *c, struct core_time now, struct core_metrics *out);

/* Calls fn for each of the first max services the registry knows (in the
 * order they first said HELLO; a service stays known when its last instance
 * is dropped) with its number of live instances; name is borrowed for the
 * call. Returns how many services are known (it may exceed max). */
typedef void (*core_service_fn)(void *arg, const char *service, size_t instances);
size_t core_services(const struct core *c, size_t max, core_service_fn fn, void *arg);

#endif
