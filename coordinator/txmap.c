/*
 * txmap.c - see txmap.h.
 */
#include "txmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "util.h"

_Static_assert(sizeof(((struct txmap *)0)->hkey) == crypto_shorthash_KEYBYTES, "txmap hash key size");

static size_t hash_key(const struct txmap *m, const uint8_t k[16])
{
    uint8_t out[crypto_shorthash_BYTES];
    crypto_shorthash(out, k, 16, m->hkey);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return (size_t)h;
}

void txmap_init(struct txmap *m, const uint8_t key[TXMAP_KEY_BYTES])
{
    /* Process-wide and idempotent. SipHash itself draws no randomness: the
     * key is the caller's. */
    if (sodium_init() < 0) {
        fprintf(stderr, "treatyd: libsodium cannot initialise\n");
        abort();
    }
    m->slots = NULL;
    m->cap = 0;
    m->len = 0;
    memcpy(m->hkey, key, sizeof m->hkey);
}

void txmap_free(struct txmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = 0;
    m->len = 0;
}

static void grow(struct txmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    struct txmap_slot *ns = util_xcalloc(ncap, sizeof *ns);
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].val == NULL)
            continue;
        size_t j = hash_key(m, m->slots[i].key) & (ncap - 1);
        while (ns[j].val != NULL)
            j = (j + 1) & (ncap - 1);
        ns[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
}

void *txmap_get(const struct txmap *m, const uint8_t key[16])
{
    if (m->cap == 0)
        return NULL;
    size_t j = hash_key(m, key) & (m->cap - 1);
    while (m->slots[j].val != NULL) {
        if (memcmp(m->slots[j].key, key, 16) == 0)
            return m->slots[j].val;
        j = (j + 1) & (m->cap - 1);
    }
    return NULL;
}

void txmap_put(struct txmap *m, const uint8_t key[16], void *val)
{
    if ((m->len + 1) * 4 > m->cap * 3)
        grow(m);
    size_t j = hash_key(m, key) & (m->cap - 1);
    while (m->slots[j].val != NULL) {
        if (memcmp(m->slots[j].key, key, 16) == 0) {
            m->slots[j].val = val;
            return;
        }
        j = (j + 1) & (m->cap - 1);
    }
    memcpy(m->slots[j].key, key, 16);
    m->slots[j].val = val;
    m->len++;
}

void *txmap_del(struct txmap *m, const uint8_t key[16])
{
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1;
    size_t j = hash_key(m, key) & mask;
    while (m->slots[j].val != NULL && memcmp(m->slots[j].key, key, 16) != 0)
        j = (j + 1) & mask;
    if (m->slots[j].val == NULL)
        return NULL;
    void *val = m->slots[j].val;
    /* backward-shift deletion keeps probe chains intact */
    size_t i = j;
    for (;;) {
        m->slots[i].val = NULL;
        size_t k = i;
        for (;;) {
            k = (k + 1) & mask;
            if (m->slots[k].val == NULL) {
                m->len--;
                return val;
            }
            size_t home = hash_key(m, m->slots[k].key) & mask;
            /* can slot k move to i? only if home is not in (i, k] cyclically */
            if (i <= k ? (home <= i || home > k) : (home <= i && home > k))
                break;
        }
        m->slots[i] = m->slots[k];
        i = k;
    }
}

size_t txmap_max_probe(const struct txmap *m)
{
    size_t best = 0, run = 0;
    /* Twice round, so that a run wrapping past the end is measured whole. */
    for (size_t i = 0; i < 2 * m->cap; i++) {
        run = m->slots[i & (m->cap - 1)].val != NULL ? run + 1 : 0;
        if (run > best)
            best = run;
    }
    return best > m->cap ? m->cap : best;
}
