/*
 * sim.h - Treaty's deterministic simulator: the real protocol cores of the
 * coordinator, the participants and the clients, wired to a simulated
 * network, journal, databases and clock, all driven by one seeded PRNG.
 *
 * One process, one thread. A run ("world") is one seed: the seed chooses the
 * fault rates, the workload, and every fault (message loss, duplication,
 * delay and so reordering; crashes and restarts of any process; a journal
 * commit in flight at a crash landing or not; journal and database
 * restarts; client timeouts and resubmissions; clock jumps). Everything
 * happens as events on one simulated clock, in (time, sequence) order, so the
 * same seed replays the same run, byte for byte.
 *
 * Phases of a world:
 *   1. faults: the workload runs while faults are injected, until faults_ms
 *      of simulated time;
 *   2. heal: no new faults; dead processes restart; the network delivers
 *      everything, the databases and the journal are up;
 *   3. quiescence: the run goes on until every transaction the workload
 *      started has a final answer at its client, no participant database
 *      holds a prepared transaction, and the journal holds no unfinished
 *      transaction - or until the liveness bound passes (a violation);
 *   4. checks: the invariants (check.c) against the simulated databases,
 *      the journal and what every client was told.
 *
 * Identities: a seed runs either with authentication (every process has a
 * key of its own that survives its restarts, as a CURVE key does, and the
 * coordinator's core gets its allow-list entry with every message: clients
 * are clients, participants participants of their service) or without (the
 * core gets no peer; the routing id, new at every restart, is the
 * identity). A hostile process (srogue.c) forges what it overhears.
 *
 * Files: sim.h (this), world.c (events, network, faults, phases), sjournal.c
 * (the simulated journal), scoord.c (a coordinator process around
 * coordinator/core.h), sdb.c (a simulated PostgreSQL database), spart.c (a
 * participant process around the SDK's participant core), sclient.c (a client
 * process around the SDK's client core, and the workload), srogue.c (the
 * hostile peer), check.c (the invariants), main.c (seeds, budget, progress,
 * replay command).
 */
#ifndef TREATY_SIM_H
#define TREATY_SIM_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "wire.h"

/* ------------------------------------------------------------------ PRNG */

/* xoshiro256** seeded through splitmix64: every random choice of a world. */
struct sim_rng {
    uint64_t s[4];
};
void sim_rng_seed(struct sim_rng *r, uint64_t seed);
uint64_t sim_rng_next(struct sim_rng *r);
/* Uniform in [lo, hi] (inclusive; hi >= lo). */
int64_t sim_rng_range(struct sim_rng *r, int64_t lo, int64_t hi);
/* True with probability p (0..1). */
bool sim_rng_chance(struct sim_rng *r, double p);

/* Out of memory is fatal in the simulator. */
void *sim_xcalloc(size_t n, size_t size);
void *sim_xrealloc(void *p, size_t size);
char *sim_xstrdup(const char *s);

/* ------------------------------------------------------------------ events */

enum ev_kind {
    EV_MSG = 1,      /* a network message arrives (data: struct netmsg) */
    EV_TICK,         /* a node's core has timers due */
    EV_JOURNAL_DONE, /* the journal's group commit in flight returns */
    EV_LOOKUP_DONE,  /* a journal lookup is answered (data: struct slookup) */
    EV_CRASH,        /* SIGKILL a node */
    EV_RESTART,      /* start a dead node again */
    EV_DB_DOWN,      /* a participant database restarts: down now (arg: db index) */
    EV_DB_UP,        /* ... and up again */
    EV_JOURNAL_DOWN, /* the journal's PostgreSQL restarts: down now */
    EV_JOURNAL_UP,   /* ... and up again */
    EV_GC,           /* the journal's collector runs */
    EV_WORK,         /* a client's workload does its next thing */
    EV_CLOCK_JUMP,   /* a node's wall clock jumps */
    EV_HEAL,         /* the fault phase ends */
    EV_PROBE         /* check for quiescence */
};

struct event {
    int64_t at;
    uint64_t seq; /* tie-break: insertion order */
    enum ev_kind kind;
    int node;     /* target node, or -1 */
    unsigned inc; /* the node's incarnation when scheduled (stale events are dropped) */
    long arg;     /* kind-specific */
    void *data;   /* kind-specific, owned by the event */
};

/* ------------------------------------------------------------------ nodes */

