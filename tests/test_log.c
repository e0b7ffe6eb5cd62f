/*
 * test_log.c - coordinator/log.c: the JSON escaping against hostile strings
 * (quotes, backslashes, every control character, NUL, malformed UTF-8,
 * cuts), the json and text line formats, a transaction's txid on its line,
 * and that a line below the level costs no formatting.
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "treaty.h"

#define assert_contains(hay, needle)                                                                                   \
    cr_assert(strstr((hay), (needle)) != NULL, "expected \"%s\" in \"%s\"", (needle), (hay))

/* ------------------------------------------------------------ a JSON checker */

/* True when s[0..len) is well-formed UTF-8 (RFC 3629). */
static bool utf8_ok(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            n = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 4, cp = c & 0x07;
        } else {
            return false;
        }
        if (i + n > len)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n;
    }
    return true;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Decodes the inside of a JSON string (RFC 8259) at s into out (its UTF-8
 * bytes, \u escapes below U+0080 as one byte, \ufffd as its three). Returns
 * the decoded length, or -1 when s is not a valid string body: a raw control
 * character, a raw '"', a bad escape, malformed UTF-8. */
static long json_decode(const char *s, char *out, size_t cap)
{
    size_t len = strlen(s), o = 0;
    if (!utf8_ok((const unsigned char *)s, len))
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"')
            return -1;
        if (o + 4 >= cap)
            return -1;
        if (c != '\\') {
            out[o++] = (char)c;
            continue;
        }
        char e = s[++i];
        switch (e) {
        case '"':
        case '\\':
        case '/':
            out[o++] = e;
            break;
        case 'b':
            out[o++] = '\b';
            break;
        case 'f':
            out[o++] = '\f';
            break;
        case 'n':
            out[o++] = '\n';
            break;
        case 'r':
            out[o++] = '\r';
            break;
        case 't':
            out[o++] = '\t';
            break;
        case 'u': {
            unsigned v = 0;
            for (int k = 1; k <= 4; k++) {
                int h = hexval(s[i + (size_t)k]);
                if (h < 0)
                    return -1;
                v = v << 4 | (unsigned)h;
            }
            i += 4;
            if (v < 0x80) {
                out[o++] = (char)v;
            } else if (v == 0xfffd) {
                memcpy(out + o, "\xef\xbf\xbd", 3);
                o += 3;
            } else {
                return -1; /* log_json_escape writes no other */
            }
            break;
        }
        default:
            return -1;
        }
    }
    out[o] = '\0';
    return (long)o;
}

static void expect_escape(const char *in, size_t len, const char *want_escaped, const char *want_decoded,
                          size_t want_decoded_len)
{
    char out[1024], back[1024];
    size_t n = log_json_escape(out, sizeof out, in, len);
    cr_assert_eq(n, strlen(out));
    if (want_escaped != NULL)
        cr_assert_str_eq(out, want_escaped);
    long d = json_decode(out, back, sizeof back);
    cr_assert(d >= 0, "not a valid JSON string body: %s", out);
    cr_assert_eq((size_t)d, want_decoded_len, "decoded %ld bytes, want %zu (%s)", d, want_decoded_len, out);
    cr_assert(memcmp(back, want_decoded, want_decoded_len) == 0, "decoded differs: %s", out);
}

/* ------------------------------------------------------------ escaping */

Test(log_json, quotes_and_backslashes_are_escaped)
{
    const char *s = "say \"hi\" \\ \\\" \"}";
    expect_escape(s, strlen(s), "say \\\"hi\\\" \\\\ \\\\\\\" \\\"}", s, strlen(s));
}

Test(log_json, every_control_character_and_nul_are_escaped)
{
    char in[34];
    for (int i = 0; i < 32; i++)
        in[i] = (char)i;
    in[32] = 0x7f;
    in[33] = 'x';
    char out[512], back[512];
    log_json_escape(out, sizeof out, in, sizeof in);
    for (const char *p = out; *p; p++)
        cr_assert((unsigned char)*p >= 0x20 && *p != 0x7f, "raw control byte 0x%02x in %s", (unsigned char)*p, out);
    assert_contains(out, "\\u0000\\u0001");
    assert_contains(out, "\\b\\t\\n\\u000b\\f\\r");
    assert_contains(out, "\\u001f\\u007fx");
    long d = json_decode(out, back, sizeof back);
    cr_assert_eq(d, (long)sizeof in, "%s", out);
    cr_assert(memcmp(back, in, sizeof in) == 0);
}

