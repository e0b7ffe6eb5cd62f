/*
 * test_security.c - issue 12 against a real treatyd and real ZeroMQ sockets:
 * CURVE keys made here with zmq_curve_keypair (the coordinator's with
 * treatyd --keygen), peers that are raw DEALER sockets speaking wire.h, as
 * an attacker would. What each test shows:
 *
 *   an unknown key is refused at the handshake, and logged with its address
 *   a plaintext peer cannot reach a CURVE coordinator
 *   a client key's VOTE, ACK, INQUIRE, RESULT have no effect
 *   a participant key of service A cannot register as B
 *   a live instance name cannot be taken over, with CURVE and without
 *   a key revoked by SIGHUP is refused: new connections and old ones alike;
 *     an allow-list with an error is not loaded, the old one stays
 *   a non-loopback listen address without CURVE stops start-up unless
 *     security.allow_insecure; a secret key readable by others does too
 *   a client beyond limits.max_inflight_per_client is refused (EBUSY), per
 *     key, on every connection
 *
 * "Nothing arrives" is checked with a short wait after something that does
 * arrive on another socket (which orders it), or after a bounded wait: a
 * broken build fails, a correct one never waits long.
 */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <zmq.h>

#include "support.h"
#include "treaty.h"
#include "wire.h"

static void *zctx;

static void setup(void)
{
    support_pg_base(); /* fail loudly when run outside tests/run.sh */
    support_lock_shared();
    zctx = zmq_ctx_new();
    cr_assert_not_null(zctx);
}

static void teardown(void)
{
    support_cleanup();
    support_unlock();
}

TestSuite(security, .init = setup, .fini = teardown, .timeout = 120);

/* ------------------------------------------------------------ keys, files, treatyd */

struct kp {
    char pub[41], sec[41];
};

static struct kp keypair(void)
{
    struct kp k;
    cr_assert_eq(zmq_curve_keypair(k.pub, k.sec), 0);
    return k;
}

struct coord {
    struct support_treatyd d;
    char journal[600];
    struct kp server;  /* with CURVE: made by treatyd --keygen */
    char allow[700];   /* the allow-list file */
    char keybase[700]; /* PATH of PATH.key, PATH.pub */
};

/* treatyd --keygen PATH, and the key pair read back. */
static void keygen(struct coord *c)
{
    snprintf(c->keybase, sizeof c->keybase, "%s/server-%d", support_log_dir(), support_free_port());
    char bin[600];
    snprintf(bin, sizeof bin, "%s/treatyd", support_bin_dir());
    char *argv[] = {bin, (char *)"--keygen", c->keybase, NULL};
    struct support_proc *p = support_spawn("keygen", argv, NULL);
    cr_assert(support_proc_wait(p, 10000) && WIFEXITED(p->status) && WEXITSTATUS(p->status) == 0,
              "treatyd --keygen failed (log %s)", p->log);
    char path[720];
    snprintf(path, sizeof path, "%s.key", c->keybase);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "the secret key file is the owner's only: %o", st.st_mode & 0777);
    FILE *f = fopen(path, "r");
    cr_assert(f != NULL && fscanf(f, "%40s", c->server.sec) == 1);
    fclose(f);
    snprintf(path, sizeof path, "%s.pub", c->keybase);
    f = fopen(path, "r");
    cr_assert(f != NULL && fscanf(f, "%40s", c->server.pub) == 1);
    fclose(f);
    char derived[41];
    cr_assert_eq(zmq_curve_public(derived, c->server.sec), 0);
    cr_assert_str_eq(derived, c->server.pub, "PATH.pub is PATH.key's public key");
}

static void write_allow(struct coord *c, const char *text)
{
    /* Written aside and renamed: a reload never reads half a file. */
    char tmp[720];
    snprintf(tmp, sizeof tmp, "%s.new", c->allow);
    FILE *f = fopen(tmp, "w");
    cr_assert(f != NULL);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(rename(tmp, c->allow), 0);
}

static void journal_db(struct coord *c)
{
    char db[64];
    support_db_create("sec", db, sizeof db);
    support_db_conninfo(db, c->journal, sizeof c->journal);
}

