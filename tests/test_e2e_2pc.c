/*
 * test_e2e_2pc.c - end-to-end two-phase commit: the real treatyd binary, real
 * bank_service participants (examples/bank_service.c) and real databases in
 * the throwaway cluster of tests/run.sh.
 *
 * Every test builds its own world: a fresh journal database and two bank
 * databases, treatyd on a free port, bank-a (service "bank-a", instance a1)
 * and bank-b (service "bank-b", instance b1). Transfers go through the public
 * client API; the checks read the banks' databases directly: balances, and
 * that pg_prepared_xacts holds no treaty:* row once things settle.
 *
 * Timing never decides pass/fail: every wait polls with a generous deadline
 * (SUPPORT_DEADLINE_MS). Crash tests use the fault points of
 * participant-sdk/src/fault.h through the environment (TREATY_CRASH_AT) of
 * the process that must crash.
 *
 * The processes' logs go to $TREATY_E2E_LOGDIR/e2e-<test>/; the report hooks
 * below print their tails for a failed test and remove them for a passed one
 * (unless TREATY_E2E_KEEP_LOGS=1).
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <jansson.h>

#include "support.h"
#include "wire.h"

/* ------------------------------------------------------------ log reports */

#define E2E_SUITE "e2e"
#include "e2e_report.h"

/* ------------------------------------------------------------------ world */

struct bank {
    const char *service; /* "bank-a" */
    const char *instance;
    char db[64];
    char conninfo[600];
    char accounts[1024]; /* --create-accounts */
    int delay_ms;        /* --prepare-delay-ms */
    struct support_proc *proc;
};

struct world {
    char journal_db[64];
    char journal[600];
    struct support_treatyd d;
    struct bank a, b;
};

struct world_opts {
    const char *accounts_a; /* default "alice=100" */
    const char *accounts_b; /* default "bob=50" */
    struct support_treatyd_opts coord;
    const char *const *coord_env;
    const char *coord_config; /* extra treatyd configuration (libconfig text), or NULL */
    const char *const *bank_b_env;
    int bank_b_delay_ms;
};

static void e2e_setup_shared(void)
{
    support_pg_base(); /* fail loudly when run outside tests/run.sh */
    support_lock_shared();
}

static void e2e_setup_exclusive(void)
{
    support_pg_base();
    support_lock_exclusive();
}

static void e2e_teardown(void)
{
    support_cleanup();
    support_unlock();
}

TestSuite(e2e, .fini = e2e_teardown, .timeout = 180);

static void bank_spawn(struct world *w, struct bank *b, const char *const env[])
{
    char bin[600], delay[16];
    snprintf(bin, sizeof bin, "%s/bank_service", support_bin_dir());
    cr_assert(access(bin, X_OK) == 0, "%s is missing or not executable", bin);
    snprintf(delay, sizeof delay, "%d", b->delay_ms);
    char *argv[] = {bin,
                    (char *)"--endpoint",
                    w->d.endpoint,
                    (char *)"--service",
                    (char *)b->service,
                    (char *)"--instance",
                    (char *)b->instance,
                    (char *)"--db",
                    b->conninfo,
                    (char *)"--create-accounts",
                    b->accounts,
                    (char *)"--prepare-delay-ms",
                    delay,
                    NULL};
    b->proc = support_spawn(b->service, argv, env);
}

/* Submits one transaction of one or two branches. The txid goes to out->txid
 * whatever happens. id NULL = a fresh txid. Returns the submit's rc. */
static int submit(treaty_client_t *c, const treaty_txid_t *id, int timeout_ms, treaty_outcome_t *out, const char *svc0,
                  const char *pay0, const char *svc1, const char *pay1)
{
    treaty_txn_t *t = NULL;
    int rc = id != NULL ? treaty_txn_new_with_id(id, &t) : treaty_txn_new(&t);
    cr_assert(rc == 0, "treaty_txn_new: %s", treaty_strerror(rc));
    rc = treaty_txn_add_branch(t, svc0, pay0, strlen(pay0));
    cr_assert(rc == 0, "treaty_txn_add_branch(%s): %s", svc0, treaty_strerror(rc));
    if (svc1 != NULL) {
        rc = treaty_txn_add_branch(t, svc1, pay1, strlen(pay1));
        cr_assert(rc == 0, "treaty_txn_add_branch(%s): %s", svc1, treaty_strerror(rc));
    }
    memset(out, 0, sizeof *out);
    rc = treaty_client_submit(c, t, timeout_ms, out);
    out->txid = *treaty_txn_id(t);
    treaty_txn_destroy(&t);
    return rc;
}

/* Pings the service until its instance answers "pong" (bank_service's health
 * probe: a NO vote with that reason). Fails the test if b dies meanwhile. */
static void bank_wait_up(struct world *w, struct bank *b)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new(w->d.endpoint, &c);
    cr_assert(rc == 0, "treaty_client_new: %s", treaty_strerror(rc));
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    for (;;) {
        treaty_outcome_t out;
        rc = submit(c, NULL, 1000, &out, b->service, "ping", NULL, NULL);
        if (rc == 0 && strstr(out.reason, "pong") != NULL)
            break;
        char st[64];
        if (!support_proc_running(b->proc)) {
            support_proc_dump_log(b->proc, 30);
            cr_assert_fail("%s ended before it served: %s (log %s)", b->service,
                           support_proc_status_str(b->proc, st, sizeof st), b->proc->log);
        }
        if (!support_proc_running(w->d.proc))
            cr_assert_fail("treatyd ended: %s (log %s)", support_proc_status_str(w->d.proc, st, sizeof st),
                           w->d.proc->log);
        cr_assert(support_now_ms() < deadline,
                  "%s does not answer a ping through treatyd after %d ms: last %s %s \"%s\" (logs %s)", b->service,
                  SUPPORT_DEADLINE_MS, treaty_err_name(rc), treaty_status_name(out.status), out.reason,
                  support_log_dir());
        support_sleep_ms(100);
    }
    treaty_client_destroy(&c);
}

static void bank_start(struct world *w, struct bank *b, const char *const env[])
{
    bank_spawn(w, b, env);
    bank_wait_up(w, b);
}

static void world_start(struct world *w, const struct world_opts *o)
{
    memset(w, 0, sizeof *w);
    support_db_create("journal", w->journal_db, sizeof w->journal_db);
    support_db_conninfo(w->journal_db, w->journal, sizeof w->journal);
    w->a.service = "bank-a";
    w->a.instance = "a1";
    w->b.service = "bank-b";
    w->b.instance = "b1";
    support_db_create("bank_a", w->a.db, sizeof w->a.db);
    support_db_create("bank_b", w->b.db, sizeof w->b.db);
    support_db_conninfo(w->a.db, w->a.conninfo, sizeof w->a.conninfo);
    support_db_conninfo(w->b.db, w->b.conninfo, sizeof w->b.conninfo);
    snprintf(w->a.accounts, sizeof w->a.accounts, "%s", o->accounts_a != NULL ? o->accounts_a : "alice=100");
    snprintf(w->b.accounts, sizeof w->b.accounts, "%s", o->accounts_b != NULL ? o->accounts_b : "bob=50");
    w->b.delay_ms = o->bank_b_delay_ms;

    support_treatyd_start_with(&w->d, w->journal, &o->coord, o->coord_config, o->coord_env);
    bank_start(w, &w->a, NULL);
    bank_start(w, &w->b, o->bank_b_env);
}

static long long balance(const struct bank *b, const char *account)
{
    return support_scalar(b->conninfo, "SELECT balance FROM accounts WHERE id = '%s'", account);
}

/* Waits until neither bank holds a treaty:* prepared transaction. */
static void world_settle(struct world *w)
{
    support_wait_no_prepared(w->a.conninfo);
    support_wait_no_prepared(w->b.conninfo);
}

static void expect_balances(struct world *w, long long alice, long long bob)
{
    long long a = balance(&w->a, "alice"), b = balance(&w->b, "bob");
    cr_assert(a == alice && b == bob, "balances: alice %lld (want %lld), bob %lld (want %lld)", a, alice, b, bob);
}

static const char *txid_str(const treaty_txid_t *id)
{
    static char buf[4][TREATY_TXID_STRLEN];
    static int next;
    char *s = buf[next++ % 4];
    return treaty_txid_format(id, s);
}