Test(log_json, well_formed_utf8_passes_through)
{
    const char *s = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \xed\x9f\xbf";
    expect_escape(s, strlen(s), s, s, strlen(s));
}

Test(log_json, malformed_utf8_becomes_replacement_characters)
{
    static const struct {
        const char *in;
        const char *escaped;
    } cases[] = {
        {"a\x80z", "a\\ufffdz"},                                  /* lone continuation byte */
        {"a\xc0\x80z", "a\\ufffd\\ufffdz"},                       /* overlong NUL */
        {"a\xe0\x80\xafz", "a\\ufffd\\ufffd\\ufffdz"},            /* overlong '/' */
        {"a\xed\xa0\x80z", "a\\ufffd\\ufffd\\ufffdz"},            /* a surrogate */
        {"a\xf4\x90\x80\x80z", "a\\ufffd\\ufffd\\ufffd\\ufffdz"}, /* above U+10FFFF */
        {"a\xf5\xff\xfez", "a\\ufffd\\ufffd\\ufffdz"},            /* never in UTF-8 */
        {"a\xe2\x82", "a\\ufffd\\ufffd"},                         /* cut at the end */
        {"\xc3\"", "\\ufffd\\\""},                                /* a lead byte before a quote */
        {"\xf0\x9f\x98z", "\\ufffd\\ufffd\\ufffdz"},              /* 4-byte sequence missing its last */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[256], back[256];
        log_json_escape(out, sizeof out, cases[i].in, strlen(cases[i].in));
        cr_assert_str_eq(out, cases[i].escaped, "case %zu", i);
        cr_assert(json_decode(out, back, sizeof back) >= 0, "case %zu: %s", i, out);
    }
}

Test(log_json, a_small_buffer_never_splits_an_escape_or_a_character)
{
    const char *s = "\"\n\x01\xe2\x82\xac\x80x";
    size_t full = 0;
    {
        char out[256];
        full = log_json_escape(out, sizeof out, s, strlen(s));
    }
    for (size_t cap = 0; cap <= full + 1; cap++) {
        char out[256], back[256];
        memset(out, '#', sizeof out);
        size_t n = log_json_escape(out, cap, s, strlen(s));
        if (cap == 0) {
            cr_assert_eq(n, 0);
            cr_assert_eq(out[0], '#', "cap 0 writes nothing");
            continue;
        }
        cr_assert(n < cap, "cap %zu: wrote %zu", cap, n);
        cr_assert_eq(out[n], '\0');
        cr_assert(json_decode(out, back, sizeof back) >= 0, "cap %zu: not valid: %s", cap, out);
    }
}

Test(log_json, random_bytes_always_give_a_valid_string)
{
    unsigned x = 12345;
    for (int round = 0; round < 2000; round++) {
        char in[64], out[512], back[512];
        size_t len = (size_t)(round % 64);
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            in[i] = (char)(x >> 16);
        }
        log_json_escape(out, sizeof out, in, len);
        cr_assert(json_decode(out, back, sizeof back) >= 0, "round %d: not valid: %s", round, out);
    }
}

/* ------------------------------------------------------------ lines */

static char *read_redirected_stderr(void)
{
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    return buf;
}

static const uint8_t txid[16] = {0x01, 0x90, 0xc3, 0xc4, 0x00, 0x00, 0x70, 0x00,
                                 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a};
#define TXID_TEXT "0190c3c4-0000-7000-8000-00000000002a"