/* treatyd with CURVE, the allow-list text, and extra config (or NULL). */
static void start_curve(struct coord *c, const char *allow_text, const char *extra)
{
    memset(c, 0, sizeof *c);
    journal_db(c);
    keygen(c);
    snprintf(c->allow, sizeof c->allow, "%s/allow-%d.list", support_log_dir(), support_free_port());
    write_allow(c, allow_text);
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "security = { curve = true; secret_key_file = \"%s.key\"; public_key_file = \"%s.pub\"; "
             "allow_list = \"%s\"; };\n%s",
             c->keybase, c->keybase, c->allow, extra ? extra : "");
    struct support_treatyd_opts o = {.default_timeout_ms = 1500, .dead_after_ms = 1000};
    support_treatyd_start_logged(&c->d, c->journal, &o, cfg, NULL);
}

static void start_plain(struct coord *c, const char *extra)
{
    memset(c, 0, sizeof *c);
    journal_db(c);
    struct support_treatyd_opts o = {.default_timeout_ms = 1500, .dead_after_ms = 1000};
    support_treatyd_start_with(&c->d, c->journal, &o, extra, NULL);
}

static bool log_has(const struct coord *c, const char *needle)
{
    return support_file_contains(c->d.proc->log, needle);
}

static void wait_log(const struct coord *c, const char *needle)
{
    long long deadline = support_now_ms() + SUPPORT_DEADLINE_MS;
    while (!log_has(c, needle)) {
        cr_assert(support_now_ms() < deadline, "treatyd never logged \"%s\" (log %s)", needle, c->d.proc->log);
        support_sleep_ms(20);
    }
}

/* ------------------------------------------------------------ raw peers */

/* A DEALER to the coordinator: with k, a CURVE client with that key pair;
 * NULL, in plaintext. */
static void *peer(const struct coord *c, const struct kp *k)
{
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    cr_assert_not_null(s);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (k != NULL) {
        cr_assert_eq(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, c->server.pub, 41), 0);
        cr_assert_eq(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, k->pub, 41), 0);
        cr_assert_eq(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, k->sec, 41), 0);
    }
    cr_assert_eq(zmq_connect(s, c->d.endpoint), 0);
    return s;
}

static void put(void *s, uint8_t type, const treaty_txid_t *txid, unsigned branch, unsigned code,
                const struct wire_frame *f, size_t n)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid != NULL)
        memcpy(h.txid, txid->b, 16);
    h.branch = (uint16_t)branch;
    h.code = (uint16_t)code;
    /* a DEALER queues while it connects: the send itself succeeds */
    cr_assert_eq(wire_send(s, NULL, 0, &h, f, n), 0);
}

/* The next message on s within ms: true and *in filled (close it), or false. */
static bool get(void *s, int ms, struct wire_in *in)
{
    long long deadline = support_now_ms() + ms;
    for (;;) {
        int rc = wire_recv(s, false, 1 << 20, in);
        if (rc == 0)
            return true;
        cr_assert_eq(rc, TREATY_ETIMEDOUT, "wire_recv: %s", treaty_strerror(rc));
        long long left = deadline - support_now_ms();
        if (left <= 0)
            return false;
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, left > 100 ? 100 : (long)left);
    }
}

/* The next message of type on s (others are skipped) within ms. */
static bool get_type(void *s, uint8_t type, int ms, struct wire_in *in)
{
    long long deadline = support_now_ms() + ms;
    for (;;) {
        long long left = deadline - support_now_ms();
        if (left <= 0 || !get(s, (int)left, in))
            return false;
        if (in->msg.hdr.type == type)
            return true;
        wire_in_close(in);
    }
}

static void text_of(const struct wire_in *in, char *buf, size_t len)
{
    if (in->msg.nframes > 0)
        wire_copy_text(&in->msg.frames[0], buf, len);
    else
        snprintf(buf, len, "%s", "");
}

/* HELLO as svc/inst; the answer's type (WELCOME or ERROR), 0 for none
 * within ms; its text into why. */
static uint8_t hello(void *s, const char *svc, const char *inst, int ms, char *why, size_t len)
{
    struct wire_frame f[2] = {wire_str(svc), wire_str(inst)};
    put(s, WIRE_HELLO, NULL, 0, 0, f, 2);
    struct wire_in in = {0};
    for (;;) {
        if (!get(s, ms, &in))
            return 0;
        uint8_t t = in.msg.hdr.type;
        if (t == WIRE_WELCOME || t == WIRE_ERROR) {
            if (why != NULL)
                text_of(&in, why, len);
            wire_in_close(&in);
            return t;
        }
        wire_in_close(&in);
    }
}

