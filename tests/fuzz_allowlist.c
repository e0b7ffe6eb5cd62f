/*
 * fuzz_allowlist.c - libFuzzer target for the coordinator's allow-list parser
 * (coordinator/allowlist.h; make fuzz).
 *
 * An input is the text of an allow-list file, copied into an allocation of
 * exactly its length with no NUL after it, so AddressSanitizer catches a
 * read past len. It is parsed with several error buffer sizes; what is
 * checked is what allowlist.h promises:
 *   - the result is 0, TREATY_ECONFIG or TREATY_ENOMEM; *out is a list on
 *     success and NULL otherwise; the same text always gives the same result
 *     and the same error text;
 *   - an error is "line N: ..." with N at most the number of lines, NUL-
 *     terminated within errlen, nothing written past errlen (errlen 0 and a
 *     NULL err included);
 *   - a parsed list: allowlist_count entries, each found again by its key
 *     (allowlist_find returns that very entry), keys distinct, roles a
 *     non-empty subset of ALLOW_ROLES_ALL, services "" unless the key is a
 *     participant, else a comma-separated list of distinct names of 1..64
 *     characters of [A-Za-z0-9._-]; every key's Z85 text occurs in the input;
 *     a key whose Z85 text does not occur in it is not found; no more
 *     entries than lines.
 * Any violation aborts, so the fuzzer reports it. Leaks are reported by
 * LeakSanitizer.
 *
 * Seeds: tests/fuzz-corpus/allowlist/ (plain allow-list files: every role,
 * comments, merged keys, CRLF, and bad lines of each kind).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "allowlist.h"
#include "treaty.h"

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_allowlist: check failed at line %d: %s\n", __LINE__, #cond);                         \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

#define ERR_CAP 512
#define CANARY 'Z'

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t count_lines(const char *text, size_t len)
{
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '\n')
            n++;
    return n;
}

static bool occurs(const char *text, size_t len, const char *needle, size_t n)
{
    if (n > len)
        return false;
    for (size_t i = 0; i + n <= len; i++)
        if (text[i] == needle[0] && memcmp(text + i, needle, n) == 0)
            return true;
    return false;
}

static bool service_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

/* "a,b,c": names of 1..64 service characters, distinct. */
static void check_services(const char *s)
{
    size_t len = strlen(s);
    CHECK(len > 0 && len < ALLOW_SERVICES_MAX);
    const char *p = s;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        CHECK(n >= 1 && n <= 64);
        for (size_t i = 0; i < n; i++)
            CHECK(service_char(p[i]));
        /* not listed before */
        const char *q = s;
        while (q < p) {
            const char *qend = strchr(q, ',');
            CHECK(qend != NULL);
            CHECK(!((size_t)(qend - q) == n && memcmp(q, p, n) == 0));
            q = qend + 1;
        }
        if (end == NULL)
            break;
        CHECK(end[1] != '\0'); /* no trailing comma */
        p = end + 1;
    }
}

static void check_list(const struct allowlist *a, const char *text, size_t len)
{
    size_t n = allowlist_count(a);
    CHECK(n <= count_lines(text, len));
    for (size_t i = 0; i < n; i++) {
        const struct allow_entry *e = allowlist_entry(a, i);
        CHECK(e != NULL);
        CHECK(allowlist_find(a, e->key) == e);
        CHECK(e->roles != 0 && (e->roles & ~(unsigned)ALLOW_ROLES_ALL) == 0);
        CHECK(memchr(e->services, '\0', sizeof e->services) != NULL);
        if (e->roles & ALLOW_PARTICIPANT)
            check_services(e->services);
        else
            CHECK(e->services[0] == '\0');
        char z85[ALLOW_KEY_TEXT_LEN + 1];
        CHECK(zmq_z85_encode(z85, e->key, ALLOW_KEY_LEN) != NULL);
        CHECK(occurs(text, len, z85, ALLOW_KEY_TEXT_LEN));
        for (size_t j = 0; j < i; j++)
            CHECK(memcmp(allowlist_entry(a, j)->key, e->key, ALLOW_KEY_LEN) != 0);
    }
    /* keys that are not in the text are not in the list */
    static const uint8_t probes[3][ALLOW_KEY_LEN] = {
        {0},
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
        {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
         17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31},
    };
    for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
        char z85[ALLOW_KEY_TEXT_LEN + 1];
        CHECK(zmq_z85_encode(z85, probes[k], ALLOW_KEY_LEN) != NULL);
        if (!occurs(text, len, z85, ALLOW_KEY_TEXT_LEN))
            CHECK(allowlist_find(a, probes[k]) == NULL);
    }
    /* the input's own 32-byte windows, as keys: found only if in the text */
    if (len >= ALLOW_KEY_LEN) {
        const uint8_t *k = (const uint8_t *)text + (len - ALLOW_KEY_LEN) / 2;
        const struct allow_entry *e = allowlist_find(a, k);
        if (e != NULL)
            CHECK(memcmp(e->key, k, ALLOW_KEY_LEN) == 0);
    }
}

/* The error text of a failed parse (rc): within errlen, and for
 * TREATY_ECONFIG "line N: ...". */
static void check_error(int rc, const char *err, size_t errlen, const char *text, size_t len)
{
    CHECK(err[errlen] == CANARY); /* nothing past errlen */
    if (errlen == 0)
        return;
    size_t n = strnlen(err, errlen);
    CHECK(n < errlen);
    if (rc != TREATY_ECONFIG || errlen < 16)
        return; /* out of memory, or too short to hold "line N: " */
    unsigned long line = 0;
    CHECK(sscanf(err, "line %lu:", &line) == 1);
    CHECK(line >= 1 && line <= count_lines(text, len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t errlens[] = {ERR_CAP, 0, 1, 9, 40};
    static char first_err[ERR_CAP + 1];
    char err[ERR_CAP + 1];
    char *text = malloc(size ? size : 1); /* exactly size bytes: no NUL after them */
    CHECK(text != NULL);
    if (size)
        memcpy(text, data, size);

    int first_rc = 0;
    for (size_t k = 0; k < sizeof errlens / sizeof errlens[0]; k++) {
        size_t errlen = errlens[k];
        struct allowlist *a = (struct allowlist *)&a; /* not NULL: must be set */
        memset(err, CANARY, sizeof err);
        int rc = allowlist_parse(text, size, &a, err, errlen);
        CHECK(rc == 0 || rc == TREATY_ECONFIG || rc == TREATY_ENOMEM);
        if (k == 0) {
            first_rc = rc;
            if (rc != 0)
                memcpy(first_err, err, sizeof first_err);
        } else {
            CHECK(rc == first_rc || rc == TREATY_ENOMEM || first_rc == TREATY_ENOMEM);
        }
        if (rc == 0) {
            CHECK(a != NULL);
            if (k == 0)
                check_list(a, text, size);
            allowlist_free(&a);
            CHECK(a == NULL);
        } else {
            CHECK(a == NULL);
            check_error(rc, err, errlen, text, size);
            if (k > 0 && rc == first_rc && errlen > 0)
                CHECK(strncmp(err, first_err, errlen - 1) == 0); /* the same text, truncated */
        }
    }
    /* err may be NULL */
    struct allowlist *a = NULL;
    int rc = allowlist_parse(text, size, &a, NULL, 0);
    CHECK(rc == first_rc || rc == TREATY_ENOMEM || first_rc == TREATY_ENOMEM);
    allowlist_free(&a);
    allowlist_free(&a); /* NULL is fine */
    allowlist_free(NULL);
    free(text);
    return 0;
}
