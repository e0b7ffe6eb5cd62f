/*
 * test_coord_units.c - the coordinator's small data structures: txid map,
 * timer heap, transaction and saga step state tables, registry, log sink.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"
#include "registry.h"
#include "saga.h"
#include "timers.h"
#include "txmap.h"
#include "txn.h"

/* A fresh random hash key, as the core draws one from its seeded PRNG. */
static const uint8_t *fresh_key(void)
{
    static uint8_t key[TXMAP_KEY_BYTES];
    cr_assert_eq(getrandom(key, sizeof key, 0), (ssize_t)sizeof key);
    return key;
}

static void key_of(unsigned i, uint8_t k[16])
{
    memset(k, 0, 16);
    /* deliberately colliding low bytes to exercise probing */
    k[0] = (uint8_t)(i % 7);
    memcpy(k + 8, &i, sizeof i);
}

Test(txmap, put_get_delete_many_keys_survive_collisions)
{
    struct txmap m;
    txmap_init(&m, fresh_key());
    enum { N = 5000 };
    static int vals[N];
    uint8_t k[16];
    for (unsigned i = 0; i < N; i++) {
        key_of(i, k);
        txmap_put(&m, k, &vals[i]);
    }
    cr_assert_eq(m.len, N);
    for (unsigned i = 0; i < N; i += 2) {
        key_of(i, k);
        cr_assert_eq(txmap_del(&m, k), &vals[i]);
    }
    cr_assert_eq(m.len, N / 2);
    for (unsigned i = 0; i < N; i++) {
        key_of(i, k);
        if (i % 2)
            cr_assert_eq(txmap_get(&m, k), &vals[i], "key %u lost after deletions", i);
        else
            cr_assert_null(txmap_get(&m, k));
    }
    key_of(N + 1, k);
    cr_assert_null(txmap_del(&m, k));
    txmap_free(&m);
}

/* Txids come from clients. With an unkeyed hash a client can choose txids
 * that all land in one slot and turn every lookup into a walk of the whole
 * map: these collide under the map's former hash (first 8 bytes XOR the last
 * 8 times a constant), which put all 20000 in one run. */
Test(txmap, chosen_colliding_txids_do_not_degrade_it_to_a_list)
{
    struct txmap m;
    txmap_init(&m, fresh_key());
    enum { N = 20000 };
    static int vals[N];
    uint8_t k[16];
    for (unsigned i = 0; i < N; i++) {
        uint64_t b = 0x1234567800000000ull + i, a = 0x0badc0ffee000000ull ^ (b * 0x9E3779B97F4A7C15ull);
        memcpy(k, &a, 8);
        memcpy(k + 8, &b, 8);
        txmap_put(&m, k, &vals[i]);
    }
    cr_assert_eq(m.len, N);
    size_t probe = txmap_max_probe(&m);
    /* A random hash at load <= 3/4 gives runs of a few dozen at most. */
    cr_assert_lt(probe, 200, "longest probe run %zu of %zu slots: the hash is not keyed", probe, m.cap);
    txmap_free(&m);
}

Test(txmap, put_replaces_existing_value)
{
    struct txmap m;
    txmap_init(&m, fresh_key());
    uint8_t k[16] = {1};
    int a, b;
    txmap_put(&m, k, &a);
    txmap_put(&m, k, &b);
    cr_assert_eq(m.len, 1);
    cr_assert_eq(txmap_get(&m, k), &b);
    txmap_free(&m);
}

Test(timers, pop_in_due_order_and_only_when_due)
{
    struct timers t;
    timers_init(&t);
    uint8_t id[16] = {0};
    int64_t dues[] = {50, 10, 40, 30, 20, 60, 10};
    for (size_t i = 0; i < sizeof dues / sizeof dues[0]; i++) {
        id[0] = (uint8_t)i;
        timers_add(&t, dues[i], id);
    }
    cr_assert_eq(timers_next(&t), 10);
    struct timer_entry e;
    int64_t last = 0;
    int n = 0;
    while (timers_pop_due(&t, 45, &e)) {
        cr_assert_geq(e.due_ms, last);
        last = e.due_ms;
        n++;
    }
    cr_assert_eq(n, 5);
    cr_assert_eq(timers_next(&t), 50);
    timers_free(&t);
}

