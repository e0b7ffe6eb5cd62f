/*
 * test_wire.c - the wire codec (participant-sdk/src/wire.[ch]) and the shared
 * basics of common.c: errors, txids, status names.
 *
 * Two halves: pure-buffer tests of wire_decode and wire_unpack against the
 * message table in wire.h (every decode is done both ways, from the header
 * and frames apart and from their packed form, and the two must agree), and
 * round trips of every message type through real ZeroMQ
 * DEALER/ROUTER pairs (inproc:// and tcp://127.0.0.1) with wire_send and
 * wire_recv, including the routing id and what happens after a bad message.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "treaty.h"
#include "wire.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define MAXP ((size_t)65536)

static const uint8_t TXID[16] = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef,
                                 0x80, 0x01, 0x02, 0x03, 0xfe, 0xff, 0x00, 0x7f};

static struct wire_frame fr(const void *p, size_t n)
{
    struct wire_frame f = {(const uint8_t *)p, n};
    return f;
}

static struct wire_hdr mkhdr(int type, uint16_t code)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = (uint8_t)type;
    if (type != WIRE_HELLO && type != WIRE_WELCOME)
        memcpy(h.txid, TXID, 16);
    h.branch = 3;
    h.attempt = 7;
    h.code = code;
    return h;
}

/* Asserts that two decodings of one message (rc_a into a, rc_b into b)
 * agree: the same result, the same header, and when decoded the same frames. */
static void assert_same_decoding(int rc_a, const struct wire_msg *a, int rc_b, const struct wire_msg *b)
{
    cr_assert_eq(rc_a, rc_b, "decoded apart: %d, packed: %d", rc_a, rc_b);
    cr_assert(memcmp(&a->hdr, &b->hdr, sizeof a->hdr) == 0, "headers differ");
    if (rc_a != 0)
        return;
    cr_assert_eq(a->nframes, b->nframes);
    for (size_t i = 0; i < a->nframes; i++) {
        cr_assert_eq(a->frames[i].len, b->frames[i].len, "frame %zu", i);
        if (a->frames[i].len)
            cr_assert(memcmp(a->frames[i].data, b->frames[i].data, a->frames[i].len) == 0, "frame %zu", i);
    }
}

/* Packs raw header bytes hdr[hlen] and frames f[n] as wire_pack lays them
 * out; the caller frees the result. */
static uint8_t *pack_raw(const uint8_t *hdr, size_t hlen, const struct wire_frame *f, size_t n, size_t *len)
{
    *len = hlen;
    for (size_t i = 0; i < n; i++)
        *len += 4 + f[i].len;
    uint8_t *b = malloc(*len ? *len : 1), *p = b;
    cr_assert_not_null(b);
    if (hlen)
        memcpy(p, hdr, hlen);
    p += hlen;
    for (size_t i = 0; i < n; i++) {
        wire_put_u32(p, (uint32_t)f[i].len);
        if (f[i].len)
            memcpy(p + 4, f[i].data, f[i].len);
        p += 4 + f[i].len;
    }
    return b;
}

/* Decodes raw header bytes with frames f[n] both ways - wire_decode with
 * them apart, wire_unpack of their packed form - and checks that the two
 * agree. The result is wire_decode's; out points into f. */
static int decode_both(const uint8_t *hdr, size_t hlen, const struct wire_frame *f, size_t n, size_t max_payload,
                       struct wire_msg *out)
{
    static struct wire_msg packed;
    struct wire_frame hf = fr(hdr, hlen);
    int rc = wire_decode(&hf, f, n, max_payload, out);
    if (hdr == NULL || hlen != WIRE_HDR_LEN)
        return rc; /* a header of another size does not pack into the same bytes */
    for (size_t i = 0; i < n; i++)
        if (f[i].len > 0 && f[i].data == NULL)
            return rc; /* nor do bytes that are not there */
    size_t len;
    uint8_t *b = pack_raw(hdr, hlen, f, n, &len);
    assert_same_decoding(rc, out, wire_unpack(b, len, max_payload, &packed), &packed);
    free(b);
    return rc;
}

/* Encodes h and decodes it back with frames f[n] (both ways). */
static int decode(const struct wire_hdr *h, const struct wire_frame *f, size_t n, size_t max_payload,
                  struct wire_msg *out)
{
    uint8_t buf[WIRE_HDR_LEN];
    wire_encode_hdr(h, buf);
    return decode_both(buf, sizeof buf, f, n, max_payload, out);
}

/* Decodes a raw header buffer with no payload frames (QUERY-like), both as
 * a header and as a whole packed message of those bytes. */
static int decode_raw(const uint8_t *hdr, size_t len)
{
    struct wire_msg m, u;
    int rc = decode_both(hdr, len, NULL, 0, MAXP, &m);
    int urc = wire_unpack(hdr, len, MAXP, &u);
    cr_assert_eq(urc, rc, "%zu bytes: apart %d, packed %d", len, rc, urc);
    return rc;
}

/* ------------------------------------------------------------ sample messages */

static uint8_t u32_1000[4], u32_5000[4];
static uint8_t pol_a[WIRE_POLICY_LEN], pol_b[WIRE_POLICY_LEN];
static uint8_t binary[256];
static uint8_t bigpayload[4000];

struct sample {
    const char *label;
    struct wire_hdr h;
    size_t n;
    struct wire_frame f[16];
};

static size_t make_samples(struct sample *s)
{
    wire_put_u32(u32_1000, 1000);
    wire_put_u32(u32_5000, 5000);
    for (size_t i = 0; i < sizeof binary; i++)
        binary[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof bigpayload; i++)
        bigpayload[i] = (uint8_t)(i * 7);
    size_t k = 0;

    s[k] = (struct sample){"HELLO", mkhdr(WIRE_HELLO, 0), 2, {wire_str("bank"), wire_str("bank-1.eu_west")}};
    k++;
    s[k] = (struct sample){"WELCOME", mkhdr(WIRE_WELCOME, 0), 1, {fr(u32_1000, 4)}};
    k++;
    s[k] = (struct sample){"SUBMIT",
                           mkhdr(WIRE_SUBMIT, 0),
                           7,
                           {fr(u32_5000, 4), wire_str("bank"), wire_str("debit 10"), wire_str("shop"),
                            fr(binary, sizeof binary), wire_str("x"), fr(NULL, 0)}};
    k++;
    s[k] = (struct sample){"QUERY", mkhdr(WIRE_QUERY, 0), 0, {{0}}};
    k++;
    s[k] = (struct sample){"OUTCOME committed", mkhdr(WIRE_OUTCOME, TREATY_STATUS_COMMITTED), 1, {wire_str("")}};
    s[k].h.branch = TREATY_NO_BRANCH;
    k++;
    s[k] = (struct sample){"OUTCOME aborted",
                           mkhdr(WIRE_OUTCOME, TREATY_STATUS_ABORTED),
                           1,
                           {wire_str("branch 1 (shop) voted NO: out of stock")}};
    k++;
    s[k] = (struct sample){"OUTCOME pending", mkhdr(WIRE_OUTCOME, TREATY_STATUS_PENDING), 1, {fr(NULL, 0)}};
    k++;
    s[k] = (struct sample){"OUTCOME unknown", mkhdr(WIRE_OUTCOME, TREATY_STATUS_UNKNOWN), 1, {wire_str("?")}};
    k++;
    s[k] = (struct sample){"ERROR", mkhdr(WIRE_ERROR, (uint16_t)-TREATY_EBUSY), 1, {wire_str("too many in flight")}};
    k++;
    s[k] = (struct sample){"PREPARE", mkhdr(WIRE_PREPARE, 0), 1, {fr(bigpayload, sizeof bigpayload)}};
    k++;
    s[k] = (struct sample){"PREPARE empty", mkhdr(WIRE_PREPARE, 0), 1, {fr(NULL, 0)}};
    k++;
    s[k] = (struct sample){"VOTE yes", mkhdr(WIRE_VOTE, TREATY_VOTE_YES), 1, {wire_str("")}};
    k++;
    s[k] = (struct sample){"VOTE no", mkhdr(WIRE_VOTE, TREATY_VOTE_NO), 1, {wire_str("insufficient funds")}};
    k++;
    s[k] = (struct sample){"COMMIT", mkhdr(WIRE_COMMIT, 0), 0, {{0}}};
    s[k].h.attempt = 0xFFFF;
    k++;
    s[k] = (struct sample){"ABORT", mkhdr(WIRE_ABORT, 0), 0, {{0}}};
    s[k].h.branch = 127;
    k++;
    s[k] = (struct sample){"ACK committed", mkhdr(WIRE_ACK, TREATY_STATUS_COMMITTED), 0, {{0}}};
    k++;
    s[k] = (struct sample){"ACK aborted", mkhdr(WIRE_ACK, TREATY_STATUS_ABORTED), 0, {{0}}};
    k++;
    s[k] = (struct sample){"INQUIRE", mkhdr(WIRE_INQUIRE, 0), 0, {{0}}};
    k++;
    s[k] = (struct sample){"OUTCOME completed", mkhdr(WIRE_OUTCOME, TREATY_STATUS_COMPLETED), 1, {wire_str("")}};
    s[k].h.branch = TREATY_NO_BRANCH;
    k++;
    s[k] = (struct sample){"OUTCOME compensated",
                           mkhdr(WIRE_OUTCOME, TREATY_STATUS_COMPENSATED),
                           1,
                           {wire_str("step 1 (shop/reserve) failed: out of stock")}};
    s[k].h.branch = 1;
    k++;
    s[k] = (struct sample){
        "OUTCOME stuck", mkhdr(WIRE_OUTCOME, TREATY_STATUS_STUCK), 1, {wire_str("compensation release keeps failing")}};
    k++;
    struct wire_policy pa = {0, 3, 100, 5000, 5000}, pb = {1, 0xffff, 0, 0xffffffffu, 1};
    wire_encode_policy(&pa, pol_a);
    wire_encode_policy(&pb, pol_b);
    s[k] =
        (struct sample){"SAGA",
                        mkhdr(WIRE_SAGA, 0),
                        13,
                        {fr(u32_5000, 4), wire_str("bank"), wire_str("debit"), wire_str("alice:10"), wire_str("refund"),
                         wire_str("alice:10"), fr(pol_a, sizeof pol_a), wire_str("shop"), wire_str("reserve.v2"),
                         fr(binary, sizeof binary), wire_str("release_all"), fr(NULL, 0), fr(pol_b, sizeof pol_b)}};
    k++;
    s[k] = (struct sample){
        "STEP action", mkhdr(WIRE_STEP, WIRE_STEP_ACTION), 2, {wire_str("debit"), fr(binary, sizeof binary)}};
    k++;
    s[k] = (struct sample){
        "STEP compensation", mkhdr(WIRE_STEP, WIRE_STEP_COMPENSATION), 2, {wire_str("refund"), fr(NULL, 0)}};
    s[k].h.branch = 63;
    k++;
    s[k] = (struct sample){
        "RESULT action ok", mkhdr(WIRE_RESULT, WIRE_RESULT(WIRE_STEP_ACTION, WIRE_RESULT_OK)), 1, {fr(NULL, 0)}};
    k++;
    s[k] = (struct sample){"RESULT action failed",
                           mkhdr(WIRE_RESULT, WIRE_RESULT(WIRE_STEP_ACTION, WIRE_RESULT_FAILED)),
                           1,
                           {wire_str("insufficient funds")}};
    k++;
    s[k] = (struct sample){"RESULT compensation transient",
                           mkhdr(WIRE_RESULT, WIRE_RESULT(WIRE_STEP_COMPENSATION, WIRE_RESULT_TRANSIENT)),
                           1,
                           {wire_str("database unavailable")}};
    k++;
    return k;
}