struct journal_probe {
    const char *journal;
    const char *txid;
};

static bool end_written(void *arg)
{
    const struct journal_probe *q = arg;
    long long n = 0;
    return support_try_scalar(q->journal, &n, "SELECT count(*) FROM treaty_records WHERE txid = '%s' AND kind = 'end'",
                              q->txid) &&
           n > 0;
}

/* Waits for the END record of txid: every participant acknowledged. */
static void expect_end_record(struct world *w, const treaty_txid_t *id)
{
    struct journal_probe q = {w->journal, txid_str(id)};
    cr_assert(support_wait_until(end_written, &q, SUPPORT_DEADLINE_MS),
              "no END record for %s in the journal after %d ms: not every participant acknowledged (logs %s)", q.txid,
              SUPPORT_DEADLINE_MS, support_log_dir());
}

static void expect_proc_killed(struct support_proc *p, const char *why)
{
    cr_assert(support_proc_wait(p, SUPPORT_DEADLINE_MS), "%s did not die at %s (log %s)", p->name, why, p->log);
    char st[64];
    cr_assert(p->status != -1 && WIFSIGNALED(p->status) && WTERMSIG(p->status) == SIGKILL,
              "%s should have been SIGKILLed by fault point %s, but ended with %s (log %s)", p->name, why,
              support_proc_status_str(p, st, sizeof st), p->log);
}

static treaty_client_t *client(struct world *w)
{
    treaty_client_t *c = NULL;
    int rc = treaty_client_new(w->d.endpoint, &c);
    cr_assert(rc == 0, "treaty_client_new(%s): %s", w->d.endpoint, treaty_strerror(rc));
    return c;
}

/* A transfer alice -> bob (amount > 0) or bob -> alice (amount < 0):
 * branch 0 at bank-a, branch 1 at bank-b. */
static int transfer(treaty_client_t *c, const treaty_txid_t *id, long long amount, int timeout_ms,
                    treaty_outcome_t *out)
{
    char pa[64], pb[64];
    snprintf(pa, sizeof pa, "alice:%lld", -amount);
    snprintf(pb, sizeof pb, "bob:%lld", amount);
    return submit(c, id, timeout_ms, out, "bank-a", pa, "bank-b", pb);
}

static void expect_committed(int rc, const treaty_outcome_t *out)
{
    cr_assert(rc == 0, "submit %s: %s (logs %s)", txid_str(&out->txid), treaty_err_name(rc), support_log_dir());
    cr_assert(out->error == 0 && out->status == TREATY_STATUS_COMMITTED,
              "transaction %s: want committed, got %s (error %s, reason \"%s\", failed branch %u; logs %s)",
              txid_str(&out->txid), treaty_status_name(out->status), treaty_err_name(out->error), out->reason,
              out->failed_branch, support_log_dir());
}

/* ------------------------------------------------------------------ tests */

Test(e2e, transfer_commits_in_both_databases, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    treaty_outcome_t t1, t2, q;
    expect_committed(transfer(c, NULL, 30, 10000, &t1), &t1);
    world_settle(&w);
    expect_balances(&w, 70, 80);
    expect_committed(transfer(c, NULL, -5, 10000, &t2), &t2);
    world_settle(&w);
    expect_balances(&w, 75, 75);

    int rc = treaty_client_query(c, &t1.txid, 5000, &q);
    cr_assert(rc == 0 && q.status == TREATY_STATUS_COMMITTED, "query %s: %s %s", txid_str(&t1.txid),
              treaty_err_name(rc), treaty_status_name(q.status));
    expect_end_record(&w, &t1.txid);
    expect_end_record(&w, &t2.txid);
    treaty_client_destroy(&c);

    /* Clean shutdown of everything. */
    cr_assert(support_proc_stop(w.a.proc, 10000), "bank-a did not exit 0 on SIGTERM (log %s)", w.a.proc->log);
    cr_assert(support_proc_stop(w.b.proc, 10000), "bank-b did not exit 0 on SIGTERM (log %s)", w.b.proc->log);
    cr_assert(support_proc_stop(w.d.proc, 10000), "treatyd did not exit 0 on SIGTERM (log %s)", w.d.proc->log);
}

Test(e2e, no_vote_aborts_with_reason_and_changes_nothing, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* bob has 50: bank-b (branch 1) votes NO; bank-a's prepared credit is rolled back. */
    treaty_outcome_t out, q;
    int rc = transfer(c, NULL, -80, 10000, &out);
    cr_assert(rc == 0, "submit: %s", treaty_err_name(rc));
    cr_assert(out.status == TREATY_STATUS_ABORTED, "want aborted, got %s", treaty_status_name(out.status));
    cr_assert(out.failed_branch == 1, "want failed branch 1 (bank-b), got %u", out.failed_branch);
    cr_assert(strstr(out.reason, "insufficient funds in bob") != NULL, "reason \"%s\" does not name the refusal",
              out.reason);

    rc = treaty_client_query(c, &out.txid, 5000, &q);
    cr_assert(rc == 0 && q.status == TREATY_STATUS_ABORTED, "query: %s %s", treaty_err_name(rc),
              treaty_status_name(q.status));
    world_settle(&w);
    expect_balances(&w, 100, 50);

    /* Unknown account: also a NO, from bank-a this time (branch 0). */
    rc = submit(c, NULL, 10000, &out, "bank-a", "carol:-1", "bank-b", "bob:1");
    cr_assert(rc == 0 && out.status == TREATY_STATUS_ABORTED, "want aborted: %s %s", treaty_err_name(rc),
              treaty_status_name(out.status));
    cr_assert(out.failed_branch == 0 && strstr(out.reason, "no account carol") != NULL,
              "want failed branch 0 \"no account carol\", got %u \"%s\"", out.failed_branch, out.reason);
    world_settle(&w);
    expect_balances(&w, 100, 50);
    treaty_client_destroy(&c);
}

Test(e2e, prepare_timeout_aborts, .init = e2e_setup_shared)
{
    /* bank-b sleeps 4 s before voting; the transaction allows 1.5 s. */
    struct world w;
    struct world_opts o = {.bank_b_delay_ms = 4000};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    treaty_outcome_t out, fin;
    int rc = transfer(c, NULL, 30, 1500, &out);
    cr_assert(rc == 0 || rc == TREATY_ETIMEDOUT, "submit: %s", treaty_err_name(rc));
    if (rc == 0)
        cr_assert(out.status == TREATY_STATUS_ABORTED, "want aborted, got %s", treaty_status_name(out.status));
    enum treaty_status st = support_query_final(w.d.endpoint, &out.txid, &fin);
    cr_assert(st == TREATY_STATUS_ABORTED, "final outcome %s, want aborted", treaty_status_name(st));
    cr_log_info("prepare timeout: client told %s/%s; reason \"%s\", failed branch %u", treaty_err_name(rc),
                treaty_status_name(out.status), fin.reason, fin.failed_branch);

    /* bank-b handles one message at a time: once it answers a ping it has
     * finished the slow PREPARE (PREPARE TRANSACTION and the late YES). Its
     * prepared branch must then be rolled back. */
    bank_wait_up(&w, &w.b);
    world_settle(&w);
    expect_balances(&w, 100, 50);
    st = support_query_final(w.d.endpoint, &out.txid, &fin);
    cr_assert(st == TREATY_STATUS_ABORTED, "after the late vote the outcome is %s", treaty_status_name(st));
    treaty_client_destroy(&c);
}