static void submit(void *s, const treaty_txid_t *tx, const char *svc, uint32_t timeout_ms)
{
    uint8_t tb[4];
    wire_put_u32(tb, timeout_ms);
    struct wire_frame f[3] = {{tb, 4}, wire_str(svc), wire_str("payload")};
    put(s, WIRE_SUBMIT, tx, 0, 0, f, 3);
}

/* The answer to tx on client socket s: OUTCOME status, or -error for ERROR,
 * or 0 for none within ms; its text into why. */
static int answer(void *s, const treaty_txid_t *tx, int ms, char *why, size_t len)
{
    long long deadline = support_now_ms() + ms;
    struct wire_in in = {0};
    for (;;) {
        long long left = deadline - support_now_ms();
        if (left <= 0 || !get(s, (int)left, &in))
            return 0;
        bool mine = memcmp(in.msg.hdr.txid, tx->b, 16) == 0;
        int r = in.msg.hdr.type == WIRE_OUTCOME ? (int)in.msg.hdr.code
                : in.msg.hdr.type == WIRE_ERROR ? -(int)in.msg.hdr.code
                                                : 0;
        if (mine && r != 0 && r != TREATY_STATUS_PENDING) {
            if (why != NULL)
                text_of(&in, why, len);
            wire_in_close(&in);
            return r;
        }
        wire_in_close(&in);
    }
}

static void query(void *s, const treaty_txid_t *tx)
{
    put(s, WIRE_QUERY, tx, 0, 0, NULL, 0);
}

static char allow_text[4096];

