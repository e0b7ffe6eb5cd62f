/*
 * test_allowlist.c - coordinator/allowlist.c: the allow-list parser (every
 * kind of line, every kind of error with its line number), lookups, merging
 * of a key's lines, the file loader, and text that is not an allow-list at
 * all (it must neither crash nor read past its length).
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <zmq.h>

#include "allowlist.h"
#include "treaty.h"

#define assert_contains(hay, needle)                                                                                   \
    cr_assert(strstr((hay), (needle)) != NULL, "expected \"%s\" in \"%s\"", (needle), (hay))

struct key {
    char pub[41], sec[41];
    uint8_t bin[32];
};

static void new_key(struct key *k)
{
    cr_assert_eq(zmq_curve_keypair(k->pub, k->sec), 0);
    cr_assert_not_null(zmq_z85_decode(k->bin, k->pub));
}

static struct allowlist *parse_ok(const char *text)
{
    struct allowlist *a = NULL;
    char err[256] = "";
    int rc = allowlist_parse(text, strlen(text), &a, err, sizeof err);
    cr_assert_eq(rc, 0, "parse failed: %s\n--- text:\n%s", err, text);
    cr_assert_not_null(a);
    return a;
}

static void parse_fails(const char *text, const char *want)
{
    struct allowlist *a = (struct allowlist *)1;
    char err[256] = "";
    int rc = allowlist_parse(text, strlen(text), &a, err, sizeof err);
    cr_assert_eq(rc, TREATY_ECONFIG, "want an error \"%s\", got rc %d for:\n%s", want, rc, text);
    cr_assert_null(a, "no list on failure");
    assert_contains(err, want);
}

Test(allowlist, roles_services_comments_and_blank_lines)
{
    struct key c, p, adm, other;
    new_key(&c);
    new_key(&p);
    new_key(&adm);
    new_key(&other);
    char text[2048];
    snprintf(text, sizeof text,
             "# Treaty allow-list\n"
             "\n"
             "   \t\n"
             "%s client\n"
             "%s\tparticipant  bank-a,bank-b   # the two banks\r\n"
             "  %s admin # operators\n"
             "#%s client\n" /* commented out */
             "#no space after the hash is a comment too\n",
             c.pub, p.pub, adm.pub, other.pub);
    struct allowlist *a = parse_ok(text);
    cr_assert_eq(allowlist_count(a), 3);

    const struct allow_entry *e = allowlist_find(a, c.bin);
    cr_assert_not_null(e);
    cr_assert_eq(e->roles, ALLOW_CLIENT);
    cr_assert_str_empty(e->services);

    e = allowlist_find(a, p.bin);
    cr_assert_not_null(e);
    cr_assert_eq(e->roles, ALLOW_PARTICIPANT);
    cr_assert_str_eq(e->services, "bank-a,bank-b");
    cr_assert(allow_entry_has_service(e, "bank-a"));
    cr_assert(allow_entry_has_service(e, "bank-b"));
    cr_assert_not(allow_entry_has_service(e, "bank"), "a prefix is not a service");
    cr_assert_not(allow_entry_has_service(e, "bank-a,bank-b"));
    cr_assert_not(allow_entry_has_service(e, "shop"));

    e = allowlist_find(a, adm.bin);
    cr_assert_not_null(e);
    cr_assert_eq(e->roles, ALLOW_ADMIN);
    cr_assert_not(allow_entry_has_service(e, "bank-a"), "only participants have services");

    cr_assert_null(allowlist_find(a, other.bin), "a commented-out key is not allowed");
    allowlist_free(&a);
    cr_assert_null(a);
    allowlist_free(&a);
    allowlist_free(NULL);
}

Test(allowlist, a_key_on_several_lines_adds_up)
{
    struct key k;
    new_key(&k);
    char text[512];
    snprintf(text, sizeof text,
             "%s participant shop\n"
             "%s client\n"
             "%s participant bank-a shop,bank-b\n",
             k.pub, k.pub, k.pub);
    struct allowlist *a = parse_ok(text);
    cr_assert_eq(allowlist_count(a), 1);
    const struct allow_entry *e = allowlist_find(a, k.bin);
    cr_assert_eq(e->roles, ALLOW_CLIENT | ALLOW_PARTICIPANT);
    cr_assert_str_eq(e->services, "shop,bank-a,bank-b", "each service once");
    cr_assert_str_eq(allow_roles_name(e->roles), "client+participant");
    allowlist_free(&a);
}

/* A comment line is one whose first word starts with '#': no key does, as
 * Z85 never starts a group of 5 characters with '#' (85^4 * 84 > 2^32). */
