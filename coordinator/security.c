/*
 * security.c - see security.h.
 *
 * ZAP (RFC 27) as libzmq speaks it: a request is "1.0", a request id, the
 * domain, the peer's address, its routing id, the mechanism and its
 * credentials (for CURVE one frame: the client's 32-byte long-term public
 * key); the reply is "1.0", the request id, a status code ("200" admit,
 * "400" refuse), a status text, the User-Id libzmq then attaches to every
 * message of that connection, and metadata (none here). The User-Id is the
 * key's Z85 text, so that the loop can look the key up again, in the list
 * as it is then, for every message.
 */
#include "security.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "log.h"
#include "treaty.h"
#include "util.h"

#define ZAP_FRAMES_MAX 16

struct security {
    char allow_path[CONFIG_PATH_MAX];
    struct allowlist *allow;
    uint8_t secret[32];
    char public_z85[41];
    void *zap;
    struct allow_entry unknown; /* security_peer's answer for a key not on the list */
    int64_t refused_log_ms;     /* next refusal may be logged then */
    uint64_t refused_quiet;     /* refusals not logged since the last line */
    uint64_t admitted, refused;
};

/* The problem in err, TREATY_ECONFIG returned (util_errf). */
#define fail(...) util_errf(TREATY_ECONFIG, __VA_ARGS__)

/* ------------------------------------------------------------ key files */

int security_read_key(const char *path, bool secret, char z85[41], char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, errlen, "%s: not a regular file", path);
    }
    if (secret && (st.st_mode & 077) != 0) {
        close(fd);
        return fail(err, errlen, "%s: a secret key readable by group or others (mode %04o): chmod 600 it", path,
                    (unsigned)(st.st_mode & 07777));
    }
    char buf[256];
    ssize_t n;
    do {
        n = read(fd, buf, sizeof buf - 1);
    } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    if (n < 0)
        return fail(err, errlen, "%s: cannot read: %s", path, strerror(e));
    size_t lo = 0, hi = (size_t)n;
    while (lo < hi && (buf[lo] == ' ' || buf[lo] == '\t' || buf[lo] == '\r' || buf[lo] == '\n'))
        lo++;
    while (hi > lo && (buf[hi - 1] == ' ' || buf[hi - 1] == '\t' || buf[hi - 1] == '\r' || buf[hi - 1] == '\n'))
        hi--;
    if (hi - lo != 40)
        return fail(err, errlen, "%s: not a key: want its 40 characters of Z85 (as treatyd --keygen writes), got %zu",
                    path, hi - lo);
    memcpy(z85, buf + lo, 40);
    z85[40] = '\0';
    uint8_t bin[32];
    if (zmq_z85_decode(bin, z85) == NULL)
        return fail(err, errlen, "%s: not a key: not valid Z85", path);
    return 0;
}

/* Writes text + "\n" to a new file (never an existing one) with mode. */
static int write_new(const char *path, const char *text, mode_t mode, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return fail(err, errlen, "%s: cannot create: %s%s", path, strerror(errno),
                    errno == EEXIST ? " (not overwritten)" : "");
    char line[64];
    int n = snprintf(line, sizeof line, "%s\n", text);
    bool ok = write(fd, line, (size_t)n) == n && fchmod(fd, mode) == 0 && fsync(fd) == 0;
    int e = errno;
    ok = close(fd) == 0 && ok;
    if (!ok) {
        unlink(path);
        fail(err, errlen, "%s: cannot write: %s", path, strerror(e));
        return TREATY_EIO;
    }
    return 0;
}

int security_keygen(const char *path, char pub[41], char *err, size_t errlen)
{
    if (!zmq_has("curve"))
        return fail(err, errlen, "this libzmq was built without CURVE");
    char sec[41], kpath[CONFIG_PATH_MAX + 8], ppath[CONFIG_PATH_MAX + 8];
    if (strlen(path) > CONFIG_PATH_MAX - 5)
        return fail(err, errlen, "%s: path too long", path);
    snprintf(kpath, sizeof kpath, "%s.key", path);
    snprintf(ppath, sizeof ppath, "%s.pub", path);
    if (zmq_curve_keypair(pub, sec) != 0)
        return fail(err, errlen, "zmq_curve_keypair: %s", zmq_strerror(errno));
    int rc = write_new(kpath, sec, 0600, err, errlen);
    if (rc == 0) {
        rc = write_new(ppath, pub, 0644, err, errlen);
        if (rc < 0)
            unlink(kpath);
    }
    memset(sec, 0, sizeof sec);
    return rc;
}

