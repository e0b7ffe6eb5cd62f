/*
 * config.h - treatyd's configuration: a libconfig file plus command-line flags,
 * turned into one immutable struct.
 *
 * File keys (all optional; defaults in parentheses; see treatyd.conf.example):
 *
 *   listen                        = "tcp://127.0.0.1:7600"   ZeroMQ endpoint the ROUTER binds
 *   log_level                     = "info"          error | warn | info | debug
 *   log_format                    = "text"          text | json (log.h)
 *   shutdown_deadline_ms          = 5000            SIGTERM: how long in-flight work may finish   [0, 600000]
 *   journal: {
 *     conninfo                    = ""              libpq conninfo; "" = libpq defaults (PG* env)
 *     connect_initial_ms          = 100             first reconnect backoff                      [1, 60000]
 *     connect_max_ms              = 5000            reconnect backoff cap                        [1, 600000]
 *     lazy_delay_ms               = 20              max wait of a batch of lazy records          [0, 10000]
 *     retention_s                 = 3600            finished transactions kept for resubmission  [60, 31536000]
 *     gc_interval_ms              = 5000            how often finished transactions are removed  [100, 3600000]
 *   }
 *   txid: {
 *     max_age_s                   = 1800            older txids are refused (TREATY_EEXPIRED)    [1, 31536000]
 *     max_future_s                = 10              txids ahead of our clock by more: refused    [0, 3600]
 *   }
 *   twopc: {
 *     default_timeout_ms          = 10000           prepare deadline when the client gives 0    [1, 3600000]
 *     max_timeout_ms              = 600000          longer prepare deadlines are refused         [1, 86400000]
 *     resend_initial_ms           = 200             first decision re-send backoff               [1, 60000]
 *     resend_max_ms               = 5000            decision re-send backoff cap                 [1, 3600000]
 *   }
 *   saga: {
 *     max_steps                   = 32              steps per saga                               [1, 64]
 *     stuck_after_attempts        = 10              failed tries after which a compensation is stuck [1, 1000000]
 *     stuck_retry_ms              = 30000           how often a stuck compensation is still retried [1, 86400000]
 *     max_attempts                = 100             cap on a step's max_attempts                 [1, 65535]
 *     max_backoff_ms              = 60000           cap on a step's backoffs                     [1, 86400000]
 *     max_try_timeout_ms          = 300000          cap on a step's try timeout                  [1, 86400000]
 *     max_deadline_ms             = 86400000        cap on a saga's deadline                     [1, 2147483647]
 *   }
 *   registry: {
 *     heartbeat_ms                = 1000            interval participants say HELLO              [10, 60000]
 *     dead_after_ms               = 5000            silence after which an instance is dropped   [20, 600000]
 *   }
 *   limits: {
 *     max_payload_bytes           = 65536           one branch payload                           [0, 16777216]
 *     max_branches                = 16              branches per transaction                     [1, 128]
 *     max_inflight                = 100000          transactions in flight                       [1, 10000000]
 *     outcome_cache               = 100000          finished outcomes kept in memory             [1, 100000000]
 *     max_inflight_per_client     = 10000           transactions in flight per client key (per   [1, 10000000]
 *                                                   routing id without CURVE)
 *   }
 *   security: {                                     docs/security.md
 *     curve                       = false           CURVE on the ROUTER: encryption, and only keys
 *                                                   on the allow-list may connect
 *     secret_key_file             = ""              the coordinator's secret key (Z85, treatyd --keygen
 *                                                   PATH writes PATH.key); required with curve
 *     public_key_file             = ""              its public key (PATH.pub); required with curve
 *     allow_list                  = ""              public key -> roles (allowlist.h); required with
 *                                                   curve; read again on SIGHUP
 *     allow_insecure              = false           without curve, listen on a non-loopback address
 *                                                   anyway (anyone who reaches it is trusted)
 *   }
 *   admin: {                                        treatyctl's endpoint (docs/treatyctl.md)
 *     listen                      = "ipc:///tmp/treatyd-admin.sock"   ipc:// only: the socket file is made
 *                                                   0600 (owner only); "" = no admin endpoint
 *     max_list                    = 1000            cap on a list request's --limit              [1, 100000]
 *     max_pending                 = 16              admin requests being answered at once        [1, 1024]
 *   }
 *   metrics: {                                      Prometheus /metrics over HTTP (docs/metrics.md)
 *     listen                      = ""              "IP:PORT" ("127.0.0.1:9464", "[::1]:9464"); "" = off
 *     max_services                = 256             services given a treaty_service_instances series [1, 100000]
 *     max_connections             = 8               concurrent HTTP connections                  [1, 1024]
 *     connection_timeout_s        = 10              an idle HTTP connection is closed after this [1, 3600]
 *   }
 *
 * Flags override the file: -c/--config FILE, --listen EP, --journal CONNINFO,
 * --log-level LEVEL, --help. (treatyd --keygen PATH is a mode of its own,
 * handled by main.c before any configuration is read.)
 */
#ifndef TREATY_CONFIG_H
#define TREATY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define CONFIG_PATH_MAX 1024

struct config {
    char listen[256];
    int log_level;  /* enum log_level */
    int log_format; /* enum log_format */
    int shutdown_deadline_ms;

    char journal_conninfo[1024];
    int journal_connect_initial_ms;
    int journal_connect_max_ms;
    int journal_lazy_delay_ms;
    int journal_retention_s;
    int journal_gc_interval_ms;