static void assert_msg_eq(const struct sample *s, const struct wire_msg *m)
{
    cr_assert_eq(m->hdr.type, s->h.type, "%s: type", s->label);
    cr_assert_arr_eq(m->hdr.txid, s->h.txid, 16, "%s: txid", s->label);
    cr_assert_eq(m->hdr.branch, s->h.branch, "%s: branch", s->label);
    cr_assert_eq(m->hdr.attempt, s->h.attempt, "%s: attempt", s->label);
    cr_assert_eq(m->hdr.code, s->h.code, "%s: code", s->label);
    cr_assert_eq(m->nframes, s->n, "%s: nframes %zu", s->label, m->nframes);
    for (size_t i = 0; i < s->n; i++) {
        cr_assert_eq(m->frames[i].len, s->f[i].len, "%s: frame %zu length", s->label, i);
        if (s->f[i].len > 0)
            cr_assert(memcmp(m->frames[i].data, s->f[i].data, s->f[i].len) == 0, "%s: frame %zu bytes", s->label, i);
    }
}

/* ------------------------------------------------------------ pure buffers */

Test(wire_decode, every_type_round_trips)
{
    struct sample s[48];
    size_t n = make_samples(s);
    bool seen[WIRE_TYPE_MAX_ + 1] = {false};
    for (size_t i = 0; i < n; i++) {
        struct wire_msg m;
        int rc = decode(&s[i].h, s[i].f, s[i].n, MAXP, &m);
        cr_assert_eq(rc, 0, "%s: rc %d", s[i].label, rc);
        assert_msg_eq(&s[i], &m);
        seen[s[i].h.type] = true;
    }
    for (int t = 1; t <= WIRE_TYPE_MAX_; t++)
        cr_assert(seen[t], "no sample of %s", wire_type_name(t));
}

Test(wire_decode, header_layout_is_big_endian)
{
    struct wire_hdr h = mkhdr(WIRE_VOTE, 0x0506);
    h.branch = 0x0102;
    h.attempt = 0x0304;
    uint8_t b[WIRE_HDR_LEN];
    memset(b, 0xee, sizeof b);
    wire_encode_hdr(&h, b);
    const uint8_t want[WIRE_HDR_LEN] = {'T',  'Y',  WIRE_VERSION, WIRE_VOTE, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
                                        0x4d, 0xef, 0x80,         0x01,      0x02, 0x03, 0xfe, 0xff, 0x00, 0x7f,
                                        0x01, 0x02, 0x03,         0x04,      0x05, 0x06, 0x00, 0x00};
    cr_assert_arr_eq(b, want, WIRE_HDR_LEN);
    cr_assert_eq(WIRE_HDR_LEN, 28);
}

Test(wire_decode, max_header_fields)
{
    struct wire_hdr h = mkhdr(WIRE_ACK, TREATY_STATUS_ABORTED);
    memset(h.txid, 0xff, 16);
    h.branch = 0xffff;
    h.attempt = 0xffff;
    struct wire_msg m;
    cr_assert_eq(decode(&h, NULL, 0, 0, &m), 0);
    cr_assert_eq(m.hdr.branch, 0xffff);
    cr_assert_eq(m.hdr.attempt, 0xffff);
    cr_assert_arr_eq(m.hdr.txid, h.txid, 16);
}

Test(wire_decode, short_or_long_header)
{
    uint8_t b[WIRE_HDR_LEN + 8];
    memset(b, 0, sizeof b);
    struct wire_hdr h = mkhdr(WIRE_QUERY, 0);
    wire_encode_hdr(&h, b);
    cr_assert_eq(decode_raw(b, WIRE_HDR_LEN), 0);
    const size_t lens[] = {0, 1, 2, 3, 4, 20, WIRE_HDR_LEN - 1, WIRE_HDR_LEN + 1, WIRE_HDR_LEN + 8};
    for (size_t i = 0; i < NELEM(lens); i++)
        cr_assert_eq(decode_raw(b, lens[i]), TREATY_EPROTO, "length %zu", lens[i]);
    cr_assert_eq(decode_raw(NULL, WIRE_HDR_LEN), TREATY_EPROTO);
    cr_assert_eq(decode_raw(NULL, 0), TREATY_EPROTO);
}

Test(wire_decode, bad_magic)
{
    uint8_t b[WIRE_HDR_LEN];
    struct wire_hdr h = mkhdr(WIRE_QUERY, 0);
    const uint8_t magics[][2] = {{'T', 'X'}, {'X', 'Y'}, {'Y', 'T'}, {'t', 'y'}, {0, 0}, {0xff, 0xff}};
    for (size_t i = 0; i < NELEM(magics); i++) {
        wire_encode_hdr(&h, b);
        b[0] = magics[i][0];
        b[1] = magics[i][1];
        cr_assert_eq(decode_raw(b, sizeof b), TREATY_EPROTO, "magic %02x %02x", b[0], b[1]);
        b[2] = WIRE_VERSION + 1; /* the magic is checked first: not a version problem */
        cr_assert_eq(decode_raw(b, sizeof b), TREATY_EPROTO);
    }
}

Test(wire_decode, other_version)
{
    uint8_t b[WIRE_HDR_LEN];
    struct wire_hdr h = mkhdr(WIRE_QUERY, 0);
    const uint8_t versions[] = {0, 1, 3, 0x7f, 0x80, 0xff}; /* 1: the multipart layout before */
    for (size_t i = 0; i < NELEM(versions); i++) {
        wire_encode_hdr(&h, b);
        b[2] = versions[i];
        cr_assert_eq(decode_raw(b, sizeof b), TREATY_EVERSION, "version %u", versions[i]);
        /* whatever else follows: a future version may change it */
        b[3] = 0xee;
        b[26] = 0xff;
        cr_assert_eq(decode_raw(b, sizeof b), TREATY_EVERSION);
    }
}

Test(wire_decode, unknown_type)
{
    uint8_t b[WIRE_HDR_LEN];
    struct wire_hdr h = mkhdr(WIRE_QUERY, 0);
    const uint8_t types[] = {0, WIRE_TYPE_MAX_ + 1, 14, 0x80, 0xff};
    for (size_t i = 0; i < NELEM(types); i++) {
        wire_encode_hdr(&h, b);
        b[3] = types[i];
        cr_assert_eq(decode_raw(b, sizeof b), TREATY_EPROTO, "type %u", types[i]);
    }
}

Test(wire_decode, reserved_bits_must_be_zero)
{
    uint8_t b[WIRE_HDR_LEN];
    struct wire_hdr h = mkhdr(WIRE_QUERY, 0);
    for (int bit = 0; bit < 16; bit++) {
        wire_encode_hdr(&h, b);
        b[26 + bit / 8] = (uint8_t)(1u << (bit % 8));
        cr_assert_eq(decode_raw(b, sizeof b), TREATY_EPROTO, "reserved bit %d", bit);
    }
}

/* With every frame "abcd" (a valid name and a valid u32) - and, for SAGA, a
 * policy wherever a step's policy frame falls - validity depends on the frame
 * count alone: check every count for every type. */
static bool count_ok(int type, size_t n)
{
    switch (type) {
    case WIRE_HELLO:
    case WIRE_STEP:
        return n == 2;
    case WIRE_SUBMIT:
        return n >= 3 && n % 2 == 1;
    case WIRE_SAGA:
        return n >= 1 + WIRE_SAGA_FRAMES_PER_STEP && (n - 1) % WIRE_SAGA_FRAMES_PER_STEP == 0;
    case WIRE_QUERY:
    case WIRE_COMMIT:
    case WIRE_ABORT:
    case WIRE_ACK:
    case WIRE_INQUIRE:
        return n == 0;
    default: /* WELCOME OUTCOME ERROR PREPARE VOTE RESULT */
        return n == 1;
    }
}

static uint16_t valid_code(int type)
{
    switch (type) {
    case WIRE_OUTCOME:
        return TREATY_STATUS_ABORTED;
    case WIRE_ACK:
        return TREATY_STATUS_COMMITTED;
    case WIRE_VOTE:
        return TREATY_VOTE_NO;
    case WIRE_ERROR:
        return (uint16_t)-TREATY_EPROTO;
    case WIRE_STEP:
        return WIRE_STEP_COMPENSATION;
    case WIRE_RESULT:
        return WIRE_RESULT(WIRE_STEP_ACTION, WIRE_RESULT_TRANSIENT);
    default:
        return 0;
    }
}

Test(wire_decode, frame_counts_per_type)
{
    static struct wire_frame f[WIRE_MAX_FRAMES + 4], sf[WIRE_MAX_FRAMES + 4];
    uint8_t pol[WIRE_POLICY_LEN] = {0};
    for (size_t i = 0; i < NELEM(f); i++) {
        f[i] = wire_str("abcd");
        sf[i] = i > 0 && (i - 1) % WIRE_SAGA_FRAMES_PER_STEP == 5 ? fr(pol, sizeof pol) : f[i];
    }
    for (int t = 1; t <= WIRE_TYPE_MAX_; t++) {
        struct wire_hdr h = mkhdr(t, valid_code(t));
        for (size_t n = 0; n < NELEM(f); n++) {
            struct wire_msg m;
            int want = n > WIRE_MAX_FRAMES ? TREATY_ETOOBIG : count_ok(t, n) ? 0 : TREATY_EPROTO;
            /* SUBMIT: at most WIRE_MAX_BRANCHES branches, whatever WIRE_MAX_FRAMES allows */
            if (t == WIRE_SUBMIT && want == 0 && (n - 1) / 2 > WIRE_MAX_BRANCHES)
                want = TREATY_ETOOBIG;
            int rc = decode(&h, t == WIRE_SAGA ? sf : f, n, MAXP, &m);
            cr_assert_eq(rc, want, "%s with %zu frames: %d, want %d", wire_type_name(t), n, rc, want);
        }
    }
}

