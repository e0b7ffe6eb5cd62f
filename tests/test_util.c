/*
 * test_util.c - participant-sdk/src/util.[ch]: the seeded PRNG (same seed,
 * same sequence; bounds of range and jitter) and the clocks.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

Test(util_rng, same_seed_same_sequence_other_seed_other_sequence)
{
    struct util_rng a, b, c;
    util_rng_seed(&a, 42);
    util_rng_seed(&b, 42);
    util_rng_seed(&c, 43);
    int differs = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = util_rng_next(&a), y = util_rng_next(&b), z = util_rng_next(&c);
        cr_assert_eq(x, y, "draw %d differs for one seed", i);
        differs += x != z;
    }
    cr_assert_gt(differs, 990);
}

Test(util_rng, seed_zero_is_a_good_seed)
{
    struct util_rng r;
    util_rng_seed(&r, 0);
    uint64_t or_all = 0;
    for (int i = 0; i < 16; i++)
        or_all |= util_rng_next(&r);
    cr_assert_neq(or_all, 0);
}

Test(util_rng, range_stays_in_bounds_and_reaches_both_ends)
{
    struct util_rng r;
    util_rng_seed(&r, 7);
    int seen[10] = {0};
    for (int i = 0; i < 10000; i++) {
        uint64_t x = util_rng_range(&r, 10);
        cr_assert_lt(x, 10);
        seen[x]++;
    }
    for (int i = 0; i < 10; i++)
        cr_assert_gt(seen[i], 800, "value %d drawn %d times of 10000", i, seen[i]);
    cr_assert_eq(util_rng_range(&r, 0), 0);
    cr_assert_eq(util_rng_range(&r, 1), 0);
}

Test(util_rng, jitter_is_within_a_quarter)
{
    struct util_rng r;
    util_rng_seed(&r, 9);
    int lo = 1000, hi = 0;
    for (int i = 0; i < 10000; i++) {
        int j = util_rng_jitter(&r, 400);
        cr_assert(j >= 300 && j <= 500, "jitter %d outside 400 +- 25%%", j);
        lo = j < lo ? j : lo;
        hi = j > hi ? j : hi;
    }
    cr_assert(lo < 310 && hi > 490, "jitter spans %d..%d", lo, hi);
    cr_assert_eq(util_rng_jitter(&r, 3), 3, "too small to jitter");
}

Test(util_rng, bytes_follow_the_sequence)
{
    struct util_rng a, b;
    util_rng_seed(&a, 5);
    util_rng_seed(&b, 5);
    uint8_t buf[12];
    util_rng_bytes(&a, buf, sizeof buf);
    uint64_t x = util_rng_next(&b), y = util_rng_next(&b);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(buf[i], (uint8_t)(x >> (8 * i)));
    for (int i = 0; i < 4; i++)
        cr_assert_eq(buf[8 + i], (uint8_t)(y >> (8 * i)));
}

Test(util, clocks_move_forward_and_wall_is_unix_ms)
{
    int64_t m1 = util_mono_ms(), w = util_wall_ms(), m2 = util_mono_ms();
    cr_assert_geq(m2, m1);
    cr_assert_gt(w, 1700000000000LL, "wall clock %lld is not Unix milliseconds", (long long)w);
}

Test(util, xstrdup_copies_and_keeps_null)
{
    cr_assert_null(util_xstrdup(NULL));
    char *s = util_xstrdup("abc");
    cr_assert_str_eq(s, "abc");
    free(s);
    void *p = util_xmalloc(0);
    cr_assert_not_null(p);
    free(p);
}
