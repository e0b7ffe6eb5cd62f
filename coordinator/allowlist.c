/*
 * allowlist.c - see allowlist.h.
 *
 * The parser walks the text once, line by line, word by word; it never
 * reads past len and allocates only for entries (plain malloc: an
 * out-of-memory is returned, never an abort, so a fuzzer or a reload can
 * survive it). Entries live in one array in the order keys first appear;
 * an open-addressing table of indexes (linear probing, at most half full)
 * finds them by key. Keys come from the file, which is trusted: an attacker
 * cannot add keys to make a lookup walk, and a lookup of a key that is not
 * there walks at most one run of slots the file's keys made.
 */
#include "allowlist.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "treaty.h"
#include "util.h"

#define SERVICE_NAME_MAX 64 /* WIRE_NAME_MAX */

struct allowlist {
    struct allow_entry *entries;
    size_t n, cap;
    uint32_t *slots; /* index + 1 into entries; 0: empty */
    size_t nslots;   /* power of two, >= 2 * n */
};

static const char *const role_names[8] = {
    "none", "client", "participant", "client+participant", "admin", "client+admin", "participant+admin", "all",
};

const char *allow_roles_name(unsigned roles)
{
    return role_names[roles & ALLOW_ROLES_ALL];
}

/* The problem in err, TREATY_ECONFIG returned (util_errf). */
#define fail(...) util_errf(TREATY_ECONFIG, __VA_ARGS__)

/* ------------------------------------------------------------ the table */

static size_t hash_key(const uint8_t key[32])
{
    /* CURVE public keys are uniformly distributed; mix anyway so that a
     * list of hand-made keys does not cluster. */
    uint64_t h;
    memcpy(&h, key, sizeof h);
    uint64_t g;
    memcpy(&g, key + 8, sizeof g);
    h ^= g * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (size_t)h;
}

static struct allow_entry *find_mut(const struct allowlist *a, const uint8_t key[32])
{
    if (a == NULL || a->nslots == 0)
        return NULL;
    size_t mask = a->nslots - 1;
    for (size_t i = hash_key(key) & mask;; i = (i + 1) & mask) {
        uint32_t s = a->slots[i];
        if (s == 0)
            return NULL;
        if (memcmp(a->entries[s - 1].key, key, 32) == 0)
            return &a->entries[s - 1];
    }
}

static void slot_insert(uint32_t *slots, size_t nslots, const struct allow_entry *entries, uint32_t idx)
{
    size_t mask = nslots - 1;
    size_t i = hash_key(entries[idx].key) & mask;
    while (slots[i] != 0)
        i = (i + 1) & mask;
    slots[i] = idx + 1;
}

/* Appends an entry for key (not yet present). NULL on out-of-memory. */
static struct allow_entry *add_entry(struct allowlist *a, const uint8_t key[32])
{
    if (a->n == a->cap) {
        size_t ncap = a->cap ? a->cap * 2 : 16;
        if (ncap > UINT32_MAX / 2)
            return NULL;
        struct allow_entry *ne = realloc(a->entries, ncap * sizeof *ne);
        if (ne == NULL)
            return NULL;
        a->entries = ne;
        a->cap = ncap;
    }
    if (2 * (a->n + 1) > a->nslots) {
        size_t ns = a->nslots ? a->nslots * 2 : 32;
        uint32_t *slots = calloc(ns, sizeof *slots);
        if (slots == NULL)
            return NULL;
        for (size_t i = 0; i < a->n; i++)
            slot_insert(slots, ns, a->entries, (uint32_t)i);
        free(a->slots);
        a->slots = slots;
        a->nslots = ns;
    }
    struct allow_entry *e = &a->entries[a->n];
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, 32);
    slot_insert(a->slots, a->nslots, a->entries, (uint32_t)a->n);
    a->n++;
    return e;
}

const struct allow_entry *allowlist_find(const struct allowlist *a, const uint8_t key[32])
{
    return find_mut(a, key);
}

size_t allowlist_count(const struct allowlist *a)
{
    return a != NULL ? a->n : 0;
}