    int txid_max_age_s;
    int txid_max_future_s;

    int default_timeout_ms;
    int max_timeout_ms;
    int resend_initial_ms;
    int resend_max_ms;

    int max_steps;
    int stuck_after_attempts;
    int stuck_retry_ms;
    int saga_max_attempts;
    int saga_max_backoff_ms;
    int saga_max_try_timeout_ms;
    int saga_max_deadline_ms;

    int heartbeat_ms;
    int dead_after_ms;

    int max_payload_bytes;
    int max_branches;
    int max_inflight;
    int outcome_cache;
    int max_inflight_per_client;

    bool curve;
    char secret_key_file[CONFIG_PATH_MAX];
    char public_key_file[CONFIG_PATH_MAX];
    char allow_list[CONFIG_PATH_MAX];
    bool allow_insecure;

    char admin_listen[256];
    int admin_max_list;
    int admin_max_pending;
    char metrics_listen[256];
    int metrics_max_services;
    int metrics_max_connections;
    int metrics_connection_timeout_s;
};

/* Fills c with every default. */
void config_defaults(struct config *c);

/* Reads the libconfig file at path over c. An unknown key, a wrong type or an
 * out-of-range value fails: returns TREATY_ECONFIG with a message naming the
 * file, line when known, key and problem in err ("treatyd.conf:12: twopc.resend_max_ms:
 * must be between 1 and 3600000, got 0"). */
int config_load_file(struct config *c, const char *path, char *err, size_t errlen);

/*
 * Parses argv (flags above) into c: first the file named by -c (if any), then
 * the flags over it. Returns 0, 1 when --help was given (usage already printed
 * to stdout), or TREATY_ECONFIG with the problem in err.
 *
 * Two more flags make it a one-shot check and return 1 with c untouched:
 * --version prints "treatyd X.Y.Z"; --check-config FILE reads FILE as -c
 * would (no -c with it), applies the other flags, runs config_validate and
 * prints "ok" - or fails with TREATY_ECONFIG as above.
 */
int config_from_args(struct config *c, int argc, char **argv, char *err, size_t errlen);

/* Cross-key checks (resend_initial_ms <= resend_max_ms, ...; with
 * security.curve the three files named; without it, listen on a loopback
 * address - 127.0.0.0/8, ::1, localhost - or ipc:// or inproc://, unless
 * security.allow_insecure). 0 or TREATY_ECONFIG. */
int config_validate(const struct config *c, char *err, size_t errlen);

/* True when endpoint (a ZeroMQ bind endpoint) cannot be reached from other
 * hosts: tcp:// on 127.0.0.0/8, [::1] or localhost; ipc://; inproc://. */
bool config_endpoint_is_local(const char *endpoint);

/*
 * Reload (SIGHUP, reload.h). The file and the flags are read again; the keys
 * below take their new values in the running process, between two events of
 * the loop. Caps and defaults apply to what is admitted from then on (a
 * transaction or saga admitted earlier keeps its prepare deadline, saga
 * deadline and step retry policies); the decision re-send backoff, the
 * stuck threshold and retry interval of compensations, the heartbeat and
 * dead_after_ms apply at once to everything in flight:
 *
 *   log_level, log_format, shutdown_deadline_ms, txid.max_age_s,
 *   twopc.* (default_timeout_ms, max_timeout_ms, resend_initial_ms, resend_max_ms),
 *   saga.* (every key), registry.heartbeat_ms (participants adopt it at
 *   their next HELLO), registry.dead_after_ms, limits.max_branches,
 *   limits.max_inflight, limits.max_inflight_per_client, admin.max_list
 *   (the next list request is held to it).
 *
 * The others need a restart and keep their values until then: listen (the
 * socket is bound), journal.* (the journal's connections and threads were
 * set up with them), txid.max_future_s (the start-up's horizon of txids
 * the journal may know was derived from it, outcomes.h), limits.max_payload_bytes
 * (the socket's message size limit), limits.outcome_cache (the cache was
 * sized with it), security.* (the key pair and the ZAP handler were set up
 * with them; the allow-list file they name is read again on SIGHUP, but by
 * the item of its own, security.h), admin.listen and admin.max_pending (the
 * admin socket is bound, its table of pending requests sized).
 */

/* True when the key ("twopc.default_timeout_ms", "log_level") is reloadable. */
bool config_key_reloadable(const char *key);

/* One key whose value differs. Values as text: numbers, level and format
 * names, strings in quotes ("(not shown)" for journal.conninfo: it may hold
 * a password); cut to fit. */
struct config_change {
    char key[64];
    char from[272], to[272];
    bool reloadable;
};

/* The keys whose values differ between a and b, in the order of config.h,
 * into out (at most cap). Returns how many differ (may be more than cap). */
size_t config_diff(const struct config *a, const struct config *b, struct config_change *out, size_t cap);

/* Copies the reloadable keys of next into live and writes nothing else of
 * live (not even an equal value: other threads may read the rest). */
void config_apply_reloadable(struct config *live, const struct config *next);

/* What live becomes when the file and flags now say next: *out = live with
 * next's reloadable keys. 0, or TREATY_ECONFIG with the problem in err when
 * next fails config_validate, or when *out does (a reloadable key's new value
 * may only fit a new value of a key that needs a restart, such as
 * txid.max_age_s with journal.retention_s). */
int config_reload_merge(const struct config *live, const struct config *next, struct config *out, char *err,
                        size_t errlen);

#endif /* TREATY_CONFIG_H */