/* ------------------------------------------------------------ lifecycle */

int security_new(const struct config *cfg, struct security **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!zmq_has("curve"))
        return fail(err, errlen, "security.curve: this libzmq was built without CURVE");
    struct security *s = calloc(1, sizeof *s);
    if (s == NULL)
        return TREATY_ENOMEM;
    char sec[41], pub[41], derived[41], e[512];
    int rc = security_read_key(cfg->secret_key_file, true, sec, e, sizeof e);
    if (rc < 0) {
        fail(err, errlen, "security.secret_key_file: %s", e);
        goto fail_keys;
    }
    rc = security_read_key(cfg->public_key_file, false, pub, e, sizeof e);
    if (rc < 0) {
        fail(err, errlen, "security.public_key_file: %s", e);
        goto fail_keys;
    }
    if (zmq_curve_public(derived, sec) != 0 || strcmp(derived, pub) != 0) {
        rc = fail(err, errlen,
                  "security.public_key_file: %s is not the public key of security.secret_key_file %s (a key pair "
                  "is the two files of one treatyd --keygen)",
                  cfg->public_key_file, cfg->secret_key_file);
        goto fail_keys;
    }
    zmq_z85_decode(s->secret, sec);
    memcpy(s->public_z85, pub, sizeof s->public_z85);
    snprintf(s->allow_path, sizeof s->allow_path, "%s", cfg->allow_list);
    rc = allowlist_load(s->allow_path, &s->allow, e, sizeof e);
    if (rc < 0) {
        fail(err, errlen, "security.allow_list: %s", e);
        goto fail_keys;
    }
    memset(sec, 0, sizeof sec);
    *out = s;
    return 0;

fail_keys:
    memset(sec, 0, sizeof sec);
    memset(s->secret, 0, sizeof s->secret);
    free(s);
    return rc;
}

int security_bind(struct security *s, void *zctx, void *router)
{
    s->zap = zmq_socket(zctx, ZMQ_REP);
    if (s->zap == NULL) {
        log_error("security: cannot make the ZAP socket: %s", zmq_strerror(errno));
        return TREATY_ETRANSPORT;
    }
    int zero = 0, one = 1;
    zmq_setsockopt(s->zap, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(s->zap, SECURITY_ZAP_ENDPOINT) != 0) {
        log_error("security: cannot bind the ZAP handler at %s: %s", SECURITY_ZAP_ENDPOINT, zmq_strerror(errno));
        zmq_close(s->zap);
        s->zap = NULL;
        return TREATY_ETRANSPORT;
    }
    if (zmq_setsockopt(router, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
        zmq_setsockopt(router, ZMQ_CURVE_SECRETKEY, s->secret, sizeof s->secret) != 0 ||
        zmq_setsockopt(router, ZMQ_ZAP_DOMAIN, SECURITY_ZAP_DOMAIN, strlen(SECURITY_ZAP_DOMAIN)) != 0) {
        log_error("security: cannot make the socket a CURVE server: %s", zmq_strerror(errno));
        return TREATY_ETRANSPORT;
    }
    return 0;
}

void *security_zap_socket(const struct security *s)
{
    return s->zap;
}

const struct allowlist *security_allowlist(const struct security *s)
{
    return s->allow;
}

const char *security_public_key(const struct security *s)
{
    return s->public_z85;
}

void security_destroy(struct security **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    struct security *s = *sp;
    if (s->zap != NULL)
        zmq_close(s->zap);
    allowlist_free(&s->allow);
    memset(s->secret, 0, sizeof s->secret);
    free(s);
    *sp = NULL;
}

/* ------------------------------------------------------------ ZAP */

static bool frame_is(zmq_msg_t *m, const char *text)
{
    size_t n = strlen(text);
    return zmq_msg_size(m) == n && memcmp(zmq_msg_data(m), text, n) == 0;
}

/* The peer's address for the log: printable, bounded. */
static void addr_of(zmq_msg_t *m, char *buf, size_t len)
{
    size_t n = zmq_msg_size(m);
    const uint8_t *d = zmq_msg_data(m);
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < len; i++)
        buf[k++] = d[i] >= 0x20 && d[i] < 0x7f ? (char)d[i] : '?';
    buf[k] = '\0';
    if (k == 0)
        snprintf(buf, len, "?");
}