Test(e2e, participant_killed_after_prepare_is_rolled_back_through_inquire, .init = e2e_setup_shared)
{
    static const char *const crash[] = {"TREATY_CRASH_AT=participant.after_prepare", NULL};
    struct world w;
    struct world_opts o = {.bank_b_env = crash};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* bank-b prepares, then dies before voting: the prepare deadline aborts. */
    treaty_outcome_t out, fin;
    int rc = transfer(c, NULL, 30, 2000, &out);
    cr_assert(rc == 0 || rc == TREATY_ETIMEDOUT, "submit: %s", treaty_err_name(rc));
    if (rc == 0)
        cr_assert(out.status == TREATY_STATUS_ABORTED, "want aborted, got %s", treaty_status_name(out.status));
    expect_proc_killed(w.b.proc, "participant.after_prepare");
    cr_assert(support_query_final(w.d.endpoint, &out.txid, &fin) == TREATY_STATUS_ABORTED, "final outcome %s",
              treaty_status_name(fin.status));

    /* The branch is in doubt in bank-b's database until someone asks. */
    cr_assert(support_prepared_count(w.b.conninfo) == 1, "bank-b should hold its in-doubt branch, has %lld",
              support_prepared_count(w.b.conninfo));
    support_wait_no_prepared(w.a.conninfo);

    /* Restarted without the fault, bank-b INQUIREs and rolls back. */
    bank_start(&w, &w.b, NULL);
    world_settle(&w);
    expect_balances(&w, 100, 50);

    /* And it serves again. */
    treaty_outcome_t t2;
    expect_committed(transfer(c, NULL, 10, 10000, &t2), &t2);
    world_settle(&w);
    expect_balances(&w, 90, 60);
    treaty_client_destroy(&c);
}

Test(e2e, participant_killed_after_commit_gets_commit_again, .init = e2e_setup_shared)
{
    static const char *const crash[] = {"TREATY_CRASH_AT=participant.after_commit", NULL};
    struct world w;
    struct world_opts o = {.bank_b_env = crash};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* The decision is durable before anyone is told: the client hears
     * committed, bank-b commits and dies before its ACK. */
    treaty_outcome_t out;
    expect_committed(transfer(c, NULL, 30, 10000, &out), &out);
    expect_proc_killed(w.b.proc, "participant.after_commit");
    cr_assert(support_prepared_count(w.b.conninfo) == 0, "bank-b committed before dying; prepared left: %lld",
              support_prepared_count(w.b.conninfo));
    cr_assert(balance(&w.b, "bob") == 80, "bob: %lld, want 80", balance(&w.b, "bob"));

    /* Restarted, bank-b gets COMMIT again (idempotent) and ACKs: END. */
    bank_start(&w, &w.b, NULL);
    expect_end_record(&w, &out.txid);
    world_settle(&w);
    expect_balances(&w, 70, 80);
    treaty_outcome_t q;
    int rc = treaty_client_query(c, &out.txid, 5000, &q);
    cr_assert(rc == 0 && q.status == TREATY_STATUS_COMMITTED, "query: %s %s", treaty_err_name(rc),
              treaty_status_name(q.status));
    treaty_client_destroy(&c);
}

/* Coordinator crash tests: the client submits, treatyd dies at the fault
 * point, and the client gets no answer. The client is destroyed before
 * treatyd restarts so that no re-sent SUBMIT reaches the new incarnation. */
static void submit_into_crash(struct world *w, const char *point, treaty_txid_t *id, bool may_commit_answer)
{
    treaty_client_t *c = client(w);
    treaty_outcome_t out;
    int rc = transfer(c, NULL, 30, 3000, &out);
    *id = out.txid;
    if (may_commit_answer && rc == 0)
        cr_assert(out.status == TREATY_STATUS_COMMITTED, "told %s before %s", treaty_status_name(out.status), point);
    else
        cr_assert(rc == TREATY_ETIMEDOUT && out.status == TREATY_STATUS_UNKNOWN,
                  "submit into %s: want TREATY_ETIMEDOUT/unknown, got %s/%s", point, treaty_err_name(rc),
                  treaty_status_name(out.status));
    treaty_client_destroy(&c);
    expect_proc_killed(w->d.proc, point);
}

Test(e2e, coordinator_killed_after_commit_record_commits_after_restart, .init = e2e_setup_shared)
{
    static const char *const crash[] = {"TREATY_CRASH_AT=coord.after_commit_durable", NULL};
    struct world w;
    struct world_opts o = {.coord_env = crash};
    world_start(&w, &o);

    treaty_txid_t id;
    submit_into_crash(&w, "coord.after_commit_durable", &id, false);
    /* Both voted YES: both branches are prepared, undecided. */
    cr_assert(support_prepared_count(w.a.conninfo) == 1 && support_prepared_count(w.b.conninfo) == 1,
              "want one prepared branch per bank, have %lld and %lld", support_prepared_count(w.a.conninfo),
              support_prepared_count(w.b.conninfo));

    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    cr_assert(support_query_final(w.d.endpoint, &id, &fin) == TREATY_STATUS_COMMITTED,
              "after recovery %s is %s, want committed (the COMMIT record was durable)", txid_str(&id),
              treaty_status_name(fin.status));
    world_settle(&w);
    expect_balances(&w, 70, 80);
    expect_end_record(&w, &id);
}

Test(e2e, coordinator_killed_between_commit_sends_commits_everywhere, .init = e2e_setup_shared)
{
    static const char *const crash[] = {"TREATY_CRASH_AT=coord.between_commit_sends", NULL};
    struct world w;
    struct world_opts o = {.coord_env = crash};
    world_start(&w, &o);

    treaty_txid_t id;
    submit_into_crash(&w, "coord.between_commit_sends", &id, true);

    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    cr_assert(support_query_final(w.d.endpoint, &id, &fin) == TREATY_STATUS_COMMITTED,
              "after recovery %s is %s, want committed", txid_str(&id), treaty_status_name(fin.status));
    world_settle(&w);
    expect_balances(&w, 70, 80);
    expect_end_record(&w, &id);
}

Test(e2e, coordinator_killed_before_decision_aborts_after_restart, .init = e2e_setup_shared)
{
    static const char *const crash[] = {"TREATY_CRASH_AT=coord.before_decision", NULL};
    struct world w;
    struct world_opts o = {.coord_env = crash};
    world_start(&w, &o);

    treaty_txid_t id;
    submit_into_crash(&w, "coord.before_decision", &id, false);
    cr_assert(support_prepared_count(w.a.conninfo) == 1 && support_prepared_count(w.b.conninfo) == 1,
              "want one prepared branch per bank, have %lld and %lld", support_prepared_count(w.a.conninfo),
              support_prepared_count(w.b.conninfo));

    /* No COMMIT record: presumed abort. The banks learn it by INQUIRE. */
    support_treatyd_restart(&w.d, NULL, true);
    treaty_outcome_t fin;
    cr_assert(support_query_final(w.d.endpoint, &id, &fin) == TREATY_STATUS_ABORTED,
              "after restart %s is %s, want aborted (no COMMIT record)", txid_str(&id), treaty_status_name(fin.status));
    world_settle(&w);
    expect_balances(&w, 100, 50);
    cr_assert(support_query_final(w.d.endpoint, &id, &fin) == TREATY_STATUS_ABORTED, "outcome changed to %s",
              treaty_status_name(fin.status));
}

Test(e2e, resubmitted_txid_returns_same_outcome_and_applies_once, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    treaty_outcome_t first, again;
    expect_committed(transfer(c, NULL, 30, 10000, &first), &first);
    world_settle(&w);
    expect_balances(&w, 70, 80);

    /* Resubmitted while the coordinator may still hold it in memory... */
    expect_committed(transfer(c, &first.txid, 30, 10000, &again), &again);
    cr_assert(memcmp(&again.txid, &first.txid, sizeof first.txid) == 0, "txid changed");
    world_settle(&w);
    expect_balances(&w, 70, 80);

    /* ...and after it finished (END written). */
    expect_end_record(&w, &first.txid);
    expect_committed(transfer(c, &first.txid, 30, 10000, &again), &again);
    world_settle(&w);
    expect_balances(&w, 70, 80);
    treaty_client_destroy(&c);
}

Test(e2e, resubmitted_aborted_txid_stays_aborted, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* bob has 50: refused. */
    treaty_outcome_t refused, topup, again;
    int rc = transfer(c, NULL, -60, 10000, &refused);
    cr_assert(rc == 0 && refused.status == TREATY_STATUS_ABORTED, "want aborted: %s %s", treaty_err_name(rc),
              treaty_status_name(refused.status));
    world_settle(&w);

    /* Now bob could pay; the same txid must still be aborted. */
    expect_committed(transfer(c, NULL, 30, 10000, &topup), &topup);
    world_settle(&w);
    expect_balances(&w, 70, 80);
    rc = transfer(c, &refused.txid, -60, 10000, &again);
    cr_assert(rc == 0 && again.status == TREATY_STATUS_ABORTED, "resubmitted aborted txid %s: want aborted, got %s %s",
              txid_str(&refused.txid), treaty_err_name(rc), treaty_status_name(again.status));
    world_settle(&w);
    expect_balances(&w, 70, 80);
    treaty_client_destroy(&c);
}

