/*
 * test_scenarios.c - the fast subset of the failure-injection scenarios
 * (scenarios/, issue 4) inside `make test`: treaty-scenario runs one 2PC
 * coordinator crash point and one message-loss scenario, scaled down, against
 * the suite's throwaway cluster, and must exit 0. The full set: make scenarios.
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
