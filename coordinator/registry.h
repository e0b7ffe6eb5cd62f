/*
 * registry.h - live participant instances by service, from HELLO heartbeats.
 *
 * An instance is (service, instance id) with the ZeroMQ routing id it last
 * spoke from. HELLO registers or refreshes it; an instance silent for longer
 * than dead_after_ms is dropped by registry_sweep(). registry_pick() chooses a
 * live instance of a service round-robin. Not thread-safe (loop thread only).
 */
#ifndef TREATY_REGISTRY_H
#define TREATY_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

struct instance {
    char service[WIRE_NAME_MAX + 1];
    char name[WIRE_NAME_MAX + 1];
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    int64_t last_seen_ms;
};

struct registry;

struct registry *registry_new(int dead_after_ms);
void registry_destroy(struct registry **r);

/* HELLO from rid. Returns true when this instance is new (or came back with a
 * new routing id). */
bool registry_hello(struct registry *r, const struct wire_frame *service, const struct wire_frame *instance,
                    const uint8_t *rid, size_t rid_len, int64_t now_ms);

/* A live instance of service (NUL-terminated), round-robin; NULL when none.
 * The pointer is valid until the next registry_hello/registry_sweep. */
const struct instance *registry_pick(struct registry *r, const char *service);

/* True when rid belongs to a live instance of service. */
bool registry_is_live(const struct registry *r, const char *service, const uint8_t *rid, size_t rid_len);

/* Drops instances not heard from for dead_after_ms; returns how many. */
size_t registry_sweep(struct registry *r, int64_t now_ms);

size_t registry_count(const struct registry *r);

/* Services known (ever said HELLO; a service is kept when its last instance
 * is dropped), and the i-th of them (i < registry_nservices) in the order
 * they first said HELLO, with its number of live instances in *live. The
 * name is valid until the next registry_hello. */
size_t registry_nservices(const struct registry *r);
const char *registry_service_at(const struct registry *r, size_t i, size_t *live);

#endif