Test(txn, transition_table_allows_only_the_protocol)
{
    cr_assert(txn_transition_ok(TXN_NEW, TXN_PREPARING));
    cr_assert(txn_transition_ok(TXN_PREPARING, TXN_LOGGING_COMMIT));
    cr_assert(txn_transition_ok(TXN_PREPARING, TXN_ABORTING));
    cr_assert(txn_transition_ok(TXN_LOGGING_COMMIT, TXN_COMMITTING));
    cr_assert(txn_transition_ok(TXN_COMMITTING, TXN_DONE));
    cr_assert(txn_transition_ok(TXN_ABORTING, TXN_DONE));
    cr_assert_not(txn_transition_ok(TXN_LOGGING_COMMIT, TXN_ABORTING), "a logged commit can never abort");
    cr_assert_not(txn_transition_ok(TXN_COMMITTING, TXN_ABORTING));
    cr_assert_not(txn_transition_ok(TXN_ABORTING, TXN_COMMITTING));
    cr_assert_not(txn_transition_ok(TXN_PREPARING, TXN_COMMITTING), "commit must be logged first");
    cr_assert_str_eq(txn_state_name(TXN_LOGGING_COMMIT), "logging-commit");
    cr_assert_str_eq(txn_state_name((enum txn_state)99), "?");
}

Test(saga, step_transition_table_allows_only_the_protocol)
{
    cr_assert(saga_step_transition_ok(STEP_IDLE, STEP_RUNNING));
    cr_assert(saga_step_transition_ok(STEP_RUNNING, STEP_DONE));
    cr_assert(saga_step_transition_ok(STEP_RUNNING, STEP_FAILED));
    cr_assert(saga_step_transition_ok(STEP_FAILED, STEP_COMPENSATING), "the failing step is compensated too");
    cr_assert(saga_step_transition_ok(STEP_RUNNING, STEP_COMPENSATING), "a step running at the turn-around");
    cr_assert(saga_step_transition_ok(STEP_DONE, STEP_COMPENSATING));
    cr_assert(saga_step_transition_ok(STEP_COMPENSATING, STEP_COMPENSATED));
    cr_assert(saga_step_transition_ok(STEP_IDLE, STEP_COMPENSATING), "recovery counts every step as started");
    cr_assert_not(saga_step_transition_ok(STEP_DONE, STEP_RUNNING), "a done action never runs again");
    cr_assert_not(saga_step_transition_ok(STEP_COMPENSATED, STEP_RUNNING), "no action after its compensation");
    cr_assert_not(saga_step_transition_ok(STEP_COMPENSATING, STEP_DONE));
    cr_assert_not(saga_step_transition_ok(STEP_FAILED, STEP_DONE));
    cr_assert_not(saga_step_transition_ok(STEP_DONE, STEP_COMPENSATED), "a compensation is sent first");
    cr_assert_not(saga_step_transition_ok(STEP_COMPENSATED, STEP_COMPENSATING));
    cr_assert_str_eq(saga_step_state_name(STEP_COMPENSATING), "compensating");
    cr_assert_str_eq(saga_step_state_name((enum saga_step_state)99), "?");
    cr_assert_not(saga_step_transition_ok((enum saga_step_state)99, STEP_IDLE));
}

Test(txn, waiters_are_deduplicated_by_routing_id)
{
    uint8_t id[16] = {7};
    struct txn *t = txn_new(id, 2);
    uint8_t r1[5] = {0, 1, 2, 3, 4}, r2[5] = {0, 1, 2, 3, 5};
    txn_add_waiter(t, r1, 5);
    txn_add_waiter(t, r1, 5);
    txn_add_waiter(t, r2, 5);
    int n = 0;
    for (struct waiter *w = t->waiters; w; w = w->next)
        n++;
    cr_assert_eq(n, 2);
    txn_free(t);
}

Test(registry, round_robin_over_live_instances_and_sweep_drops_silent_ones)
{
    struct registry *r = registry_new(1000);
    uint8_t rid1[] = {1}, rid2[] = {2};
    cr_assert_eq(registry_hello(r, "bank", "a", rid1, 1, NULL, 0), REGISTRY_JOINED);
    cr_assert_eq(registry_hello(r, "bank", "b", rid2, 1, NULL, 500), REGISTRY_JOINED);
    cr_assert_eq(registry_hello(r, "bank", "a", rid1, 1, NULL, 600), REGISTRY_REFRESHED,
                 "a heartbeat is not a new instance");
    const struct instance *a = registry_pick(r, "bank");
    const struct instance *b = registry_pick(r, "bank");
    cr_assert_neq(a->rid[0], b->rid[0], "round-robin alternates");
    cr_assert_null(registry_pick(r, "other"));
    cr_assert(registry_is_live(r, "bank", rid2, 1));
    cr_assert_eq(registry_sweep(r, 1550), 1, "b was silent for 1050 ms");
    cr_assert_not(registry_is_live(r, "bank", rid2, 1));
    cr_assert_eq(registry_count(r), 1);
    registry_destroy(&r);
    cr_assert_null(r);
}

