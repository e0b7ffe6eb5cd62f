/*
 * txmap.h - a hash map from 16-byte transaction ids to borrowed pointers.
 * Open addressing with linear probing and backward-shift deletion. Txids
 * come from clients, who may choose them to collide: slots are chosen by a
 * keyed hash (SipHash-2-4, libsodium's crypto_shorthash) whose key each map
 * draws at random in txmap_init. Not thread-safe.
 */
#ifndef TREATY_TXMAP_H
#define TREATY_TXMAP_H

#include <stddef.h>
#include <stdint.h>

struct txmap_slot {
    uint8_t key[16];
    void *val; /* NULL: empty slot */
};

struct txmap {
    struct txmap_slot *slots;
    size_t cap; /* power of two */
    size_t len;
    uint8_t hkey[16]; /* the hash key (crypto_shorthash_KEYBYTES) */
};

/* An empty map with a fresh random hash key. Aborts if libsodium cannot
 * initialise (the daemon's rule for resources it cannot run without). */
void txmap_init(struct txmap *m);
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