Test(wire_decode, submit_shapes)
{
    struct wire_hdr h = mkhdr(WIRE_SUBMIT, 0);
    uint8_t t4[4] = {0, 0, 0, 10}, t3[3] = {0, 0, 10}, t5[5] = {0, 0, 0, 0, 10};
    struct wire_msg m;
    /* timeout and one branch */
    struct wire_frame ok[] = {fr(t4, 4), wire_str("svc"), wire_str("p")};
    cr_assert_eq(decode(&h, ok, 3, MAXP, &m), 0);
    /* even counts: a service without its payload */
    struct wire_frame even2[] = {fr(t4, 4), wire_str("svc")};
    cr_assert_eq(decode(&h, even2, 2, MAXP, &m), TREATY_EPROTO);
    struct wire_frame even4[] = {fr(t4, 4), wire_str("svc"), wire_str("p"), wire_str("svc2")};
    cr_assert_eq(decode(&h, even4, 4, MAXP, &m), TREATY_EPROTO);
    /* no branch at all */
    cr_assert_eq(decode(&h, ok, 1, MAXP, &m), TREATY_EPROTO);
    /* timeout not a u32 */
    struct wire_frame bad3[] = {fr(t3, 3), wire_str("svc"), wire_str("p")};
    cr_assert_eq(decode(&h, bad3, 3, MAXP, &m), TREATY_EPROTO);
    struct wire_frame bad5[] = {fr(t5, 5), wire_str("svc"), wire_str("p")};
    cr_assert_eq(decode(&h, bad5, 3, MAXP, &m), TREATY_EPROTO);
    struct wire_frame bad0[] = {fr(NULL, 0), wire_str("svc"), wire_str("p")};
    cr_assert_eq(decode(&h, bad0, 3, MAXP, &m), TREATY_EPROTO);
    /* payloads are opaque: anything goes, even what looks like a bad name */
    struct wire_frame opaque[] = {fr(t4, 4), wire_str("svc"), wire_str("bad name / \x01")};
    cr_assert_eq(decode(&h, opaque, 3, MAXP, &m), 0);
}

Test(wire_decode, submit_max_branches)
{
    static struct wire_frame f[1 + 2 * (WIRE_MAX_BRANCHES + 1)];
    static char names[WIRE_MAX_BRANCHES + 1][16];
    static uint8_t payloads[WIRE_MAX_BRANCHES + 1][4];
    uint8_t t4[4] = {0, 0, 1, 0};
    f[0] = fr(t4, 4);
    for (int i = 0; i <= WIRE_MAX_BRANCHES; i++) {
        snprintf(names[i], sizeof names[i], "svc-%d", i);
        wire_put_u32(payloads[i], (uint32_t)i);
        f[1 + 2 * i] = wire_str(names[i]);
        f[2 + 2 * i] = fr(payloads[i], sizeof payloads[i]);
    }
    struct wire_hdr h = mkhdr(WIRE_SUBMIT, 0);
    struct wire_msg m;
    cr_assert_eq(decode(&h, f, 1 + 2 * WIRE_MAX_BRANCHES, MAXP, &m), 0);
    cr_assert_eq(m.nframes, 1 + 2 * WIRE_MAX_BRANCHES);
    cr_assert_eq(m.frames[2 * WIRE_MAX_BRANCHES - 1].len, strlen(names[WIRE_MAX_BRANCHES - 1]));
    cr_assert_eq(decode(&h, f, 1 + 2 * (WIRE_MAX_BRANCHES + 1), MAXP, &m), TREATY_ETOOBIG);
}

static const char *const bad_names_saga[] = {
    "", "a b", "a/b", "caf\xc3\xa9", "\x80", "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn"};

/* One valid step per 6 frames, deadline first. */
static void saga_frames(struct wire_frame *f, size_t steps, const uint8_t *deadline, const uint8_t *pol)
{
    f[0] = fr(deadline, 4);
    for (size_t i = 0; i < steps; i++) {
        struct wire_frame *s = &f[1 + WIRE_SAGA_FRAMES_PER_STEP * i];
        s[0] = wire_str("svc");
        s[1] = wire_str("act");
        s[2] = wire_str("payload");
        s[3] = wire_str("comp");
        s[4] = fr(NULL, 0);
        s[5] = fr(pol, WIRE_POLICY_LEN);
    }
}

Test(wire_decode, saga_shapes)
{
    static struct wire_frame f[1 + WIRE_SAGA_FRAMES_PER_STEP * (WIRE_MAX_STEPS + 1)];
    uint8_t d4[4] = {0, 0, 0x75, 0x30}, d3[3] = {0, 0x75, 0x30}, pol[WIRE_POLICY_LEN + 1] = {0};
    struct wire_hdr h = mkhdr(WIRE_SAGA, 0);
    struct wire_msg m;

    saga_frames(f, 2, d4, pol);
    cr_assert_eq(decode(&h, f, 13, MAXP, &m), 0);
    uint32_t deadline;
    cr_assert(wire_get_u32(&m.frames[0], &deadline));
    cr_assert_eq(deadline, 30000);
    /* no step at all, or a step cut short */
    cr_assert_eq(decode(&h, f, 1, MAXP, &m), TREATY_EPROTO);
    for (size_t n = 2; n < 13; n++)
        if (n != 7)
            cr_assert_eq(decode(&h, f, n, MAXP, &m), TREATY_EPROTO, "%zu frames", n);
    /* deadline not a u32 */
    f[0] = fr(d3, 3);
    cr_assert_eq(decode(&h, f, 7, MAXP, &m), TREATY_EPROTO);
    f[0] = fr(d4, 4);
    /* policy not exactly WIRE_POLICY_LEN bytes */
    for (size_t len = 0; len <= WIRE_POLICY_LEN + 1; len++) {
        f[12] = fr(pol, len);
        cr_assert_eq(decode(&h, f, 13, MAXP, &m), len == WIRE_POLICY_LEN ? 0 : TREATY_EPROTO, "policy of %zu", len);
    }
    f[12] = fr(pol, WIRE_POLICY_LEN);
    /* service, action and compensation are names; payloads are opaque */
    const size_t name_at[] = {1, 2, 4};
    for (size_t i = 0; i < NELEM(name_at); i++) {
        for (size_t b = 0; b < NELEM(bad_names_saga); b++) {
            saga_frames(f, 2, d4, pol);
            f[6 + name_at[i]] = wire_str(bad_names_saga[b]);
            cr_assert_eq(decode(&h, f, 13, MAXP, &m), TREATY_EPROTO, "frame %zu \"%s\"", name_at[i], bad_names_saga[b]);
        }
    }
    saga_frames(f, 2, d4, pol);
    f[3] = wire_str("bad name / \x01");
    f[5] = fr(pol, 3);
    cr_assert_eq(decode(&h, f, 13, MAXP, &m), 0);

    /* WIRE_MAX_STEPS steps fit, one more does not */
    saga_frames(f, WIRE_MAX_STEPS + 1, d4, pol);
    cr_assert_eq(decode(&h, f, 1 + WIRE_SAGA_FRAMES_PER_STEP * WIRE_MAX_STEPS, MAXP, &m), 0);
    cr_assert_eq(decode(&h, f, NELEM(f), MAXP, &m), TREATY_ETOOBIG);
}

Test(wire_decode, step_shapes)
{
    struct wire_msg m;
    for (uint16_t kind = WIRE_STEP_ACTION; kind <= WIRE_STEP_COMPENSATION; kind++) {
        struct wire_hdr h = mkhdr(WIRE_STEP, kind);
        struct wire_frame ok[] = {wire_str("debit"), fr(binary, sizeof binary)};
        cr_assert_eq(decode(&h, ok, 2, MAXP, &m), 0);
        cr_assert_eq(m.hdr.code, kind);
        struct wire_frame empty_payload[] = {wire_str("debit"), fr(NULL, 0)};
        cr_assert_eq(decode(&h, empty_payload, 2, MAXP, &m), 0);
        for (size_t b = 0; b < NELEM(bad_names_saga); b++) {
            struct wire_frame bad[] = {wire_str(bad_names_saga[b]), wire_str("p")};
            cr_assert_eq(decode(&h, bad, 2, MAXP, &m), TREATY_EPROTO, "STEP name \"%s\"", bad_names_saga[b]);
        }
    }
}

Test(wire_decode, policy_encode_decode)
{
    const struct wire_policy cases[] = {
        {0, 3, 100, 5000, 5000},
        {63, 1, 0, 0, 0},
        {0xffff, 0xffff, 0xffffffffu, 0xffffffffu, 0xffffffffu},
        {0x0102, 0x0304, 0x05060708u, 0x090a0b0cu, 0x0d0e0f10u},
    };
    for (size_t i = 0; i < NELEM(cases); i++) {
        uint8_t b[WIRE_POLICY_LEN];
        wire_encode_policy(&cases[i], b);
        struct wire_policy back;
        memset(&back, 0xa5, sizeof back);
        struct wire_frame f = fr(b, sizeof b);
        cr_assert(wire_decode_policy(&f, &back));
        cr_assert_eq(back.group, cases[i].group);
        cr_assert_eq(back.max_attempts, cases[i].max_attempts);
        cr_assert_eq(back.first_backoff_ms, cases[i].first_backoff_ms);
        cr_assert_eq(back.max_backoff_ms, cases[i].max_backoff_ms);
        cr_assert_eq(back.try_timeout_ms, cases[i].try_timeout_ms);
    }
    /* layout: big-endian u16 group, u16 max_attempts, then three u32 */
    uint8_t b[WIRE_POLICY_LEN];
    wire_encode_policy(&cases[3], b);
    for (uint8_t i = 0; i < WIRE_POLICY_LEN; i++)
        cr_assert_eq(b[i], i + 1, "byte %u", i);
    /* anything but exactly 16 bytes is refused, and the output left alone */
    uint8_t big[WIRE_POLICY_LEN + 1] = {0};
    for (size_t len = 0; len <= sizeof big; len++) {
        if (len == WIRE_POLICY_LEN)
            continue;
        struct wire_policy out = {7, 7, 7, 7, 7};
        struct wire_frame f = fr(big, len);
        cr_assert_not(wire_decode_policy(&f, &out), "length %zu", len);
        cr_assert_eq(out.group, 7);
        cr_assert_eq(out.try_timeout_ms, 7);
    }
}

static const char *const bad_names[] = {
    "",     "a b", "a/b", "a:b", "a\tb",  "\n",   "caf\xc3\xa9", "a+b",  "a@b",
    "a\"b", "a;b", "a,b", "*",   "a\x7f", "\x80", " ",           "a\\b",
};

