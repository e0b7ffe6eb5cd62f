/*
 * txmap.h - a hash map from 16-byte transaction ids to borrowed pointers.
 * Open addressing with linear probing and backward-shift deletion. Txids
 * come from clients, who may choose them to collide: slots are chosen by a
 * keyed hash (SipHash-2-4, libsodium's crypto_shorthash) under a key the
 * owner gives each map, drawn at random (the coordinator's core draws it from
 * its seeded PRNG, so that a seed replays the same map layout). Not
 * thread-safe.
 */
#ifndef TREATY_TXMAP_H
#define TREATY_TXMAP_H

#include <stddef.h>
#include <stdint.h>

#define TXMAP_KEY_BYTES 16

struct txmap_slot {
    uint8_t key[16];
    void *val; /* NULL: empty slot */
};

struct txmap {
    struct txmap_slot *slots;
    size_t cap; /* power of two */
    size_t len;
    uint8_t hkey[TXMAP_KEY_BYTES]; /* the hash key (crypto_shorthash_KEYBYTES) */
};

/* An empty map hashing with key (TXMAP_KEY_BYTES, copied): random, and
 * secret from clients. Aborts if libsodium cannot initialise (the daemon's
 * rule for resources it cannot run without). */
void txmap_init(struct txmap *m, const uint8_t key[TXMAP_KEY_BYTES]);
void txmap_free(struct txmap *m); /* frees the table, not the values */
void *txmap_get(const struct txmap *m, const uint8_t key[16]);
/* Inserts or replaces; val must not be NULL. Aborts on out-of-memory (daemon). */
void txmap_put(struct txmap *m, const uint8_t key[16], void *val);
/* Removes and returns the value, or NULL. */
void *txmap_del(struct txmap *m, const uint8_t key[16]);
/* The longest run of occupied slots a lookup may walk (O(cap); for tests and
 * diagnostics). */
size_t txmap_max_probe(const struct txmap *m);

#endif