Test(allowlist, no_key_starts_with_a_hash)
{
    uint8_t b[32];
    char z[41];
    memset(b, 0xff, sizeof b);
    cr_assert_not_null(zmq_z85_encode(z, b, sizeof b));
    cr_assert_neq(z[0], '#');
    cr_assert_neq(z[0], '$');
    const char *hash40 = "#000000000000000000000000000000000000000";
    cr_assert_eq(strlen(hash40), 40);
    cr_assert_null(zmq_z85_decode(b, hash40), "a group starting with '#' exceeds 32 bits");
}

Test(allowlist, errors_name_the_line_and_the_problem)
{
    struct key k;
    new_key(&k);
    char text[512];
    const char *key = k.pub;

    snprintf(text, sizeof text, "# ok\n%s client\n%s\n", key, key);
    parse_fails(text, "line 3: a key without a role");
    snprintf(text, sizeof text, "%s root\n", key);
    parse_fails(text, "line 1: unknown role \"root\"");
    snprintf(text, sizeof text, "%s Client\n", key);
    parse_fails(text, "line 1: unknown role \"Client\"");
    snprintf(text, sizeof text, "\n\n%s participant\n", key);
    parse_fails(text, "line 3: participant without services");
    snprintf(text, sizeof text, "%s participant # nothing\n", key);
    parse_fails(text, "line 1: participant without services");
    snprintf(text, sizeof text, "%s client bank-a\n", key);
    parse_fails(text, "line 1: role client takes no services");
    snprintf(text, sizeof text, "%s admin x\n", key);
    parse_fails(text, "line 1: role admin takes no services");
    snprintf(text, sizeof text, "%s participant bank-a,,shop\n", key);
    parse_fails(text, "line 1: an empty service name");
    snprintf(text, sizeof text, "%s participant bank-a,\n", key);
    parse_fails(text, "line 1: an empty service name");
    snprintf(text, sizeof text, "%s participant ,bank-a\n", key);
    parse_fails(text, "line 1: an empty service name");
    snprintf(text, sizeof text, "%s participant bank/a\n", key);
    parse_fails(text, "line 1: service name \"bank/a\"");
    snprintf(text, sizeof text, "%s participant %065d\n", key, 0);
    parse_fails(text, "line 1: a service name of 65 characters");
    parse_fails("abc client\n", "line 1: the first word is not a public key: 3 characters");
    snprintf(text, sizeof text, "%sX client\n", key);
    parse_fails(text, "line 1: the first word is not a public key: 41 characters");
    /* 40 characters, but ',' and '"' are not Z85 */
    parse_fails("\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\" client\n",
                "line 1: the public key is not valid Z85");
    parse_fails(",,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,, client\n", "line 1: the public key is not valid Z85");
    snprintf(text, sizeof text, "%s client\n%s cli\x01nt\n", key, key);
    parse_fails(text, "line 2: unexpected byte 0x01");
    snprintf(text, sizeof text, "%s client\xc3\xa9\n", key);
    parse_fails(text, "line 1: unexpected byte 0xc3");
    snprintf(text, sizeof text, "%s cli\rent\n", key);
    parse_fails(text, "line 1: unexpected byte 0x0d");
}

