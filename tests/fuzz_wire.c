/*
 * fuzz_wire.c - libFuzzer target for the wire decoder (make fuzz).
 *
 * Byte 0 of an input holds flags. With bit 1 clear, the input is turned into
 * a header and payload frames given apart (wire_decode):
 *
 *   byte  0     flags: bit 0 = empty frames have data == NULL (else a 1-byte
 *               allocation holding nothing)
 *   bytes 1..2  number of payload frames (u16, big-endian) modulo
 *               WIRE_MAX_FRAMES + 4, so that "too many" is reachable
 *   then        the header and each payload frame as a u16 big-endian
 *               length and that many bytes (fewer if the input ends first;
 *               frames past the end of the input are empty)
 *
 * Every frame is copied into its own allocation of exactly its length, so
 * AddressSanitizer catches a read one byte past any of them. The message is
 * decoded with several max_payload values; the results must be consistent
 * (a message accepted under a bound is accepted under every larger one), and
 * a decoded message must re-encode to the same header and expose exactly the
 * frames given, every byte of which is then read and run through
 * wire_copy_text. The same header and frames packed as they travel (one
 * allocation of exactly their size) must then give wire_unpack the same
 * results under every bound.
 *
 * With bit 1 set, bytes 1.. of the input are one message as it travels,
 * copied into an allocation of exactly its size and given to wire_unpack
 * under the same bounds: the results must be consistent as above, and a
 * decoded message must have frames inside the buffer that wire_pack lays out
 * into exactly the same bytes. When those bytes are a bundle, its entries
 * are read with wire_bundle_next (each inside the buffer, after the one
 * before, until the end) and each is checked the same way.
 *
 * Any violation aborts, so the fuzzer reports it.
 *
 * Built with -DFUZZ_WIRE_SEEDS (and without -fsanitize=fuzzer) it is instead
 * a program that writes seed inputs - valid messages of every type and a few
 * near misses - into the directory given as its argument:
 *   cc -DFUZZ_WIRE_SEEDS -Iparticipant-sdk/include -Iparticipant-sdk/src tests/fuzz_wire.c \
 *      participant-sdk/src/wire.c participant-sdk/src/common.c -lzmq -o gen && ./gen tests/fuzz-corpus/wire
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "treaty.h"
#include "wire.h"

#define FUZZ_FRAMES_MOD (WIRE_MAX_FRAMES + 4)

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_wire: check failed at line %d: %s\n", __LINE__, #cond);                              \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

#ifndef FUZZ_WIRE_SEEDS

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const size_t max_payloads[] = {0, 1, 4, 27, 64, 256, 4096, SIZE_MAX};
#define NMAX (sizeof max_payloads / sizeof max_payloads[0])

static volatile unsigned sink;

/* Takes the next length-prefixed chunk from *p; returns a fresh allocation of
 * exactly its length (NULL for an empty chunk when null_empty). */
static uint8_t *take_chunk(const uint8_t **p, size_t *left, bool null_empty, size_t *len)
{
    size_t want = 0;
    if (*left >= 2) {
        want = ((size_t)(*p)[0] << 8) | (*p)[1];
        *p += 2;
        *left -= 2;
    } else {
        *p += *left;
        *left = 0;
    }
    size_t n = want < *left ? want : *left;
    *len = n;
    if (n == 0 && null_empty)
        return NULL;
    uint8_t *b = malloc(n ? n : 1);
    CHECK(b != NULL);
    if (n)
        memcpy(b, *p, n);
    *p += n;
    *left -= n;
    return b;
}

static void check_text(const struct wire_frame *f)
{
    static const size_t caps[] = {0, 1, 2, 16, TREATY_REASON_MAX};
    char buf[TREATY_REASON_MAX + 1];
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        memset(buf, 'Z', sizeof buf);
        wire_copy_text(f, buf, caps[i]);
        if (caps[i] == 0) {
            CHECK(buf[0] == 'Z');
            continue;
        }
        size_t n = strlen(buf);
        CHECK(n < caps[i]);
        CHECK(n == (f->len < caps[i] - 1 ? f->len : caps[i] - 1));
        CHECK(buf[caps[i]] == 'Z'); /* nothing written past cap */
        for (size_t j = 0; j < n; j++) {
            unsigned char c = (unsigned char)buf[j];
            CHECK(c >= 0x20 && c != 0x7f);
            CHECK(c == f->data[j] || c == '?');
        }
    }
}