enum node_kind { NODE_COORD, NODE_PART, NODE_CLIENT, NODE_ROGUE };

struct node {
    enum node_kind kind;
    int id;
    char name[64];
    bool alive;
    unsigned inc;    /* incarnation: bumped at every restart */
    uint8_t rid[64]; /* routing id of this incarnation (what the coordinator sees) */
    size_t rid_len;
    int64_t wall_skew_ms; /* this node's wall clock minus the world's true time */
    int64_t tick_at;      /* the EV_TICK scheduled for the core, or -1 */
    bool dying;           /* killed in the middle of an event: its effects stop, it crashes once the event ends */
    void *impl;           /* struct scoord / spart / sclient */
    /* participants */
    char service[32];
    char instance[32];
    int db; /* index in world.dbs */
};

/* A message on the wire: the bytes wire_send would send (wire_pack; the
 * receiver decodes them with wire_unpack, like wire_recv does). */
struct netmsg {
    int from; /* node id */
    unsigned from_inc;
    uint8_t rid[64]; /* the sender's routing id (for the coordinator's ROUTER) */
    size_t rid_len;
    int to;          /* node id; for the coordinator: whichever incarnation is up */
    unsigned to_inc; /* participants and clients: only this incarnation receives it */
    size_t len;
    uint8_t *data;
};

/* ------------------------------------------------------------------ world */

struct sjournal;
struct sdb;
struct check;

/* The knobs a seed draws (fault rates etc.). */
struct world_params {
    int64_t faults_ms;        /* length of the fault phase */
    int64_t liveness_ms;      /* bound after heal */
    double msg_drop, msg_dup; /* per message */
    int64_t delay_min_ms, delay_max_ms;
    double crash_rate; /* crashes per node per simulated second */
    int64_t down_min_ms, down_max_ms;
    double db_restart_rate, journal_restart_rate; /* per simulated second */
    double clock_jump_rate;                       /* per node per simulated second */
    double lost_ack_chance;                       /* a journal group in flight at a crash: landed */
    double step_crash;      /* a process dies at one of its effects (a send, an append): per effect */
    double long_delay;      /* a message is held 1-15 s (a stalled socket, a partition): per message */
    bool late;              /* clients resubmit some answered txids past the journal's retention */
    double crash_in_flight; /* a forced journal record appended: the coordinator dies 0-4 ms later */
    double hold_decision;   /* a COMMIT or ABORT is held 0.2-3 s (it arrives after what follows it) */
    int n2pc, nsagas;       /* workload size */
    int clients;
    bool auth;          /* processes authenticate (a key each, allow-list roles) */
    double rogue_rate;  /* forged messages per simulated second from the hostile peer (fault phase) */
    unsigned rogue_key; /* with auth: the hostile peer's roles (ALLOW_* bits; 0: a key revoked
                           since it connected), and it may be a participant of "rogue" only */
};

/* What the hostile peer overheard: requests the coordinator sent. */
struct sniffed {
    uint8_t type;
    uint8_t txid[16];
    uint16_t branch, attempt, code;
};
#define SIM_SNIFF_MAX 64

struct world {
    uint64_t seed;
    bool trace;      /* print the trace */
    bool hash_trace; /* hash it (determinism check) */
    uint64_t trace_hash;
    FILE *trace_out;
    struct sim_rng rng;
    int64_t now;      /* simulated monotonic ms */
    int64_t epoch_ms; /* true wall clock at now = 0 */
    uint64_t next_seq;
    struct event **heap;       /* min-heap by (at, seq) */
    struct event *free_events; /* recycled, chained through data */
    size_t nheap, capheap;
    struct world_params p;
    int retention_s; /* the coordinator's journal.retention_s (the collector's too) */
    bool healed;
    bool stop; /* quiescent or out of time */
    int64_t healed_at;

    struct node *nodes;
    size_t nnodes;
    int coord; /* node id of the coordinator */
    int rogue; /* node id of the hostile peer */
    struct sniffed sniff[SIM_SNIFF_MAX];
    size_t nsniff; /* sniffs so far (the ring holds the last SIM_SNIFF_MAX) */
    struct sjournal *journal;
    struct sdb **dbs; /* one per service */
    size_t ndbs;
    struct check *check;

    uint64_t commit_clock; /* orders the databases' commits of business effects */

