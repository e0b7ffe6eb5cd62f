/*
 * log.c - see log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "treaty.h"

/* A message is cut at this many bytes; its escaped form may be up to 6
 * times longer (\u00XX). */
#define LOG_MSG_MAX 2048
#define LOG_LINE_MAX (LOG_MSG_MAX * 6 + 256)

static _Atomic int current = LOG_LEVEL_INFO;
static _Atomic int format = LOG_FORMAT_TEXT;
static log_sink_fn sink;
static void *sink_arg;
static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
static const char *const lower[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, lower[i]) == 0)
            return i;
    return -1;
}

void log_set_level(enum log_level l)
{
    atomic_store_explicit(&current, (int)l, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&current, memory_order_relaxed);
}

const char *log_level_name(enum log_level l)
{
    return (unsigned)l < sizeof names / sizeof names[0] ? names[l] : "?";
}

int log_format_parse(const char *s)
{
    for (int i = 0; i < 2; i++)
        if (strcmp(s, format_names[i]) == 0)
            return i;
    return -1;
}

const char *log_format_name(enum log_format f)
{
    return (unsigned)f < sizeof format_names / sizeof format_names[0] ? format_names[f] : "?";
}

void log_set_format(enum log_format f)
{
    atomic_store_explicit(&format, (int)f, memory_order_relaxed);
}

enum log_format log_get_format(void)
{
    return (enum log_format)atomic_load_explicit(&format, memory_order_relaxed);
}

void log_set_sink(log_sink_fn fn, void *arg)
{
    sink = fn;
    sink_arg = arg;
}

/* ------------------------------------------------------------ escaping */

/* The length of the well-formed UTF-8 character (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF) at s[0..len), or 0. */
static size_t utf8_char_len(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

size_t log_json_escape(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, i = 0;
    if (cap == 0)
        return 0;
    while (i < len) {
        char esc[8];
        const char *piece = esc;
        size_t plen, used = 1;
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, plen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            const char *short_esc = c == '\b'   ? "\\b"
                                    : c == '\f' ? "\\f"
                                    : c == '\n' ? "\\n"
                                    : c == '\r' ? "\\r"
                                    : c == '\t' ? "\\t"
                                                : NULL;
            if (short_esc != NULL) {
                piece = short_esc, plen = 2;
            } else {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4], esc[5] = hex[c & 15], plen = 6;
            }
        } else if (c < 0x80) {
            piece = (const char *)p + i, plen = 1;
        } else {
            used = utf8_char_len(p + i, len - i);
            if (used == 0) {
                piece = "\\ufffd", plen = 6, used = 1;
            } else {
                piece = (const char *)p + i, plen = used;
            }
        }
        if (o + plen >= cap)
            break;
        memcpy(out + o, piece, plen);
        o += plen;
        i += used;
    }
    out[o] = '\0';
    return o;
}

/* Text format: s with control characters as \n, \r, \t, \xNN into out
 * (cap > 0), cut before a piece that does not fit. Returns the bytes written. */
static size_t text_escape(char *out, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char piece[4];
        size_t plen = 1;
        piece[0] = (char)c;
        if (c == '\n' || c == '\r' || c == '\t') {
            piece[0] = '\\', piece[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't', plen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            piece[0] = '\\', piece[1] = 'x', piece[2] = hex[c >> 4], piece[3] = hex[c & 15], plen = 4;
        }
        if (o + plen >= cap)
            break;
        memcpy(out + o, piece, plen);
        o += plen;
    }
    out[o] = '\0';
    return o;
}

/* ------------------------------------------------------------ lines */

__attribute__((format(printf, 3, 0))) static void emit(enum log_level l, const uint8_t *txid, const char *fmt,
                                                       va_list ap)
{
    char msg[LOG_MSG_MAX];
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    size_t mlen = m < 0 ? 0 : (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
    msg[mlen] = '\0';
    char id[TREATY_TXID_STRLEN] = "";
    if (txid != NULL)
        treaty_txid_format((const treaty_txid_t *)txid, id);

    if (sink != NULL) {
        if (txid == NULL) {
            sink(sink_arg, l, msg);
        } else {
            char with_id[LOG_MSG_MAX + 64];
            snprintf(with_id, sizeof with_id, "%s txid=%s", msg, id);
            sink(sink_arg, l, with_id);
        }
        return;
    }

    char ts[40];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000L);

    /* Room is kept for the tail (txid, closing quote and brace). */
    char line[LOG_LINE_MAX];
    const size_t tail = 64;
    if (log_get_format() == LOG_FORMAT_JSON) {
        n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                             (unsigned)l < 4 ? lower[l] : "?");
        n += log_json_escape(line + n, sizeof line - n - tail, msg, mlen);
        if (txid != NULL)
            n += (size_t)snprintf(line + n, sizeof line - n, "\",\"txid\":\"%s", id);
        snprintf(line + n, sizeof line - n, "\"}");
    } else {
        n = (size_t)snprintf(line, sizeof line, "%s %-5s ", ts, log_level_name(l));
        n += text_escape(line + n, sizeof line - n - tail, msg, mlen);
        if (txid != NULL)
            snprintf(line + n, sizeof line - n, " txid=%s", id);
    }
    fprintf(stderr, "%s\n", line);
}

void log_msg(enum log_level l, const char *fmt, ...)
{
    if ((int)l > atomic_load_explicit(&current, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(l, NULL, fmt, ap);
    va_end(ap);
}

void log_txn_msg(enum log_level l, const uint8_t *txid, const char *fmt, ...)
{
    if ((int)l > atomic_load_explicit(&current, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    emit(l, txid, fmt, ap);
    va_end(ap);
}
