/*
 * registry.h - live participant instances by service, from HELLO heartbeats.
 *
 * An instance is (service, instance name) with the ZeroMQ routing id it last
 * spoke from. HELLO registers or refreshes it; an instance silent for longer
 * than dead_after_ms is dropped by registry_sweep() (and counts as gone at
 * once for a HELLO that wants its name). registry_pick() chooses a live
 * instance of a service round-robin.
 *
 * While it lives, a name is bound to the peer that registered it: to its
 * CURVE public key when the coordinator authenticates peers (the same key
 * may come back from a new connection and keep the name), else to its
 * routing id (a restarted participant, on a new connection, gets the name
 * once the old registration is silent for dead_after_ms). A HELLO for a live
 * name from another peer changes nothing: never a takeover.
 *
 * Not thread-safe (one thread drives the core that owns it).
 */
#ifndef TREATY_REGISTRY_H
#define TREATY_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

#define REGISTRY_KEY_LEN 32

struct instance {
    char service[WIRE_NAME_MAX + 1];
    char name[WIRE_NAME_MAX + 1];
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    bool keyed;                    /* bound to key (authenticated), else to rid */
    uint8_t key[REGISTRY_KEY_LEN]; /* the CURVE public key that registered it, when keyed */
    int64_t last_seen_ms;
};

enum registry_hello_result {
    REGISTRY_JOINED,    /* a new instance (or a name whose old owner was silent past dead_after_ms) */
    REGISTRY_REFRESHED, /* a heartbeat of the owner */
    REGISTRY_MOVED,     /* the owner's key from a new connection: the instance follows it */
    REGISTRY_TAKEN,     /* the name is bound to another peer while it lives: refused, nothing changed */
};

struct registry;

struct registry *registry_new(int dead_after_ms);
void registry_destroy(struct registry **r);
/* registry.dead_after_ms changed (a reload): applies from the next sweep
 * and lookup on, to every instance. */
void registry_set_dead_after(struct registry *r, int dead_after_ms);

/* HELLO as service/instance (NUL-terminated names) from rid, authenticated
 * by key (REGISTRY_KEY_LEN bytes), or key NULL when peers are not
 * authenticated. */
enum registry_hello_result registry_hello(struct registry *r, const char *service, const char *instance,
                                          const uint8_t *rid, size_t rid_len, const uint8_t *key, int64_t now_ms);

/* A live instance of service (NUL-terminated), round-robin; NULL when none.
 * The pointer is valid until the next registry_hello/registry_sweep/
 * registry_drop_if. */
const struct instance *registry_pick(struct registry *r, const char *service);

/* True when rid belongs to a live instance of service. */
bool registry_is_live(const struct registry *r, const char *service, const uint8_t *rid, size_t rid_len);

/* Drops instances not heard from for dead_after_ms; returns how many. */
size_t registry_sweep(struct registry *r, int64_t now_ms);

/* Drops every keyed instance for which keep(arg, instance) is false (its key
 * was revoked); returns how many. */
size_t registry_drop_if(struct registry *r, bool (*keep)(void *arg, const struct instance *in), void *arg);

size_t registry_count(const struct registry *r);

/* Calls cb for every live instance, service by service (operators'
 * listings). cb must not change the registry. */
void registry_each(const struct registry *r, void (*cb)(void *arg, const struct instance *in), void *arg);
/* Services known (ever said HELLO; a service is kept when its last instance
 * is dropped), and the i-th of them (i < registry_nservices) in the order
 * they first said HELLO, with its number of live instances in *live. The
 * name is valid until the next registry_hello. */
size_t registry_nservices(const struct registry *r);
const char *registry_service_at(const struct registry *r, size_t i, size_t *live);

#endif