const struct allow_entry *allowlist_entry(const struct allowlist *a, size_t i)
{
    return a != NULL && i < a->n ? &a->entries[i] : NULL;
}

void allowlist_free(struct allowlist **ap)
{
    if (ap == NULL || *ap == NULL)
        return;
    struct allowlist *a = *ap;
    free(a->entries);
    free(a->slots);
    free(a);
    *ap = NULL;
}

/* ------------------------------------------------------------ services */

/* True when the list "a,b,c" holds the name of len bytes. */
static bool list_has(const char *list, const char *name, size_t len)
{
    const char *p = list;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t n = end != NULL ? (size_t)(end - p) : strlen(p);
        if (n == len && memcmp(p, name, len) == 0)
            return true;
        if (end == NULL)
            break;
        p = end + 1;
    }
    return false;
}

bool allow_entry_has_service(const struct allow_entry *e, const char *service)
{
    return (e->roles & ALLOW_PARTICIPANT) != 0 && list_has(e->services, service, strlen(service));
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

/* Adds the comma-separated names of word (len bytes) to e's services. 0, or
 * an error for line. */
static int add_services(struct allow_entry *e, const char *word, size_t len, size_t line, char *err, size_t errlen)
{
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < len && word[i] != ',')
            i++;
        size_t n = i - start;
        if (n == 0)
            return fail(err, errlen, "line %zu: an empty service name (a comma too many?)", line);
        if (n > SERVICE_NAME_MAX)
            return fail(err, errlen, "line %zu: a service name of %zu characters (at most %d)", line, n,
                        SERVICE_NAME_MAX);
        for (size_t k = start; k < i; k++)
            if (!name_char(word[k]))
                return fail(err, errlen, "line %zu: service name \"%.*s\": only letters, digits, '.', '_' and '-'",
                            line, (int)n, word + start);
        if (!list_has(e->services, word + start, n)) {
            size_t used = strlen(e->services);
            size_t need = used + (used > 0) + n + 1;
            if (need > sizeof e->services)
                return fail(err, errlen, "line %zu: this key's services exceed %d bytes of names", line,
                            ALLOW_SERVICES_MAX - 1);
            if (used > 0)
                e->services[used++] = ',';
            memcpy(e->services + used, word + start, n);
            e->services[used + n] = '\0';
        }
        if (i == len)
            return 0;
        i++; /* the comma */
        if (i == len)
            return fail(err, errlen, "line %zu: an empty service name (a comma too many?)", line);
    }
}

/* ------------------------------------------------------------ the parser */

struct words {
    const char *w[4]; /* the first words of a line (more are counted, not kept) */
    size_t len[4];
    size_t n;
};

/* Decodes a 40-character Z85 word into key. */
static bool decode_key(const char *word, uint8_t key[32])
{
    char z[ALLOW_KEY_TEXT_LEN + 1];
    memcpy(z, word, ALLOW_KEY_TEXT_LEN);
    z[ALLOW_KEY_TEXT_LEN] = '\0';
    return zmq_z85_decode(key, z) != NULL;
}

static bool is_role(const char *w, size_t len, const char *name)
{
    return len == strlen(name) && memcmp(w, name, len) == 0;
}