Test(e2e, branch_to_service_without_instance_aborts, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    treaty_outcome_t out;
    int rc = submit(c, NULL, 10000, &out, "bank-a", "alice:-10", "bank-nowhere", "x:10");
    cr_assert(rc == 0, "submit: %s (the coordinator should refuse at once, not let the deadline pass)",
              treaty_err_name(rc));
    cr_assert(out.status == TREATY_STATUS_ABORTED, "want aborted, got %s (error %s)", treaty_status_name(out.status),
              treaty_err_name(out.error));
    cr_assert(out.failed_branch == 1, "want failed branch 1, got %u", out.failed_branch);
    cr_assert(out.reason[0] != '\0', "abort without a reason");
    cr_log_info("no instance: reason \"%s\", error %s", out.reason, treaty_err_name(out.error));
    world_settle(&w);
    expect_balances(&w, 100, 50);
    treaty_client_destroy(&c);
}

static long long journal_records(struct world *w, const treaty_txid_t *id, const char *kind);

/* Wire version 2 packs a message into one ZeroMQ frame, so the socket's
 * message size limit now bounds a whole SUBMIT, not one of its frames: the
 * largest SUBMIT the configuration allows (max_branches branches of
 * max_payload_bytes each, 1 MiB with the defaults) must reach the core and
 * be answered, not be cut off by libzmq (the client would only time out). */
Test(e2e, largest_allowed_submit_is_answered, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    enum { BRANCHES = 16, PAYLOAD = 65536 }; /* limits.max_branches and max_payload_bytes by default */
    static uint8_t payload[PAYLOAD];
    memset(payload, 'p', sizeof payload);
    treaty_txn_t *t = NULL;
    cr_assert_eq(treaty_txn_new(&t), 0);
    for (int i = 0; i < BRANCHES; i++)
        cr_assert_eq(treaty_txn_add_branch(t, "bank-nowhere", payload, sizeof payload), 0);
    treaty_outcome_t out;
    int rc = treaty_client_submit(c, t, 10000, &out);
    cr_assert(rc == 0, "submit of %d branches of %d bytes: %s", BRANCHES, PAYLOAD, treaty_err_name(rc));
    cr_assert(out.status == TREATY_STATUS_ABORTED && out.failed_branch == 0,
              "want aborted at branch 0 (no instance of bank-nowhere), got %s (error %s, branch %u)",
              treaty_status_name(out.status), treaty_err_name(out.error), out.failed_branch);

    /* one byte more in a branch is refused as too big, and said so */
    treaty_txn_t *big = NULL;
    cr_assert_eq(treaty_txn_new(&big), 0);
    cr_assert_eq(treaty_txn_add_branch(big, "bank-nowhere", payload, sizeof payload), 0);
    static uint8_t over[PAYLOAD + 1];
    cr_assert_eq(treaty_txn_add_branch(big, "bank-nowhere", over, sizeof over), 0);
    rc = treaty_client_submit(c, big, 10000, &out);
    cr_assert(rc == TREATY_ETOOBIG || (rc == 0 && out.error == TREATY_ETOOBIG),
              "a branch of %d bytes: want TREATY_ETOOBIG, got %s (outcome error %s)", PAYLOAD + 1, treaty_err_name(rc),
              treaty_err_name(out.error));
    treaty_txn_destroy(&t);
    treaty_txn_destroy(&big);
    world_settle(&w);
    expect_balances(&w, 100, 50);
    treaty_client_destroy(&c);
}

/* A peer that speaks wire version 1 (the header, then every payload in a
 * ZeroMQ frame of its own) is answered with an ERROR that says the version
 * is not supported, and what it sent never runs. */
Test(e2e, version_1_peer_is_told_unsupported_version_and_nothing_runs, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);

    void *zctx = zmq_ctx_new();
    void *dealer = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    cr_assert(zmq_connect(dealer, w.d.endpoint) == 0, "connect %s: %s", w.d.endpoint, zmq_strerror(errno));
    treaty_txid_t id;
    cr_assert_eq(treaty_txid_generate(&id), 0);
    struct wire_hdr h = {.type = WIRE_SUBMIT};
    memcpy(h.txid, id.b, 16);
    uint8_t hb[WIRE_HDR_LEN], t4[4];
    wire_encode_hdr(&h, hb);
    hb[2] = 1;
    wire_put_u32(t4, 10000);
    const char *parts[] = {"bank-a", "alice:-10", "bank-b", "bob:10"};
    cr_assert_eq(zmq_send(dealer, hb, sizeof hb, ZMQ_SNDMORE), (int)sizeof hb);
    cr_assert_eq(zmq_send(dealer, t4, 4, ZMQ_SNDMORE), 4);
    for (int i = 0; i < 4; i++)
        cr_assert_geq(zmq_send(dealer, parts[i], strlen(parts[i]), i < 3 ? ZMQ_SNDMORE : 0), 0);

    static struct wire_in in;
    bool told = false;
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    while (!told && support_now_ms() < deadline) {
        zmq_pollitem_t it = {dealer, 0, ZMQ_POLLIN, 0};
        if ((!wire_in_pending(&in) && zmq_poll(&it, 1, 200) <= 0) || wire_recv(dealer, false, 65536, &in) != 0)
            continue;
        told = in.msg.hdr.type == WIRE_ERROR && in.msg.hdr.code == (uint16_t)-TREATY_EVERSION;
        wire_in_close(&in);
    }
    wire_in_discard(&in);
    zmq_close(dealer);
    zmq_ctx_term(zctx);
    cr_assert(told, "no ERROR TREATY_EVERSION for the version-1 SUBMIT of %s", txid_str(&id));
    world_settle(&w);
    expect_balances(&w, 100, 50);
    cr_assert(journal_records(&w, &id, "commit") == 0 && journal_records(&w, &id, "abort") == 0,
              "the version-1 SUBMIT of %s left journal records", txid_str(&id));
}

/* ----------------------------------------------------- concurrency tests */

#define MAXACCT 64

struct xfer {
    treaty_txid_t id;
    int ai, bi;       /* accounts a<ai> and b<bi> */
    long long amount; /* from a<ai> to b<bi>; negative: the other way */
    int rc;           /* submit rc */
    treaty_outcome_t told;
    bool answered;
    enum treaty_status final;
};

static unsigned rnd(unsigned n)
{
    unsigned r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (unsigned)rand();
    return r % n;
}

/* A random transfer between a<0..nacct-1> and b<0..nacct-1>. */
static void xfer_build(struct xfer *x, int nacct, treaty_txn_t **out)
{
    x->ai = (int)rnd((unsigned)nacct);
    x->bi = (int)rnd((unsigned)nacct);
    x->amount = (long long)rnd(30) + 1;
    if (rnd(2))
        x->amount = -x->amount;
    char pa[64], pb[64];
    snprintf(pa, sizeof pa, "a%d:%lld", x->ai, -x->amount);
    snprintf(pb, sizeof pb, "b%d:%lld", x->bi, x->amount);
    treaty_txn_t *t = NULL;
    int rc = treaty_txn_new(&t);
    if (rc == 0)
        rc = treaty_txn_add_branch(t, "bank-a", pa, strlen(pa));
    if (rc == 0)
        rc = treaty_txn_add_branch(t, "bank-b", pb, strlen(pb));
    x->rc = rc;
    if (t != NULL)
        x->id = *treaty_txn_id(t);
    *out = t;
}