static void check_decoded(const struct wire_msg *m, const struct wire_frame *hdr, const struct wire_frame *frames,
                          size_t n, size_t max_payload)
{
    uint8_t again[WIRE_HDR_LEN];
    wire_encode_hdr(&m->hdr, again);
    CHECK(memcmp(again, hdr->data, WIRE_HDR_LEN) == 0);
    CHECK(m->hdr.type >= 1 && m->hdr.type <= WIRE_TYPE_MAX_);
    CHECK(strcmp(wire_type_name(m->hdr.type), "?") != 0);
    CHECK(m->nframes == n && n <= WIRE_MAX_FRAMES);

    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) {
        const struct wire_frame *f = &m->frames[i];
        CHECK(f->data == frames[i].data && f->len == frames[i].len);
        CHECK(f->len <= max_payload);
        for (size_t j = 0; j < f->len; j++)
            sum += f->data[j];
        check_text(f);
    }
    sink += sum;

    /* what the table in wire.h promises for each type */
    uint32_t u;
    switch (m->hdr.type) {
    case WIRE_HELLO:
        CHECK(n == 2 && wire_name_ok(m->frames[0].data, m->frames[0].len) &&
              wire_name_ok(m->frames[1].data, m->frames[1].len));
        break;
    case WIRE_WELCOME:
        CHECK(n == 1 && wire_get_u32(&m->frames[0], &u));
        break;
    case WIRE_SUBMIT:
        CHECK(n >= 3 && n % 2 == 1 && (n - 1) / 2 <= WIRE_MAX_BRANCHES && wire_get_u32(&m->frames[0], &u));
        for (size_t i = 1; i < n; i += 2)
            CHECK(wire_name_ok(m->frames[i].data, m->frames[i].len));
        break;
    case WIRE_VOTE:
        CHECK(n == 1 && (m->hdr.code == TREATY_VOTE_YES || m->hdr.code == TREATY_VOTE_NO));
        break;
    case WIRE_ACK:
        CHECK(n == 0 && (m->hdr.code == TREATY_STATUS_COMMITTED || m->hdr.code == TREATY_STATUS_ABORTED));
        break;
    case WIRE_OUTCOME:
        CHECK(n == 1 && m->hdr.code >= TREATY_STATUS_COMMITTED && m->hdr.code <= TREATY_STATUS_STUCK);
        break;
    case WIRE_SAGA: {
        struct wire_policy pol;
        CHECK(n >= 1 + WIRE_SAGA_FRAMES_PER_STEP && (n - 1) % WIRE_SAGA_FRAMES_PER_STEP == 0 &&
              (n - 1) / WIRE_SAGA_FRAMES_PER_STEP <= WIRE_MAX_STEPS && wire_get_u32(&m->frames[0], &u));
        for (size_t i = 1; i < n; i += WIRE_SAGA_FRAMES_PER_STEP) {
            CHECK(wire_name_ok(m->frames[i].data, m->frames[i].len));
            CHECK(wire_name_ok(m->frames[i + 1].data, m->frames[i + 1].len));
            CHECK(wire_name_ok(m->frames[i + 3].data, m->frames[i + 3].len));
            CHECK(wire_decode_policy(&m->frames[i + 5], &pol));
            /* the policy re-encodes to the same bytes */
            uint8_t pb[WIRE_POLICY_LEN];
            wire_encode_policy(&pol, pb);
            CHECK(memcmp(pb, m->frames[i + 5].data, WIRE_POLICY_LEN) == 0);
        }
        break;
    }
    case WIRE_STEP:
        CHECK(n == 2 && (m->hdr.code == WIRE_STEP_ACTION || m->hdr.code == WIRE_STEP_COMPENSATION) &&
              wire_name_ok(m->frames[0].data, m->frames[0].len));
        break;
    case WIRE_RESULT:
        CHECK(n == 1 &&
              (WIRE_RESULT_KIND(m->hdr.code) == WIRE_STEP_ACTION ||
               WIRE_RESULT_KIND(m->hdr.code) == WIRE_STEP_COMPENSATION) &&
              WIRE_RESULT_VALUE(m->hdr.code) >= WIRE_RESULT_OK &&
              WIRE_RESULT_VALUE(m->hdr.code) <= WIRE_RESULT_TRANSIENT);
        break;
    case WIRE_QUERY:
    case WIRE_COMMIT:
    case WIRE_ABORT:
    case WIRE_INQUIRE:
        CHECK(n == 0);
        break;
    default: /* ERROR, PREPARE */
        CHECK(n == 1);
        break;
    }
}