    /* outcome of the run */
    bool violated;
    char violation[1024];
    uint64_t events, messages, crashes, txns_done;
};

/* A world for seed: the topology, the parameters the seed draws, the
 * starting data. trace: print the trace to out; hash: hash it. */
struct world *world_new(uint64_t seed, bool trace, bool hash, FILE *out);
/* Runs the world to quiescence (or a violation), then the checks. */
void world_run(struct world *w);
void world_free(struct world *w);

/* Schedules an event at now + after (>= 0). data is owned by the event. */
void world_schedule(struct world *w, int64_t after, enum ev_kind kind, int node, long arg, void *data);
/* The node's wall clock in Unix ms. */
int64_t world_wall_ms(const struct world *w, const struct node *n);
/* Sends a message from node `from` (its current incarnation): to the
 * coordinator (to_rid NULL), or to the node whose routing id is to_rid (the
 * coordinator's replies). Faults apply during the fault phase. */
void world_send(struct world *w, int from, const uint8_t *to_rid, size_t to_rid_len, const struct wire_hdr *h,
                const struct wire_frame *frames, size_t nframes);
/* SIGKILL a node now (it restarts after a while). */
void world_crash_node(struct world *w, int node);
/* A process is about to have an effect (send a message, append a record):
 * true when it dies right here - the effect, and every later one of the
 * current event, does not happen; the process crashes when the event ends.
 * Drawn from the world's step_crash during the fault phase. */
bool world_dies_here(struct world *w, struct node *n);
/* A node's core has timers due at `due` (monotonic ms, -1: none). */
void world_tick_at(struct world *w, int node, int64_t due);
/* Records a violation (the first one wins) and ends the world. */
void world_violation(struct world *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A line of the trace, prefixed with the simulated time. */
void sim_trace(struct world *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------ processes */

/* Each kind of node implements these (scoord.c, spart.c, sclient.c). start:
 * a fresh incarnation begins (boot, or restart after a crash); crash: SIGKILL
 * (volatile state lost); msg: a decoded message for this incarnation (for
 * the coordinator, rid is the sender's routing id); tick: the core's timers. */
void scoord_free(struct node *n);
void spart_free(struct node *n);
void sclient_free(struct node *n);
void scoord_start(struct world *w, struct node *n);
void scoord_crash(struct world *w, struct node *n);
void scoord_msg(struct world *w, struct node *n, int from, const uint8_t *rid, size_t rid_len,
                const struct wire_msg *m);
void scoord_tick(struct world *w, struct node *n);
void scoord_journal_done(struct world *w, struct node *n);
void scoord_lookup_done(struct world *w, struct node *n, void *lookup);
size_t scoord_unfinished(struct world *w, struct node *n);

void spart_start(struct world *w, struct node *n);
void spart_crash(struct world *w, struct node *n);
void spart_msg(struct world *w, struct node *n, const struct wire_msg *m);
void spart_tick(struct world *w, struct node *n);

void sclient_start(struct world *w, struct node *n);
void sclient_crash(struct world *w, struct node *n);
void sclient_msg(struct world *w, struct node *n, const struct wire_msg *m);
void sclient_tick(struct world *w, struct node *n);
void sclient_work(struct world *w, struct node *n);
/* True when every transaction this client started has a final answer (and,
 * with late_too, its late resubmissions have theirs). */
bool sclient_done(struct world *w, struct node *n, bool late_too);

void srogue_start(struct world *w, struct node *n);
void srogue_tick(struct world *w, struct node *n);
/* A message the coordinator sent to the hostile peer: with authentication
 * it must never get one (a violation); without, it never says HELLO. */
void srogue_msg(struct world *w, struct node *n, const struct wire_msg *m);

/* The journal (sjournal.c) and the databases (sdb.c) outlive processes. */
struct sjournal *sjournal_new(struct world *w);
void sjournal_free(struct sjournal *j);
void sjournal_down(struct world *w, struct sjournal *j);
void sjournal_up(struct world *w, struct sjournal *j);
void sjournal_gc(struct world *w, struct sjournal *j);
size_t sjournal_unfinished(const struct sjournal *j);

struct sdb *sdb_new(struct world *w, const char *service);
void sdb_free(struct sdb *d);
void sdb_down(struct world *w, struct sdb *d);
void sdb_up(struct world *w, struct sdb *d);
size_t sdb_prepared(const struct sdb *d);

#endif