static void accounts_list(char *buf, size_t len, char prefix, int nacct, long long each)
{
    size_t o = 0;
    for (int i = 0; i < nacct; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%c%d=%lld", i ? "," : "", prefix, i, each);
}

/* Resolves every transfer's final outcome, then checks the databases:
 * each account = opening + the committed transfers, nothing prepared. */
static void check_conserved(struct world *w, struct xfer *xs, int n, int nacct, long long each)
{
    int committed = 0;
    long long want_a[MAXACCT], want_b[MAXACCT];
    for (int i = 0; i < nacct; i++)
        want_a[i] = want_b[i] = each;
    for (int i = 0; i < n; i++) {
        struct xfer *x = &xs[i];
        treaty_outcome_t fin;
        x->final = support_query_final(w->d.endpoint, &x->id, &fin);
        if (x->answered && x->rc == 0 && x->told.error == 0 &&
            (x->told.status == TREATY_STATUS_COMMITTED || x->told.status == TREATY_STATUS_ABORTED))
            cr_assert(x->final == x->told.status, "%s: told %s, later %s", txid_str(&x->id),
                      treaty_status_name(x->told.status), treaty_status_name(x->final));
        if (x->final == TREATY_STATUS_COMMITTED) {
            committed++;
            want_a[x->ai] -= x->amount;
            want_b[x->bi] += x->amount;
        }
    }
    world_settle(w);
    long long total = 0;
    for (int i = 0; i < nacct; i++) {
        char acct[8];
        snprintf(acct, sizeof acct, "a%d", i);
        long long got = balance(&w->a, acct);
        cr_assert(got == want_a[i], "%s: %lld, committed transfers say %lld", acct, got, want_a[i]);
        total += got;
        snprintf(acct, sizeof acct, "b%d", i);
        got = balance(&w->b, acct);
        cr_assert(got == want_b[i], "%s: %lld, committed transfers say %lld", acct, got, want_b[i]);
        total += got;
    }
    cr_assert(total == 2 * nacct * each, "total %lld, want %lld", total, 2 * nacct * each);
    cr_assert(committed > 0, "no transfer committed out of %d", n);
    cr_log_info("%d of %d transfers committed", committed, n);
}

struct async_ctx {
    int done;
};

struct async_slot {
    struct async_ctx *ctx;
    struct xfer *x;
};

static void on_outcome(void *arg, const treaty_outcome_t *outcome)
{
    struct async_slot *s = arg;
    s->x->told = *outcome;
    s->x->answered = true;
    s->ctx->done++;
}

Test(e2e, concurrent_transfers_conserve_money, .init = e2e_setup_shared)
{
    /* Many accounts: a prepared branch holds its row until COMMIT, and a
     * PREPARE that finds the row locked is a NO vote ("busy"). */
    enum { N = 200, WINDOW = 16, NACCT = 40 };
    char acc_a[1024], acc_b[1024];
    accounts_list(acc_a, sizeof acc_a, 'a', NACCT, 100);
    accounts_list(acc_b, sizeof acc_b, 'b', NACCT, 100);
    struct world w;
    struct world_opts o = {.accounts_a = acc_a, .accounts_b = acc_b};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    static struct xfer xs[N];
    static struct async_slot slots[N];
    memset(xs, 0, sizeof xs);
    struct async_ctx ctx = {0};
    int sent = 0;
    long long deadline = support_now_ms() + 120000;
    while (ctx.done < N) {
        while (sent < N && sent - ctx.done < WINDOW) {
            treaty_txn_t *t = NULL;
            xfer_build(&xs[sent], NACCT, &t);
            cr_assert(xs[sent].rc == 0, "building transfer %d: %s", sent, treaty_err_name(xs[sent].rc));
            slots[sent] = (struct async_slot){&ctx, &xs[sent]};
            int rc = treaty_client_submit_async(c, t, 20000, on_outcome, &slots[sent]);
            treaty_txn_destroy(&t);
            cr_assert(rc == 0, "submit_async %d: %s (%s)", sent, treaty_err_name(rc), treaty_client_errmsg(c));
            sent++;
        }
        int wait = treaty_client_next_timeout(c);
        if (wait < 0 || wait > 100)
            wait = 100;
        struct pollfd pfd = {.fd = treaty_client_fd(c), .events = POLLIN};
        poll(&pfd, 1, wait);
        int n;
        while ((n = treaty_client_process(c)) > 0) {
        }
        cr_assert(n == 0, "treaty_client_process: %s (%s)", treaty_err_name(n), treaty_client_errmsg(c));
        cr_assert(support_now_ms() < deadline, "only %d of %d outcomes after 120 s", ctx.done, N);
    }
    treaty_client_destroy(&c);
    for (int i = 0; i < N; i++)
        xs[i].rc = 0;
    check_conserved(&w, xs, N, NACCT, 100);
}

/* Postgres restart under load: client threads keep transferring while the
 * cluster restarts. Outcomes during the restart may be unknown or refused;
 * afterwards every transaction is resolved by query, and what a client was
 * told must hold, and the databases must match the resolved outcomes. */

#define RESTART_MAX 4000
#define RESTART_NACCT 8

struct loader {
    pthread_t th;
    const char *endpoint;
    atomic_bool *stop;
    atomic_int *completed;
    atomic_int *committed;
    struct xfer *xs; /* RESTART_MAX */
    int n;
    int error; /* a client API error other than a transaction outcome */
};

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    treaty_client_t *c = NULL;
    l->error = treaty_client_new(l->endpoint, &c);
    if (l->error != 0)
        return NULL;
    while (!atomic_load(l->stop) && l->n < RESTART_MAX) {
        struct xfer *x = &l->xs[l->n];
        treaty_txn_t *t = NULL;
        xfer_build(x, RESTART_NACCT, &t);
        if (x->rc != 0) {
            l->error = x->rc;
            break;
        }
        l->n++;
        x->rc = treaty_client_submit(c, t, 5000, &x->told);
        x->answered = x->rc == 0;
        treaty_txn_destroy(&t);
        atomic_fetch_add(l->completed, 1);
        if (x->rc == 0 && x->told.error == 0 && x->told.status == TREATY_STATUS_COMMITTED)
            atomic_fetch_add(l->committed, 1);
        if (x->rc != 0 || x->told.error != 0)
            support_sleep_ms(50); /* the coordinator or Postgres is away: do not spin */
        support_sleep_ms(20);     /* a steady load, not a flood */
    }
    treaty_client_destroy(&c);
    return NULL;
}

struct counter_goal {
    atomic_int *counter;
    int goal;
};

static bool reached(void *arg)
{
    struct counter_goal *g = arg;
    return atomic_load(g->counter) >= g->goal;
}

Test(e2e, postgres_restart_under_load, .init = e2e_setup_exclusive, .timeout = 300)
{
    enum { THREADS = 2 };
    char acc_a[256], acc_b[256];
    accounts_list(acc_a, sizeof acc_a, 'a', RESTART_NACCT, 1000);
    accounts_list(acc_b, sizeof acc_b, 'b', RESTART_NACCT, 1000);
    struct world w;
    struct world_opts o = {.accounts_a = acc_a, .accounts_b = acc_b};
    world_start(&w, &o);

    static struct xfer xs[THREADS][RESTART_MAX];
    memset(xs, 0, sizeof xs);
    atomic_bool stop = false;
    atomic_int completed = 0, committed = 0;
    struct loader ls[THREADS];
    for (int i = 0; i < THREADS; i++) {
        ls[i] = (struct loader){
            .endpoint = w.d.endpoint, .stop = &stop, .completed = &completed, .committed = &committed, .xs = xs[i]};
        cr_assert(pthread_create(&ls[i].th, NULL, loader_main, &ls[i]) == 0, "pthread_create");
    }

    struct counter_goal g = {&completed, 20};
    bool warm = support_wait_until(reached, &g, SUPPORT_DEADLINE_MS);
    if (warm)
        support_pg_restart();
    /* Liveness: once Postgres is back, transfers commit again. */
    struct counter_goal g2 = {&committed, atomic_load(&committed) + 10};
    bool recovered = warm && support_wait_until(reached, &g2, 60000);
    atomic_store(&stop, true);
    for (int i = 0; i < THREADS; i++)
        pthread_join(ls[i].th, NULL);
    cr_assert(warm, "only %d transfers completed before the restart", atomic_load(&completed));
    for (int i = 0; i < THREADS; i++)
        cr_assert(ls[i].error == 0, "loader %d: %s", i, treaty_err_name(ls[i].error));
    cr_assert(recovered, "no 10 more commits within 60 s after the Postgres restart (logs %s)", support_log_dir());
    cr_assert(support_proc_running(w.a.proc) && support_proc_running(w.b.proc) && support_proc_running(w.d.proc),
              "a process died during the Postgres restart (logs %s)", support_log_dir());

    /* Resolve and check, all transfers of all loaders together. */
    int total = 0;
    for (int i = 0; i < THREADS; i++)
        total += ls[i].n;
    struct xfer *all = calloc((size_t)total, sizeof *all);
    cr_assert(all != NULL);
    int k = 0;
    for (int i = 0; i < THREADS; i++)
        for (int j = 0; j < ls[i].n; j++)
            all[k++] = xs[i][j];
    check_conserved(&w, all, total, RESTART_NACCT, 1000);
    free(all);
}

