/*
 * test_scenarios.c - the fast subset of the failure-injection scenarios
 * (scenarios/, issue 4) inside `make test`: treaty-scenario runs one 2PC
 * coordinator crash point, one message-loss scenario and the hostile peer
 * with CURVE on (issue 12), scaled down, against the suite's throwaway
 * cluster, and must exit 0. The full set: make scenarios.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

static void run_scenario(const char *name)
{
    const char *bin = getenv("TREATY_BIN"), *top = getenv("TREATY_TOP");
    const char *pg = getenv("TREATY_TEST_PG"), *pgdir = getenv("TREATY_TEST_PGDIR");
    cr_assert(bin && top && pg && pgdir, "run through tests/run.sh (TREATY_BIN, TREATY_TOP, TREATY_TEST_PG*)");
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "'%s/treaty-scenario' --bin '%s' --top '%s' --pg '%s' --pgdir '%s' --seed 1 '%s/tests/scenarios/%s.conf'",
             bin, bin, top, pg, pgdir, top, name);
    int st = system(cmd);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "scenario %s failed (output above)", name);
}

Test(scenarios, coordinator_crash_before_decision, .timeout = 60)
{
    run_scenario("fast_coord_crash");
}

Test(scenarios, message_loss, .timeout = 60)
{
    run_scenario("fast_net_drop");
}

/* CURVE on; a fake bank-a/a1 (a key not on the allow-list, a client key, a
 * participant key of bank-b) says HELLO and forges VOTE, ACK, INQUIRE and
 * RESULT for the real txids: no effect on balances or outcomes, never
 * registered, every kind of refusal in treatyd's log. */
Test(scenarios, hostile_peer_has_no_effect_with_curve, .timeout = 90)
{
    run_scenario("fast_hostile_peer");
}