Test(wire_decode, invalid_service_names)
{
    char name65[66], name64[65];
    memset(name65, 'n', 65);
    name65[65] = '\0';
    memset(name64, 'n', 64);
    name64[64] = '\0';
    uint8_t t4[4] = {0, 0, 1, 0};
    struct wire_msg m;
    struct wire_hdr hello = mkhdr(WIRE_HELLO, 0);
    struct wire_hdr submit = mkhdr(WIRE_SUBMIT, 0);

    /* valid limits first */
    struct wire_frame hv[] = {wire_str(name64), wire_str("Az09._-")};
    cr_assert_eq(decode(&hello, hv, 2, MAXP, &m), 0);

    for (size_t i = 0; i <= NELEM(bad_names); i++) {
        const char *bad = i < NELEM(bad_names) ? bad_names[i] : name65;
        struct wire_frame h1[] = {wire_str(bad), wire_str("inst-1")};
        cr_assert_eq(decode(&hello, h1, 2, MAXP, &m), TREATY_EPROTO, "HELLO service \"%s\"", bad);
        struct wire_frame h2[] = {wire_str("svc"), wire_str(bad)};
        cr_assert_eq(decode(&hello, h2, 2, MAXP, &m), TREATY_EPROTO, "HELLO instance \"%s\"", bad);
        struct wire_frame s1[] = {fr(t4, 4), wire_str(bad), wire_str("p")};
        cr_assert_eq(decode(&submit, s1, 3, MAXP, &m), TREATY_EPROTO, "SUBMIT service \"%s\"", bad);
        struct wire_frame s2[] = {fr(t4, 4), wire_str("ok"), wire_str("p"), wire_str(bad), wire_str("p")};
        cr_assert_eq(decode(&submit, s2, 5, MAXP, &m), TREATY_EPROTO, "SUBMIT second service \"%s\"", bad);
    }
    /* a NUL inside a name */
    struct wire_frame nul[] = {fr("ab\0c", 4), wire_str("inst")};
    cr_assert_eq(decode(&hello, nul, 2, MAXP, &m), TREATY_EPROTO);
}

Test(wire_decode, name_ok)
{
    cr_assert(wire_name_ok((const uint8_t *)"x", 1));
    cr_assert(wire_name_ok((const uint8_t *)"ABCxyz019._-", 12));
    cr_assert_not(wire_name_ok((const uint8_t *)"", 0));
    cr_assert_not(wire_name_ok(NULL, 0));
    char n[WIRE_NAME_MAX + 1];
    memset(n, 'z', sizeof n);
    cr_assert(wire_name_ok((const uint8_t *)n, WIRE_NAME_MAX));
    cr_assert_not(wire_name_ok((const uint8_t *)n, WIRE_NAME_MAX + 1));
    for (size_t i = 0; i < NELEM(bad_names); i++)
        cr_assert_not(wire_name_ok((const uint8_t *)bad_names[i], strlen(bad_names[i])), "\"%s\"", bad_names[i]);
}

Test(wire_decode, welcome_needs_u32)
{
    struct wire_hdr h = mkhdr(WIRE_WELCOME, 0);
    struct wire_msg m;
    uint8_t b[5] = {0, 0, 3, 0xe8, 0};
    for (size_t len = 0; len <= 5; len++) {
        struct wire_frame f[] = {fr(b, len)};
        cr_assert_eq(decode(&h, f, 1, MAXP, &m), len == 4 ? 0 : TREATY_EPROTO, "length %zu", len);
    }
    struct wire_frame f[] = {fr(b, 4)};
    cr_assert_eq(decode(&h, f, 1, MAXP, &m), 0);
    uint32_t v = 0;
    cr_assert(wire_get_u32(&m.frames[0], &v));
    cr_assert_eq(v, 1000);
}

Test(wire_decode, oversized_frame)
{
    uint8_t p[17];
    memset(p, 'p', sizeof p);
    struct wire_msg m;
    struct wire_hdr h = mkhdr(WIRE_PREPARE, 0);
    struct wire_frame f16[] = {fr(p, 16)}, f17[] = {fr(p, 17)};
    cr_assert_eq(decode(&h, f16, 1, 16, &m), 0);
    cr_assert_eq(decode(&h, f17, 1, 16, &m), TREATY_ETOOBIG);
    cr_assert_eq(decode(&h, f16, 1, 0, &m), TREATY_ETOOBIG);
    struct wire_frame empty[] = {fr(NULL, 0)};
    cr_assert_eq(decode(&h, empty, 1, 0, &m), 0);

    /* the bound holds for every payload frame, the last branch's included */
    struct wire_hdr s = mkhdr(WIRE_SUBMIT, 0);
    uint8_t t4[4] = {0, 0, 1, 0};
    struct wire_frame sf[] = {fr(t4, 4), wire_str("a"), fr(p, 8), wire_str("b"), fr(p, 17)};
    cr_assert_eq(decode(&s, sf, 5, 16, &m), TREATY_ETOOBIG);
    sf[4] = fr(p, 16);
    cr_assert_eq(decode(&s, sf, 5, 16, &m), 0);
    /* a size problem is reported as such even when the shape is wrong too */
    struct wire_frame two[] = {fr(p, 17), fr(p, 1)};
    cr_assert_eq(decode(&h, two, 2, 16, &m), TREATY_ETOOBIG);
}

Test(wire_decode, too_many_frames)
{
    static struct wire_frame f[WIRE_MAX_FRAMES + 100];
    for (size_t i = 0; i < NELEM(f); i++)
        f[i] = wire_str("abcd");
    struct wire_msg m;
    struct wire_hdr h = mkhdr(WIRE_SUBMIT, 0);
    cr_assert_eq(decode(&h, f, WIRE_MAX_FRAMES + 1, MAXP, &m), TREATY_ETOOBIG);
    cr_assert_eq(decode(&h, f, NELEM(f), MAXP, &m), TREATY_ETOOBIG);
    h = mkhdr(WIRE_QUERY, 0);
    cr_assert_eq(decode(&h, f, NELEM(f), MAXP, &m), TREATY_ETOOBIG);
}

/* ------------------------------------------------------------ packed form */

Test(wire_unpack, layout_is_the_header_then_length_prefixed_frames)
{
    struct wire_hdr h = mkhdr(WIRE_STEP, WIRE_STEP_ACTION);
    struct wire_frame f[] = {wire_str("debit"), fr(NULL, 0)};
    cr_assert_eq(wire_packed_len(f, 2), WIRE_HDR_LEN + 4 + 5 + 4);
    uint8_t b[WIRE_HDR_LEN + 13], want[WIRE_HDR_LEN + 13];
    memset(b, 0xee, sizeof b);
    wire_pack(&h, f, 2, b);
    wire_encode_hdr(&h, want);
    memcpy(want + WIRE_HDR_LEN, "\0\0\0\5debit\0\0\0\0", 13);
    cr_assert_arr_eq(b, want, sizeof want);
    cr_assert_eq(want[2], 2, "wire version 2");
    struct wire_msg m;
    cr_assert_eq(wire_unpack(b, sizeof b, MAXP, &m), 0);
    cr_assert_eq(m.nframes, 2);
    cr_assert_eq(m.frames[0].data, b + WIRE_HDR_LEN + 4, "frames point into the buffer");
}

Test(wire_unpack, every_sample_round_trips_and_every_truncation_is_refused_or_a_frame_prefix)
{
    struct sample s[48];
    size_t n = make_samples(s);
    for (size_t i = 0; i < n; i++) {
        size_t len = wire_packed_len(s[i].f, s[i].n);
        uint8_t *b = malloc(len);
        cr_assert_not_null(b);
        wire_pack(&s[i].h, s[i].f, s[i].n, b);
        struct wire_msg m;
        cr_assert_eq(wire_unpack(b, len, MAXP, &m), 0, "%s", s[i].label);
        assert_msg_eq(&s[i], &m);
        /* ZeroMQ never delivers part of a message, but a peer can send any
         * bytes: a cut either leaves a shorter valid list of frames (a cut at
         * a frame boundary) or is refused. Each prefix in an allocation of
         * its own size, so a read past it is caught by ASan and valgrind. */
        for (size_t cut = 0; cut < len; cut++) {
            uint8_t *p = malloc(cut ? cut : 1);
            cr_assert_not_null(p);
            memcpy(p, b, cut);
            int rc = wire_unpack(p, cut, MAXP, &m);
            cr_assert(rc == 0 || rc == TREATY_EPROTO || rc == TREATY_ETOOBIG, "%s cut at %zu: %d", s[i].label, cut, rc);
            if (rc == 0) {
                cr_assert_lt(m.nframes, s[i].n, "%s cut at %zu", s[i].label, cut);
                size_t end = WIRE_HDR_LEN;
                for (size_t k = 0; k < m.nframes; k++) {
                    cr_assert_eq(m.frames[k].len, s[i].f[k].len);
                    end += 4 + m.frames[k].len;
                }
                cr_assert_eq(end, cut, "%s: accepted a cut inside a frame", s[i].label);
            }
            free(p);
        }
        free(b);
    }
}

Test(wire_unpack, frame_lengths_that_do_not_fit_the_message_are_refused)
{
    struct wire_hdr h = mkhdr(WIRE_PREPARE, 0);
    struct wire_frame f[] = {wire_str("abc")};
    uint8_t b[WIRE_HDR_LEN + 4 + 3 + 3];
    wire_pack(&h, f, 1, b);
    struct wire_msg m;
    size_t len = WIRE_HDR_LEN + 7;
    cr_assert_eq(wire_unpack(b, len, MAXP, &m), 0);
    /* a length one past the end, and the largest a length can say */
    wire_put_u32(b + WIRE_HDR_LEN, 4);
    cr_assert_eq(wire_unpack(b, len, MAXP, &m), TREATY_EPROTO);
    cr_assert_arr_eq(m.hdr.txid, TXID, 16, "the header is kept for an error reply");
    wire_put_u32(b + WIRE_HDR_LEN, 0xffffffffu);
    cr_assert_eq(wire_unpack(b, len, SIZE_MAX, &m), TREATY_EPROTO);
    cr_assert_eq(wire_unpack(b, len, MAXP, &m), TREATY_ETOOBIG, "over the payload bound, whatever follows");
    /* one, two or three bytes after the last frame: a length cut short */
    wire_put_u32(b + WIRE_HDR_LEN, 3);
    memset(b + len, 0, 3);
    for (size_t extra = 1; extra <= 3; extra++)
        cr_assert_eq(wire_unpack(b, len + extra, MAXP, &m), TREATY_EPROTO, "%zu trailing bytes", extra);
}

Test(wire_unpack, largest_messages_fit_wire_message_max)
{
    /* a SUBMIT of WIRE_MAX_BRANCHES branches and a SAGA of WIRE_MAX_STEPS
     * steps, every name WIRE_NAME_MAX bytes and every payload max bytes */
    const size_t max = 1000;
    static uint8_t payload[1000];
    char name[WIRE_NAME_MAX + 1];
    memset(name, 'n', WIRE_NAME_MAX);
    name[WIRE_NAME_MAX] = '\0';
    uint8_t t4[4] = {0, 0, 1, 0}, pol[WIRE_POLICY_LEN];
    struct wire_policy wp = {0, 1, 1, 1, 1};
    wire_encode_policy(&wp, pol);
    static struct wire_frame f[WIRE_MAX_FRAMES];
    f[0] = fr(t4, 4);
    for (size_t i = 0; i < WIRE_MAX_BRANCHES; i++) {
        f[1 + 2 * i] = wire_str(name);
        f[2 + 2 * i] = fr(payload, max);
    }
    size_t submit = wire_packed_len(f, 1 + 2 * WIRE_MAX_BRANCHES);
    for (size_t i = 0; i < WIRE_MAX_STEPS; i++) {
        struct wire_frame *st = &f[1 + WIRE_SAGA_FRAMES_PER_STEP * i];
        st[0] = st[1] = st[3] = wire_str(name);
        st[2] = st[4] = fr(payload, max);
        st[5] = fr(pol, sizeof pol);
    }
    size_t saga = wire_packed_len(f, 1 + WIRE_SAGA_FRAMES_PER_STEP * WIRE_MAX_STEPS);
    uint64_t limit = wire_message_max(max);
    cr_assert_leq(submit, limit);
    cr_assert_leq(saga, limit);
    cr_assert(submit == limit || saga == limit, "the bound is tight: %zu %zu %llu", submit, saga,
              (unsigned long long)limit);
    /* small payload bounds still leave room for two names (HELLO) */
    cr_assert_geq(wire_message_max(0), WIRE_HDR_LEN + 2 * (4 + WIRE_NAME_MAX));
}

