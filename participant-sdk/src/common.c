/*
 * common.c - errors, txids and status names shared by every part of libtreaty.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "treaty.h"

const char *treaty_strerror(int err)
{
    switch (err) {
#define TREATY_X_MSG(name, value, msg)                                                                                 \
    case value:                                                                                                        \
        return msg;
        TREATY_ERRNO_MAP(TREATY_X_MSG)
#undef TREATY_X_MSG
    case 0:
        return "success";
    default:
        return "unknown error";
    }
}

const char *treaty_err_name(int err)
{
    switch (err) {
#define TREATY_X_NAME(name, value, msg)                                                                                \
    case value:                                                                                                        \
        return "TREATY_" #name;
        TREATY_ERRNO_MAP(TREATY_X_NAME)
#undef TREATY_X_NAME
    case 0:
        return "TREATY_OK";
    default:
        return "TREATY_E?";
    }
}

const char *treaty_status_name(enum treaty_status s)
{
    switch (s) {
    case TREATY_STATUS_NONE:
        return "none";
    case TREATY_STATUS_COMMITTED:
        return "committed";
    case TREATY_STATUS_ABORTED:
        return "aborted";
    case TREATY_STATUS_PENDING:
        return "pending";
    case TREATY_STATUS_UNKNOWN:
        return "unknown";
    case TREATY_STATUS_COMPLETED:
        return "completed";
    case TREATY_STATUS_COMPENSATED:
        return "compensated";
    case TREATY_STATUS_STUCK:
        return "stuck";
    }
    return "?";
}

static int fill_random(uint8_t *p, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(p + got, len - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return TREATY_EIO;
        }
        got += (size_t)n;
    }
    return 0;
}

/* UUIDv7 (RFC 9562): 48 bits of Unix time in milliseconds, big-endian, then
 * the version, 74 random bits and the variant. */
int treaty_txid_generate(treaty_txid_t *out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return TREATY_EIO;
    int rc = fill_random(out->b + 6, sizeof out->b - 6);
    if (rc < 0)
        return rc;
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    for (int i = 0; i < 6; i++)
        out->b[i] = (uint8_t)(ms >> (40 - 8 * i));
    out->b[6] = (uint8_t)((out->b[6] & 0x0f) | 0x70); /* version 7 */
    out->b[8] = (uint8_t)((out->b[8] & 0x3f) | 0x80); /* RFC 9562 variant */
    return 0;
}

long long treaty_txid_time_ms(const treaty_txid_t *id)
{
    if (id == NULL || (id->b[6] & 0xf0) != 0x70 || (id->b[8] & 0xc0) != 0x80)
        return -1;
    uint64_t ms = 0;
    for (int i = 0; i < 6; i++)
        ms = ms << 8 | id->b[i];
    return (long long)ms;
}

char *treaty_txid_format(const treaty_txid_t *id, char *buf)
{
    static const char hex[] = "0123456789abcdef";
    char *p = buf;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[id->b[i] >> 4];
        *p++ = hex[id->b[i] & 15];
    }
    *p = '\0';
    return buf;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int treaty_txid_parse(const char *s, treaty_txid_t *out)
{
    if (s == NULL || out == NULL || strlen(s) != 36)
        return TREATY_EINVAL;
    int j = 0;
    for (int i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return TREATY_EINVAL;
            i++;
            continue;
        }
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return TREATY_EINVAL;
        out->b[j++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return 0;
}