/* ------------------------------------------- answers that must hold (issue 10) */

/* A txid made at unix_ms, as treaty_txid_generate would have made it then. */
static void txid_made_at(treaty_txid_t *id, long long unix_ms)
{
    cr_assert_eq(treaty_txid_generate(id), 0);
    for (int k = 0; k < 6; k++)
        id->b[k] = (uint8_t)((unsigned long long)unix_ms >> (40 - 8 * k));
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long journal_records(struct world *w, const treaty_txid_t *id, const char *kind)
{
    return support_scalar(w->journal, "SELECT count(*) FROM treaty_records WHERE txid = '%s' AND kind = '%s'",
                          txid_str(id), kind);
}

static void expect_aborted(int rc, const treaty_outcome_t *out, const char *what)
{
    cr_assert(rc == 0 && out->error == 0 && out->status == TREATY_STATUS_ABORTED,
              "%s %s: want aborted, got %s %s (error %s, reason \"%s\"; logs %s)", what, txid_str(&out->txid),
              treaty_err_name(rc), treaty_status_name(out->status), treaty_err_name(out->error), out->reason,
              support_log_dir());
}

/* Seen: QUERY of a txid the coordinator never saw answered "aborted", and a
 * later SUBMIT of that txid committed - the client was told an outcome that
 * did not happen. "Aborted" must be recorded before it is said, and hold. */
Test(e2e, aborted_answer_to_a_query_of_an_unknown_txid_is_final, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    treaty_txid_t id;
    cr_assert_eq(treaty_txid_generate(&id), 0);
    treaty_outcome_t q, out;
    int rc = treaty_client_query(c, &id, 5000, &q);
    q.txid = id;
    expect_aborted(rc, &q, "query of an unknown txid");
    cr_assert(journal_records(&w, &id, "abort") == 1, "the abort told to the query of %s was not recorded",
              txid_str(&id));

    expect_aborted(transfer(c, &id, 30, 10000, &out), &out, "submit of a txid already answered aborted");
    world_settle(&w);
    expect_balances(&w, 100, 50);
    cr_assert(journal_records(&w, &id, "commit") == 0, "txid %s committed after it was answered aborted",
              txid_str(&id));
    treaty_client_destroy(&c);
}

/* Seen: a participant's INQUIRE about a txid the coordinator did not know
 * was answered ABORT without a record, and the client's resubmission of the
 * same txid then committed, while a twin instance of the service rolled its
 * prepared branch back: one account debited, the other never credited. The
 * ABORT told to the participant must hold: the txid can never commit. */
Test(e2e, abort_told_to_an_inquiring_participant_is_final, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    /* A participant of another service (it must not take branches of bank-a
     * or bank-b) asks about a txid nobody submitted yet. */
    void *zctx = zmq_ctx_new();
    void *dealer = zmq_socket(zctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    cr_assert(zmq_connect(dealer, w.d.endpoint) == 0, "connect %s: %s", w.d.endpoint, zmq_strerror(errno));
    struct wire_hdr h = {.type = WIRE_HELLO};
    struct wire_frame hello[2] = {wire_str("auditor"), wire_str("x1")};
    cr_assert_eq(wire_send(dealer, NULL, 0, &h, hello, 2), 0);
    treaty_txid_t id;
    cr_assert_eq(treaty_txid_generate(&id), 0);
    memset(&h, 0, sizeof h);
    h.type = WIRE_INQUIRE;
    memcpy(h.txid, id.b, 16);
    cr_assert_eq(wire_send(dealer, NULL, 0, &h, NULL, 0), 0);
    static struct wire_in in;
    bool told_abort = false;
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    while (!told_abort && support_now_ms() < deadline) {
        zmq_pollitem_t it = {dealer, 0, ZMQ_POLLIN, 0};
        if (!wire_in_pending(&in) && zmq_poll(&it, 1, 200) <= 0)
            continue; /* (WELCOME and ABORT may come in one bundle) */
        if (wire_recv(dealer, false, 65536, &in) != 0)
            continue;
        told_abort = in.msg.hdr.type == WIRE_ABORT && memcmp(in.msg.hdr.txid, id.b, 16) == 0;
        wire_in_close(&in);
    }
    wire_in_discard(&in);
    zmq_close(dealer);
    zmq_ctx_term(zctx);
    cr_assert(told_abort, "no ABORT in answer to the INQUIRE of unknown txid %s", txid_str(&id));
    cr_assert(journal_records(&w, &id, "abort") == 1, "the ABORT told to the participant about %s was not recorded",
              txid_str(&id));

    treaty_outcome_t out;
    expect_aborted(transfer(c, &id, 30, 10000, &out), &out, "submit of a txid a participant was told to abort");
    world_settle(&w);
    expect_balances(&w, 100, 50);
    treaty_client_destroy(&c);
}

/* Seen: a committed txid resubmitted after the journal's retention window
 * ran again (its records were collected). A txid carries its creation time;
 * past txid.max_age_s it is refused, never run, and a txid without a time or
 * from the future is refused too. */
Test(e2e, txids_too_old_untimed_or_from_the_future_are_refused_and_never_run, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    treaty_txid_t old, untimed, future;
    txid_made_at(&old, wall_ms() - 2LL * 3600 * 1000);
    txid_made_at(&future, wall_ms() + 3600LL * 1000);
    cr_assert_eq(treaty_txid_generate(&untimed), 0);
    untimed.b[6] = (uint8_t)((untimed.b[6] & 0x0f) | 0x40); /* a random UUIDv4 */

    treaty_outcome_t out;
    int rc = transfer(c, &old, 30, 10000, &out);
    cr_assert(rc == 0 && out.error == TREATY_EEXPIRED,
              "submit of a txid made 2 h ago: want TREATY_EEXPIRED, got %s (status %s, error %s, \"%s\")",
              treaty_err_name(rc), treaty_status_name(out.status), treaty_err_name(out.error), out.reason);
    cr_assert(strstr(out.reason, "max_age_s") != NULL, "refusal \"%s\" does not name txid.max_age_s", out.reason);
    rc = transfer(c, &untimed, 30, 10000, &out);
    cr_assert(rc == 0 && out.error == TREATY_EINVAL,
              "submit of a UUIDv4 txid: want TREATY_EINVAL, got %s / %s (\"%s\")", treaty_err_name(rc),
              treaty_err_name(out.error), out.reason);
    rc = transfer(c, &future, 30, 10000, &out);
    cr_assert(rc == 0 && out.error == TREATY_EINVAL,
              "submit of a txid made 1 h ahead: want TREATY_EINVAL, got %s / %s (\"%s\")", treaty_err_name(rc),
              treaty_err_name(out.error), out.reason);
    /* Nothing known of the old txid: a query cannot say "aborted" (it may
     * have committed long ago) and records nothing. */
    treaty_outcome_t q;
    rc = treaty_client_query(c, &old, 5000, &q);
    cr_assert(rc == 0 && q.error == TREATY_EEXPIRED,
              "query of an old unknown txid: want TREATY_EEXPIRED, got %s / %s %s", treaty_err_name(rc),
              treaty_err_name(q.error), treaty_status_name(q.status));
    world_settle(&w);
    expect_balances(&w, 100, 50);
    cr_assert(journal_records(&w, &old, "abort") + journal_records(&w, &old, "commit") == 0,
              "records written for a refused txid");
    treaty_client_destroy(&c);
}

/* Memory is bounded (limits.outcome_cache): outcomes that left the cache are
 * read back from the journal, before and after a restart, and a resubmission
 * applies nothing twice. */
Test(e2e, outcomes_evicted_from_memory_are_answered_from_the_journal, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {.coord_config = "limits = { outcome_cache = 1; };"};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);

    enum { N = 6 };
    treaty_outcome_t first[N], again;
    for (int i = 0; i < N; i++) {
        /* even: alice pays 5 (commits); odd: bob pays 500 (he cannot: aborts) */
        int rc = transfer(c, NULL, i % 2 == 0 ? 5 : -500, 10000, &first[i]);
        cr_assert(rc == 0 && first[i].status == (i % 2 == 0 ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED),
                  "transfer %d: %s %s (\"%s\")", i, treaty_err_name(rc), treaty_status_name(first[i].status),
                  first[i].reason);
    }
    world_settle(&w);
    expect_balances(&w, 85, 65);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < N; i++) {
            expect_end_record(&w, &first[i].txid);
            int rc = transfer(c, &first[i].txid, i % 2 == 0 ? 5 : -500, 10000, &again);
            cr_assert(rc == 0 && again.error == 0 && again.status == first[i].status,
                      "pass %d: resubmitted %s (transfer %d, %s) answered %s %s (error %s, \"%s\")", pass,
                      txid_str(&first[i].txid), i, treaty_status_name(first[i].status), treaty_err_name(rc),
                      treaty_status_name(again.status), treaty_err_name(again.error), again.reason);
            treaty_outcome_t q;
            rc = treaty_client_query(c, &first[i].txid, 5000, &q);
            cr_assert(rc == 0 && q.status == first[i].status, "pass %d: query %s: %s %s, want %s", pass,
                      txid_str(&first[i].txid), treaty_err_name(rc), treaty_status_name(q.status),
                      treaty_status_name(first[i].status));
        }
        world_settle(&w);
        expect_balances(&w, 85, 65);
        if (pass == 0) {
            /* the same from a coordinator that starts with an empty cache */
            cr_assert(support_proc_stop(w.d.proc, 10000), "treatyd did not stop on SIGTERM");
            support_treatyd_restart(&w.d, NULL, true);
        }
    }
    treaty_client_destroy(&c);
}