/* One line: [p, end), line number line. */
static int parse_line(struct allowlist *a, const char *p, const char *end, size_t line, char *err, size_t errlen,
                      bool *nomem)
{
    if (end > p && end[-1] == '\r')
        end--;
    for (const char *q = p; q < end; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch != ' ' && ch != '\t' && (ch < 0x21 || ch > 0x7e))
            return fail(err, errlen, "line %zu: unexpected byte 0x%02x (only printable ASCII, spaces and tabs)", line,
                        ch);
    }
    /* the words, up to a comment */
    const char *word[3 + 64];
    size_t wlen[3 + 64], nw = 0;
    const char *q = p;
    for (;;) {
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        if (q == end)
            break;
        const char *s = q;
        while (q < end && *q != ' ' && *q != '\t')
            q++;
        size_t l = (size_t)(q - s);
        if (nw == 0 && *s == '#')
            return 0; /* a comment line: no key starts with '#' */
        if (nw >= 2 && *s == '#')
            break; /* a comment after the role */
        if (nw == sizeof word / sizeof word[0])
            return fail(err, errlen, "line %zu: too many words", line);
        word[nw] = s;
        wlen[nw] = l;
        nw++;
    }
    if (nw == 0)
        return 0; /* blank */
    if (wlen[0] != ALLOW_KEY_TEXT_LEN)
        return fail(err, errlen, "line %zu: the first word is not a public key: %zu characters, a key has %d of Z85",
                    line, wlen[0], ALLOW_KEY_TEXT_LEN);
    uint8_t key[32];
    if (!decode_key(word[0], key))
        return fail(err, errlen, "line %zu: the public key is not valid Z85", line);
    if (nw < 2)
        return fail(err, errlen, "line %zu: a key without a role (client, participant <services> or admin)", line);
    unsigned role;
    if (is_role(word[1], wlen[1], "client"))
        role = ALLOW_CLIENT;
    else if (is_role(word[1], wlen[1], "participant"))
        role = ALLOW_PARTICIPANT;
    else if (is_role(word[1], wlen[1], "admin"))
        role = ALLOW_ADMIN;
    else
        return fail(err, errlen, "line %zu: unknown role \"%.*s\" (client, participant <services> or admin)", line,
                    (int)(wlen[1] > 32 ? 32 : wlen[1]), word[1]);
    if (role == ALLOW_PARTICIPANT && nw < 3)
        return fail(err, errlen, "line %zu: participant without services (participant <service>[,<service>...])", line);
    if (role != ALLOW_PARTICIPANT && nw > 2)
        return fail(err, errlen, "line %zu: role %s takes no services (\"%.*s\")", line, allow_roles_name(role),
                    (int)(wlen[2] > 32 ? 32 : wlen[2]), word[2]);

    struct allow_entry *e = find_mut(a, key);
    if (e == NULL) {
        e = add_entry(a, key);
        if (e == NULL) {
            *nomem = true;
            return TREATY_ENOMEM;
        }
    }
    for (size_t i = 2; i < nw; i++) {
        int rc = add_services(e, word[i], wlen[i], line, err, errlen);
        if (rc < 0)
            return rc;
    }
    e->roles |= role;
    return 0;
}

int allowlist_parse(const char *text, size_t len, struct allowlist **out, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    *out = NULL;
    struct allowlist *a = calloc(1, sizeof *a);
    if (a == NULL)
        return TREATY_ENOMEM;
    const char *p = text, *end = text + len;
    size_t line = 1;
    int rc = 0;
    bool nomem = false;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl != NULL ? nl : end;
        rc = parse_line(a, p, le, line, err, errlen, &nomem);
        if (rc < 0)
            break;
        if (nl == NULL)
            break;
        p = nl + 1;
        line++;
    }
    if (rc < 0) {
        if (nomem)
            fail(err, errlen, "line %zu: out of memory", line);
        allowlist_free(&a);
        return rc;
    }
    *out = a;
    return 0;
}

int allowlist_load(const char *path, struct allowlist **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, errlen, "%s: not a regular file", path);
    }
    if ((unsigned long long)st.st_size > ALLOW_FILE_MAX) {
        close(fd);
        return fail(err, errlen, "%s: too large (%lld bytes, at most %u)", path, (long long)st.st_size, ALLOW_FILE_MAX);
    }
    size_t cap = (size_t)st.st_size + 1;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return TREATY_ENOMEM;
    }
    size_t n = 0;
    for (;;) {
        if (n == cap) { /* the file grew while we read it */
            free(buf);
            close(fd);
            return fail(err, errlen, "%s: changed while being read", path);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return fail(err, errlen, "%s: cannot read: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    char perr[256];
    int rc = allowlist_parse(buf, n, out, perr, sizeof perr);
    free(buf);
    if (rc < 0)
        fail(err, errlen, "%s: %s", path, perr[0] ? perr : treaty_strerror(rc));
    return rc;
}