/* A larger bound never turns success into failure, and only the bound
 * separates the results. */
static void check_bounds(const int *rcs)
{
    for (size_t k = 0; k < NMAX; k++)
        CHECK(rcs[k] == 0 || rcs[k] == TREATY_EPROTO || rcs[k] == TREATY_EVERSION || rcs[k] == TREATY_ETOOBIG);
    for (size_t k = 1; k < NMAX; k++) {
        if (rcs[k - 1] == 0)
            CHECK(rcs[k] == 0);
        if (rcs[k - 1] != rcs[k])
            CHECK(rcs[k - 1] == TREATY_ETOOBIG);
    }
}

/* The header and frames wire_decode gave results rcs for, packed as they
 * travel: wire_unpack must give the same results and the same message. */
static void check_packed(const struct wire_frame *hdr, const struct wire_frame *frames, size_t n, const int *rcs)
{
    static struct wire_msg msg;
    if (hdr->len != WIRE_HDR_LEN)
        return; /* a header of another length does not pack into the same bytes */
    size_t len = WIRE_HDR_LEN;
    for (size_t i = 0; i < n; i++)
        len += 4 + frames[i].len;
    uint8_t *b = malloc(len), *p = b + WIRE_HDR_LEN;
    CHECK(b != NULL);
    memcpy(b, hdr->data, WIRE_HDR_LEN);
    for (size_t i = 0; i < n; i++) {
        wire_put_u32(p, (uint32_t)frames[i].len);
        if (frames[i].len)
            memcpy(p + 4, frames[i].data, frames[i].len);
        p += 4 + frames[i].len;
    }
    for (size_t k = 0; k < NMAX; k++) {
        memset(&msg, 0xa5, sizeof msg);
        int rc = wire_unpack(b, len, max_payloads[k], &msg);
        CHECK(rc == rcs[k]);
        if (rc != 0)
            continue;
        CHECK(msg.nframes == n);
        const uint8_t *q = b + WIRE_HDR_LEN;
        for (size_t i = 0; i < n; i++) {
            CHECK(msg.frames[i].data == q + 4 && msg.frames[i].len == frames[i].len);
            q += 4 + frames[i].len;
        }
        check_decoded(&msg, hdr, msg.frames, n, max_payloads[k]);
    }
    free(b);
}

static void unpack_checked(const uint8_t *b, size_t size);

/* A bundle's entries, each one message checked as unpack_checked does. */
static void fuzz_bundle(const uint8_t *b, size_t size)
{
    size_t off = WIRE_BUNDLE_HDR_LEN, entries = 0;
    for (;;) {
        const uint8_t *m = NULL;
        size_t mlen = 0, before = off;
        int rc = wire_bundle_next(b, size, &off, &m, &mlen);
        CHECK(rc == 0 || rc == TREATY_EPROTO || rc == TREATY_EVERSION);
        if (rc != 0) {
            CHECK(off == size);
            CHECK(rc != TREATY_EVERSION || (entries == 0 && size >= WIRE_BUNDLE_HDR_LEN && b[2] != WIRE_VERSION));
            return;
        }
        CHECK(m == b + before + 4 && mlen <= size && m + mlen == b + off && off <= size);
        entries++;
        uint8_t *copy = malloc(mlen ? mlen : 1); /* exact size: a read past the entry is caught */
        CHECK(copy != NULL);
        if (mlen)
            memcpy(copy, m, mlen);
        unpack_checked(copy, mlen);
        free(copy);
        if (off == size)
            return;
    }
}

/* Bytes as they travel, given to wire_unpack. */
static void fuzz_packed(const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(size ? size : 1);
    CHECK(b != NULL);
    if (size)
        memcpy(b, data, size);
    if (wire_is_bundle(b, size))
        fuzz_bundle(b, size);
    else
        unpack_checked(b, size);
    free(b);
}

/* One message's bytes b[size] (an allocation of exactly that size) under
 * every bound. */
