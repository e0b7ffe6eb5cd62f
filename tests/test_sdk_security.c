/*
 * test_sdk_security.c - libtreaty's CURVE constructors and key files against
 * a fake coordinator: a bare ZeroMQ ROUTER that is a CURVE server with a key
 * pair made here (zmq_curve_keypair), and a ZAP handler (a thread of the
 * test, on inproc://zeromq.zap.01 of the fake's context) that accepts the
 * public keys on its list and refuses every other (status 400).
 *
 * What is shown:
 *   - keys: treaty_security_check and the constructors refuse a key of the
 *     wrong length, outside the Z85 alphabet, out of Z85's range, keys of
 *     different pairs, keys without the server's, and say which;
 *   - key files: treaty_key_load reads what treatyd --keygen writes, refuses
 *     a secret key file that group or others may read, and malformed files;
 *   - the client and the participant talk over CURVE with the right keys
 *     (the ZAP handler saw their public keys);
 *   - a wrong server key, a client key the coordinator refuses, plaintext
 *     against CURVE and CURVE against plaintext fail cleanly and soon
 *     (TREATY_EAUTH well within the request's timeout, errmsg saying what
 *     to check), blocking and asynchronous; the client and the participant
 *     come back by themselves once the key is accepted;
 *   - the plaintext constructors work unchanged.
 *
 * The SDK is used only through treaty.h; wire.h plays the coordinator's
 * side. Every wait is a poll with a generous deadline; "soon" is checked
 * against the request's own timeout, never against a tight bound.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "treaty.h"
#include "wire.h"

#define WAIT_MS 20000     /* generous: only a broken SDK waits this long */
#define REQ_TIMEOUT 30000 /* a request's own timeout: a refusal must come well before it */
#define SOON_MS 10000     /* "well before": a third of it */
#define MAX_KEYS 8

/* ------------------------------------------------------------ utilities */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

struct pair {
    char pub[TREATY_KEY_LEN + 1];
    char sec[TREATY_KEY_LEN + 1];
};

static struct pair keypair(void)
{
    struct pair p;
    cr_assert_eq(zmq_curve_keypair(p.pub, p.sec), 0, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    return p;
}

/* ------------------------------------------------------ fake coordinator */

struct fake {
    void *ctx;
    void *sock;
    char endpoint[128];
    bool curve;
    struct pair server;
    /* the ZAP handler */
    pthread_t zap;
    bool zap_running;
    atomic_bool stop;
    pthread_mutex_t lock;
    char allowed[MAX_KEYS][TREATY_KEY_LEN + 1];
    int nallowed;
    atomic_int zap_requests, zap_refused;
    char last_key[TREATY_KEY_LEN + 1]; /* the public key of the last ZAP request */
};

static bool allowed(struct fake *f, const char *key)
{
    pthread_mutex_lock(&f->lock);
    bool ok = false;
    for (int i = 0; i < f->nallowed && !ok; i++)
        ok = strcmp(f->allowed[i], key) == 0;
    snprintf(f->last_key, sizeof f->last_key, "%s", key);
    pthread_mutex_unlock(&f->lock);
    return ok;
}

static void allow(struct fake *f, const char *key)
{
    pthread_mutex_lock(&f->lock);
    cr_assert_lt(f->nallowed, MAX_KEYS);
    snprintf(f->allowed[f->nallowed++], TREATY_KEY_LEN + 1, "%s", key);
    pthread_mutex_unlock(&f->lock);
}

/* ZAP (ZeroMQ RFC 27): requests are version, request id, domain, address,
 * identity, mechanism, credentials (CURVE: the client's 32-byte public
 * key); the reply is version, request id, status code, status text, user
 * id, metadata. */
static void *zap_main(void *arg)
{
    struct fake *f = arg;
    void *s = zmq_socket(f->ctx, ZMQ_REP);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(s, "inproc://zeromq.zap.01") != 0) {
        fprintf(stderr, "zap: bind: %s\n", zmq_strerror(zmq_errno()));
        zmq_close(s);
        return NULL;
    }
    while (!atomic_load(&f->stop)) {
        zmq_pollitem_t item = {s, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) <= 0)
            continue;
        zmq_msg_t part[8];
        int n = 0, more = 1;
        while (more && n < 8) {
            zmq_msg_init(&part[n]);
            if (zmq_msg_recv(&part[n], s, 0) < 0)
                break;
            more = zmq_msg_more(&part[n]);
            n++;
        }
        char key[TREATY_KEY_LEN + 1] = "";
        if (n >= 7 && zmq_msg_size(&part[6]) == 32)
            zmq_z85_encode(key, zmq_msg_data(&part[6]), 32);
        bool ok = allowed(f, key);
        atomic_fetch_add(&f->zap_requests, 1);
        if (!ok)
            atomic_fetch_add(&f->zap_refused, 1);
        zmq_send(s, "1.0", 3, ZMQ_SNDMORE);
        if (n >= 2)
            zmq_send(s, zmq_msg_data(&part[1]), zmq_msg_size(&part[1]), ZMQ_SNDMORE);
        else
            zmq_send(s, "", 0, ZMQ_SNDMORE);
        zmq_send(s, ok ? "200" : "400", 3, ZMQ_SNDMORE);
        zmq_send(s, ok ? "OK" : "not in the allow-list", ok ? 2 : 21, ZMQ_SNDMORE);
        zmq_send(s, key, strlen(key), ZMQ_SNDMORE);
        zmq_send(s, "", 0, 0);
        for (int i = 0; i < n; i++)
            zmq_msg_close(&part[i]);
    }
    zmq_close(s);
    return NULL;
}