static const char *allow_list(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *allow_list(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(allow_text, sizeof allow_text, fmt, ap);
    va_end(ap);
    return allow_text;
}

/* ------------------------------------------------------------ authentication */

Test(security, an_unknown_key_is_refused_and_logged)
{
    struct kp cli = keypair(), stranger = keypair();
    struct coord c;
    start_curve(&c, allow_list("# test\n%s client\n", cli.pub), NULL);
    void *bad = peer(&c, &stranger), *good = peer(&c, &cli);
    treaty_txid_t tx;
    treaty_txid_generate(&tx);
    query(bad, &tx);
    query(good, &tx);
    char why[256];
    cr_assert_eq(answer(good, &tx, 10000, why, sizeof why), TREATY_STATUS_ABORTED, "a listed key is answered");
    cr_assert_eq(answer(bad, &tx, 1000, NULL, 0), 0, "an unknown key is not");
    char want[200];
    snprintf(want, sizeof want, "key %s is not on the allow-list", stranger.pub);
    wait_log(&c, want);
    cr_assert(log_has(&c, "refused a connection: from 127.0.0.1"), "the address is logged");
    zmq_close(bad);
    zmq_close(good);
}

Test(security, a_plaintext_peer_is_refused_by_a_curve_coordinator)
{
    struct kp cli = keypair();
    struct coord c;
    start_curve(&c, allow_list("%s client\n", cli.pub), NULL);
    void *plain = peer(&c, NULL), *good = peer(&c, &cli);
    treaty_txid_t tx;
    treaty_txid_generate(&tx);
    query(plain, &tx);
    query(good, &tx);
    cr_assert_eq(answer(good, &tx, 10000, NULL, 0), TREATY_STATUS_ABORTED);
    cr_assert_eq(answer(plain, &tx, 1000, NULL, 0), 0, "plaintext gets nothing");
    /* nor does the SDK's plaintext client */
    treaty_client_t *sdk = NULL;
    cr_assert_eq(treaty_client_new(c.d.endpoint, &sdk), 0);
    treaty_outcome_t out;
    int rc = treaty_client_query(sdk, &tx, 1000, &out);
    cr_assert(rc == TREATY_ETIMEDOUT || rc == TREATY_EAUTH, "the plaintext SDK client got %s, want no answer",
              treaty_strerror(rc));
    treaty_client_destroy(&sdk);
    zmq_close(plain);
    zmq_close(good);
}

/* ------------------------------------------------------------ authorization */

/* Seen: a peer sent VOTE YES for branches it was never asked about and the
 * transfers "committed". Here a client key votes, acknowledges, inquires
 * and reports results for a branch prepared at a real participant that
 * never answers: the transaction must abort at its deadline. */
Test(security, a_client_key_sending_votes_is_ignored)
{
    struct kp cli = keypair(), evil = keypair(), pa = keypair();
    struct coord c;
    start_curve(&c, allow_list("%s client\n%s client\n%s participant svc-a\n", cli.pub, evil.pub, pa.pub), NULL);
    void *p = peer(&c, &pa), *client = peer(&c, &cli), *e = peer(&c, &evil);
    cr_assert_eq(hello(p, "svc-a", "a1", 10000, NULL, 0), WIRE_WELCOME);
    treaty_txid_t tx;
    treaty_txid_generate(&tx);
    submit(client, &tx, "svc-a", 2000);
    struct wire_in in = {0};
    cr_assert(get_type(p, WIRE_PREPARE, 10000, &in), "the participant is asked");
    wire_in_close(&in);
    struct wire_frame reason = wire_str("");
    put(e, WIRE_VOTE, &tx, 0, TREATY_VOTE_YES, &reason, 1);
    put(e, WIRE_INQUIRE, &tx, 0, 0, NULL, 0);
    put(e, WIRE_ACK, &tx, 0, TREATY_STATUS_COMMITTED, NULL, 0);
    put(e, WIRE_RESULT, &tx, 0, WIRE_RESULT(WIRE_STEP_ACTION, WIRE_RESULT_OK), &reason, 1);
    put(e, WIRE_VOTE, &tx, 0, TREATY_VOTE_YES, &reason, 1);
    char why[256] = "";
    int st = answer(client, &tx, 15000, why, sizeof why);
    cr_assert_eq(st, TREATY_STATUS_ABORTED, "the forged YES must not commit it: status %d (%s)", st, why);
    cr_assert(strstr(why, "prepare timed out"), "%s", why);
    cr_assert_eq(answer(e, &tx, 200, NULL, 0), 0, "nothing answers the forger");
    wait_log(&c, "refused (role) VOTE");
    zmq_close(p);
    zmq_close(client);
    zmq_close(e);
}

Test(security, a_participant_key_of_one_service_cannot_register_another)
{
    struct kp cli = keypair(), pa = keypair();
    struct coord c;
    start_curve(&c, allow_list("%s client\n%s participant svc-a\n", cli.pub, pa.pub), NULL);
    void *p = peer(&c, &pa), *client = peer(&c, &cli);
    char why[256] = "";
    cr_assert_eq(hello(p, "svc-b", "b1", 10000, why, sizeof why), WIRE_ERROR, "no WELCOME for svc-b");
    cr_assert(strstr(why, "may not register service svc-b"), "%s", why);
    treaty_txid_t tx;
    treaty_txid_generate(&tx);
    submit(client, &tx, "svc-b", 5000);
    cr_assert_eq(answer(client, &tx, 10000, why, sizeof why), TREATY_STATUS_ABORTED);
    cr_assert(strstr(why, "no live instance of service svc-b"), "%s", why);
    struct wire_in in = {0};
    cr_assert_not(get_type(p, WIRE_PREPARE, 300, &in), "svc-b's branch never reaches svc-a's key");
    cr_assert_eq(hello(p, "svc-a", "a1", 10000, NULL, 0), WIRE_WELCOME, "its own service it may");
    wait_log(&c, "refused (service) HELLO as svc-b/b1");
    zmq_close(p);
    zmq_close(client);
}

/* The takeover: a second peer says HELLO with a live instance's name. */
static void no_takeover(struct coord *c, void *owner, void *thief, void *client)
{
    cr_assert_eq(hello(owner, "bank-a", "a1", 10000, NULL, 0), WIRE_WELCOME);
    char why[256] = "";
    cr_assert_eq(hello(thief, "bank-a", "a1", 10000, why, sizeof why), WIRE_ERROR, "the name is a1's");
    cr_assert(strstr(why, "registered by another peer"), "%s", why);
    treaty_txid_t tx;
    treaty_txid_generate(&tx);
    submit(client, &tx, "bank-a", 5000);
    struct wire_in in = {0};
    cr_assert(get_type(owner, WIRE_PREPARE, 10000, &in), "the owner is asked");
    wire_in_close(&in);
    cr_assert_not(get_type(thief, WIRE_PREPARE, 300, &in), "the thief is not");
    struct wire_frame reason = wire_str("");
    put(thief, WIRE_VOTE, &tx, 0, TREATY_VOTE_YES, &reason, 1);
    cr_assert_eq(answer(client, &tx, 15000, why, sizeof why), TREATY_STATUS_ABORTED, "the thief's YES does not count");
    wait_log(c, "refused (instance) HELLO as bank-a/a1");
}

Test(security, a_live_instance_name_cannot_be_stolen_with_curve)
{
    struct kp cli = keypair(), k1 = keypair(), k2 = keypair();
    struct coord c;
    start_curve(&c, allow_list("%s client\n%s participant bank-a\n%s participant bank-a\n", cli.pub, k1.pub, k2.pub),
                NULL);
    void *owner = peer(&c, &k1), *thief = peer(&c, &k2), *client = peer(&c, &cli);
    no_takeover(&c, owner, thief, client);
    /* The owner restarts: the same key from a new connection has its name
     * back at once. */
    zmq_close(owner);
    void *again = peer(&c, &k1);
    cr_assert_eq(hello(again, "bank-a", "a1", 10000, NULL, 0), WIRE_WELCOME);
    zmq_close(again);
    zmq_close(thief);
    zmq_close(client);
}

/* The attack of the issue, as it was made: no CURVE, loopback. */
Test(security, a_live_instance_name_cannot_be_stolen_without_curve)
{
    struct coord c;
    start_plain(&c, NULL);
    void *owner = peer(&c, NULL), *thief = peer(&c, NULL), *client = peer(&c, NULL);
    no_takeover(&c, owner, thief, client);
    zmq_close(owner);
    zmq_close(thief);
    zmq_close(client);
}

/* ------------------------------------------------------------ revocation */

Test(security, a_revoked_key_is_refused_after_sighup)
{
    struct kp cli = keypair(), other = keypair();
    struct coord c;
    start_curve(&c, allow_list("%s client\n%s client\n", cli.pub, other.pub), NULL);
    void *old = peer(&c, &cli), *o = peer(&c, &other);
    treaty_txid_t tx;
    treaty_txid_generate(&tx);
    query(old, &tx);
    cr_assert_eq(answer(old, &tx, 10000, NULL, 0), TREATY_STATUS_ABORTED, "listed: answered");

    /* An allow-list with an error is refused as a whole: the old one stays. */
    write_allow(&c, allow_list("%s client\n%s nobody\n", other.pub, cli.pub));
    cr_assert_eq(kill(c.d.proc->pid, SIGHUP), 0);
    wait_log(&c, "the allow-list was not reloaded, the previous one stays");
    cr_assert(log_has(&c, "line 2: unknown role \"nobody\""));
    treaty_txid_generate(&tx);
    query(old, &tx);
    cr_assert_eq(answer(old, &tx, 10000, NULL, 0), TREATY_STATUS_ABORTED, "still listed");

    /* cli is revoked */
    write_allow(&c, allow_list("%s client\n", other.pub));
    cr_assert_eq(kill(c.d.proc->pid, SIGHUP), 0);
    wait_log(&c, "allow-list reloaded: 1 keys");
    treaty_txid_t t2, t3;
    treaty_txid_generate(&t2);
    treaty_txid_generate(&t3);
    query(old, &t2);
    query(o, &t3);
    cr_assert_eq(answer(o, &t3, 10000, NULL, 0), TREATY_STATUS_ABORTED, "the other key still is answered");
    cr_assert_eq(answer(old, &t2, 1000, NULL, 0), 0, "the connection made before the revocation is refused");
    wait_log(&c, "the key is not on the allow-list (any more)");
    void *fresh = peer(&c, &cli);
    query(fresh, &t2);
    cr_assert_eq(answer(fresh, &t2, 1000, NULL, 0), 0, "a new connection is refused");
    char want[200];
    snprintf(want, sizeof want, "key %s is not on the allow-list", cli.pub);
    wait_log(&c, want);
    cr_assert(support_proc_running(c.d.proc), "SIGHUP reloads; it does not stop treatyd");
    zmq_close(old);
    zmq_close(o);
    zmq_close(fresh);
}

/* ------------------------------------------------------------ start-up */

/* Runs treatyd with the config text; returns its exit status after at most
 * a few seconds (-1: still running, then stopped). */
static int run_treatyd(const char *name, const char *text, struct support_proc **out)
{
    char path[700], bin[600];
    support_write_file(name, text, path, sizeof path);
    snprintf(bin, sizeof bin, "%s/treatyd", support_bin_dir());
    char *argv[] = {bin, (char *)"-c", path, NULL};
    struct support_proc *p = support_spawn("treatyd", argv, NULL);
    *out = p;
    if (!support_proc_wait(p, 5000))
        return -1;
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 128 + WTERMSIG(p->status);
}

Test(security, a_non_loopback_listen_is_refused_without_allow_insecure)
{
    struct coord c;
    memset(&c, 0, sizeof c);
    journal_db(&c);
    char text[2048];
    int port = support_free_port();
    snprintf(text, sizeof text, "listen = \"tcp://0.0.0.0:%d\";\njournal = { conninfo = \"%s\"; };\n", port, c.journal);
    struct support_proc *p;
    cr_assert_eq(run_treatyd("insecure.conf", text, &p), 2, "refused at start-up (log %s)", p->log);
    cr_assert(support_file_contains(p->log, "can be reached from other hosts, and security.curve is off"), "%s",
              p->log);
    cr_assert(support_file_contains(p->log, "security.allow_insecure = true to accept that risk"));

    /* said in so many words: it serves, and warns */
    snprintf(text, sizeof text,
             "listen = \"tcp://0.0.0.0:%d\";\njournal = { conninfo = \"%s\"; };\nsecurity = { allow_insecure = true; "
             "};\n",
             port, c.journal);
    cr_assert_eq(run_treatyd("insecure-ok.conf", text, &p), -1, "it runs (log %s)", p->log);
    cr_assert(support_file_contains(p->log, "without CURVE (security.allow_insecure = true): anyone who can connect"));
    support_proc_stop(p, 5000);
}

Test(security, a_secret_key_readable_by_others_stops_start_up)
{
    struct coord c;
    memset(&c, 0, sizeof c);
    journal_db(&c);
    keygen(&c);
    struct kp cli = keypair();
    snprintf(c.allow, sizeof c.allow, "%s/allow-ro.list", support_log_dir());
    write_allow(&c, allow_list("%s client\n", cli.pub));
    char key[720], text[3000];
    snprintf(key, sizeof key, "%s.key", c.keybase);
    cr_assert_eq(chmod(key, 0644), 0);
    snprintf(text, sizeof text,
             "listen = \"tcp://127.0.0.1:%d\";\njournal = { conninfo = \"%s\"; };\nsecurity = { curve = true; "
             "secret_key_file = \"%s\"; public_key_file = \"%s.pub\"; allow_list = \"%s\"; };\n",
             support_free_port(), c.journal, key, c.keybase, c.allow);
    struct support_proc *p;
    cr_assert_eq(run_treatyd("readable.conf", text, &p), 1, "(log %s)", p->log);
    cr_assert(support_file_contains(p->log, "security.secret_key_file"));
    cr_assert(support_file_contains(p->log, "readable by group or others (mode 0644): chmod 600 it"));
}

/* ------------------------------------------------------------ limits */

Test(security, a_client_beyond_its_limit_is_refused)
{
    struct kp cli = keypair(), cli2 = keypair(), pa = keypair();
    struct coord c;
    start_curve(&c, allow_list("%s client\n%s client\n%s participant svc-a\n", cli.pub, cli2.pub, pa.pub),
                "limits = { max_inflight_per_client = 2; };\n");
    void *p = peer(&c, &pa), *c1 = peer(&c, &cli), *c1b = peer(&c, &cli), *c2 = peer(&c, &cli2);
    cr_assert_eq(hello(p, "svc-a", "a1", 10000, NULL, 0), WIRE_WELCOME);
    treaty_txid_t tx[4];
    for (int i = 0; i < 4; i++)
        treaty_txid_generate(&tx[i]);
    /* the participant never votes: both stay in flight for 60 s */
    submit(c1, &tx[0], "svc-a", 60000);
    submit(c1, &tx[1], "svc-a", 60000);
    struct wire_in in = {0};
    for (int i = 0; i < 2; i++) {
        cr_assert(get_type(p, WIRE_PREPARE, 10000, &in));
        wire_in_close(&in);
    }
    char why[256] = "";
    submit(c1b, &tx[2], "svc-a", 60000); /* the same key on another connection */
    int r = answer(c1b, &tx[2], 10000, why, sizeof why);
    cr_assert_eq(r, TREATY_EBUSY, "want ERROR EBUSY, got %d (%s)", r, why);
    cr_assert(strstr(why, "limits.max_inflight_per_client = 2"), "%s", why);
    submit(c2, &tx[3], "svc-a", 60000); /* another client has its own share */
    cr_assert(get_type(p, WIRE_PREPARE, 10000, &in), "another key's transaction runs");
    cr_assert_eq(memcmp(in.msg.hdr.txid, tx[3].b, 16), 0);
    wire_in_close(&in);
    wait_log(&c, "refused (client limit) SUBMIT");
    zmq_close(p);
    zmq_close(c1);
    zmq_close(c1b);
    zmq_close(c2);
}