/* Without authentication a name belongs to the routing id that registered
 * it while that one lives; with it, to the key, from any connection. */
Test(registry, a_live_name_is_bound_to_its_peer)
{
    struct registry *r = registry_new(1000);
    uint8_t rid1[] = {1}, rid2[] = {2}, rid3[] = {3};
    cr_assert_eq(registry_hello(r, "bank", "a", rid1, 1, NULL, 0), REGISTRY_JOINED);
    cr_assert_eq(registry_hello(r, "bank", "a", rid2, 1, NULL, 1000), REGISTRY_TAKEN, "another connection");
    cr_assert(registry_is_live(r, "bank", rid1, 1), "nothing changed");
    cr_assert_not(registry_is_live(r, "bank", rid2, 1));
    cr_assert_eq(registry_hello(r, "bank", "a", rid2, 1, NULL, 1001), REGISTRY_JOINED,
                 "silent for more than dead_after_ms: the name is free, swept or not");
    cr_assert_not(registry_is_live(r, "bank", rid1, 1));
    cr_assert_eq(registry_count(r), 1);

    uint8_t k1[REGISTRY_KEY_LEN], k2[REGISTRY_KEY_LEN];
    memset(k1, 0x11, sizeof k1);
    memset(k2, 0x22, sizeof k2);
    cr_assert_eq(registry_hello(r, "shop", "s1", rid1, 1, k1, 2000), REGISTRY_JOINED);
    cr_assert_eq(registry_hello(r, "shop", "s1", rid3, 1, k1, 2001), REGISTRY_MOVED,
                 "the same key from a new connection: at once");
    cr_assert(registry_is_live(r, "shop", rid3, 1));
    cr_assert_not(registry_is_live(r, "shop", rid1, 1));
    cr_assert_eq(registry_hello(r, "shop", "s1", rid3, 1, k2, 2002), REGISTRY_TAKEN,
                 "another key, even from the same routing id");
    cr_assert_eq(registry_hello(r, "shop", "s1", rid2, 1, NULL, 2003), REGISTRY_TAKEN, "no key at all");
    const struct instance *s1 = registry_pick(r, "shop");
    cr_assert(s1->keyed && memcmp(s1->key, k1, sizeof k1) == 0);
    registry_destroy(&r);
}

static bool keep_not_k2(void *arg, const struct instance *in)
{
    (void)arg;
    return in->key[0] != 0x22;
}

Test(registry, instances_of_a_revoked_key_are_dropped)
{
    struct registry *r = registry_new(1000);
    uint8_t k1[REGISTRY_KEY_LEN], k2[REGISTRY_KEY_LEN], rid1[] = {1}, rid2[] = {2}, rid3[] = {3};
    memset(k1, 0x11, sizeof k1);
    memset(k2, 0x22, sizeof k2);
    registry_hello(r, "bank", "a", rid1, 1, k1, 0);
    registry_hello(r, "bank", "b", rid2, 1, k2, 0);
    registry_hello(r, "shop", "c", rid3, 1, k2, 0);
    cr_assert_eq(registry_drop_if(r, keep_not_k2, NULL), 2);
    cr_assert_eq(registry_count(r), 1);
    cr_assert(registry_is_live(r, "bank", rid1, 1));
    registry_destroy(&r);
}

struct captured {
    int n;
    enum log_level last_level;
    char last[256];
};

static void capture(void *arg, enum log_level l, const char *line)
{
    struct captured *c = arg;
    c->n++;
    c->last_level = l;
    snprintf(c->last, sizeof c->last, "%s", line);
}

Test(log, a_sink_receives_the_lines_and_null_restores_stderr)
{
    struct captured got = {0};
    enum log_level was = log_get_level();
    log_set_level(LOG_LEVEL_INFO);
    log_set_sink(capture, &got);
    log_warn("txn %s: %d", "abc", 7);
    log_debug("below the level: not delivered");
    log_set_sink(NULL, NULL);
    log_info("to stderr again");
    log_set_level(was);
    cr_assert_eq(got.n, 1);
    cr_assert_eq(got.last_level, LOG_LEVEL_WARN);
    cr_assert_str_eq(got.last, "txn abc: 7", "the sink gets the message without time or level");
    cr_assert_str_eq(log_level_name(LOG_LEVEL_DEBUG), "DEBUG");
}