Test(wire_decode, null_frame_data)
{
    struct wire_msg m;
    struct wire_hdr h = mkhdr(WIRE_ERROR, (uint16_t)-TREATY_EINVAL);
    struct wire_frame nul_len0[] = {{NULL, 0}}, nul_len5[] = {{NULL, 5}};
    cr_assert_eq(decode(&h, nul_len0, 1, MAXP, &m), 0);
    cr_assert_eq(decode(&h, nul_len5, 1, MAXP, &m), TREATY_EPROTO);
}

Test(wire_decode, invalid_codes)
{
    struct wire_msg m;
    struct wire_frame reason[] = {wire_str("r")};
    const uint16_t vote_bad[] = {0, 3, 4, 0x100, 0xffff};
    for (size_t i = 0; i < NELEM(vote_bad); i++) {
        struct wire_hdr h = mkhdr(WIRE_VOTE, vote_bad[i]);
        cr_assert_eq(decode(&h, reason, 1, MAXP, &m), TREATY_EPROTO, "VOTE code %u", vote_bad[i]);
    }
    const uint16_t ack_bad[] = {TREATY_STATUS_NONE, TREATY_STATUS_PENDING, TREATY_STATUS_UNKNOWN, 5, 0xffff};
    for (size_t i = 0; i < NELEM(ack_bad); i++) {
        struct wire_hdr h = mkhdr(WIRE_ACK, ack_bad[i]);
        cr_assert_eq(decode(&h, NULL, 0, MAXP, &m), TREATY_EPROTO, "ACK code %u", ack_bad[i]);
    }
    const uint16_t outcome_bad[] = {TREATY_STATUS_NONE, TREATY_STATUS_STUCK + 1, 0x8000, 0xffff};
    for (size_t i = 0; i < NELEM(outcome_bad); i++) {
        struct wire_hdr h = mkhdr(WIRE_OUTCOME, outcome_bad[i]);
        cr_assert_eq(decode(&h, reason, 1, MAXP, &m), TREATY_EPROTO, "OUTCOME code %u", outcome_bad[i]);
    }
    /* and the valid ones */
    for (uint16_t c = TREATY_VOTE_YES; c <= TREATY_VOTE_NO; c++) {
        struct wire_hdr h = mkhdr(WIRE_VOTE, c);
        cr_assert_eq(decode(&h, reason, 1, MAXP, &m), 0);
    }
    for (uint16_t c = TREATY_STATUS_COMMITTED; c <= TREATY_STATUS_STUCK; c++) {
        struct wire_hdr h = mkhdr(WIRE_OUTCOME, c);
        cr_assert_eq(decode(&h, reason, 1, MAXP, &m), 0);
    }

    /* STEP: action or compensation only */
    struct wire_frame step[] = {wire_str("debit"), wire_str("p")};
    const uint16_t step_bad[] = {0, 3, 0x0101, 0x0201, 0xffff};
    for (size_t i = 0; i < NELEM(step_bad); i++) {
        struct wire_hdr h = mkhdr(WIRE_STEP, step_bad[i]);
        cr_assert_eq(decode(&h, step, 2, MAXP, &m), TREATY_EPROTO, "STEP code %#x", step_bad[i]);
    }
    /* RESULT: kind in the high byte, result in the low byte, both checked */
    const uint16_t result_bad[] = {0,
                                   WIRE_RESULT_OK, /* kind 0 */
                                   WIRE_RESULT(3, WIRE_RESULT_OK),
                                   WIRE_RESULT(0xff, WIRE_RESULT_FAILED),
                                   WIRE_RESULT(WIRE_STEP_ACTION, 0),
                                   WIRE_RESULT(WIRE_STEP_ACTION, WIRE_RESULT_TRANSIENT + 1),
                                   WIRE_RESULT(WIRE_STEP_COMPENSATION, 0xff),
                                   0xffff};
    for (size_t i = 0; i < NELEM(result_bad); i++) {
        struct wire_hdr h = mkhdr(WIRE_RESULT, result_bad[i]);
        cr_assert_eq(decode(&h, reason, 1, MAXP, &m), TREATY_EPROTO, "RESULT code %#x", result_bad[i]);
    }
    for (uint16_t kind = WIRE_STEP_ACTION; kind <= WIRE_STEP_COMPENSATION; kind++)
        for (uint16_t r = WIRE_RESULT_OK; r <= WIRE_RESULT_TRANSIENT; r++) {
            struct wire_hdr h = mkhdr(WIRE_RESULT, WIRE_RESULT(kind, r));
            cr_assert_eq(decode(&h, reason, 1, MAXP, &m), 0);
            cr_assert_eq(WIRE_RESULT_KIND(m.hdr.code), kind);
            cr_assert_eq(WIRE_RESULT_VALUE(m.hdr.code), r);
        }
}

/* wire.h: on an error the header is all zero, or the decoded one when only
 * the frames were at fault - never what an earlier message left there. */
Test(wire_decode, header_after_error)
{
    static const uint8_t zero[16];
    struct wire_msg m;
    struct wire_hdr good = mkhdr(WIRE_QUERY, 0);
    cr_assert_eq(decode(&good, NULL, 0, MAXP, &m), 0);
    cr_assert_arr_eq(m.hdr.txid, TXID, 16);

    uint8_t b[WIRE_HDR_LEN];
    wire_encode_hdr(&good, b);
    b[0] = 'X';
    cr_assert_eq(decode_raw(b, sizeof b), TREATY_EPROTO);
    struct wire_frame hf = fr(b, sizeof b);
    cr_assert_eq(wire_decode(&hf, NULL, 0, MAXP, &m), TREATY_EPROTO);
    cr_assert_arr_eq(m.hdr.txid, zero, 16);
    cr_assert_eq(m.hdr.type, 0);

    cr_assert_eq(decode(&good, NULL, 0, MAXP, &m), 0);
    wire_encode_hdr(&good, b);
    b[2] = 9;
    cr_assert_eq(wire_decode(&hf, NULL, 0, MAXP, &m), TREATY_EVERSION);
    cr_assert_arr_eq(m.hdr.txid, zero, 16);

    /* frames at fault: the header is there for the error reply */
    struct wire_hdr p = mkhdr(WIRE_PREPARE, 0);
    struct wire_frame big[] = {fr(b, sizeof b)};
    cr_assert_eq(decode(&p, big, 1, 8, &m), TREATY_ETOOBIG);
    cr_assert_arr_eq(m.hdr.txid, TXID, 16);
    cr_assert_eq(m.hdr.type, WIRE_PREPARE);
    cr_assert_eq(decode(&p, NULL, 0, MAXP, &m), TREATY_EPROTO);
    cr_assert_arr_eq(m.hdr.txid, TXID, 16);
}

Test(wire_decode, u32_helpers)
{
    const uint32_t vals[] = {0, 1, 255, 256, 65535, 0x01020304u, 0x80000000u, 0xffffffffu};
    for (size_t i = 0; i < NELEM(vals); i++) {
        uint8_t b[4];
        wire_put_u32(b, vals[i]);
        uint32_t v = 0;
        struct wire_frame f = fr(b, 4);
        cr_assert(wire_get_u32(&f, &v));
        cr_assert_eq(v, vals[i]);
    }
    uint8_t b[4];
    wire_put_u32(b, 0x01020304u);
    cr_assert_eq(b[0], 1);
    cr_assert_eq(b[3], 4);
    uint32_t v = 77;
    struct wire_frame f3 = fr(b, 3), f5 = fr("12345", 5), f0 = fr(NULL, 0);
    cr_assert_not(wire_get_u32(&f3, &v));
    cr_assert_not(wire_get_u32(&f5, &v));
    cr_assert_not(wire_get_u32(&f0, &v));
    cr_assert_eq(v, 77);
}

Test(wire_decode, type_names)
{
    const char *want[] = {"?",    "HELLO",  "WELCOME", "SUBMIT", "QUERY",   "OUTCOME", "ERROR", "PREPARE",
                          "VOTE", "COMMIT", "ABORT",   "ACK",    "INQUIRE", "SAGA",    "STEP",  "RESULT"};
    cr_assert_eq(NELEM(want), WIRE_TYPE_MAX_ + 1);
    for (int t = 0; t <= WIRE_TYPE_MAX_; t++)
        cr_assert_str_eq(wire_type_name(t), want[t]);
    cr_assert_str_eq(wire_type_name(-1), "?");
    cr_assert_str_eq(wire_type_name(WIRE_TYPE_MAX_ + 1), "?");
    cr_assert_str_eq(wire_type_name(255), "?");
}

Test(wire_text, str_frame)
{
    struct wire_frame f = wire_str(NULL);
    cr_assert_eq(f.len, 0);
    f = wire_str("abc");
    cr_assert_eq(f.len, 3);
    cr_assert(memcmp(f.data, "abc", 3) == 0);
}

Test(wire_text, copy_text_replaces_control_chars)
{
    const uint8_t in[] = {'o', 'k', 0x00, '\n', '\r', '\t', 0x1b, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0xc3, 0xa9, 'z'};
    char out[64];
    memset(out, 'X', sizeof out);
    struct wire_frame f = fr(in, sizeof in);
    wire_copy_text(&f, out, sizeof out);
    cr_assert_eq(strlen(out), sizeof in);
    cr_assert(memcmp(out, "ok?????? ~?\x80\xc3\xa9z", sizeof in + 1) == 0, "got \"%s\"", out);
}

Test(wire_text, copy_text_truncates)
{
    struct wire_frame f = wire_str("abcdefgh");
    char out[8];
    memset(out, 'X', sizeof out);
    wire_copy_text(&f, out, 4);
    cr_assert_str_eq(out, "abc");
    cr_assert_eq(out[4], 'X', "wrote past cap");
    wire_copy_text(&f, out, 1);
    cr_assert_str_eq(out, "");
    cr_assert_eq(out[1], 'b', "wrote past cap");
    memset(out, 'X', sizeof out);
    wire_copy_text(&f, out, 0); /* nothing at all */
    cr_assert_eq(out[0], 'X');
    wire_copy_text(&f, out, 8);
    cr_assert_str_eq(out, "abcdefg");
    struct wire_frame e = fr(NULL, 0);
    wire_copy_text(&e, out, sizeof out);
    cr_assert_str_eq(out, "");
    /* exactly cap-1 bytes fit */
    struct wire_frame seven = wire_str("1234567");
    wire_copy_text(&seven, out, 8);
    cr_assert_str_eq(out, "1234567");
}