static void unpack_checked(const uint8_t *b, size_t size)
{
    static struct wire_msg msg;
    int rcs[NMAX];
    for (size_t k = 0; k < NMAX; k++) {
        memset(&msg, 0xa5, sizeof msg);
        int rc = wire_unpack(b, size, max_payloads[k], &msg);
        rcs[k] = rc;
        if (rc == TREATY_EVERSION)
            CHECK(size >= WIRE_HDR_LEN && b[0] == 'T' && b[1] == 'Y' && b[2] != WIRE_VERSION);
        if (rc != 0)
            continue;
        struct wire_frame hdr = {b, WIRE_HDR_LEN};
        for (size_t i = 0; i < msg.nframes; i++)
            CHECK(msg.frames[i].data >= b + WIRE_HDR_LEN && msg.frames[i].len <= size &&
                  msg.frames[i].data + msg.frames[i].len <= b + size);
        check_decoded(&msg, &hdr, msg.frames, msg.nframes, max_payloads[k]);
        /* laid out again, the same bytes */
        CHECK(wire_packed_len(msg.frames, msg.nframes) == size);
        uint8_t *again = malloc(size);
        CHECK(again != NULL);
        wire_pack(&msg.hdr, msg.frames, msg.nframes, again);
        CHECK(memcmp(again, b, size) == 0);
        free(again);
    }
    check_bounds(rcs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct wire_frame frames[FUZZ_FRAMES_MOD];
    static struct wire_msg msg;
    if (size >= 1 && (data[0] & 2) != 0) {
        fuzz_packed(data + 1, size - 1);
        return 0;
    }
    if (size < 3)
        return 0;
    bool null_empty = (data[0] & 1) != 0;
    size_t n = (((size_t)data[1] << 8) | data[2]) % FUZZ_FRAMES_MOD;
    const uint8_t *p = data + 3;
    size_t left = size - 3;

    size_t hlen;
    uint8_t *hbuf = take_chunk(&p, &left, null_empty, &hlen);
    struct wire_frame hdr = {hbuf, hlen};
    for (size_t i = 0; i < n; i++) {
        size_t len;
        uint8_t *b = take_chunk(&p, &left, null_empty, &len);
        frames[i].data = b;
        frames[i].len = len;
    }

    int rcs[NMAX];
    for (size_t k = 0; k < NMAX; k++) {
        memset(&msg, 0xa5, sizeof msg);
        int rc = wire_decode(&hdr, frames, n, max_payloads[k], &msg);
        if (rc == 0)
            check_decoded(&msg, &hdr, frames, n, max_payloads[k]);
        if (rc == TREATY_EVERSION)
            CHECK(hlen == WIRE_HDR_LEN && hbuf[0] == 'T' && hbuf[1] == 'Y' && hbuf[2] != WIRE_VERSION);
        rcs[k] = rc;
    }
    check_bounds(rcs);
    check_packed(&hdr, frames, n, rcs);

    for (size_t i = 0; i < n; i++)
        free((void *)frames[i].data);
    free(hbuf);
    return 0;
}

#else /* FUZZ_WIRE_SEEDS: the seed generator */

struct seed {
    uint8_t buf[8192];
    size_t len;
    /* the message make() laid out, for save() to write it packed as well;
     * NULL once the bytes were changed by hand */
    const struct wire_hdr *h;
    const struct wire_frame *f;
    size_t n;
};

static void put_chunk(struct seed *s, const void *p, size_t n)
{
    CHECK(s->len + 2 + n <= sizeof s->buf);
    s->buf[s->len++] = (uint8_t)(n >> 8);
    s->buf[s->len++] = (uint8_t)n;
    if (n)
        memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void make(struct seed *s, uint8_t flags, const struct wire_hdr *h, const struct wire_frame *f, size_t n)
{
    s->h = h;
    s->f = f;
    s->n = n;
    s->len = 0;
    s->buf[s->len++] = flags;
    s->buf[s->len++] = (uint8_t)(n >> 8);
    s->buf[s->len++] = (uint8_t)n;
    uint8_t hb[WIRE_HDR_LEN];
    wire_encode_hdr(h, hb);
    put_chunk(s, hb, sizeof hb);
    for (size_t i = 0; i < n; i++)
        put_chunk(s, f[i].data, f[i].len);
}

static void write_seed(const char *dir, const char *name, const uint8_t *b, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/seed-%s", dir, name);
    FILE *fp = fopen(path, "wb");
    CHECK(fp != NULL);
    CHECK(fwrite(b, 1, len, fp) == len);
    fclose(fp);
}

/* Writes s as seed-NAME and, when it is make()'s message unchanged, the same
 * message as it travels (flags bit 1) as seed-NAME-packed. */
static void save(const char *dir, const char *name, const struct seed *s)
{
    write_seed(dir, name, s->buf, s->len);
    if (s->h == NULL)
        return;
    static uint8_t packed[8192];
    size_t len = 1 + wire_packed_len(s->f, s->n);
    CHECK(len <= sizeof packed);
    packed[0] = 2;
    wire_pack(s->h, s->f, s->n, packed + 1);
    char pname[256];
    snprintf(pname, sizeof pname, "%s-packed", name);
    write_seed(dir, pname, packed, len);
}

static struct wire_hdr hdr(int type, uint16_t code)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = (uint8_t)type;
    if (type != WIRE_HELLO && type != WIRE_WELCOME) {
        treaty_txid_t id;
        CHECK(treaty_txid_generate(&id) == 0);
        memcpy(h.txid, id.b, 16);
    }
    h.branch = 1;
    h.attempt = 0;
    h.code = code;
    return h;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    static struct seed s;
    uint8_t u[4];
    struct wire_hdr h;

    h = hdr(WIRE_HELLO, 0);
    struct wire_frame hello[] = {wire_str("bank"), wire_str("bank-1")};
    make(&s, 0, &h, hello, 2);
    save(dir, "hello", &s);

    h = hdr(WIRE_WELCOME, 0);
    wire_put_u32(u, 1000);
    struct wire_frame welcome[] = {{u, 4}};
    make(&s, 0, &h, welcome, 1);
    save(dir, "welcome", &s);

    h = hdr(WIRE_SUBMIT, 0);
    wire_put_u32(u, 5000);
    struct wire_frame submit[] = {{u, 4},           wire_str("bank"),          wire_str("debit:alice:10"),
                                  wire_str("shop"), wire_str("reserve:sku-1"), wire_str("mail.v2"),
                                  {NULL, 0}};
    make(&s, 0, &h, submit, 7);
    save(dir, "submit", &s);
    make(&s, 1, &h, submit, 3);
    save(dir, "submit-1", &s);

    h = hdr(WIRE_QUERY, 0);
    make(&s, 0, &h, NULL, 0);
    save(dir, "query", &s);

    for (uint16_t c = TREATY_STATUS_COMMITTED; c <= TREATY_STATUS_STUCK; c++) {
        char name[32];
        h = hdr(WIRE_OUTCOME, c);
        struct wire_frame reason[] = {wire_str(c == TREATY_STATUS_ABORTED ? "branch 1 voted NO\n" : "")};
        make(&s, c & 1, &h, reason, 1);
        snprintf(name, sizeof name, "outcome-%u", c);
        save(dir, name, &s);
    }

    h = hdr(WIRE_ERROR, (uint16_t)-TREATY_EBUSY);
    struct wire_frame err[] = {wire_str("too many transactions in flight")};
    make(&s, 0, &h, err, 1);
    save(dir, "error", &s);

    h = hdr(WIRE_PREPARE, 0);
    struct wire_frame prep[] = {wire_str("{\"account\":\"alice\",\"amount\":10}")};
    make(&s, 0, &h, prep, 1);
    save(dir, "prepare", &s);

    h = hdr(WIRE_VOTE, TREATY_VOTE_YES);
    struct wire_frame empty[] = {{NULL, 0}};
    make(&s, 1, &h, empty, 1);
    save(dir, "vote-yes", &s);
    h = hdr(WIRE_VOTE, TREATY_VOTE_NO);
    struct wire_frame no[] = {wire_str("insufficient funds")};
    make(&s, 0, &h, no, 1);
    save(dir, "vote-no", &s);

    h = hdr(WIRE_COMMIT, 0);
    h.attempt = 3;
    make(&s, 0, &h, NULL, 0);
    save(dir, "commit", &s);
    h = hdr(WIRE_ABORT, 0);
    make(&s, 0, &h, NULL, 0);
    save(dir, "abort", &s);
    h = hdr(WIRE_ACK, TREATY_STATUS_COMMITTED);
    make(&s, 0, &h, NULL, 0);
    save(dir, "ack-committed", &s);
    h = hdr(WIRE_ACK, TREATY_STATUS_ABORTED);
    make(&s, 0, &h, NULL, 0);
    save(dir, "ack-aborted", &s);
    h = hdr(WIRE_INQUIRE, 0);
    make(&s, 0, &h, NULL, 0);
    save(dir, "inquire", &s);

    h = hdr(WIRE_SAGA, 0);
    wire_put_u32(u, 30000);
    uint8_t pol0[WIRE_POLICY_LEN], pol1[WIRE_POLICY_LEN];
    struct wire_policy p0 = {0, 3, 100, 5000, 5000}, p1 = {1, 7, 250, 900, 2000};
    wire_encode_policy(&p0, pol0);
    wire_encode_policy(&p1, pol1);
    struct wire_frame saga[] = {{u, 4},
                                wire_str("bank"),
                                wire_str("debit"),
                                wire_str("alice:10"),
                                wire_str("refund"),
                                wire_str("alice:10"),
                                {pol0, sizeof pol0},
                                wire_str("shop"),
                                wire_str("reserve"),
                                {NULL, 0},
                                wire_str("release"),
                                {NULL, 0},
                                {pol1, sizeof pol1}};
    make(&s, 0, &h, saga, 13);
    save(dir, "saga", &s);
    make(&s, 1, &h, saga, 7);
    save(dir, "saga-1", &s);

    h = hdr(WIRE_STEP, WIRE_STEP_ACTION);
    struct wire_frame step[] = {wire_str("debit"), wire_str("alice:10")};
    make(&s, 0, &h, step, 2);
    save(dir, "step-action", &s);
    h = hdr(WIRE_STEP, WIRE_STEP_COMPENSATION);
    make(&s, 1, &h, step, 2);
    save(dir, "step-compensation", &s);

    for (uint16_t kind = WIRE_STEP_ACTION; kind <= WIRE_STEP_COMPENSATION; kind++) {
        for (uint16_t r = WIRE_RESULT_OK; r <= WIRE_RESULT_TRANSIENT; r++) {
            char name[32];
            h = hdr(WIRE_RESULT, WIRE_RESULT(kind, r));
            struct wire_frame reason[] = {wire_str(r == WIRE_RESULT_OK ? "" : "insufficient funds")};
            make(&s, r & 1, &h, reason, 1);
            snprintf(name, sizeof name, "result-%u-%u", kind, r);
            save(dir, name, &s);
        }
    }

    /* near misses: other version, reserved bits, too many frames */
    h = hdr(WIRE_QUERY, 0);
    make(&s, 0, &h, NULL, 0);
    s.buf[3 + 2 + 2] = WIRE_VERSION - 1;
    s.h = NULL;
    save(dir, "version-other", &s);
    make(&s, 0, &h, NULL, 0);
    s.buf[3 + 2 + 27] = 1;
    s.h = NULL;
    save(dir, "reserved", &s);
    h = hdr(WIRE_PREPARE, 0);
    make(&s, 0, &h, NULL, 0);
    s.buf[1] = (uint8_t)((WIRE_MAX_FRAMES + 1) >> 8);
    s.buf[2] = (uint8_t)(WIRE_MAX_FRAMES + 1);
    s.h = NULL;
    save(dir, "too-many-frames", &s);
    /* and as they travel: another version, a frame length past the end,
     * bytes after the last frame */
    static uint8_t b[8192];
    size_t len = 1 + wire_packed_len(prep, 1);
    b[0] = 2;
    wire_pack(&h, prep, 1, b + 1);
    b[1 + 2] = WIRE_VERSION - 1;
    write_seed(dir, "packed-version-other", b, len);
    b[1 + 2] = WIRE_VERSION;
    write_seed(dir, "packed-cut", b, len - 1);
    b[len] = 0;
    write_seed(dir, "packed-trailing", b, len + 1);

    /* bundles: PREPARE, VOTE yes, COMMIT, ACK; then cut short, and with
     * another version */
    b[0] = 2;
    b[1] = 'T';
    b[2] = 'B';
    b[3] = WIRE_VERSION;
    b[4] = 0;
    len = 1 + WIRE_BUNDLE_HDR_LEN;
    const struct wire_hdr bh[] = {hdr(WIRE_PREPARE, 0), hdr(WIRE_VOTE, TREATY_VOTE_YES), hdr(WIRE_COMMIT, 0),
                                  hdr(WIRE_ACK, TREATY_STATUS_COMMITTED)};
    const struct wire_frame *bf[] = {prep, empty, NULL, NULL};
    const size_t bn[] = {1, 1, 0, 0};
    for (size_t i = 0; i < 4; i++) {
        size_t ml = wire_packed_len(bf[i], bn[i]);
        wire_put_u32(b + len, (uint32_t)ml);
        wire_pack(&bh[i], bf[i], bn[i], b + len + 4);
        len += 4 + ml;
    }
    write_seed(dir, "bundle", b, len);
    write_seed(dir, "bundle-cut", b, len - 3);
    b[3] = WIRE_VERSION + 1;
    write_seed(dir, "bundle-version-other", b, len);
    return 0;
}

#endif /* FUZZ_WIRE_SEEDS */
