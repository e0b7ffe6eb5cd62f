/*
 * security.c - the keys of treaty.h's "security" section: checking a
 * treaty_security_t (treaty_security_check) and reading key files
 * (treaty_key_load). No cryptography happens here: a key is checked to be
 * Z85 text that libzmq decodes to 32 bytes, and a public key to be the one
 * libzmq derives from the secret key (zmq_curve_public). The sockets use the
 * keys through link.c.
 *
 * A secret key read from a file passes through a stack buffer that is wiped
 * (explicit_bzero) before returning, whatever happened; the caller's copy is
 * the caller's to wipe.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "security.h"
#include "treaty.h"

#define KEY_FILE_MAX 4096 /* a key file is one line; anything longer is not one */

static const char z85_alphabet[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
say(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int security_key_check(const char *key, const char *what, char *err, size_t errlen)
{
    if (key == NULL) {
        say(err, errlen, "%s is missing", what);
        return TREATY_EINVAL;
    }
    size_t n = strnlen(key, TREATY_KEY_LEN + 1);
    if (n != TREATY_KEY_LEN) {
        say(err, errlen, "%s is %s%zu characters long; a Z85 CURVE key has %d", what, n > TREATY_KEY_LEN ? "over " : "",
            n > TREATY_KEY_LEN ? (size_t)TREATY_KEY_LEN : n, TREATY_KEY_LEN);
        return TREATY_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (strchr(z85_alphabet, key[i]) == NULL) {
            unsigned char c = (unsigned char)key[i];
            if (c >= 0x21 && c < 0x7f)
                say(err, errlen, "%s: character %zu ('%c') is not in the Z85 alphabet", what, i + 1, c);
            else
                say(err, errlen, "%s: character %zu (byte 0x%02x) is not in the Z85 alphabet", what, i + 1, c);
            return TREATY_EINVAL;
        }
    }
    /* Five characters carry 32 bits; "#####" and the like would be more:
     * the key must decode and encode back to itself. */
    uint8_t bin[32];
    char again[TREATY_KEY_LEN + 1];
    bool ok = zmq_z85_decode(bin, key) != NULL && zmq_z85_encode(again, bin, sizeof bin) != NULL &&
              memcmp(again, key, TREATY_KEY_LEN) == 0;
    explicit_bzero(bin, sizeof bin);
    explicit_bzero(again, sizeof again);
    if (!ok) {
        say(err, errlen, "%s is not a Z85 encoding of 32 bytes (a group of 5 characters is out of range)", what);
        return TREATY_EINVAL;
    }
    return 0;
}

int treaty_security_check(const treaty_security_t *sec, char *err, size_t errlen)
{
    say(err, errlen, "keys are valid");
    if (sec == NULL)
        return 0;
    if (sec->server_public_key == NULL) {
        if (sec->public_key != NULL || sec->secret_key != NULL) {
            say(err, errlen, "keys of this peer given without server_public_key (the coordinator's public key)");
            return TREATY_EINVAL;
        }
        return 0;
    }
    if (!zmq_has("curve")) {
        say(err, errlen, "this libzmq was built without CURVE");
        return TREATY_ETRANSPORT;
    }
    int rc = security_key_check(sec->server_public_key, "server_public_key", err, errlen);
    if (rc == 0)
        rc = security_key_check(sec->secret_key, "secret_key", err, errlen);
    if (rc == 0 && sec->public_key != NULL)
        rc = security_key_check(sec->public_key, "public_key", err, errlen);
    if (rc < 0)
        return rc;
    char derived[TREATY_KEY_LEN + 1];
    if (zmq_curve_public(derived, sec->secret_key) != 0) {
        say(err, errlen, "cannot derive the public key of secret_key: %s", zmq_strerror(errno));
        return TREATY_ETRANSPORT;
    }
    if (sec->public_key != NULL && strcmp(derived, sec->public_key) != 0) {
        say(err, errlen, "public_key is not the public key of secret_key (keys of different pairs?)");
        return TREATY_EINVAL;
    }
    if (strcmp(sec->server_public_key, derived) == 0) {
        say(err, errlen, "server_public_key is this peer's own public key, not the coordinator's");
        return TREATY_EINVAL;
    }
    if (strcmp(sec->server_public_key, sec->secret_key) == 0) {
        say(err, errlen, "server_public_key is this peer's secret key, not the coordinator's public key");
        return TREATY_EINVAL;
    }
    say(err, errlen, "keys are valid");
    return 0;
}

/* The one key line of text[0..len) (NUL-terminated by the caller): sets
 * *start and *n. Returns 0 or TREATY_ECONFIG with err set. */
static int find_key_line(const char *path, const char *text, size_t len, const char **start, size_t *n, char *err,
                         size_t errlen)
{
    const char *found = NULL;
    size_t found_len = 0;
    size_t lineno = 0;
    const char *p = text, *end = text + len;
    while (p < end) {
        lineno++;
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol != NULL ? eol + 1 : end;
        const char *a = p, *b = eol != NULL ? eol : end;
        while (a < b && (*a == ' ' || *a == '\t' || *a == '\r'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r'))
            b--;
        if (a < b && *a != '#') {
            if (found != NULL) {
                say(err, errlen, "%s: line %zu: a second key (a key file holds one)", path, lineno);
                return TREATY_ECONFIG;
            }
            found = a;
            found_len = (size_t)(b - a);
        }
        p = next;
    }
    if (found == NULL) {
        say(err, errlen, "%s: no key in the file", path);
        return TREATY_ECONFIG;
    }
    *start = found;
    *n = found_len;
    return 0;
}

/* The key in text[0..len) (NUL-terminated), into z85. 0 or TREATY_ECONFIG. */
static int parse_key_file(const char *path, const char *text, size_t len, char z85[TREATY_KEY_LEN + 1], char *err,
                          size_t errlen)
{
    if (memchr(text, '\0', len) != NULL) {
        say(err, errlen, "%s: binary content: not a Z85 key file", path);
        return TREATY_ECONFIG;
    }
    const char *key;
    size_t n;
    int rc = find_key_line(path, text, len, &key, &n, err, errlen);
    if (rc < 0)
        return rc;
    if (n != TREATY_KEY_LEN) {
        say(err, errlen, "%s: the key is %zu characters long; a Z85 CURVE key has %d", path, n, TREATY_KEY_LEN);
        return TREATY_ECONFIG;
    }
    char one[TREATY_KEY_LEN + 1], detail[256];
    memcpy(one, key, TREATY_KEY_LEN);
    one[TREATY_KEY_LEN] = '\0';
    rc = security_key_check(one, "the key", detail, sizeof detail);
    if (rc < 0) {
        say(err, errlen, "%s: %s", path, detail);
        rc = TREATY_ECONFIG;
    } else {
        memcpy(z85, one, sizeof one);
    }
    explicit_bzero(one, sizeof one);
    return rc;
}

int treaty_key_load(const char *path, enum treaty_key_kind kind, char z85[TREATY_KEY_LEN + 1], char *err, size_t errlen)
{
    char buf[KEY_FILE_MAX + 1];
    size_t len = 0;
    int rc = TREATY_ECONFIG;
    struct stat st;
    if (path == NULL || z85 == NULL || (kind != TREATY_KEY_PUBLIC && kind != TREATY_KEY_SECRET)) {
        say(err, errlen, "treaty_key_load: path, kind and z85 are required");
        return TREATY_EINVAL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        say(err, errlen, "%s: %s", path, strerror(errno));
        return TREATY_ECONFIG;
    }
    if (fstat(fd, &st) != 0) {
        say(err, errlen, "%s: %s", path, strerror(errno));
        goto fail_read;
    }
    if (!S_ISREG(st.st_mode)) {
        say(err, errlen, "%s: not a regular file", path);
        goto fail_read;
    }
    /* Checked on the open file, so a rename in between cannot swap it. */
    if (kind == TREATY_KEY_SECRET && (st.st_mode & 077) != 0) {
        say(err, errlen, "%s: a secret key file must not be accessible by group or others (mode %04o; chmod 600 %s)",
            path, (unsigned)(st.st_mode & 07777), path);
        goto fail_read;
    }
    for (;;) {
        ssize_t got = read(fd, buf + len, sizeof buf - 1 - len);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            say(err, errlen, "%s: %s", path, strerror(errno));
            goto fail_read;
        }
        if (got == 0)
            break;
        len += (size_t)got;
        if (len == sizeof buf - 1) {
            say(err, errlen, "%s: longer than %d bytes: not a key file", path, KEY_FILE_MAX);
            goto fail_read;
        }
    }
    buf[len] = '\0';
    rc = parse_key_file(path, buf, len, z85, err, errlen);
    if (rc == 0)
        say(err, errlen, "%s: key loaded", path);

fail_read:
    explicit_bzero(buf, sizeof buf);
    close(fd);
    return rc;
}