/* A fake coordinator on a free loopback port; curve: a CURVE server with a
 * fresh key pair and the ZAP handler (no key allowed yet). */
static void fake_open(struct fake *f, bool curve)
{
    int zero = 0, one = 1;
    memset(f, 0, sizeof *f);
    atomic_init(&f->stop, false);
    atomic_init(&f->zap_requests, 0);
    atomic_init(&f->zap_refused, 0);
    pthread_mutex_init(&f->lock, NULL);
    f->curve = curve;
    f->ctx = zmq_ctx_new();
    cr_assert_not_null(f->ctx);
    if (curve) {
        f->server = keypair();
        cr_assert_eq(pthread_create(&f->zap, NULL, zap_main, f), 0);
        f->zap_running = true;
        sleep_ms(50); /* bound before any handshake (none can start before the ROUTER binds anyway) */
    }
    f->sock = zmq_socket(f->ctx, ZMQ_ROUTER);
    cr_assert_not_null(f->sock);
    zmq_setsockopt(f->sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(f->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    if (curve) {
        cr_assert_eq(zmq_setsockopt(f->sock, ZMQ_CURVE_SERVER, &one, sizeof one), 0);
        cr_assert_eq(zmq_setsockopt(f->sock, ZMQ_CURVE_SECRETKEY, f->server.sec, TREATY_KEY_LEN + 1), 0);
        cr_assert_eq(zmq_setsockopt(f->sock, ZMQ_ZAP_DOMAIN, "treaty", 6), 0);
    }
    cr_assert_eq(zmq_bind(f->sock, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof f->endpoint;
    cr_assert_eq(zmq_getsockopt(f->sock, ZMQ_LAST_ENDPOINT, f->endpoint, &len), 0);
}

static struct wire_in fake_in; /* fake_expect's */

static void fake_close(struct fake *f)
{
    wire_in_discard(&fake_in);
    zmq_close(f->sock);
    if (f->zap_running) {
        atomic_store(&f->stop, true);
        pthread_join(f->zap, NULL);
    }
    zmq_ctx_term(f->ctx);
    pthread_mutex_destroy(&f->lock);
}

struct got {
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    struct wire_hdr hdr;
    size_t nframes;
    char frame[2][128];
    char user_id[TREATY_KEY_LEN + 1]; /* what the ZAP handler said: the peer's public key */
};

/* Receives until a message of type arrives within timeout_ms (wire_recv, so
 * a bundle of the participant's answers is read message by message; one
 * fake at a time). */
static bool fake_expect(struct fake *f, uint8_t type, struct got *g, int timeout_ms)
{
    struct wire_in *in = &fake_in;
    int64_t deadline = now_ms() + timeout_ms;
    /* a received frame carries its connection's metadata: the user id is
     * what the ZAP handler answered (the peer's public key) */
    in->want_user_id = true;
    for (;;) {
        int rc = wire_recv(f->sock, true, 1u << 20, in);
        if (rc == 0) {
            memset(g, 0, sizeof *g);
            memcpy(g->rid, in->rid, in->rid_len);
            g->rid_len = in->rid_len;
            snprintf(g->user_id, sizeof g->user_id, "%.*s", (int)sizeof g->user_id - 1, in->user_id);
            g->hdr = in->msg.hdr;
            g->nframes = in->msg.nframes;
            for (size_t i = 0; i < in->msg.nframes && i < 2; i++)
                wire_copy_text(&in->msg.frames[i], g->frame[i], sizeof g->frame[i]);
            wire_in_close(in);
            if (g->hdr.type == type)
                return true;
            continue;
        }
        if (rc != TREATY_ETIMEDOUT)
            continue; /* malformed: the SDK never sends such */
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return false;
        zmq_pollitem_t item = {f->sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(&item, 1, left > 100 ? 100 : (long)left);
    }
}

static void fake_send(struct fake *f, const struct got *to, uint8_t type, const uint8_t txid[16], unsigned branch,
                      unsigned code, const struct wire_frame *frames, size_t n)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid != NULL)
        memcpy(h.txid, txid, 16);
    h.branch = (uint16_t)branch;
    h.code = (uint16_t)code;
    cr_assert_eq(wire_send(f->sock, to->rid, to->rid_len, &h, frames, n), 0, "fake could not send %s",
                 wire_type_name(type));
}

/* --------------------------------------------------------- client helpers */

static treaty_txn_t *one_branch_txn(void)
{
    treaty_txn_t *t = NULL;
    cr_assert_eq(treaty_txn_new(&t), 0);
    cr_assert_eq(treaty_txn_add_branch(t, "bank", "x", 1), 0);
    return t;
}

struct submitter {
    treaty_client_t *c;
    treaty_txn_t *t;
    treaty_outcome_t out;
    int rc;
    int64_t took_ms;
};

static void *submit_main(void *arg)
{
    struct submitter *s = arg;
    int64_t t0 = now_ms();
    s->rc = treaty_client_submit(s->c, s->t, REQ_TIMEOUT, &s->out);
    s->took_ms = now_ms() - t0;
    return NULL;
}

/* A blocking submit that the coordinator answers: COMMITTED. */
static void submit_and_answer(struct fake *f, treaty_client_t *c, const char *expect_user)
{
    struct submitter s;
    memset(&s, 0, sizeof s);
    s.c = c;
    s.t = one_branch_txn();
    pthread_t th;
    struct got g;
    cr_assert_eq(pthread_create(&th, NULL, submit_main, &s), 0);
    cr_assert(fake_expect(f, WIRE_SUBMIT, &g, WAIT_MS), "no SUBMIT arrived");
    cr_assert_eq(memcmp(g.hdr.txid, treaty_txn_id(s.t)->b, 16), 0);
    if (expect_user != NULL)
        cr_assert_str_eq(g.user_id, expect_user, "the coordinator saw another key");
    struct wire_frame reason = wire_str("");
    fake_send(f, &g, WIRE_OUTCOME, g.hdr.txid, TREATY_NO_BRANCH, TREATY_STATUS_COMMITTED, &reason, 1);
    pthread_join(th, NULL);
    cr_assert_eq(s.rc, 0, "submit: %s (%s)", treaty_err_name(s.rc), treaty_client_errmsg(c));
    cr_assert_eq(s.out.status, TREATY_STATUS_COMMITTED);
    treaty_txn_destroy(&s.t);
}

/* A blocking submit the coordinator cannot get: it fails with TREATY_EAUTH
 * well within its timeout; errmsg and the reason contain want. */
static void submit_refused(treaty_client_t *c, const char *want)
{
    struct submitter s;
    memset(&s, 0, sizeof s);
    s.c = c;
    s.t = one_branch_txn();
    submit_main(&s);
    cr_assert_eq(s.rc, TREATY_EAUTH, "submit: %s after %lld ms (%s)", treaty_err_name(s.rc), (long long)s.took_ms,
                 treaty_client_errmsg(c));
    cr_assert_lt(s.took_ms, SOON_MS, "the refusal took %lld ms", (long long)s.took_ms);
    cr_assert_eq(s.out.status, TREATY_STATUS_UNKNOWN);
    cr_assert_eq(s.out.error, TREATY_EAUTH);
    cr_assert_eq(memcmp(&s.out.txid, treaty_txn_id(s.t), sizeof s.out.txid), 0);
    cr_assert(strstr(treaty_client_errmsg(c), want) != NULL, "errmsg '%s' does not say '%s'", treaty_client_errmsg(c),
              want);
    cr_assert(strstr(s.out.reason, want) != NULL, "reason '%s' does not say '%s'", s.out.reason, want);
    treaty_txn_destroy(&s.t);
}

static treaty_client_t *secure_client(const struct fake *f, const char *server_pub, const struct pair *me)
{
    treaty_security_t sec = {server_pub != NULL ? server_pub : f->server.pub, me->pub, me->sec};
    treaty_client_t *c = NULL;
    int rc = treaty_client_new_secure(f->endpoint, &sec, &c);
    cr_assert_eq(rc, 0, "treaty_client_new_secure: %s", treaty_err_name(rc));
    cr_assert_not_null(c);
    return c;
}

/* ------------------------------------------------------------------- keys */

Test(keys, security_check_accepts_valid_keys)
{
    struct pair s = keypair(), me = keypair();
    char err[256];
    treaty_security_t full = {s.pub, me.pub, me.sec};
    cr_assert_eq(treaty_security_check(&full, err, sizeof err), 0, "%s", err);
    treaty_security_t derived = {s.pub, NULL, me.sec};
    cr_assert_eq(treaty_security_check(&derived, err, sizeof err), 0, "%s", err);
    treaty_security_t plain = {NULL, NULL, NULL};
    cr_assert_eq(treaty_security_check(&plain, err, sizeof err), 0, "%s", err);
    cr_assert_eq(treaty_security_check(NULL, NULL, 0), 0);
    cr_assert_eq(treaty_security_check(&full, NULL, 0), 0, "err may be NULL");
}

/* check() refuses sec with TREATY_EINVAL and an err naming want */
static void refused(const treaty_security_t *sec, const char *want)
{
    char err[256];
    cr_assert_eq(treaty_security_check(sec, err, sizeof err), TREATY_EINVAL, "accepted; wanted: %s", want);
    cr_assert(strstr(err, want) != NULL, "err '%s' does not say '%s'", err, want);
}

Test(keys, security_check_refuses_bad_keys_and_says_which)
{
    struct pair s = keypair(), me = keypair(), other = keypair();
    char shortk[TREATY_KEY_LEN + 1], longk[TREATY_KEY_LEN + 2], badc[TREATY_KEY_LEN + 1], range[TREATY_KEY_LEN + 1];
    snprintf(shortk, sizeof shortk, "%.39s", s.pub);
    snprintf(longk, sizeof longk, "%sA", s.pub);
    snprintf(badc, sizeof badc, "%s", me.sec);
    badc[7] = '"';                      /* not in Z85 */
    memset(range, '%', TREATY_KEY_LEN); /* '%' is 82: "%%%%%" is 82 * (85^5 - 1) / 84 > 2^32 - 1 */
    range[TREATY_KEY_LEN] = '\0';

    refused(&(treaty_security_t){shortk, me.pub, me.sec}, "server_public_key is 39 characters");
    refused(&(treaty_security_t){longk, me.pub, me.sec}, "server_public_key is over 40");
    refused(&(treaty_security_t){s.pub, me.pub, badc}, "secret_key: character 8 ('\"')");
    refused(&(treaty_security_t){s.pub, range, me.sec}, "public_key is not a Z85 encoding");
    refused(&(treaty_security_t){s.pub, NULL, NULL}, "secret_key is missing");
    refused(&(treaty_security_t){s.pub, other.pub, me.sec}, "public_key is not the public key of secret_key");
    refused(&(treaty_security_t){NULL, me.pub, me.sec}, "without server_public_key");
    refused(&(treaty_security_t){me.pub, NULL, me.sec}, "server_public_key is this peer's own public key");
    refused(&(treaty_security_t){me.sec, NULL, me.sec}, "server_public_key is this peer's secret key");
}

Test(keys, constructors_refuse_bad_keys)
{
    struct pair s = keypair(), me = keypair();
    treaty_security_t bad = {s.pub, me.pub, "too short"};
    treaty_client_t *c = (treaty_client_t *)&c; /* not NULL: must be reset */
    treaty_participant_t *p = (treaty_participant_t *)&p;
    cr_assert_eq(treaty_client_new_secure("tcp://127.0.0.1:1", &bad, &c), TREATY_EINVAL);
    cr_assert_null(c);
    cr_assert_eq(treaty_participant_new_secure("tcp://127.0.0.1:1", "bank", "b1", NULL, &bad, &p), TREATY_EINVAL);
    cr_assert_null(p);
    p = (treaty_participant_t *)&p;
    /* checked before the database is connected: this conninfo goes nowhere */
    cr_assert_eq(treaty_pg_participant_new_secure("tcp://127.0.0.1:1", "bank", "b1", "host=/nonexistent port=1", NULL,
                                                  NULL, &bad, &p),
                 TREATY_EINVAL);
    cr_assert_null(p);
    /* NULL sec is plaintext */
    cr_assert_eq(treaty_client_new_secure("tcp://127.0.0.1:1", NULL, &c), 0);
    treaty_client_destroy(&c);
    treaty_security_t plain = {NULL, NULL, NULL};
    cr_assert_eq(treaty_participant_new_secure("tcp://127.0.0.1:1", "bank", "b1", NULL, &plain, &p), 0);
    treaty_participant_destroy(&p);
    cr_assert_eq(treaty_client_new_secure("nonsense://", NULL, &c), TREATY_EINVAL);
}

Test(keys, error_code_has_a_name_and_a_text)
{
    cr_assert_eq(TREATY_EAUTH, -16);
    cr_assert_str_eq(treaty_err_name(TREATY_EAUTH), "TREATY_EAUTH");
    cr_assert(strstr(treaty_strerror(TREATY_EAUTH), "handshake") != NULL);
    cr_assert_eq(TREATY_EEXPIRED, -15, "earlier codes keep their numbers");
}

/* -------------------------------------------------------------- key files */

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/treaty-keys.XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

/* Writes text to tmpdir/name with mode; returns the path (static). */
static const char *write_file(const char *name, const char *text, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    size_t n = strlen(text);
    cr_assert_eq(write(fd, text, n), (ssize_t)n);
    cr_assert_eq(fchmod(fd, mode), 0); /* whatever the umask */
    close(fd);
    return path;
}

static void load_fails(const char *path, enum treaty_key_kind kind, const char *want)
{
    char key[TREATY_KEY_LEN + 1] = "untouched";
    char err[512];
    cr_assert_eq(treaty_key_load(path, kind, key, err, sizeof err), TREATY_ECONFIG, "%s loaded; wanted: %s", path,
                 want);
    cr_assert(strstr(err, want) != NULL, "err '%s' does not say '%s'", err, want);
    cr_assert(strstr(err, path) != NULL, "err '%s' does not name the file", err);
    cr_assert_str_eq(key, "untouched");
}

Test(key_files, load_what_keygen_writes, .init = make_tmpdir, .fini = remove_tmpdir)
{
    struct pair k = keypair();
    char line[128], key[TREATY_KEY_LEN + 1], err[512];
    snprintf(line, sizeof line, "%s\n", k.pub);
    const char *pub = write_file("peer.pub", line, 0644);
    cr_assert_eq(treaty_key_load(pub, TREATY_KEY_PUBLIC, key, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(key, k.pub);

    snprintf(line, sizeof line, "%s\n", k.sec);
    const char *sec = write_file("peer.key", line, 0600);
    cr_assert_eq(treaty_key_load(sec, TREATY_KEY_SECRET, key, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(key, k.sec);
    sec = write_file("peer.key", line, 0400);
    cr_assert_eq(treaty_key_load(sec, TREATY_KEY_SECRET, key, err, sizeof err), 0, "%s", err);

    /* comments, blank lines, CRLF, spaces around the key, no final newline */
    snprintf(line, sizeof line, "# treaty CURVE public key\r\n\r\n  %s \r\n# end", k.pub);
    pub = write_file("commented.pub", line, 0644);
    memset(key, 0, sizeof key);
    cr_assert_eq(treaty_key_load(pub, TREATY_KEY_PUBLIC, key, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(key, k.pub);

    /* the loaded keys work together */
    struct pair s = keypair();
    treaty_security_t both = {s.pub, NULL, k.sec};
    cr_assert_eq(treaty_security_check(&both, err, sizeof err), 0, "%s", err);
}

Test(key_files, secret_key_readable_by_others_is_refused, .init = make_tmpdir, .fini = remove_tmpdir)
{
    struct pair k = keypair();
    char line[128];
    snprintf(line, sizeof line, "%s\n", k.sec);
    load_fails(write_file("a.key", line, 0644), TREATY_KEY_SECRET, "must not be accessible by group or others");
    load_fails(write_file("b.key", line, 0640), TREATY_KEY_SECRET, "mode 0640");
    load_fails(write_file("c.key", line, 0604), TREATY_KEY_SECRET, "chmod 600");
    load_fails(write_file("d.key", line, 0620), TREATY_KEY_SECRET, "group or others");
    /* a public key file may be read by anyone */
    char key[TREATY_KEY_LEN + 1], err[512];
    snprintf(line, sizeof line, "%s\n", k.pub);
    cr_assert_eq(treaty_key_load(write_file("e.pub", line, 0644), TREATY_KEY_PUBLIC, key, err, sizeof err), 0, "%s",
                 err);
}

Test(key_files, malformed_files_are_refused, .init = make_tmpdir, .fini = remove_tmpdir)
{
    struct pair k = keypair(), k2 = keypair();
    char line[256];
    snprintf(line, sizeof line, "%.39s\n", k.pub);
    load_fails(write_file("short.pub", line, 0644), TREATY_KEY_PUBLIC, "39 characters");
    snprintf(line, sizeof line, "%sAB\n", k.pub);
    load_fails(write_file("long.pub", line, 0644), TREATY_KEY_PUBLIC, "42 characters");
    snprintf(line, sizeof line, "%s\n", k.pub);
    line[3] = ',';
    load_fails(write_file("badchar.pub", line, 0644), TREATY_KEY_PUBLIC, "character 4 (',')");
    snprintf(line, sizeof line, "%s\n%s\n", k.pub, k2.pub);
    load_fails(write_file("two.pub", line, 0644), TREATY_KEY_PUBLIC, "line 2: a second key");
    load_fails(write_file("empty.pub", "", 0644), TREATY_KEY_PUBLIC, "no key");
    load_fails(write_file("comments.pub", "# nothing\n\n", 0644), TREATY_KEY_PUBLIC, "no key");
    load_fails(write_file("range.pub", "%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%\n", 0644), TREATY_KEY_PUBLIC,
               "not a Z85 encoding");
    snprintf(line, sizeof line, "public-key = \"%s\"\n", k.pub);
    load_fails(write_file("zcert.pub", line, 0644), TREATY_KEY_PUBLIC, "characters");

    char path[128];
    snprintf(path, sizeof path, "%s/missing.pub", tmpdir);
    load_fails(path, TREATY_KEY_PUBLIC, "No such file");
    load_fails(tmpdir, TREATY_KEY_PUBLIC, "not a regular file");

    /* binary content */
    snprintf(path, sizeof path, "%s/bin.pub", tmpdir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert_geq(fd, 0);
    cr_assert_eq(write(fd, "ab\0cd\n", 6), 6);
    close(fd);
    load_fails(path, TREATY_KEY_PUBLIC, "binary");

    /* arguments */
    char key[TREATY_KEY_LEN + 1], err[64];
    cr_assert_eq(treaty_key_load(NULL, TREATY_KEY_PUBLIC, key, err, sizeof err), TREATY_EINVAL);
    cr_assert_eq(treaty_key_load(path, (enum treaty_key_kind)7, key, err, sizeof err), TREATY_EINVAL);
    cr_assert_eq(treaty_key_load(path, TREATY_KEY_PUBLIC, NULL, NULL, 0), TREATY_EINVAL);
}

/* ---------------------------------------------------------------- client */

Test(curve_client, talks_with_the_right_keys, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    struct pair me = keypair();
    allow(&f, me.pub);
    treaty_client_t *c = secure_client(&f, NULL, &me);
    submit_and_answer(&f, c, me.pub);
    submit_and_answer(&f, c, me.pub);
    cr_assert_eq(atomic_load(&f.zap_refused), 0);
    treaty_client_destroy(&c);

    /* public_key NULL: derived from the secret key */
    treaty_security_t sec = {f.server.pub, NULL, me.sec};
    cr_assert_eq(treaty_client_new_secure(f.endpoint, &sec, &c), 0);
    submit_and_answer(&f, c, me.pub);
    treaty_client_destroy(&c);
    fake_close(&f);
}

Test(curve_client, refused_key_fails_soon_and_recovers_once_allowed, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    struct pair me = keypair();
    treaty_client_t *c = secure_client(&f, NULL, &me);
    submit_refused(c, "authentication refused by the coordinator");
    cr_assert_str_eq(f.last_key, me.pub);
    /* each request tries a handshake again */
    int before = atomic_load(&f.zap_requests);
    submit_refused(c, "not in its allow-list");
    cr_assert_gt(atomic_load(&f.zap_requests), before, "the second request made no new handshake");

    /* once the coordinator accepts the key, the same handle works */
    allow(&f, me.pub);
    submit_and_answer(&f, c, me.pub);
    treaty_client_destroy(&c);
    fake_close(&f);
}

Test(curve_client, wrong_server_key_fails_soon, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    struct pair me = keypair(), impostor = keypair();
    allow(&f, me.pub);
    treaty_client_t *c = secure_client(&f, impostor.pub, &me);
    submit_refused(c, "is server_public_key the coordinator's public key");
    /* the coordinator could not even read who we are */
    cr_assert_eq(atomic_load(&f.zap_requests), 0);
    treaty_client_destroy(&c);
    fake_close(&f);
}

struct async_result {
    int calls;
    treaty_outcome_t out;
};

static void on_outcome(void *arg, const treaty_outcome_t *o)
{
    struct async_result *r = arg;
    r->calls++;
    r->out = *o;
}

Test(curve_client, refused_async_requests_complete_soon, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    struct pair me = keypair();
    treaty_client_t *c = secure_client(&f, NULL, &me);
    treaty_txn_t *t = one_branch_txn();
    struct async_result r = {0};
    int64_t t0 = now_ms();
    cr_assert_eq(treaty_client_submit_async(c, t, REQ_TIMEOUT, on_outcome, &r), 0);
    while (r.calls == 0 && now_ms() - t0 < WAIT_MS) {
        int wait = treaty_client_next_timeout(c);
        cr_assert_geq(wait, 0, "a request is in flight");
        sleep_ms(wait > 50 ? 50 : wait);
        cr_assert_geq(treaty_client_process(c), 0);
    }
    cr_assert_eq(r.calls, 1);
    cr_assert_lt(now_ms() - t0, SOON_MS);
    cr_assert_eq(r.out.status, TREATY_STATUS_UNKNOWN);
    cr_assert_eq(r.out.error, TREATY_EAUTH);
    cr_assert(strstr(r.out.reason, "authentication refused") != NULL, "reason: %s", r.out.reason);
    cr_assert_eq(treaty_client_next_timeout(c) <= 30000, true); /* only a re-connect may be due */
    treaty_txn_destroy(&t);
    treaty_client_destroy(&c);
    fake_close(&f);
}

Test(curve_client, plaintext_client_against_curve_fails_soon, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    treaty_client_t *c = NULL;
    cr_assert_eq(treaty_client_new(f.endpoint, &c), 0);
    submit_refused(c, "CURVE");
    treaty_client_destroy(&c);
    fake_close(&f);
}

Test(curve_client, curve_client_against_plaintext_fails_soon, .timeout = 120)
{
    struct fake f;
    fake_open(&f, false);
    struct pair s = keypair(), me = keypair();
    treaty_client_t *c = secure_client(&f, s.pub, &me);
    /* "does not use CURVE" when the client reads the mismatch itself, else
     * the coordinator's closing the connection says "does it use CURVE?" */
    submit_refused(c, "use CURVE");
    treaty_client_destroy(&c);
    fake_close(&f);
}

Test(curve_client, plaintext_constructor_unchanged, .timeout = 120)
{
    struct fake f;
    fake_open(&f, false);
    treaty_client_t *c = NULL;
    cr_assert_eq(treaty_client_new(f.endpoint, &c), 0);
    submit_and_answer(&f, c, NULL);
    cr_assert_str_eq(treaty_client_errmsg(c), "no error");
    treaty_client_destroy(&c);
    fake_close(&f);
}

/* ----------------------------------------------------------- participant */

static int yes(void *arg, const treaty_branch_t *b, char *reason)
{
    (void)arg, (void)b, (void)reason;
    return TREATY_VOTE_YES;
}

static int done(void *arg, const treaty_branch_t *b)
{
    (void)arg, (void)b;
    return 0;
}

static treaty_participant_t *secure_participant(const struct fake *f, const char *server_pub, const struct pair *me)
{
    treaty_handlers_t h = {yes, done, done, NULL};
    treaty_security_t sec = {server_pub != NULL ? server_pub : f->server.pub, me->pub, me->sec};
    treaty_participant_t *p = NULL;
    int rc = treaty_participant_new_secure(f->endpoint, "bank", "b1", &h, &sec, &p);
    cr_assert_eq(rc, 0, "treaty_participant_new_secure: %s", treaty_err_name(rc));
    cr_assert_eq(treaty_participant_start(p), 0);
    return p;
}

/* HELLO, then a PREPARE answered YES: the participant works over CURVE. */
static void hello_and_vote(struct fake *f, const char *expect_user)
{
    struct got hello, vote;
    cr_assert(fake_expect(f, WIRE_HELLO, &hello, WAIT_MS), "no HELLO arrived");
    cr_assert_str_eq(hello.frame[0], "bank");
    cr_assert_str_eq(hello.frame[1], "b1");
    if (expect_user != NULL)
        cr_assert_str_eq(hello.user_id, expect_user);
    treaty_txid_t id;
    cr_assert_eq(treaty_txid_generate(&id), 0);
    struct wire_frame payload = wire_str("x");
    fake_send(f, &hello, WIRE_PREPARE, id.b, 0, 0, &payload, 1);
    cr_assert(fake_expect(f, WIRE_VOTE, &vote, WAIT_MS), "no VOTE arrived");
    cr_assert_eq(memcmp(vote.hdr.txid, id.b, 16), 0);
    cr_assert_eq(vote.hdr.code, TREATY_VOTE_YES);
}

/* Waits until errmsg contains want. */
static void errmsg_says(treaty_participant_t *p, const char *want)
{
    int64_t deadline = now_ms() + WAIT_MS;
    while (strstr(treaty_participant_errmsg(p), want) == NULL) {
        cr_assert_lt(now_ms(), deadline, "errmsg '%s' never said '%s'", treaty_participant_errmsg(p), want);
        sleep_ms(20);
    }
}

Test(curve_participant, talks_with_the_right_keys, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    struct pair me = keypair();
    allow(&f, me.pub);
    treaty_participant_t *p = secure_participant(&f, NULL, &me);
    hello_and_vote(&f, me.pub);
    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(curve_participant, refused_key_is_told_and_retried_until_allowed, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    struct pair me = keypair();
    treaty_participant_t *p = secure_participant(&f, NULL, &me);
    errmsg_says(p, "authentication refused by the coordinator");
    /* it keeps trying (with backoff), and comes in once allowed */
    int64_t deadline = now_ms() + WAIT_MS;
    while (atomic_load(&f.zap_requests) < 2) {
        cr_assert_lt(now_ms(), deadline, "no second handshake");
        sleep_ms(20);
    }
    allow(&f, me.pub);
    hello_and_vote(&f, me.pub);
    errmsg_says(p, "accepted the handshake again");
    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(curve_participant, wrong_server_key_is_told, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    struct pair me = keypair(), impostor = keypair();
    allow(&f, me.pub);
    treaty_participant_t *p = secure_participant(&f, impostor.pub, &me);
    errmsg_says(p, "is server_public_key the coordinator's public key");
    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(curve_participant, plaintext_participant_against_curve_is_told, .timeout = 120)
{
    struct fake f;
    fake_open(&f, true);
    treaty_handlers_t h = {yes, done, done, NULL};
    treaty_participant_t *p = NULL;
    cr_assert_eq(treaty_participant_new(f.endpoint, "bank", "b1", &h, &p), 0);
    cr_assert_eq(treaty_participant_start(p), 0);
    errmsg_says(p, "CURVE");
    treaty_participant_destroy(&p);
    fake_close(&f);
}

Test(curve_participant, plaintext_constructor_unchanged, .timeout = 120)
{
    struct fake f;
    fake_open(&f, false);
    treaty_handlers_t h = {yes, done, done, NULL};
    treaty_participant_t *p = NULL;
    cr_assert_eq(treaty_participant_new(f.endpoint, "bank", "b1", &h, &p), 0);
    cr_assert_eq(treaty_participant_start(p), 0);
    hello_and_vote(&f, NULL);
    treaty_participant_destroy(&p);
    fake_close(&f);
}
