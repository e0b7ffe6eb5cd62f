/*
 * txmap.h - a hash map from 16-byte transaction ids to borrowed pointers.
 * Open addressing with linear probing and backward-shift deletion; txids are
 * random (UUIDv4) so their first bytes are the hash. Not thread-safe.
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
};

void txmap_init(struct txmap *m);
void txmap_free(struct txmap *m); /* frees the table, not the values */
void *txmap_get(const struct txmap *m, const uint8_t key[16]);
/* Inserts or replaces; val must not be NULL. Aborts on out-of-memory (daemon). */
void txmap_put(struct txmap *m, const uint8_t key[16], void *val);
/* Removes and returns the value, or NULL. */
void *txmap_del(struct txmap *m, const uint8_t key[16]);

#endif
