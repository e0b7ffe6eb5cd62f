/*
 * txmap.c - see txmap.h.
 */
#include "txmap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t hash(const uint8_t k[16])
{
    uint64_t h;
    memcpy(&h, k, sizeof h);
    uint64_t l;
    memcpy(&l, k + 8, sizeof l);
    h ^= l * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    return (size_t)h;
}

void txmap_init(struct txmap *m)
{
    m->slots = NULL;
    m->cap = 0;
    m->len = 0;
}

void txmap_free(struct txmap *m)
{
    free(m->slots);
    txmap_init(m);
}

static void grow(struct txmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 64;
    struct txmap_slot *ns = calloc(ncap, sizeof *ns);
    if (ns == NULL) {
        fprintf(stderr, "treatyd: out of memory\n");
        abort();
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].val == NULL)
            continue;
        size_t j = hash(m->slots[i].key) & (ncap - 1);
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
    size_t j = hash(key) & (m->cap - 1);
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
    size_t j = hash(key) & (m->cap - 1);
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
    size_t j = hash(key) & mask;
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
            size_t home = hash(m->slots[k].key) & mask;
            /* can slot k move to i? only if home is not in (i, k] cyclically */
            if (i <= k ? (home <= i || home > k) : (home <= i && home > k))
                break;
        }
        m->slots[i] = m->slots[k];
        i = k;
    }
}