/* ------------------------------------------------------------ real sockets */

static void *ctx;

static void ctx_init(void)
{
    ctx = zmq_ctx_new();
    cr_assert_not_null(ctx);
}

static void ctx_fini(void)
{
    zmq_ctx_term(ctx);
    ctx = NULL;
}

static const char RID[] = "dealer-1";

/* A bound ROUTER and a connected DEALER with routing id RID. */
static void socket_pair(const char *endpoint, void **router, void **dealer)
{
    int zero = 0;
    *router = zmq_socket(ctx, ZMQ_ROUTER);
    *dealer = zmq_socket(ctx, ZMQ_DEALER);
    cr_assert_not_null(*router);
    cr_assert_not_null(*dealer);
    zmq_setsockopt(*router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(*dealer, ZMQ_LINGER, &zero, sizeof zero);
    cr_assert_eq(zmq_setsockopt(*dealer, ZMQ_ROUTING_ID, RID, strlen(RID)), 0);
    cr_assert_eq(zmq_bind(*router, endpoint), 0, "bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
    char ep[256];
    size_t eplen = sizeof ep;
    cr_assert_eq(zmq_getsockopt(*router, ZMQ_LAST_ENDPOINT, ep, &eplen), 0);
    cr_assert_eq(zmq_connect(*dealer, ep), 0, "connect %s", ep);
}

static void close_pair(void *router, void *dealer)
{
    zmq_close(dealer);
    zmq_close(router);
}

/* wire_recv, waiting up to 5 s for something to arrive. */
static int recv_wait(void *sock, bool router, size_t max_payload, struct wire_in *in)
{
    for (int waited = 0; waited < 5000; waited += 10) {
        int rc = wire_recv(sock, router, max_payload, in);
        if (rc != TREATY_ETIMEDOUT)
            return rc;
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 10);
    }
    return TREATY_ETIMEDOUT;
}

static void expect_rid(const struct wire_in *in)
{
    cr_assert_eq(in->rid_len, strlen(RID));
    cr_assert(memcmp(in->rid, RID, strlen(RID)) == 0);
}

static void round_trip_all(const char *endpoint)
{
    void *router, *dealer;
    socket_pair(endpoint, &router, &dealer);
    static struct wire_in in;
    struct sample s[48];
    size_t n = make_samples(s);

    for (size_t i = 0; i < n; i++) {
        /* DEALER -> ROUTER: the router sees who sent it */
        cr_assert_eq(wire_send(dealer, NULL, 0, &s[i].h, s[i].f, s[i].n), 0, "%s: send", s[i].label);
        int rc = recv_wait(router, true, MAXP, &in);
        cr_assert_eq(rc, 0, "%s: router recv %d", s[i].label, rc);
        expect_rid(&in);
        assert_msg_eq(&s[i], &in.msg);

        /* ROUTER -> DEALER, addressed by the routing id just received */
        uint8_t rid[WIRE_ROUTING_ID_MAX];
        size_t rid_len = in.rid_len;
        memcpy(rid, in.rid, rid_len);
        wire_in_close(&in);
        cr_assert_eq(wire_send(router, rid, rid_len, &s[i].h, s[i].f, s[i].n), 0, "%s: reply", s[i].label);
        rc = recv_wait(dealer, false, MAXP, &in);
        cr_assert_eq(rc, 0, "%s: dealer recv %d", s[i].label, rc);
        cr_assert_eq(in.rid_len, 0);
        assert_msg_eq(&s[i], &in.msg);
        wire_in_close(&in);
    }
    cr_assert_eq(wire_recv(router, true, MAXP, &in), TREATY_ETIMEDOUT);
    cr_assert_eq(wire_recv(dealer, false, MAXP, &in), TREATY_ETIMEDOUT);
    close_pair(router, dealer);
}

Test(wire_socket, round_trip_inproc, .init = ctx_init, .fini = ctx_fini)
{
    round_trip_all("inproc://wire-test");
}

Test(wire_socket, round_trip_tcp, .init = ctx_init, .fini = ctx_fini)
{
    round_trip_all("tcp://127.0.0.1:*");
}

Test(wire_socket, nothing_waiting, .init = ctx_init, .fini = ctx_fini)
{
    void *router, *dealer;
    socket_pair("inproc://idle", &router, &dealer);
    static struct wire_in in;
    cr_assert_eq(wire_recv(router, true, MAXP, &in), TREATY_ETIMEDOUT);
    cr_assert_eq(wire_recv(dealer, false, MAXP, &in), TREATY_ETIMEDOUT);
    close_pair(router, dealer);
}

Test(wire_socket, submit_with_max_branches, .init = ctx_init, .fini = ctx_fini)
{
    void *router, *dealer;
    socket_pair("tcp://127.0.0.1:*", &router, &dealer);
    static struct wire_frame f[1 + 2 * WIRE_MAX_BRANCHES];
    static char names[WIRE_MAX_BRANCHES][16];
    static uint8_t payloads[WIRE_MAX_BRANCHES][64];
    uint8_t t4[4];
    wire_put_u32(t4, 30000);
    f[0] = fr(t4, 4);
    for (int i = 0; i < WIRE_MAX_BRANCHES; i++) {
        snprintf(names[i], sizeof names[i], "svc-%d", i);
        memset(payloads[i], i, sizeof payloads[i]);
        f[1 + 2 * i] = wire_str(names[i]);
        f[2 + 2 * i] = fr(payloads[i], (size_t)i % 64);
    }
    struct wire_hdr h = mkhdr(WIRE_SUBMIT, 0);
    cr_assert_eq(wire_send(dealer, NULL, 0, &h, f, NELEM(f)), 0);
    static struct wire_in in;
    cr_assert_eq(recv_wait(router, true, MAXP, &in), 0);
    expect_rid(&in);
    cr_assert_eq(in.msg.nframes, NELEM(f));
    for (size_t i = 0; i < NELEM(f); i++) {
        cr_assert_eq(in.msg.frames[i].len, f[i].len);
        if (f[i].len)
            cr_assert(memcmp(in.msg.frames[i].data, f[i].data, f[i].len) == 0);
    }
    wire_in_close(&in);
    close_pair(router, dealer);
}

/* Sends a QUERY and checks it arrives whole: the socket is still in step. */
static void expect_next_decodes(void *from, const uint8_t *rid, size_t rid_len, void *to, bool router)
{
    static struct wire_in in;
    struct wire_hdr q = mkhdr(WIRE_QUERY, 0);
    q.attempt = 42;
    cr_assert_eq(wire_send(from, rid, rid_len, &q, NULL, 0), 0);
    cr_assert_eq(recv_wait(to, router, MAXP, &in), 0);
    cr_assert_eq(in.msg.hdr.type, WIRE_QUERY);
    cr_assert_eq(in.msg.hdr.attempt, 42);
    cr_assert_arr_eq(in.msg.hdr.txid, TXID, 16);
    if (router)
        expect_rid(&in);
    wire_in_close(&in);
}

Test(wire_socket, too_many_frames_then_next_decodes, .init = ctx_init, .fini = ctx_fini)
{
    void *router, *dealer;
    socket_pair("tcp://127.0.0.1:*", &router, &dealer);
    static struct wire_frame f[WIRE_MAX_FRAMES + 50];
    for (size_t i = 0; i < NELEM(f); i++)
        f[i] = wire_str("abcd");
    static struct wire_in in;
    struct wire_hdr h = mkhdr(WIRE_PREPARE, 0);

    /* to the ROUTER: far too many, one too many, and the most there may be
     * (decoded, then refused for its shape) */
    const size_t counts[] = {NELEM(f), WIRE_MAX_FRAMES + 1, WIRE_MAX_FRAMES};
    const int want[] = {TREATY_ETOOBIG, TREATY_ETOOBIG, TREATY_EPROTO};
    for (size_t i = 0; i < NELEM(counts); i++) {
        cr_assert_eq(wire_send(dealer, NULL, 0, &h, f, counts[i]), 0);
        int rc = recv_wait(router, true, MAXP, &in);
        cr_assert_eq(rc, want[i], "%zu frames: %d", counts[i], rc);
        expect_rid(&in); /* valid for an error reply */
        expect_next_decodes(dealer, NULL, 0, router, true);
    }

    /* to the DEALER, likewise */
    const uint8_t *rid = (const uint8_t *)RID;
    const size_t dcounts[] = {NELEM(f), WIRE_MAX_FRAMES + 1, WIRE_MAX_FRAMES};
    const int dwant[] = {TREATY_ETOOBIG, TREATY_ETOOBIG, TREATY_EPROTO};
    for (size_t i = 0; i < NELEM(dcounts); i++) {
        cr_assert_eq(wire_send(router, rid, strlen(RID), &h, f, dcounts[i]), 0);
        int rc = recv_wait(dealer, false, MAXP, &in);
        cr_assert_eq(rc, dwant[i], "%zu frames: %d", dcounts[i], rc);
        expect_next_decodes(router, rid, strlen(RID), dealer, false);
    }
    close_pair(router, dealer);
}

Test(wire_socket, malformed_then_next_decodes, .init = ctx_init, .fini = ctx_fini)
{
    void *router, *dealer;
    socket_pair("inproc://malformed", &router, &dealer);
    static struct wire_in in;
    uint8_t b[WIRE_HDR_LEN];
    struct wire_hdr q = mkhdr(WIRE_QUERY, 0);

    /* bad magic: nothing of the previous message's header is left over */
    static const uint8_t zero[16];
    expect_next_decodes(dealer, NULL, 0, router, true);
    wire_encode_hdr(&q, b);
    b[0] = 'X';
    cr_assert_eq(zmq_send(dealer, b, sizeof b, 0), (int)sizeof b);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), TREATY_EPROTO);
    expect_rid(&in);
    cr_assert_arr_eq(in.msg.hdr.txid, zero, 16);
    expect_next_decodes(dealer, NULL, 0, router, true);

    /* a version-1 peer: the header, then its payload in ZeroMQ frames of
     * their own (more of them than wire_in keeps) */
    wire_encode_hdr(&q, b);
    b[2] = 1;
    cr_assert_eq(zmq_send(dealer, b, sizeof b, ZMQ_SNDMORE), (int)sizeof b);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(zmq_send(dealer, "x", 1, ZMQ_SNDMORE), 1);
    cr_assert_eq(zmq_send(dealer, "x", 1, 0), 1);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), TREATY_EVERSION);
    expect_rid(&in);
    expect_next_decodes(dealer, NULL, 0, router, true);

    /* this version's message followed by another ZeroMQ frame: refused,
     * with the header kept for the error reply */
    struct wire_frame x[] = {wire_str("payload")};
    struct wire_hdr pp = mkhdr(WIRE_PREPARE, 0);
    uint8_t packed[WIRE_HDR_LEN + 4 + 7];
    wire_pack(&pp, x, 1, packed);
    cr_assert_eq(zmq_send(dealer, packed, sizeof packed, ZMQ_SNDMORE), (int)sizeof packed);
    cr_assert_eq(zmq_send(dealer, "", 0, 0), 0);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), TREATY_EPROTO);
    expect_rid(&in);
    cr_assert_eq(in.msg.hdr.type, WIRE_PREPARE);
    cr_assert_arr_eq(in.msg.hdr.txid, TXID, 16);
    expect_next_decodes(dealer, NULL, 0, router, true);

    /* the same message alone decodes; with its frame length cut short not */
    cr_assert_eq(zmq_send(dealer, packed, sizeof packed, 0), (int)sizeof packed);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), 0);
    wire_in_close(&in);
    cr_assert_eq(zmq_send(dealer, packed, sizeof packed - 1, 0), (int)sizeof packed - 1);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), TREATY_EPROTO);
    expect_next_decodes(dealer, NULL, 0, router, true);

    /* an empty message, and a short header */
    cr_assert_eq(zmq_send(dealer, "", 0, 0), 0);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), TREATY_EPROTO);
    cr_assert_eq(zmq_send(dealer, b, 10, 0), 10);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), TREATY_EPROTO);
    expect_next_decodes(dealer, NULL, 0, router, true);

    /* an oversized payload frame */
    static uint8_t big[1025];
    struct wire_hdr p = mkhdr(WIRE_PREPARE, 0);
    struct wire_frame bf[] = {fr(big, sizeof big)};
    cr_assert_eq(wire_send(dealer, NULL, 0, &p, bf, 1), 0);
    cr_assert_eq(recv_wait(router, true, 1024, &in), TREATY_ETOOBIG);
    expect_rid(&in);
    cr_assert_arr_eq(in.msg.hdr.txid, TXID, 16); /* for the error reply */
    expect_next_decodes(dealer, NULL, 0, router, true);

    /* a bad shape towards the DEALER */
    struct wire_hdr v = mkhdr(WIRE_VOTE, 9);
    struct wire_frame r[] = {wire_str("")};
    cr_assert_eq(wire_send(router, (const uint8_t *)RID, strlen(RID), &v, r, 1), 0);
    cr_assert_eq(recv_wait(dealer, false, MAXP, &in), TREATY_EPROTO);
    expect_next_decodes(router, (const uint8_t *)RID, strlen(RID), dealer, false);
    close_pair(router, dealer);
}