static void reply(void *zap, zmq_msg_t *request_id, const char *code, const char *text, const char *user_id)
{
    zmq_send(zap, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(zap, zmq_msg_data(request_id), zmq_msg_size(request_id), ZMQ_SNDMORE);
    zmq_send(zap, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(zap, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(zap, user_id, strlen(user_id), ZMQ_SNDMORE);
    zmq_send(zap, "", 0, 0);
}

static void log_refusal(struct security *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_refusal(struct security *s, const char *fmt, ...)
{
    int64_t now = util_mono_ms();
    if (now < s->refused_log_ms) {
        s->refused_quiet++;
        return;
    }
    char text[384], more[96] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (s->refused_quiet > 0)
        snprintf(more, sizeof more, " (and %llu more connections refused in the last second)",
                 (unsigned long long)s->refused_quiet);
    log_warn("security: refused a connection: %s%s", text, more);
    s->refused_log_ms = now + 1000;
    s->refused_quiet = 0;
}

/* One request, if one is waiting: false when none. */
static bool serve_one(struct security *s)
{
    zmq_msg_t f[ZAP_FRAMES_MAX];
    size_t n = 0;
    for (;;) {
        zmq_msg_t scratch, *m = n < ZAP_FRAMES_MAX ? &f[n] : &scratch;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, s->zap, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(m);
            for (size_t i = 0; i < n && i < ZAP_FRAMES_MAX; i++)
                zmq_msg_close(&f[i]);
            return false; /* nothing waiting (or the context is ending) */
        }
        int more = zmq_msg_more(m);
        if (m == &scratch)
            zmq_msg_close(m);
        n++;
        if (!more)
            break;
    }
    size_t have = n < ZAP_FRAMES_MAX ? n : ZAP_FRAMES_MAX;
    char addr[64] = "?";
    if (have >= 4)
        addr_of(&f[3], addr, sizeof addr);
    if (have < 7 || !frame_is(&f[0], "1.0")) {
        /* REP must answer something: a malformed request (from libzmq?) is refused */
        if (have >= 2)
            reply(s->zap, &f[1], "500", "malformed ZAP request", "");
        else
            zmq_send(s->zap, "", 0, 0);
        log_error("security: a malformed ZAP request (%zu frames)", n);
    } else if (!frame_is(&f[5], "CURVE") || zmq_msg_size(&f[6]) != 32) {
        s->refused++;
        log_refusal(s, "from %s: mechanism %.*s, not CURVE", addr,
                    (int)(zmq_msg_size(&f[5]) > 16 ? 16 : zmq_msg_size(&f[5])), (const char *)zmq_msg_data(&f[5]));
        reply(s->zap, &f[1], "400", "CURVE only", "");
    } else {
        const uint8_t *key = zmq_msg_data(&f[6]);
        char z[41];
        zmq_z85_encode(z, key, 32);
        const struct allow_entry *e = allowlist_find(s->allow, key);
        if (e == NULL || e->roles == 0) {
            s->refused++;
            log_refusal(s, "from %s: key %s is not on the allow-list", addr, z);
            reply(s->zap, &f[1], "400", "key not allowed", "");
        } else {
            s->admitted++;
            log_debug("security: admitted a connection from %s: key %s (%s)", addr, z, allow_roles_name(e->roles));
            reply(s->zap, &f[1], "200", "OK", z);
        }
    }
    for (size_t i = 0; i < have; i++)
        zmq_msg_close(&f[i]);
    return true;
}

void security_serve_zap(struct security *s)
{
    if (s->zap == NULL)
        return;
    for (int i = 0; i < 1000 && serve_one(s); i++)
        ;
}

/* ------------------------------------------------------------ per message, reload */

const struct allow_entry *security_peer(struct security *s, const char *user_id)
{
    uint8_t key[32];
    if (strlen(user_id) == 40 && zmq_z85_decode(key, user_id) != NULL) {
        const struct allow_entry *e = allowlist_find(s->allow, key);
        if (e != NULL)
            return e;
        memcpy(s->unknown.key, key, sizeof key);
    } else {
        memset(s->unknown.key, 0, sizeof s->unknown.key); /* no User-Id: not admitted by us */
    }
    s->unknown.roles = 0;
    s->unknown.services[0] = '\0';
    return &s->unknown;
}

int security_reload_read(const struct security *s, struct allowlist **out, char *err, size_t errlen)
{
    *out = NULL;
    return allowlist_load(s->allow_path, out, err, errlen);
}

void security_reload_install(struct security *s, struct allowlist *a)
{
    allowlist_free(&s->allow);
    s->allow = a;
}

int security_reload(struct security *s, char *err, size_t errlen)
{
    struct allowlist *a = NULL;
    int rc = security_reload_read(s, &a, err, errlen);
    if (rc < 0)
        return rc;
    security_reload_install(s, a);
    return 0;
}