/* Every number a client sends has a cap: a prepare deadline beyond
 * twopc.max_timeout_ms is refused, not cut down behind the client's back. */
Test(e2e, prepare_timeout_beyond_the_cap_is_refused, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {.coord = {.default_timeout_ms = 1000, .max_timeout_ms = 3000}};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);
    treaty_outcome_t out;
    int rc = transfer(c, NULL, 30, 5000, &out);
    cr_assert(rc == 0 && out.error == TREATY_ETOOBIG && strstr(out.reason, "max_timeout_ms") != NULL,
              "prepare deadline of 5000 ms over a cap of 3000: want TREATY_ETOOBIG naming the cap, got %s %s / %s "
              "(\"%s\")",
              treaty_err_name(rc), treaty_status_name(out.status), treaty_err_name(out.error), out.reason);
    expect_committed(transfer(c, NULL, 30, 3000, &out), &out);
    world_settle(&w);
    expect_balances(&w, 70, 80);
    treaty_client_destroy(&c);
}

/* ------------------------------------------------------------ treatyctl (issue 13) */

/* Runs treatyctl --json ARGS against w's treatyd, asserts its exit status is
 * want_rc and returns its answer parsed (caller: json_decref). */
static json_t *ctl_json(struct world *w, int want_rc, const char *args)
{
    static char out[1 << 18];
    char full[1024], err[512];
    snprintf(full, sizeof full, "--json %s", args);
    int rc = support_ctl(&w->d, full, out, sizeof out, err, sizeof err);
    cr_assert(rc == want_rc, "treatyctl %s: exit %d, want %d (stderr: %s; stdout: %.300s)", full, rc, want_rc, err,
              out);
    json_error_t e;
    json_t *a = json_loads(out, 0, &e);
    cr_assert(json_is_object(a), "treatyctl %s: stdout is not a JSON object (%s): %.300s", full, e.text, out);
    return a;
}

struct ctl_probe {
    struct world *w;
    const char *args;
    const char *txid; /* the listing must hold it, with branch 0 voted yes */
};

/* list --state in-doubt holds the txid, and show says bank-a voted YES. */
static bool in_doubt_listed(void *arg)
{
    struct ctl_probe *p = arg;
    json_t *a = ctl_json(p->w, 0, "list --state in-doubt");
    json_t *t = json_array_get(json_object_get(a, "transactions"), 0);
    bool listed = t != NULL && strcmp(json_string_value(json_object_get(t, "txid")), p->txid) == 0;
    json_decref(a);
    if (!listed)
        return false;
    char args[128];
    snprintf(args, sizeof args, "show %s", p->txid);
    a = ctl_json(p->w, 0, args);
    json_t *b0 = json_array_get(json_object_get(a, "branches"), 0);
    bool voted = b0 != NULL && strcmp(json_string_value(json_object_get(b0, "vote")), "yes") == 0;
    json_decref(a);
    return voted;
}

static void ignore_outcome(void *arg, const treaty_outcome_t *o)
{
    (void)arg;
    (void)o;
}