Test(log_line, json_lines_are_one_object_with_ts_level_msg_and_txid, .init = cr_redirect_stderr)
{
    log_set_level(LOG_LEVEL_INFO);
    log_set_format(LOG_FORMAT_JSON);
    log_txn(LOG_LEVEL_WARN, txid, "txn: abort (branch %d: %s)", 1, "say \"no\"\nERROR forged line");
    log_info("plain %s", "line");
    log_set_format(LOG_FORMAT_TEXT);
    char *out = read_redirected_stderr();

    char *second = strchr(out, '\n');
    cr_assert_not_null(second, "no line: %s", out);
    *second++ = '\0';
    cr_assert(strncmp(out, "{\"ts\":\"", 7) == 0, "%s", out);
    cr_assert_eq(out[7 + 24], '"', "ts is 2026-11-25T10:00:00.123Z: %s", out);
    cr_assert_eq(out[7 + 23], 'Z', "%s", out);
    assert_contains(out, "\",\"level\":\"warn\",\"msg\":\"txn: abort (branch 1: say \\\"no\\\"\\nERROR forged "
                         "line)\",\"txid\":\"" TXID_TEXT "\"}");
    cr_assert_eq(out[strlen(out) - 1], '}');
    assert_contains(second, "\"level\":\"info\",\"msg\":\"plain line\"}\n");
    cr_assert_null(strstr(second, "txid"), "a line about no transaction has no txid: %s", second);
}

Test(log_line, text_lines_carry_the_txid_and_cannot_be_split, .init = cr_redirect_stderr)
{
    log_set_level(LOG_LEVEL_INFO);
    log_set_format(LOG_FORMAT_TEXT);
    log_txn(LOG_LEVEL_INFO, txid, "saga: step %u failed (%s)", 2u, "bad\r\n2026-01-01T00:00:00.000Z ERROR \x1b[31m");
    char *out = read_redirected_stderr();
    cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "one line: %s", out);
    cr_assert_eq(out[23], 'Z', "%s", out);
    assert_contains(
        out, "Z INFO  saga: step 2 failed (bad\\r\\n2026-01-01T00:00:00.000Z ERROR \\x1b[31m) txid=" TXID_TEXT "\n");
}

static int evaluated;

static const char *count_evaluation(void)
{
    evaluated++;
    return "x";
}

struct captured {
    int n;
    char last[256];
};

static void capture(void *arg, enum log_level l, const char *line)
{
    (void)l;
    struct captured *c = arg;
    c->n++;
    snprintf(c->last, sizeof c->last, "%s", line);
}

Test(log_line, a_transaction_line_below_the_level_evaluates_nothing)
{
    struct captured got = {0};
    log_set_sink(capture, &got);
    log_set_level(LOG_LEVEL_INFO);
    evaluated = 0;
    log_txn(LOG_LEVEL_DEBUG, txid, "txn: prepare %s", count_evaluation());
    log_debug("txn: %s", count_evaluation());
    cr_assert_eq(evaluated, 0, "arguments of a filtered line were evaluated");
    cr_assert_eq(got.n, 0);
    log_txn(LOG_LEVEL_INFO, txid, "txn: prepare %s", count_evaluation());
    log_txn(LOG_LEVEL_INFO, NULL, "no txn %d", 7);
    log_set_sink(NULL, NULL);
    cr_assert_eq(evaluated, 1);
    cr_assert_eq(got.n, 2);
    cr_assert_str_eq(got.last, "no txn 7");
}

Test(log_line, a_sink_gets_the_txid_after_the_message)
{
    struct captured got = {0};
    log_set_sink(capture, &got);
    log_set_level(LOG_LEVEL_INFO);
    log_set_format(LOG_FORMAT_JSON); /* the format is stderr's: a sink gets plain text */
    log_txn(LOG_LEVEL_WARN, txid, "txn: %s", "late vote");
    log_set_format(LOG_FORMAT_TEXT);
    log_set_sink(NULL, NULL);
    cr_assert_str_eq(got.last, "txn: late vote txid=" TXID_TEXT);
}

Test(log_line, format_names_parse_both_ways)
{
    cr_assert_eq(log_format_parse("text"), LOG_FORMAT_TEXT);
    cr_assert_eq(log_format_parse("json"), LOG_FORMAT_JSON);
    cr_assert_eq(log_format_parse("JSON"), -1);
    cr_assert_eq(log_format_parse(""), -1);
    cr_assert_str_eq(log_format_name(LOG_FORMAT_JSON), "json");
    cr_assert_str_eq(log_format_name(LOG_FORMAT_TEXT), "text");
}
