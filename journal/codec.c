/*
 * codec.c - the journal's row codec (journal_int.h): a record as one line of
 * PostgreSQL COPY text, a text[] literal parsed back, txids as UUID text,
 * kinds as the kind column's text. No I/O, no shared state: any thread.
 */
#include "journal_priv.h"

#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "treaty.h"

static void put_copy_char(struct journal_buf *b, char c)
{
    switch (c) {
    case '\\':
        buf_put(b, "\\\\", 2);
        break;
    case '\t':
        buf_put(b, "\\t", 2);
        break;
    case '\n':
        buf_put(b, "\\n", 2);
        break;
    case '\r':
        buf_put(b, "\\r", 2);
        break;
    default:
        buf_putc(b, c);
        break;
    }
}

/* Length of the well-formed UTF-8 sequence at p (RFC 3629), or 0. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return (p[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return p[1] >= lo && p[1] <= hi && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/* Appends s made storable ('?' for what the database cannot hold) and
 * escaped for COPY; in_array also escapes for a quoted array element. */
static void put_text(struct journal_buf *b, const char *s, bool ascii_only, bool in_array)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = ascii_only ? (*p < 0x80) : utf8_len(p);
        if (n == 0) {
            buf_putc(b, '?');
            p++;
        } else if (n == 1) {
            char c = (char)*p++;
            if (in_array && (c == '"' || c == '\\'))
                put_copy_char(b, '\\');
            put_copy_char(b, c);
        } else {
            buf_put(b, (const char *)p, n);
            p += n;
        }
    }
}

const char *journal_kind_name(enum journal_kind k)
{
    switch (k) {
    case JOURNAL_COMMIT:
        return "commit";
    case JOURNAL_ABORT:
        return "abort";
    case JOURNAL_END:
        return "end";
    case JOURNAL_SAGA:
        return "saga";
    case JOURNAL_STEP:
        return "step";
    case JOURNAL_TURN:
        return "turn";
    case JOURNAL_AUDIT:
        return "audit";
    }
    return NULL;
}

int journal_kind_parse(const char *s, enum journal_kind *out)
{
    static const enum journal_kind kinds[] = {JOURNAL_COMMIT, JOURNAL_ABORT, JOURNAL_END,  JOURNAL_SAGA,
                                              JOURNAL_STEP,   JOURNAL_TURN,  JOURNAL_AUDIT};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (strcmp(s, journal_kind_name(kinds[i])) == 0) {
            *out = kinds[i];
            return 0;
        }
    }
    return TREATY_EPROTO;
}

static void put_int_or_null(struct journal_buf *b, bool present, int v)
{
    if (present) {
        char num[16];
        int n = snprintf(num, sizeof num, "%d", v);
        buf_put(b, num, (size_t)n);
    } else {
        buf_puts(b, "\\N");
    }
}

/* bytea in hex form, "\\x" + two lowercase digits a byte: the COPY text of
 * the literal \x0a1b..., whose backslash COPY itself wants escaped. Nothing
 * else in the hex form needs escaping. */
static void put_bytea(struct journal_buf *b, const void *data, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = data;
    if (len > (SIZE_MAX - 3) / 2)
        util_out_of_memory();
    buf_reserve(b, 3 + 2 * len);
    char *w = b->data + b->len;
    *w++ = '\\';
    *w++ = '\\';
    *w++ = 'x';
    for (size_t i = 0; i < len; i++) {
        *w++ = hex[p[i] >> 4];
        *w++ = hex[p[i] & 0xf];
    }
    b->len += 3 + 2 * len;
}

void journal_encode_row(struct journal_buf *b, const struct journal_rec *r, bool ascii_only)
{
    const char *kind = journal_kind_name(r->kind);
    if (!kind) {
        /* A programmer error: loud, even in release builds. */
        log_error("journal: append of a record of invalid kind %d", (int)r->kind);
        abort();
    }
    assert(r->nservices == 0 || r->services);

    char id[37];
    journal_txid_format(r->txid, id);
    buf_put(b, id, 36);
    buf_putc(b, '\t');
    buf_puts(b, kind);
    buf_putc(b, '\t');
    if (r->nservices == 0) {
        buf_puts(b, "\\N");
    } else {
        buf_putc(b, '{');
        for (unsigned i = 0; i < r->nservices; i++) {
            assert(r->services[i]);
            if (i > 0)
                buf_putc(b, ',');
            buf_putc(b, '"');
            put_text(b, r->services[i] ? r->services[i] : "", ascii_only, true);
            buf_putc(b, '"');
        }
        buf_putc(b, '}');
    }
    buf_putc(b, '\t');
    /* Callers zero-initialise records: failed_branch and step mean something
     * only for the kinds that carry them. */
    put_int_or_null(b, (r->kind == JOURNAL_ABORT || r->kind == JOURNAL_TURN) && r->failed_branch >= 0,
                    r->failed_branch);
    buf_putc(b, '\t');
    if (r->detail)
        put_text(b, r->detail, ascii_only, false);
    else
        buf_puts(b, "\\N");
    buf_putc(b, '\t');
    put_int_or_null(b, (r->kind == JOURNAL_STEP || r->kind == JOURNAL_AUDIT) && r->step >= 0, r->step);
    buf_putc(b, '\t');
    assert(r->data || r->data_len == 0);
    if (r->data)
        put_bytea(b, r->data, r->data_len);
    else
        buf_puts(b, "\\N");
    buf_putc(b, '\n');
}

void journal_strv_free(struct journal_strv *sv)
{
    free(sv->v);
    sv->v = NULL;
    sv->n = sv->cap = 0;
}

static void strv_push(struct journal_strv *sv, const char *s)
{
    if (sv->n == sv->cap) {
        if (sv->cap > UINT_MAX / 2)
            util_out_of_memory();
        sv->cap = sv->cap ? sv->cap * 2 : 8;
        sv->v = util_xrealloc(sv->v, sv->cap * sizeof sv->v[0]);
    }
    sv->v[sv->n++] = s;
}

int journal_parse_text_array(char *s, struct journal_strv *out)
{
    out->n = 0;
    if (s[0] != '{')
        return TREATY_EPROTO;
    /* Elements are copied down in place: w always stays before p. */
    char *p = s + 1, *w = s;
    if (p[0] == '}')
        return p[1] == '\0' ? 0 : TREATY_EPROTO;
    for (;;) {
        char *start = w;
        if (*p == '"') {
            p++;
            for (;;) {
                if (*p == '\0')
                    return TREATY_EPROTO;
                if (*p == '"') {
                    p++;
                    break;
                }
                if (*p == '\\' && *++p == '\0')
                    return TREATY_EPROTO;
                *w++ = *p++;
            }
        } else {
            while (*p && *p != ',' && *p != '}' && *p != '"' && *p != '{') {
                if (*p == '\\' && *++p == '\0')
                    return TREATY_EPROTO;
                *w++ = *p++;
            }
            if (w == start)
                return TREATY_EPROTO;
            if (w - start == 4 && strncasecmp(start, "NULL", 4) == 0)
                w = start;
        }
        *w++ = '\0';
        strv_push(out, start);
        if (*p == ',') {
            p++;
            continue;
        }
        if (p[0] == '}' && p[1] == '\0')
            return 0;
        return TREATY_EPROTO;
    }
}