Test(e2e, treatyctl_resolve_aborts_an_undecided_2pc_and_show_has_its_audit_record, .init = e2e_setup_shared)
{
    /* bank-b never votes within the test: the transaction stays undecided.
     * Asleep in its PREPARE handler it sends no HELLO either, so treatyd must
     * not drop it meanwhile (else show names its instance "(gone)"). */
    struct world w;
    struct world_opts o = {.bank_b_delay_ms = 600000, .coord = {.dead_after_ms = 600000}};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);
    treaty_txn_t *t = NULL;
    cr_assert(treaty_txn_new(&t) == 0);
    cr_assert(treaty_txn_add_branch(t, "bank-a", "alice:-30", 9) == 0);
    cr_assert(treaty_txn_add_branch(t, "bank-b", "bob:30", 6) == 0);
    int rc = treaty_client_submit_async(c, t, 300000, ignore_outcome, NULL);
    cr_assert(rc == 0, "submit_async: %s", treaty_strerror(rc));
    char id[TREATY_TXID_STRLEN];
    treaty_txid_format(treaty_txn_id(t), id);
    treaty_txn_destroy(&t);

    struct ctl_probe p = {&w, NULL, id};
    cr_assert(support_wait_until(in_doubt_listed, &p, SUPPORT_DEADLINE_MS),
              "%s never listed in doubt with bank-a's YES (logs %s)", id, support_log_dir());

    /* status and services see it. */
    json_t *a = ctl_json(&w, 0, "status");
    json_t *counts = json_object_get(a, "counts");
    cr_assert(json_is_true(json_object_get(a, "journal_reachable")), "status: journal not reachable");
    cr_assert(json_integer_value(json_object_get(counts, "in-doubt")) == 1 &&
                  json_integer_value(json_object_get(counts, "in-flight")) == 1,
              "status counts: in-doubt %lld in-flight %lld, want 1 1",
              (long long)json_integer_value(json_object_get(counts, "in-doubt")),
              (long long)json_integer_value(json_object_get(counts, "in-flight")));
    cr_assert(json_integer_value(json_object_get(a, "journal_schema")) == 5, "journal schema not 5");
    json_decref(a);
    a = ctl_json(&w, 0, "services");
    size_t i;
    json_t *in;
    long long b_in_flight = -1;
    json_array_foreach(json_object_get(a, "instances"), i, in)
    {
        if (strcmp(json_string_value(json_object_get(in, "instance")), "b1") == 0)
            b_in_flight = json_integer_value(json_object_get(in, "in_flight"));
    }
    cr_assert(b_in_flight == 1, "services: b1 has %lld branches in flight, want 1", b_in_flight);
    json_decref(a);
    a = ctl_json(&w, 0, "list --service bank-b --older-than 0s");
    cr_assert(json_array_size(json_object_get(a, "transactions")) == 1, "list --service bank-b: want 1");
    json_decref(a);
    a = ctl_json(&w, 0, "list --older-than 1d");
    cr_assert(json_array_size(json_object_get(a, "transactions")) == 0, "list --older-than 1d: want none");
    json_decref(a);
    a = ctl_json(&w, 0, "list --state deciding");
    cr_assert(json_array_size(json_object_get(a, "transactions")) == 0, "list --state deciding: want none");
    json_decref(a);

    /* The branch instances in show. */
    char args[256];
    snprintf(args, sizeof args, "show %s", id);
    a = ctl_json(&w, 0, args);
    cr_assert_str_eq(json_string_value(json_object_get(a, "state")), "preparing");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(a, "branches"), 1), "instance")),
                     "b1");
    json_decref(a);

    /* The operator aborts it. */
    snprintf(args, sizeof args, "resolve %s abort --reason bank-b-hung", id);
    a = ctl_json(&w, 0, args);
    cr_assert_str_eq(json_string_value(json_object_get(a, "resolved")), "abort");
    json_decref(a);
    treaty_outcome_t fin;
    treaty_txid_t tid;
    cr_assert(treaty_txid_parse(id, &tid) == 0);
    cr_assert(support_query_final(w.d.endpoint, &tid, &fin) == TREATY_STATUS_ABORTED, "after resolve: %s",
              treaty_status_name(fin.status));
    cr_assert(strstr(fin.reason, "operator") != NULL && strstr(fin.reason, "bank-b-hung") != NULL,
              "the abort reason does not name the operator's resolve: %s", fin.reason);
    support_wait_no_prepared(w.a.conninfo); /* bank-a's YES rolled back */
    cr_assert(balance(&w.a, "alice") == 100, "alice %lld, want 100", balance(&w.a, "alice"));

    /* show: the audit record (who, why), then the ABORT it carried out. */
    snprintf(args, sizeof args, "show %s", id);
    a = ctl_json(&w, 0, args);
    json_t *recs = json_object_get(a, "records"), *r;
    int audit_at = -1, abort_at = -1;
    json_array_foreach(recs, i, r)
    {
        const char *kind = json_string_value(json_object_get(r, "kind"));
        if (strcmp(kind, "audit") == 0) {
            audit_at = (int)i;
            const char *detail = json_string_value(json_object_get(r, "detail"));
            cr_assert(strstr(detail, "abort by uid ") != NULL && strstr(detail, "bank-b-hung") != NULL,
                      "audit detail \"%s\" does not say what, who and why", detail);
            cr_assert(json_integer_value(json_object_get(r, "written_ms")) > 0, "audit record without a time");
        } else if (strcmp(kind, "abort") == 0) {
            abort_at = (int)i;
        }
    }
    cr_assert(audit_at >= 0 && abort_at == audit_at + 1, "want the audit record right before the ABORT: %d %d",
              audit_at, abort_at);
    json_decref(a);

    /* Human output of show names the audit record too. */
    static char out[1 << 16];
    char err[512];
    snprintf(args, sizeof args, "show %s", id);
    cr_assert(support_ctl(&w.d, args, out, sizeof out, err, sizeof err) == 0, "show: %s", err);
    cr_assert(strstr(out, "audit") != NULL && strstr(out, "bank-b-hung") != NULL, "human show: %s", out);

    /* Decided now (bank-b, asleep, has not acknowledged): a second abort is refused, exit 1. */
    snprintf(args, sizeof args, "resolve %s abort --reason again", id);
    cr_assert(support_ctl(&w.d, args, out, sizeof out, err, sizeof err) == 1, "second resolve not refused: %s", err);
    cr_assert(strstr(err, "already decided abort") != NULL, "refusal says: %s", err);
    treaty_client_destroy(&c);
}

Test(e2e, treatyctl_refuses_to_abort_after_a_commit_decision, .init = e2e_setup_shared)
{
    /* bank-b commits and dies before its ACK: the transaction stays
     * committing (its COMMIT record durable) until bank-b comes back. */
    static const char *const crash[] = {"TREATY_CRASH_AT=participant.after_commit", NULL};
    struct world w;
    struct world_opts o = {.bank_b_env = crash};
    world_start(&w, &o);
    treaty_client_t *c = client(&w);
    treaty_outcome_t out;
    expect_committed(transfer(c, NULL, 30, 10000, &out), &out);
    expect_proc_killed(w.b.proc, "participant.after_commit");

    json_t *a = ctl_json(&w, 0, "list --state deciding");
    cr_assert(json_array_size(json_object_get(a, "transactions")) == 1, "want the committing transaction listed");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(a, "transactions"), 0), "state")),
                     "committing");
    json_decref(a);

    char args[256], err[512];
    static char outbuf[1 << 16];
    snprintf(args, sizeof args, "resolve %s abort --reason try", txid_str(&out.txid));
    cr_assert(support_ctl(&w.d, args, outbuf, sizeof outbuf, err, sizeof err) == 1, "abort after COMMIT not refused");
    cr_assert(strstr(err, "COMMIT") != NULL, "the refusal does not name the commit decision: %s", err);

    /* No audit record was written for the refused resolve; bank-b back: END. */
    snprintf(args, sizeof args, "show %s", txid_str(&out.txid));
    a = ctl_json(&w, 0, args);
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(a, "records"), i, r) cr_assert(
        strcmp(json_string_value(json_object_get(r, "kind")), "audit") != 0, "a refused resolve left an audit record");
    json_decref(a);
    bank_start(&w, &w.b, NULL);
    expect_end_record(&w, &out.txid);
    expect_balances(&w, 70, 80);

    /* Finished: anything on it is refused. */
    cr_assert(support_ctl(&w.d, args, outbuf, sizeof outbuf, err, sizeof err) == 0, "show after END: %s", err);
    snprintf(args, sizeof args, "resolve %s abort --reason late", txid_str(&out.txid));
    cr_assert(support_ctl(&w.d, args, outbuf, sizeof outbuf, err, sizeof err) == 1, "abort after END not refused");
    cr_assert(strstr(err, "not in flight") != NULL && strstr(err, "committed") != NULL, "refusal: %s", err);
    treaty_client_destroy(&c);
}

Test(e2e, treatyctl_exit_codes_say_what_went_wrong, .init = e2e_setup_shared)
{
    struct world w;
    struct world_opts o = {0};
    world_start(&w, &o);
    static char out[1 << 16];
    char err[512];
    treaty_txid_t id;
    char args[256], sid[TREATY_TXID_STRLEN];
    treaty_txid_generate(&id);
    treaty_txid_format(&id, sid);

    cr_assert(support_ctl(&w.d, "status", out, sizeof out, err, sizeof err) == 0, "status: %s", err);
    cr_assert(strstr(out, "journal: reachable (schema 5)") != NULL, "human status: %s", out);
    snprintf(args, sizeof args, "show %s", sid);
    cr_assert(support_ctl(&w.d, args, out, sizeof out, err, sizeof err) == 3, "show of an unknown txid: %s", err);
    cr_assert(support_ctl(&w.d, "list --state bogus", out, sizeof out, err, sizeof err) == 2, "bad --state");
    cr_assert(support_ctl(&w.d, "list --limit 1000001", out, sizeof out, err, sizeof err) == 2,
              "a --limit over admin.max_list was not refused");
    cr_assert(strstr(err, "admin.max_list") != NULL, "limit refusal: %s", err);
    cr_assert(support_ctl(&w.d, "show not-a-txid", out, sizeof out, err, sizeof err) == 2, "bad txid");
    snprintf(args, sizeof args, "resolve %s abort", sid);
    cr_assert(support_ctl(&w.d, args, out, sizeof out, err, sizeof err) == 2, "resolve without --reason");
    snprintf(args, sizeof args, "resolve %s abort --reason x", sid);
    cr_assert(support_ctl(&w.d, args, out, sizeof out, err, sizeof err) == 1, "resolve of an unknown txid: %s", err);

    /* The socket file is for treatyd's user only. */
    struct stat st;
    cr_assert(stat(w.d.admin + strlen("ipc://"), &st) == 0, "no socket file %s", w.d.admin);
    cr_assert((st.st_mode & 0777) == 0600, "admin socket mode %o, want 600", (unsigned)(st.st_mode & 0777));

    /* treatyd gone: exit 4. */
    cr_assert(support_proc_stop(w.d.proc, 10000), "treatyd did not stop");
    cr_assert(support_ctl(&w.d, "--timeout 1000 status", out, sizeof out, err, sizeof err) == 4,
              "status with treatyd stopped: %s", err);
}