/* ------------------------------------------------------------ bundles */

/* A bundle of the given entries (each a whole message's bytes). */
static size_t make_bundle(uint8_t *b, const uint8_t *const *msg, const size_t *len, size_t n)
{
    b[0] = 'T';
    b[1] = 'B';
    b[2] = WIRE_VERSION;
    b[3] = 0;
    size_t off = WIRE_BUNDLE_HDR_LEN;
    for (size_t i = 0; i < n; i++) {
        wire_put_u32(b + off, (uint32_t)len[i]);
        memcpy(b + off + 4, msg[i], len[i]);
        off += 4 + len[i];
    }
    return off;
}

Test(wire_bundle, entries_are_read_in_order_and_a_bad_one_spoils_only_itself_or_the_rest)
{
    struct wire_hdr q = mkhdr(WIRE_QUERY, 0), c = mkhdr(WIRE_COMMIT, 0);
    uint8_t mq[WIRE_HDR_LEN], mc[WIRE_HDR_LEN], bad[WIRE_HDR_LEN];
    wire_pack(&q, NULL, 0, mq);
    wire_pack(&c, NULL, 0, mc);
    memcpy(bad, mq, sizeof bad);
    bad[27] = 1; /* reserved bits */
    const uint8_t *msgs[] = {mq, bad, mc};
    const size_t lens[] = {sizeof mq, sizeof bad, sizeof mc};
    uint8_t b[256];
    size_t len = make_bundle(b, msgs, lens, 3);
    cr_assert(wire_is_bundle(b, len));
    size_t off = WIRE_BUNDLE_HDR_LEN;
    const uint8_t *m;
    size_t ml;
    struct wire_msg out;
    cr_assert_eq(wire_bundle_next(b, len, &off, &m, &ml), 0);
    cr_assert_eq(wire_unpack(m, ml, MAXP, &out), 0);
    cr_assert_eq(out.hdr.type, WIRE_QUERY);
    cr_assert_eq(wire_bundle_next(b, len, &off, &m, &ml), 0);
    cr_assert_eq(wire_unpack(m, ml, MAXP, &out), TREATY_EPROTO, "the bad entry");
    cr_assert_eq(wire_bundle_next(b, len, &off, &m, &ml), 0, "the entry after it still reads");
    cr_assert_eq(wire_unpack(m, ml, MAXP, &out), 0);
    cr_assert_eq(out.hdr.type, WIRE_COMMIT);
    cr_assert_eq(off, len);
    cr_assert_eq(wire_bundle_next(b, len, &off, &m, &ml), TREATY_EPROTO, "nothing after the end");

    /* an entry length past the end: that entry and nothing after it */
    wire_put_u32(b + WIRE_BUNDLE_HDR_LEN + 4 + sizeof mq, 1000);
    off = WIRE_BUNDLE_HDR_LEN;
    cr_assert_eq(wire_bundle_next(b, len, &off, &m, &ml), 0);
    cr_assert_eq(wire_bundle_next(b, len, &off, &m, &ml), TREATY_EPROTO);
    cr_assert_eq(off, len);

    /* headers: another version, reserved bits, no entry, a length cut short */
    uint8_t h[WIRE_BUNDLE_HDR_LEN + 3];
    len = make_bundle(h, NULL, NULL, 0);
    const struct {
        size_t at;
        uint8_t v;
        size_t len;
        int want;
    } cases[] = {{2, WIRE_VERSION - 1, 4, TREATY_EVERSION},
                 {2, WIRE_VERSION + 1, 4, TREATY_EVERSION},
                 {3, 1, 4, TREATY_EPROTO},
                 {0, 'T', 4, TREATY_EPROTO},
                 {0, 'T', 7, TREATY_EPROTO},
                 {0, 'T', 3, TREATY_EPROTO}};
    for (size_t i = 0; i < NELEM(cases); i++) {
        make_bundle(h, NULL, NULL, 0);
        memset(h + WIRE_BUNDLE_HDR_LEN, 0, 3);
        h[cases[i].at] = cases[i].v;
        off = WIRE_BUNDLE_HDR_LEN;
        cr_assert_eq(wire_bundle_next(h, cases[i].len, &off, &m, &ml), cases[i].want, "case %zu", i);
        cr_assert_eq(off, cases[i].len);
    }

    /* a bundle inside a bundle is not a message */
    const uint8_t *outer[] = {b};
    const size_t outer_len[] = {WIRE_BUNDLE_HDR_LEN + 4 + sizeof mq};
    uint8_t nest[512];
    size_t nl = make_bundle(nest, outer, outer_len, 1);
    off = WIRE_BUNDLE_HDR_LEN;
    cr_assert_eq(wire_bundle_next(nest, nl, &off, &m, &ml), 0);
    cr_assert_eq(wire_unpack(m, ml, MAXP, &out), TREATY_EPROTO);
}

/* Receives n messages from sock (waiting up to 5 s each) and checks their
 * attempts are first, first + 1, ... */
static void expect_attempts(void *sock, bool router, struct wire_in *in, unsigned first, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        int rc = recv_wait(sock, router, MAXP, in);
        cr_assert_eq(rc, 0, "message %u: %d", i, rc);
        cr_assert_eq(in->msg.hdr.attempt, first + i, "message %u out of order: attempt %u", i, in->msg.hdr.attempt);
        if (router)
            expect_rid(in);
        wire_in_close(in);
    }
}

Test(wire_bundle, a_batch_arrives_whole_and_in_order_with_one_zeromq_frame_per_peer, .init = ctx_init, .fini = ctx_fini)
{
    void *router, *dealer;
    socket_pair("tcp://127.0.0.1:*", &router, &dealer);
    static struct wire_in in;
    struct wire_batch *b = wire_batch_new();
    cr_assert_not_null(b);
    struct wire_frame payload[] = {wire_str("payload")};

    /* DEALER -> ROUTER: 100 PREPAREs in one bundle, then a flush */
    for (unsigned i = 0; i < 100; i++) {
        struct wire_hdr h = mkhdr(WIRE_PREPARE, 0);
        h.attempt = (uint16_t)i;
        cr_assert_eq(wire_batch_send(b, dealer, NULL, 0, &h, payload, 1), 0);
    }
    cr_assert_not(wire_batch_empty(b));
    zmq_pollitem_t it = {router, 0, ZMQ_POLLIN, 0};
    cr_assert_eq(zmq_poll(&it, 1, 200), 0, "held until the flush");
    cr_assert_eq(wire_batch_flush(b, dealer), 0);
    cr_assert(wire_batch_empty(b));
    expect_attempts(router, true, &in, 0, 1);
    cr_assert(wire_in_pending(&in), "the rest of the bundle is held, not on the socket");
    expect_attempts(router, true, &in, 1, 99);
    cr_assert_not(wire_in_pending(&in));
    cr_assert_eq(wire_recv(router, true, MAXP, &in), TREATY_ETIMEDOUT);

    /* ROUTER -> DEALER: by routing id; one message alone goes without the
     * bundle around it (a version-2 message as wire_send sends it) */
    struct wire_hdr h = mkhdr(WIRE_COMMIT, 0);
    h.attempt = 7;
    cr_assert_eq(wire_batch_send(b, router, (const uint8_t *)RID, strlen(RID), &h, NULL, 0), 0);
    cr_assert_eq(wire_batch_flush(b, router), 0);
    zmq_msg_t raw;
    zmq_msg_init(&raw);
    zmq_pollitem_t dt = {dealer, 0, ZMQ_POLLIN, 0};
    cr_assert_eq(zmq_poll(&dt, 1, 5000), 1);
    cr_assert_eq(zmq_msg_recv(&raw, dealer, 0), WIRE_HDR_LEN);
    cr_assert_eq(((const uint8_t *)zmq_msg_data(&raw))[1], 'Y', "not a bundle");
    zmq_msg_close(&raw);

    /* a message over WIRE_BUNDLE_BYTES goes alone, after what was held */
    static uint8_t big[WIRE_BUNDLE_BYTES];
    struct wire_frame bf[] = {fr(big, sizeof big)};
    for (unsigned i = 0; i < 3; i++) {
        struct wire_hdr p = mkhdr(WIRE_PREPARE, 0);
        p.attempt = (uint16_t)i;
        cr_assert_eq(wire_batch_send(b, dealer, NULL, 0, &p, i == 1 ? bf : payload, 1), 0);
    }
    cr_assert_eq(wire_batch_flush(b, dealer), 0);
    expect_attempts(router, true, &in, 0, 3);

    /* bundles are filled up to WIRE_BUNDLE_BYTES: many messages of 10 KiB
     * each still arrive whole and in order */
    static uint8_t ten[10240];
    struct wire_frame tf[] = {fr(ten, sizeof ten)};
    for (unsigned i = 0; i < 40; i++) {
        struct wire_hdr p = mkhdr(WIRE_PREPARE, 0);
        p.attempt = (uint16_t)i;
        cr_assert_eq(wire_batch_send(b, dealer, NULL, 0, &p, tf, 1), 0);
    }
    cr_assert_eq(wire_batch_flush(b, dealer), 0);
    expect_attempts(router, true, &in, 0, 40);

    /* a bundle bigger than any sender makes is refused whole, for the
     * sender's routing id, and the next message decodes */
    static uint8_t huge[WIRE_BUNDLE_BYTES + 256]; /* 4 + 2,050 entries of 32 bytes: 65,604 */
    struct wire_hdr hq = mkhdr(WIRE_QUERY, 0);
    uint8_t mq[WIRE_HDR_LEN];
    wire_pack(&hq, NULL, 0, mq);
    const uint8_t *hm[WIRE_BUNDLE_BYTES / 32 + 2];
    size_t hl[NELEM(hm)];
    for (size_t i = 0; i < NELEM(hm); i++) {
        hm[i] = mq;
        hl[i] = sizeof mq;
    }
    size_t hlen = make_bundle(huge, hm, hl, NELEM(hm));
    cr_assert_gt(hlen, WIRE_BUNDLE_BYTES);
    cr_assert_eq(zmq_send(dealer, huge, hlen, 0), (int)hlen);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), TREATY_ETOOBIG);
    expect_rid(&in);
    cr_assert_not(wire_in_pending(&in));
    expect_next_decodes(dealer, NULL, 0, router, true);

    /* a bundle's rest is let go of with the wire_in (ASan and valgrind see a leak otherwise) */
    for (unsigned i = 0; i < 3; i++)
        cr_assert_eq(wire_batch_send(b, dealer, NULL, 0, &h, NULL, 0), 0);
    cr_assert_eq(wire_batch_flush(b, dealer), 0);
    cr_assert_eq(recv_wait(router, true, MAXP, &in), 0);
    wire_in_close(&in);
    cr_assert(wire_in_pending(&in));
    wire_in_discard(&in);
    cr_assert_not(wire_in_pending(&in));
    wire_batch_free(&b);
    cr_assert_null(b);
    close_pair(router, dealer);
}

