/*
 * reload.h - what SIGHUP reloads: a set of items, every one read and checked
 * before any is applied, so that a reload changes everything or nothing.
 *
 *   1. reload_new(), then reload_add() for each item: the configuration
 *      (reload_config_ops below) and whatever else a module can read again
 *      without a restart (the allow-list, say: an item of its own,
 *      registered by its owner next to the configuration's).
 *   2. SIGHUP: the signal handler only sets a flag. The loop thread, between
 *      two events, calls reload_run():
 *        a. prepare every item, in the order added: each reads its files and
 *           checks them, keeping the result aside; nothing live changes;
 *        b. if one prepare fails: abort every item prepared so far, log the
 *           item's name and the problem, and return its error - the process
 *           runs on exactly as before;
 *        c. else commit every item, in the same order: each makes what it
 *           kept live and logs what changed. A commit cannot fail.
 *      Then the loop lets the core recompute what it derives from the
 *      configuration (core_config_changed).
 *
 * Ownership: items and their args are borrowed and must outlive the set.
 * Thread safety: none; the loop thread (and the start-up before it) only.
 */
#ifndef TREATY_RELOAD_H
#define TREATY_RELOAD_H

#include <stddef.h>

#include "config.h"

struct reload_ops {
    /* Reads and checks the new state and keeps it aside (in arg); changes
     * nothing live. 0, or a negative TREATY_E* with the problem in err. */
    int (*prepare)(void *arg, char *err, size_t errlen);
    /* Makes what prepare kept live, logs what changed. Cannot fail. */
    void (*commit)(void *arg);
    /* Drops what prepare kept: another item's prepare failed. NULL: nothing
     * to drop. */
    void (*abort)(void *arg);
};

struct reload;

/* An empty set. Aborts on out-of-memory (daemon). */
struct reload *reload_new(void);
/* Accepts NULL; sets *r to NULL. The items are not touched. */
void reload_destroy(struct reload **r);
/* Adds an item: name for the logs ("configuration", "allow-list"), its ops
 * and arg (both borrowed). Aborts on out-of-memory. */
void reload_add(struct reload *r, const char *name, const struct reload_ops *ops, void *arg);
/* One reload, all or nothing (above). Returns 0, or the error of the first
 * prepare that failed (already logged: "SIGHUP: the <name> was not
 * reloaded, the previous one stays, and nothing else changed either:
 * <problem>"). */
int reload_run(struct reload *r);

/*
 * The configuration as an item. prepare reads the same file and flags as
 * at start (config_from_args on argc/argv), then config_reload_merge: a bad
 * file, a bad value or a combination that does not validate refuses the
 * reload. commit logs every key whose value differs - "reload: key: old ->
 * new" for a reloadable key, a warning naming each key that needs a restart
 * (it keeps its old value) - then copies the reloadable keys into *live
 * (config_apply_reloadable) and sets the log level. The lines about the
 * reload are written in the new log format, at the more verbose of the old
 * and the new level.
 */
struct reload_config {
    struct config *live; /* what the core and the loop read (borrowed) */
    int argc;            /* treatyd's arguments (borrowed) */
    char **argv;
    struct config file; /* private: what the file and flags said at the last prepare */
};

extern const struct reload_ops reload_config_ops;

#endif