Test(allowlist, a_nul_byte_is_an_error_and_len_is_the_end)
{
    struct key k;
    new_key(&k);
    char text[128];
    int n = snprintf(text, sizeof text, "%s client\n", k.pub);
    text[n - 3] = '\0'; /* "clie\0t\n" */
    struct allowlist *a = NULL;
    char err[256];
    cr_assert_eq(allowlist_parse(text, (size_t)n, &a, err, sizeof err), TREATY_ECONFIG);
    assert_contains(err, "line 1: unexpected byte 0x00");

    /* The last line needs no newline, and nothing after len is read. */
    n = snprintf(text, sizeof text, "%s client", k.pub);
    cr_assert_eq(allowlist_parse(text, (size_t)n, &a, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(allowlist_find(a, k.bin));
    allowlist_free(&a);
    cr_assert_eq(allowlist_parse(text, 43, &a, err, sizeof err), TREATY_ECONFIG, "\"cl\": cut by len");
    assert_contains(err, "unknown role \"cl\"");
    cr_assert_eq(allowlist_parse(text, 0, &a, err, sizeof err), 0, "empty text: an empty list");
    cr_assert_eq(allowlist_count(a), 0);
    cr_assert_null(allowlist_find(a, k.bin));
    allowlist_free(&a);
}

/* The text ends exactly at the end of a readable page, followed by one that
 * is not: a read past len faults. Every prefix of a good list is parsed. */
Test(allowlist, never_reads_past_len)
{
    long page = sysconf(_SC_PAGESIZE);
    uint8_t *m = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(m != MAP_FAILED);
    cr_assert_eq(mprotect(m + page, (size_t)page, PROT_NONE), 0);
    struct key k;
    new_key(&k);
    char text[256];
    int n = snprintf(text, sizeof text, "# c\n%s participant bank-a,shop # x\n%s client", k.pub, k.pub);
    for (int len = 0; len <= n; len++) {
        char *at = (char *)m + page - len;
        memcpy(at, text, (size_t)len);
        struct allowlist *a = NULL;
        char err[256];
        int rc = allowlist_parse(at, (size_t)len, &a, err, sizeof err);
        cr_assert(rc == 0 || rc == TREATY_ECONFIG, "len %d: rc %d", len, rc);
        allowlist_free(&a);
    }
    munmap(m, (size_t)page * 2);
}

/* Random bytes, and random edits of a good list: an answer every time. */
Test(allowlist, random_text_gets_an_answer)
{
    struct key k;
    new_key(&k);
    char good[512];
    int n = snprintf(good, sizeof good, "%s participant bank-a,bank-b\n%s client # c\n# x\n", k.pub, k.pub);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    char buf[600];
    for (int round = 0; round < 20000; round++) {
        size_t len;
        if (round % 2) {
            len = (size_t)n;
            memcpy(buf, good, len);
            for (int e = 0; e < 3; e++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                buf[(s >> 33) % len] = (char)(s >> 20);
            }
        } else {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            len = (s >> 33) % sizeof buf;
            for (size_t i = 0; i < len; i++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                buf[i] = (char)(s >> 40);
            }
        }
        struct allowlist *a = NULL;
        char err[128];
        int rc = allowlist_parse(buf, len, &a, err, sizeof err);
        cr_assert(rc == 0 || rc == TREATY_ECONFIG, "rc %d", rc);
        cr_assert((rc == 0) == (a != NULL));
        if (rc < 0)
            cr_assert(strncmp(err, "line ", 5) == 0, "errors name the line: \"%s\"", err);
        allowlist_free(&a);
    }
    /* err may be NULL or empty */
    struct allowlist *a = NULL;
    cr_assert_eq(allowlist_parse("x", 1, &a, NULL, 0), TREATY_ECONFIG);
}

Test(allowlist, many_keys_are_found_and_others_are_not)
{
    enum { N = 3000 };
    static struct key keys[N + 100];
    size_t cap = (size_t)N * 64;
    char *text = malloc(cap);
    size_t off = 0;
    for (int i = 0; i < N + 100; i++) {
        new_key(&keys[i]);
        if (i < N)
            off += (size_t)snprintf(text + off, cap - off, "%s participant svc-%d\n", keys[i].pub, i);
    }
    struct allowlist *a = NULL;
    char err[256];
    cr_assert_eq(allowlist_parse(text, off, &a, err, sizeof err), 0, "%s", err);
    cr_assert_eq(allowlist_count(a), N);
    for (int i = 0; i < N; i++) {
        const struct allow_entry *e = allowlist_find(a, keys[i].bin);
        cr_assert_not_null(e, "key %d lost", i);
        char svc[32];
        snprintf(svc, sizeof svc, "svc-%d", i);
        cr_assert_str_eq(e->services, svc);
        cr_assert_eq(allowlist_entry(a, (size_t)i), e, "entries in the order of the file");
    }
    for (int i = N; i < N + 100; i++)
        cr_assert_null(allowlist_find(a, keys[i].bin));
    cr_assert_null(allowlist_entry(a, N));
    allowlist_free(&a);
    free(text);
}

Test(allowlist, load_reads_a_file_and_names_it_in_errors)
{
    struct key k;
    new_key(&k);
    char path[] = "/tmp/treaty-allow-XXXXXX";
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    char text[128];
    int n = snprintf(text, sizeof text, "%s client\n", k.pub);
    cr_assert_eq(write(fd, text, (size_t)n), n);
    close(fd);
    struct allowlist *a = NULL;
    char err[512];
    cr_assert_eq(allowlist_load(path, &a, err, sizeof err), 0, "%s", err);
    cr_assert_not_null(allowlist_find(a, k.bin));
    allowlist_free(&a);

    FILE *f = fopen(path, "a");
    fputs("oops\n", f);
    fclose(f);
    cr_assert_eq(allowlist_load(path, &a, err, sizeof err), TREATY_ECONFIG);
    char want[128];
    snprintf(want, sizeof want, "%s: line 2: the first word is not a public key", path);
    assert_contains(err, want);
    cr_assert_null(a);
    unlink(path);

    cr_assert_eq(allowlist_load(path, &a, err, sizeof err), TREATY_ECONFIG);
    assert_contains(err, "cannot open: No such file or directory");
    cr_assert_eq(allowlist_load("/tmp", &a, err, sizeof err), TREATY_ECONFIG);
    assert_contains(err, "/tmp: not a regular file");
}