Test(wire_bundle, more_peers_than_a_batch_holds_are_all_served, .init = ctx_init, .fini = ctx_fini)
{
    /* one ROUTER, WIRE_BATCH_PEERS + 6 DEALERs, a message for each in turn,
     * twice: every DEALER gets its two in order */
    enum { N = WIRE_BATCH_PEERS + 6 };
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
    cr_assert_eq(zmq_bind(router, "inproc://many"), 0);
    static void *dealer[N];
    char rid[N][16];
    for (int i = 0; i < N; i++) {
        dealer[i] = zmq_socket(ctx, ZMQ_DEALER);
        zmq_setsockopt(dealer[i], ZMQ_LINGER, &zero, sizeof zero);
        snprintf(rid[i], sizeof rid[i], "d%d", i);
        zmq_setsockopt(dealer[i], ZMQ_ROUTING_ID, rid[i], strlen(rid[i]));
        cr_assert_eq(zmq_connect(dealer[i], "inproc://many"), 0);
    }
    struct wire_batch *b = wire_batch_new();
    for (unsigned round = 0; round < 2; round++)
        for (int i = 0; i < N; i++) {
            struct wire_hdr h = mkhdr(WIRE_COMMIT, 0);
            h.attempt = (uint16_t)round;
            cr_assert_eq(wire_batch_send(b, router, (const uint8_t *)rid[i], strlen(rid[i]), &h, NULL, 0), 0);
        }
    cr_assert_eq(wire_batch_flush(b, router), 0);
    static struct wire_in in;
    for (int i = 0; i < N; i++) {
        expect_attempts(dealer[i], false, &in, 0, 2);
        cr_assert_eq(wire_recv(dealer[i], false, MAXP, &in), TREATY_ETIMEDOUT);
        zmq_close(dealer[i]);
    }
    wire_batch_free(&b);
    zmq_close(router);
}

/* ------------------------------------------------------------ txids */

Test(txid, format_parse_round_trip)
{
    treaty_txid_t id, back;
    char buf[TREATY_TXID_STRLEN];
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(treaty_txid_generate(&id), 0);
        cr_assert_eq(id.b[6] >> 4, 7, "UUID version 7");
        cr_assert_eq(id.b[8] & 0xc0, 0x80, "RFC 9562 variant");
        cr_assert_eq(treaty_txid_format(&id, buf), buf);
        cr_assert_eq(strlen(buf), 36);
        cr_assert_eq(treaty_txid_parse(buf, &back), 0);
        cr_assert_arr_eq(back.b, id.b, 16);
    }
    memcpy(id.b, TXID, 16);
    treaty_txid_format(&id, buf);
    cr_assert_str_eq(buf, "12345678-9abc-4def-8001-0203feff007f");
}

/* The coordinator refuses a txid older than its window, so a txid must say
 * when it was made: UUIDv7, Unix milliseconds in the first 48 bits. */
Test(txid, generated_txids_carry_their_creation_time)
{
    struct timespec a, b;
    treaty_txid_t id, prev;
    clock_gettime(CLOCK_REALTIME, &a);
    cr_assert_eq(treaty_txid_generate(&prev), 0);
    for (int i = 0; i < 1000; i++) {
        cr_assert_eq(treaty_txid_generate(&id), 0);
        long long t = treaty_txid_time_ms(&id);
        cr_assert_geq(t, treaty_txid_time_ms(&prev), "time-ordered");
        cr_assert_neq(memcmp(id.b, prev.b, 16), 0, "unique");
        prev = id;
    }
    clock_gettime(CLOCK_REALTIME, &b);
    long long lo = (long long)a.tv_sec * 1000 + a.tv_nsec / 1000000,
              hi = (long long)b.tv_sec * 1000 + b.tv_nsec / 1000000;
    cr_assert(treaty_txid_time_ms(&id) >= lo && treaty_txid_time_ms(&id) <= hi, "time %lld not in [%lld, %lld]",
              treaty_txid_time_ms(&id), lo, hi);
    /* A version 4 txid (the former format) carries no time. */
    treaty_txid_t v4;
    memcpy(v4.b, TXID, 16);
    cr_assert_eq(treaty_txid_time_ms(&v4), -1);
    cr_assert_eq(treaty_txid_time_ms(NULL), -1);
    cr_assert_eq(treaty_txid_generate(NULL), TREATY_EINVAL);
}

Test(txid, parse_any_case)
{
    treaty_txid_t a, b;
    cr_assert_eq(treaty_txid_parse("12345678-9ABC-4DEF-8001-0203FEFF007F", &a), 0);
    cr_assert_eq(treaty_txid_parse("12345678-9abc-4def-8001-0203feff007f", &b), 0);
    cr_assert_arr_eq(a.b, TXID, 16);
    cr_assert_arr_eq(b.b, TXID, 16);
    cr_assert_eq(treaty_txid_parse("00000000-0000-0000-0000-000000000000", &a), 0);
    cr_assert_eq(treaty_txid_parse("ffffffff-ffff-ffff-ffff-ffffffffffff", &a), 0);
    for (int i = 0; i < 16; i++)
        cr_assert_eq(a.b[i], 0xff);
}

Test(txid, parse_rejects_invalid)
{
    const char *bad[] = {
        "",
        "12345678-9abc-4def-8001-0203feff007",   /* 35 */
        "12345678-9abc-4def-8001-0203feff007f0", /* 37 */
        "12345678-9abc-4def-8001-0203feff007g",  /* not hex */
        "12345678_9abc-4def-8001-0203feff007f",  /* separator */
        "123456789abc-4def-8001-0203feff007f-",  /* dash moved */
        "12345678-9abc-4def-80010-203feff007f",  /* dash moved */
        "123456789abc4def80010203feff007f",      /* no dashes */
        "{2345678-9abc-4def-8001-0203feff007f}", /* braces */
        " 2345678-9abc-4def-8001-0203feff007f",  /* space */
        "12345678-9abc-4def-8001-0203feff00 f",
        "12345678-9abc-4def-8001-0203feff00-f",
        "+2345678-9abc-4def-8001-0203feff007f",
        "0x345678-9abc-4def-8001-0203feff007f",
    };
    treaty_txid_t id;
    for (size_t i = 0; i < NELEM(bad); i++)
        cr_assert_eq(treaty_txid_parse(bad[i], &id), TREATY_EINVAL, "\"%s\"", bad[i]);
    cr_assert_eq(treaty_txid_parse(NULL, &id), TREATY_EINVAL);
    cr_assert_eq(treaty_txid_parse("12345678-9abc-4def-8001-0203feff007f", NULL), TREATY_EINVAL);
}

/* ------------------------------------------------------------ errors */

Test(errors, strerror_and_name_for_every_code)
{
    struct {
        int code;
        const char *name;
        const char *msg;
    } all[] = {
#define X_ROW(name, value, msg) {value, "TREATY_" #name, msg},
        TREATY_ERRNO_MAP(X_ROW)
#undef X_ROW
    };
    for (size_t i = 0; i < NELEM(all); i++) {
        cr_assert_lt(all[i].code, 0, "%s is not negative", all[i].name);
        cr_assert_str_eq(treaty_err_name(all[i].code), all[i].name);
        cr_assert_str_eq(treaty_strerror(all[i].code), all[i].msg);
        cr_assert_str_neq(treaty_strerror(all[i].code), "unknown error");
        for (size_t j = 0; j < i; j++)
            cr_assert_neq(all[i].code, all[j].code, "%s and %s share a value", all[i].name, all[j].name);
    }
    /* the values are part of the ABI: never renumbered */
    cr_assert_eq(TREATY_EINVAL, -1);
    cr_assert_eq(TREATY_EPROTO, -4);
    cr_assert_eq(TREATY_ETOOBIG, -5);
    cr_assert_eq(TREATY_EBUSY, -9);
    cr_assert_eq(TREATY_EVERSION, -11);
    cr_assert_eq(TREATY_ECONFIG, -12);
    cr_assert_eq(TREATY_EIO, -14);
    cr_assert_eq(TREATY_EEXPIRED, -15);
    cr_assert_eq(TREATY_EAUTH, -16);

    cr_assert_str_eq(treaty_strerror(0), "success");
    cr_assert_str_eq(treaty_err_name(0), "TREATY_OK");
    const int unknown[] = {1, 4, -17, -99, -1000, 0x7fffffff, -0x7fffffff - 1};
    for (size_t i = 0; i < NELEM(unknown); i++) {
        cr_assert_str_eq(treaty_strerror(unknown[i]), "unknown error");
        cr_assert_str_eq(treaty_err_name(unknown[i]), "TREATY_E?");
    }
}

Test(errors, status_names)
{
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_NONE), "none");
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_COMMITTED), "committed");
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_ABORTED), "aborted");
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_PENDING), "pending");
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_UNKNOWN), "unknown");
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_COMPLETED), "completed");
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_COMPENSATED), "compensated");
    cr_assert_str_eq(treaty_status_name(TREATY_STATUS_STUCK), "stuck");
    cr_assert_str_eq(treaty_status_name((enum treaty_status)99), "?");
}
