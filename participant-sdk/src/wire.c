/*
 * wire.c - the codec described in wire.h.
 */
#include "wire.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "treaty.h"

static bool netfault_on(void);
static int netfault_send(void *sock, const uint8_t *rid, size_t rid_len, uint8_t type, zmq_msg_t *m);
enum nf_act { NF_PASS, NF_DROP, NF_DUP, NF_DELAY };
static enum nf_act nf_draw(uint8_t type);
static int nf_hold(void *sock, const uint8_t *rid, size_t rid_len, zmq_msg_t *m);
static void netfault_release(void *sock);

static const char *const type_names[] = {
    "?",    "HELLO",  "WELCOME", "SUBMIT", "QUERY",   "OUTCOME", "ERROR", "PREPARE",
    "VOTE", "COMMIT", "ABORT",   "ACK",    "INQUIRE", "SAGA",    "STEP",  "RESULT",
};

const char *wire_type_name(int type)
{
    if (type < 1 || type > WIRE_TYPE_MAX_)
        return "?";
    return type_names[type];
}

static void put_u16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static uint16_t get_u16(const uint8_t *b)
{
    return (uint16_t)((b[0] << 8) | b[1]);
}

static uint32_t get_u32(const uint8_t *b)
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

void wire_put_u32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

bool wire_get_u32(const struct wire_frame *f, uint32_t *v)
{
    if (f->len != 4)
        return false;
    *v = get_u32(f->data);
    return true;
}

void wire_encode_policy(const struct wire_policy *p, uint8_t b[WIRE_POLICY_LEN])
{
    put_u16(b, p->group);
    put_u16(b + 2, p->max_attempts);
    wire_put_u32(b + 4, p->first_backoff_ms);
    wire_put_u32(b + 8, p->max_backoff_ms);
    wire_put_u32(b + 12, p->try_timeout_ms);
}

bool wire_decode_policy(const struct wire_frame *f, struct wire_policy *out)
{
    if (f->len != WIRE_POLICY_LEN)
        return false;
    const uint8_t *b = f->data;
    out->group = get_u16(b);
    out->max_attempts = get_u16(b + 2);
    out->first_backoff_ms = get_u32(b + 4);
    out->max_backoff_ms = get_u32(b + 8);
    out->try_timeout_ms = get_u32(b + 12);
    return true;
}

void wire_encode_hdr(const struct wire_hdr *h, uint8_t *b)
{
    b[0] = 'T';
    b[1] = 'Y';
    b[2] = WIRE_VERSION;
    b[3] = h->type;
    memcpy(b + 4, h->txid, 16);
    put_u16(b + 20, h->branch);
    put_u16(b + 22, h->attempt);
    put_u16(b + 24, h->code);
    put_u16(b + 26, 0);
}

bool wire_name_ok(const uint8_t *s, size_t len)
{
    if (len == 0 || len > WIRE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                  c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Frame-count rule per type: exact count, or for SUBMIT 1 + 2k with 1 <= k. */
static int check_frames(const struct wire_msg *m)
{
    size_t n = m->nframes;
    const struct wire_frame *f = m->frames;
    uint32_t u;

    switch (m->hdr.type) {
    case WIRE_HELLO:
        if (n != 2 || !wire_name_ok(f[0].data, f[0].len) || !wire_name_ok(f[1].data, f[1].len))
            return TREATY_EPROTO;
        return 0;
    case WIRE_WELCOME:
        return (n == 1 && wire_get_u32(&f[0], &u)) ? 0 : TREATY_EPROTO;
    case WIRE_SUBMIT:
        if (n < 3 || (n - 1) % 2 != 0 || !wire_get_u32(&f[0], &u))
            return TREATY_EPROTO;
        if ((n - 1) / 2 > WIRE_MAX_BRANCHES) /* WIRE_MAX_FRAMES no longer bounds it (sagas need more) */
            return TREATY_ETOOBIG;
        for (size_t i = 1; i < n; i += 2)
            if (!wire_name_ok(f[i].data, f[i].len))
                return TREATY_EPROTO;
        return 0;
    case WIRE_QUERY:
    case WIRE_COMMIT:
    case WIRE_ABORT:
    case WIRE_INQUIRE:
        return n == 0 ? 0 : TREATY_EPROTO;
    case WIRE_ACK:
        if (n != 0 || (m->hdr.code != TREATY_STATUS_COMMITTED && m->hdr.code != TREATY_STATUS_ABORTED))
            return TREATY_EPROTO;
        return 0;
    case WIRE_OUTCOME:
        if (n != 1 || m->hdr.code < TREATY_STATUS_COMMITTED || m->hdr.code > TREATY_STATUS_STUCK)
            return TREATY_EPROTO;
        return 0;
    case WIRE_SAGA: {
        if (n < 1 + WIRE_SAGA_FRAMES_PER_STEP || (n - 1) % WIRE_SAGA_FRAMES_PER_STEP != 0 || !wire_get_u32(&f[0], &u))
            return TREATY_EPROTO;
        struct wire_policy pol;
        for (size_t i = 1; i < n; i += WIRE_SAGA_FRAMES_PER_STEP) {
            if (!wire_name_ok(f[i].data, f[i].len) || !wire_name_ok(f[i + 1].data, f[i + 1].len) ||
                !wire_name_ok(f[i + 3].data, f[i + 3].len) || !wire_decode_policy(&f[i + 5], &pol))
                return TREATY_EPROTO;
        }
        return 0;
    }
    case WIRE_STEP:
        if (n != 2 || (m->hdr.code != WIRE_STEP_ACTION && m->hdr.code != WIRE_STEP_COMPENSATION) ||
            !wire_name_ok(f[0].data, f[0].len))
            return TREATY_EPROTO;
        return 0;
    case WIRE_RESULT: {
        unsigned kind = WIRE_RESULT_KIND(m->hdr.code), r = WIRE_RESULT_VALUE(m->hdr.code);
        if (n != 1 || (kind != WIRE_STEP_ACTION && kind != WIRE_STEP_COMPENSATION) || r < WIRE_RESULT_OK ||
            r > WIRE_RESULT_TRANSIENT)
            return TREATY_EPROTO;
        return 0;
    }
    case WIRE_ERROR:
        return n == 1 ? 0 : TREATY_EPROTO;
    case WIRE_PREPARE:
        return n == 1 ? 0 : TREATY_EPROTO;
    case WIRE_VOTE:
        if (n != 1 || (m->hdr.code != TREATY_VOTE_YES && m->hdr.code != TREATY_VOTE_NO))
            return TREATY_EPROTO;
        return 0;
    default:
        return TREATY_EPROTO;
    }
}

/* Decodes the header b[len] into out->hdr (all zero on an error) and sets
 * out->nframes to 0. */
static int decode_hdr(const uint8_t *b, size_t len, struct wire_msg *out)
{
    memset(&out->hdr, 0, sizeof out->hdr);
    out->nframes = 0;
    if (len != WIRE_HDR_LEN || b == NULL)
        return TREATY_EPROTO;
    if (b[0] != 'T' || b[1] != 'Y')
        return TREATY_EPROTO;
    if (b[2] != WIRE_VERSION)
        return TREATY_EVERSION;
    if (b[3] < 1 || b[3] > WIRE_TYPE_MAX_ || get_u16(b + 26) != 0)
        return TREATY_EPROTO;
    out->hdr.type = b[3];
    memcpy(out->hdr.txid, b + 4, 16);
    out->hdr.branch = get_u16(b + 20);
    out->hdr.attempt = get_u16(b + 22);
    out->hdr.code = get_u16(b + 24);
    return 0;
}

int wire_decode(const struct wire_frame *hdr, const struct wire_frame *frames, size_t nframes, size_t max_payload,
                struct wire_msg *out)
{
    int rc = decode_hdr(hdr->data, hdr->len, out);
    if (rc != 0)
        return rc;
    if (nframes > WIRE_MAX_FRAMES)
        return TREATY_ETOOBIG;
    out->nframes = nframes;
    for (size_t i = 0; i < nframes; i++) {
        if (frames[i].len > max_payload)
            return TREATY_ETOOBIG;
        if (frames[i].len > 0 && frames[i].data == NULL)
            return TREATY_EPROTO;
        out->frames[i] = frames[i];
    }
    return check_frames(out);
}

int wire_unpack(const uint8_t *buf, size_t len, size_t max_payload, struct wire_msg *out)
{
    int rc = decode_hdr(buf, len < WIRE_HDR_LEN ? len : WIRE_HDR_LEN, out);
    if (rc != 0)
        return rc;
    size_t off = WIRE_HDR_LEN, n = 0;
    while (off < len) {
        if (len - off < 4)
            return TREATY_EPROTO;
        size_t flen = get_u32(buf + off);
        off += 4;
        if (n == WIRE_MAX_FRAMES || flen > max_payload)
            return TREATY_ETOOBIG;
        if (flen > len - off)
            return TREATY_EPROTO;
        out->frames[n].data = buf + off;
        out->frames[n].len = flen;
        out->nframes = ++n;
        off += flen;
    }
    return check_frames(out);
}

uint64_t wire_message_max(size_t max_payload)
{
    const uint64_t p = max_payload, name = WIRE_NAME_MAX, len = 4;
    uint64_t submit = len + 4 + WIRE_MAX_BRANCHES * (len + name + len + p);
    uint64_t saga = len + 4 + WIRE_MAX_STEPS * (WIRE_SAGA_FRAMES_PER_STEP * len + 3 * name + 2 * p + WIRE_POLICY_LEN);
    uint64_t other = 2 * (len + (name > p ? name : p)); /* HELLO, STEP: two frames; the rest one */
    uint64_t most = submit > saga ? submit : saga;
    return WIRE_HDR_LEN + (most > other ? most : other);
}

bool wire_is_bundle(const uint8_t *buf, size_t len)
{
    return len >= 2 && buf[0] == 'T' && buf[1] == 'B';
}

int wire_bundle_next(const uint8_t *buf, size_t len, size_t *off, const uint8_t **msg, size_t *msg_len)
{
    if (*off == 0) { /* a caller's mistake: the header is not an entry */
        *off = len;
        return TREATY_EPROTO;
    }
    if (*off == WIRE_BUNDLE_HDR_LEN) {
        if (len < WIRE_BUNDLE_HDR_LEN || !wire_is_bundle(buf, len) || buf[3] != 0) {
            *off = len;
            return TREATY_EPROTO;
        }
        if (buf[2] != WIRE_VERSION) {
            *off = len;
            return TREATY_EVERSION;
        }
    }
    if (*off >= len || len - *off < 4) {
        *off = len;
        return TREATY_EPROTO;
    }
    size_t at = *off;
    size_t n = get_u32(buf + at);
    at += 4;
    if (n > len - at) {
        *off = len;
        return TREATY_EPROTO;
    }
    *msg = buf + at;
    *msg_len = n;
    *off = at + n;
    return 0;
}

size_t wire_packed_len(const struct wire_frame *frames, size_t nframes)
{
    size_t n = WIRE_HDR_LEN;
    for (size_t i = 0; i < nframes; i++)
        n += 4 + frames[i].len;
    return n;
}

void wire_pack(const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes, uint8_t *buf)
{
    wire_encode_hdr(h, buf);
    uint8_t *p = buf + WIRE_HDR_LEN;
    for (size_t i = 0; i < nframes; i++) {
        wire_put_u32(p, (uint32_t)frames[i].len);
        if (frames[i].len)
            memcpy(p + 4, frames[i].data, frames[i].len);
        p += 4 + frames[i].len;
    }
}

/* ------------------------------------------------------------ socket I/O */

static void close_parts(struct wire_in *in)
{
    for (size_t i = 0; i < in->nparts; i++)
        zmq_msg_close(&in->parts[i]);
    in->nparts = 0;
}

void wire_in_close(struct wire_in *in)
{
    if (wire_in_pending(in))
        return;
    close_parts(in);
    in->bundle_off = in->bundle_len = 0;
}

bool wire_in_pending(const struct wire_in *in)
{
    return in->bundle_off < in->bundle_len;
}

void wire_in_discard(struct wire_in *in)
{
    close_parts(in);
    in->bundle_off = in->bundle_len = 0;
}

/* The next message of the bundle in holds, into in->msg. */
static int next_in_bundle(struct wire_in *in, size_t max_payload)
{
    zmq_msg_t *body = &in->parts[in->nparts - 1];
    const uint8_t *m = NULL;
    size_t mlen = 0;
    memset(&in->msg.hdr, 0, sizeof in->msg.hdr);
    in->msg.nframes = 0;
    int rc = wire_bundle_next(zmq_msg_data(body), in->bundle_len, &in->bundle_off, &m, &mlen);
    if (rc == 0)
        rc = wire_unpack(m, mlen, max_payload, &in->msg);
    if (rc < 0 && !wire_in_pending(in))
        wire_in_discard(in); /* the last of the bundle was at fault: nothing to close later */
    return rc;
}

int wire_recv(void *sock, bool router, size_t max_payload, struct wire_in *in)
{
    const size_t want = router ? 2 : 1; /* the routing id, the message */
    size_t extra = 0;                   /* ZeroMQ frames past those */

    if (wire_in_pending(in)) /* the rest of a bundle first; in->rid and user_id are its sender's */
        return next_in_bundle(in, max_payload);
    in->bundle_off = in->bundle_len = 0;
    in->nparts = 0;
    in->rid_len = 0;
    in->user_id[0] = '\0';
    memset(&in->msg.hdr, 0, sizeof in->msg.hdr);
    in->msg.nframes = 0;
    if (netfault_on())
        netfault_release(sock);
    for (;;) {
        zmq_msg_t scratch;
        zmq_msg_t *part = in->nparts < want ? &in->parts[in->nparts] : &scratch;
        zmq_msg_init(part);
        /* only the first part may be missing; the rest of a message arrives with it */
        int flags = in->nparts == 0 ? ZMQ_DONTWAIT : 0;
        if (zmq_msg_recv(part, sock, flags) < 0) {
            int e = errno;
            zmq_msg_close(part);
            if (in->nparts == 0 && (e == EAGAIN || e == EINTR))
                return TREATY_ETIMEDOUT;
            close_parts(in);
            return TREATY_ETRANSPORT;
        }
        int more = zmq_msg_more(part);
        if (part == &scratch) {
            extra++;
            zmq_msg_close(part);
        } else {
            in->nparts++;
        }
        if (!more)
            break;
    }

    size_t first = 0;
    if (router) {
        size_t l = zmq_msg_size(&in->parts[0]);
        if (l == 0 || l > WIRE_ROUTING_ID_MAX) {
            close_parts(in);
            return TREATY_EPROTO;
        }
        memcpy(in->rid, zmq_msg_data(&in->parts[0]), l);
        in->rid_len = l;
        first = 1;
        /* Every part of a message from a connection carries its properties;
         * read them from the first part the peer sent. */
        const char *uid = in->want_user_id ? zmq_msg_gets(&in->parts[in->nparts > 1 ? 1 : 0], "User-Id") : NULL;
        if (uid != NULL) {
            size_t n = strnlen(uid, WIRE_USER_ID_MAX);
            memcpy(in->user_id, uid, n);
            in->user_id[n] = '\0';
        }
    }
    if (in->nparts <= first) {
        close_parts(in);
        return TREATY_EPROTO;
    }
    zmq_msg_t *body = &in->parts[first];
    if (extra == 0 && wire_is_bundle(zmq_msg_data(body), zmq_msg_size(body))) {
        if (zmq_msg_size(body) > WIRE_BUNDLE_BYTES) {
            /* no sender makes one: refused whole, so that one peer's frame
             * cannot hold up everyone else's messages for long */
            close_parts(in);
            return TREATY_ETOOBIG;
        }
        in->bundle_off = WIRE_BUNDLE_HDR_LEN;
        in->bundle_len = zmq_msg_size(body);
        return next_in_bundle(in, max_payload);
    }
    int rc = wire_unpack(zmq_msg_data(body), zmq_msg_size(body), max_payload, &in->msg);
    if (rc == 0 && extra > 0)
        rc = TREATY_EPROTO; /* this version's header, then more ZeroMQ frames */
    if (rc < 0) {
        /* in->msg.hdr keeps the txid for an error reply when it decoded that far */
        close_parts(in);
        return rc;
    }
    return 0;
}

/* The plain send, without the fault filter: the routing id when rid is
 * given, then m. m is sent or closed. */
static int send_msg(void *sock, const uint8_t *rid, size_t rid_len, zmq_msg_t *m)
{
    /* ZMQ_DONTWAIT on both parts: a multipart message is queued atomically
     * once its first part is accepted. */
    if ((rid != NULL && zmq_send(sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) ||
        zmq_msg_send(m, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(m);
        return TREATY_ETRANSPORT;
    }
    return 0;
}

/* TREATY_ETOOBIG when a frame is longer than its u32 length can say. */
static int frames_fit(const struct wire_frame *frames, size_t nframes)
{
    for (size_t i = 0; i < nframes; i++)
        if (frames[i].len > WIRE_FRAME_LEN_MAX)
            return TREATY_ETOOBIG;
    return 0;
}

/* m: a new ZeroMQ message holding h and the frames packed (mlen bytes). */
static int pack_msg(zmq_msg_t *m, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes,
                    size_t mlen)
{
    if (zmq_msg_init_size(m, mlen) != 0)
        return TREATY_ETRANSPORT;
    wire_pack(h, frames, nframes, zmq_msg_data(m));
    return 0;
}

int wire_send(void *sock, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h, const struct wire_frame *frames,
              size_t nframes)
{
    zmq_msg_t m;
    int rc = frames_fit(frames, nframes);
    if (rc == 0)
        rc = pack_msg(&m, h, frames, nframes, wire_packed_len(frames, nframes));
    if (rc != 0)
        return rc;
    if (netfault_on())
        return netfault_send(sock, rid, rid_len, h->type, &m);
    return send_msg(sock, rid, rid_len, &m);
}

/* ------------------------------------------------------------ bundles */

struct batch_peer {
    bool has_rid;
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    uint8_t *buf; /* the bundle: header, then entries */
    size_t len, cap;
    unsigned count; /* messages in it */
};

struct wire_batch {
    struct batch_peer peer[WIRE_BATCH_PEERS];
    unsigned npeers; /* peer[0..npeers) hold messages */
};

struct wire_batch *wire_batch_new(void)
{
    return calloc(1, sizeof(struct wire_batch));
}

void wire_batch_free(struct wire_batch **b)
{
    if (b == NULL || *b == NULL)
        return;
    for (unsigned i = 0; i < WIRE_BATCH_PEERS; i++)
        free((*b)->peer[i].buf);
    free(*b);
    *b = NULL;
}

bool wire_batch_empty(const struct wire_batch *b)
{
    return b->npeers == 0;
}

/* Sends buf[len] to rid (when has_rid) as one ZeroMQ message. */
static int send_bytes(void *sock, const uint8_t *rid, size_t rid_len, const uint8_t *buf, size_t len)
{
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, len) != 0)
        return TREATY_ETRANSPORT;
    if (len)
        memcpy(zmq_msg_data(&m), buf, len);
    return send_msg(sock, rid, rid_len, &m);
}

/* Sends what peer q holds and empties it; returns the messages lost. */
static size_t flush_peer(struct batch_peer *q, void *sock)
{
    size_t lost = 0;
    const uint8_t *rid = q->has_rid ? q->rid : NULL;
    if (q->count == 1) /* alone, without the bundle around it */
        lost =
            send_bytes(sock, rid, q->rid_len, q->buf + WIRE_BUNDLE_HDR_LEN + 4, q->len - WIRE_BUNDLE_HDR_LEN - 4) == 0
                ? 0
                : 1;
    else if (q->count > 1)
        lost = send_bytes(sock, rid, q->rid_len, q->buf, q->len) == 0 ? 0 : q->count;
    q->len = 0;
    q->count = 0;
    return lost;
}

size_t wire_batch_flush(struct wire_batch *b, void *sock)
{
    size_t lost = 0;
    for (unsigned i = 0; i < b->npeers; i++)
        lost += flush_peer(&b->peer[i], sock);
    b->npeers = 0;
    return lost;
}

/* The peer that holds rid's bundle, made when there is none (after sending
 * everything held when every slot is taken); NULL: out of memory. */
static struct batch_peer *batch_peer(struct wire_batch *b, void *sock, const uint8_t *rid, size_t rid_len)
{
    for (unsigned i = 0; i < b->npeers; i++) {
        struct batch_peer *q = &b->peer[i];
        if (q->has_rid == (rid != NULL) && q->rid_len == rid_len && (rid == NULL || memcmp(q->rid, rid, rid_len) == 0))
            return q;
    }
    if (b->npeers == WIRE_BATCH_PEERS)
        (void)wire_batch_flush(b, sock);
    struct batch_peer *q = &b->peer[b->npeers];
    if (q->buf == NULL) {
        q->buf = malloc(WIRE_BUNDLE_BYTES);
        if (q->buf == NULL)
            return NULL;
        q->cap = WIRE_BUNDLE_BYTES;
    }
    q->has_rid = rid != NULL;
    q->rid_len = rid != NULL ? rid_len : 0;
    if (rid != NULL)
        memcpy(q->rid, rid, rid_len);
    q->len = q->count = 0;
    b->npeers++;
    return q;
}

/* Adds one packed message (mlen bytes) for rid to the batch. */
static int batch_add(struct wire_batch *b, void *sock, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
                     const struct wire_frame *frames, size_t nframes, size_t mlen)
{
    if (rid != NULL && (rid_len == 0 || rid_len > WIRE_ROUTING_ID_MAX))
        return TREATY_ETRANSPORT; /* ZeroMQ would not route it either */
    struct batch_peer *q = batch_peer(b, sock, rid, rid_len);
    if (q == NULL)
        return TREATY_ETRANSPORT;
    if (WIRE_BUNDLE_HDR_LEN + 4 + mlen > q->cap) {
        /* too big for any bundle: what is held for the peer first, then it */
        if (flush_peer(q, sock) != 0)
            return TREATY_ETRANSPORT;
        zmq_msg_t m;
        if (pack_msg(&m, h, frames, nframes, mlen) != 0)
            return TREATY_ETRANSPORT;
        return send_msg(sock, rid, rid_len, &m);
    }
    if (q->len + 4 + mlen > q->cap && flush_peer(q, sock) != 0)
        return TREATY_ETRANSPORT; /* the held ones are lost; this one is not sent either */
    if (q->len == 0) {
        q->buf[0] = 'T';
        q->buf[1] = 'B';
        q->buf[2] = WIRE_VERSION;
        q->buf[3] = 0;
        q->len = WIRE_BUNDLE_HDR_LEN;
    }
    wire_put_u32(q->buf + q->len, (uint32_t)mlen);
    wire_pack(h, frames, nframes, q->buf + q->len + 4);
    q->len += 4 + mlen;
    q->count++;
    return 0;
}

int wire_batch_send(struct wire_batch *b, void *sock, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
                    const struct wire_frame *frames, size_t nframes)
{
    if (frames_fit(frames, nframes) != 0)
        return TREATY_ETOOBIG;
    size_t mlen = wire_packed_len(frames, nframes);
    enum nf_act act = netfault_on() ? nf_draw(h->type) : NF_PASS;
    switch (act) {
    case NF_DROP:
        return 0; /* as if the network lost it */
    case NF_DELAY: {
        zmq_msg_t m;
        if (pack_msg(&m, h, frames, nframes, mlen) != 0)
            return TREATY_ETRANSPORT;
        int rc = nf_hold(sock, rid, rid_len, &m);
        zmq_msg_close(&m);
        return rc;
    }
    case NF_DUP: {
        int rc = batch_add(b, sock, rid, rid_len, h, frames, nframes, mlen);
        if (rc != 0)
            return rc;
        break;
    }
    case NF_PASS:
        break;
    }
    return batch_add(b, sock, rid, rid_len, h, frames, nframes, mlen);
}

struct wire_frame wire_str(const char *s)
{
    struct wire_frame f = {(const uint8_t *)s, s ? strlen(s) : 0};
    return f;
}

void wire_copy_text(const struct wire_frame *f, char *buf, size_t cap)
{
    if (cap == 0)
        return;
    size_t n = f->len < cap - 1 ? f->len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = f->data[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    buf[n] = '\0';
}

/* ------------------------------------------------- transport fault filter
 *
 * For failure-injection scenarios (scenarios/): when the environment variable
 * TREATY_NET_FAULTS is set, wire_send drops, duplicates or holds back a
 * seeded fraction of the outgoing messages of this process. Comma-separated
 * KEY=VALUE items, every one optional:
 *
 *   seed=N        PRNG seed (default 1), mixed with tag
 *   tag=TEXT      per-process tag mixed into the seed (default: program name)
 *   drop=F        fraction of matching messages not sent at all
 *   dup=F         fraction sent twice
 *   delay=F       fraction held back delay_ms, then sent by a later wire_send
 *                 or wire_recv on the same socket (so they arrive reordered)
 *   delay_ms=N    (default 200)
 *   types=A+B+..  message types the filter applies to (wire_type_name names;
 *                 default every type except HELLO and WELCOME)
 *   for_ms=N      faults only during the first N ms after the first message
 *                 (default: forever); held messages are still released
 *   stop_file=P   faults end once the file P exists (checked every 100 ms)
 *
 * Direction: the filter acts on what this process sends; give it to the
 * coordinator for coordinator->participant/client messages, to a participant
 * (or the client) for the other direction.
 *
 * One random draw per matching message decides: [0,drop) drop,
 * [drop,drop+dup) duplicate, [drop+dup,drop+dup+delay) delay. The counts go
 * to stderr at exit ("treaty netfault: ..."). With the variable unset the
 * cost is one cached getenv. Thread safety: one mutex, taken only when on.
 */

struct nf_held {
    void *sock;
    int socktype;
    long long due_ms;
    bool has_rid;
    uint8_t rid[WIRE_ROUTING_ID_MAX];
    size_t rid_len;
    size_t len;
    uint8_t *data; /* the message */
    struct nf_held *next;
};

static struct {
    pthread_once_t once;
    bool on;
    pthread_mutex_t mu;
    uint64_t rng;
    double drop, dup, delay;
    int delay_ms;
    uint32_t types; /* bit per wire_type */
    long long start_ms, for_ms, checked_ms;
    char stop_file[256];
    bool stopped;
    unsigned long dropped, duplicated, delayed, seen;
    char tag[64];
    struct nf_held *held;
} nf = {.once = PTHREAD_ONCE_INIT, .mu = PTHREAD_MUTEX_INITIALIZER};

static long long nf_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* splitmix64 */
static uint64_t nf_next(void)
{
    uint64_t z = (nf.rng += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void nf_report(void)
{
    pthread_mutex_lock(&nf.mu);
    fprintf(stderr, "treaty netfault: tag=%s matched=%lu dropped=%lu duplicated=%lu delayed=%lu\n", nf.tag, nf.seen,
            nf.dropped, nf.duplicated, nf.delayed);
    fflush(stderr);
    pthread_mutex_unlock(&nf.mu);
}

static void nf_init(void)
{
    const char *spec = getenv("TREATY_NET_FAULTS");
    if (spec == NULL || *spec == '\0')
        return;
    uint64_t seed = 1;
    nf.delay_ms = 200;
    nf.for_ms = -1;
    nf.types = 0;
    snprintf(nf.tag, sizeof nf.tag, "%s", program_invocation_short_name);
    char *copy = strdup(spec);
    if (copy == NULL)
        return;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        if (eq == NULL) {
            fprintf(stderr, "treaty netfault: ignoring \"%s\" (want KEY=VALUE)\n", item);
            continue;
        }
        *eq = '\0';
        const char *v = eq + 1;
        if (strcmp(item, "seed") == 0)
            seed = strtoull(v, NULL, 10);
        else if (strcmp(item, "tag") == 0)
            snprintf(nf.tag, sizeof nf.tag, "%s", v);
        else if (strcmp(item, "drop") == 0)
            nf.drop = strtod(v, NULL);
        else if (strcmp(item, "dup") == 0)
            nf.dup = strtod(v, NULL);
        else if (strcmp(item, "delay") == 0)
            nf.delay = strtod(v, NULL);
        else if (strcmp(item, "delay_ms") == 0)
            nf.delay_ms = atoi(v);
        else if (strcmp(item, "stop_file") == 0)
            snprintf(nf.stop_file, sizeof nf.stop_file, "%s", v);
        else if (strcmp(item, "for_ms") == 0)
            nf.for_ms = atoll(v);
        else if (strcmp(item, "types") == 0) {
            char *s2 = NULL;
            for (char *t = strtok_r((char *)v, "+", &s2); t != NULL; t = strtok_r(NULL, "+", &s2)) {
                int k;
                for (k = 1; k <= WIRE_TYPE_MAX_; k++)
                    if (strcasecmp(t, type_names[k]) == 0)
                        break;
                if (k <= WIRE_TYPE_MAX_)
                    nf.types |= 1u << k;
                else
                    fprintf(stderr, "treaty netfault: unknown message type \"%s\"\n", t);
            }
        } else
            fprintf(stderr, "treaty netfault: unknown key \"%s\"\n", item);
    }
    free(copy);
    if (nf.types == 0)
        nf.types = ~((1u << WIRE_HELLO) | (1u << WIRE_WELCOME));
    /* mix the tag into the seed (FNV-1a) */
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = nf.tag; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    nf.rng = seed ^ h;
    nf.start_ms = -1;
    nf.on = true;
    fprintf(stderr, "treaty netfault: on (tag=%s drop=%.3f dup=%.3f delay=%.3f delay_ms=%d for_ms=%lld)\n", nf.tag,
            nf.drop, nf.dup, nf.delay, nf.delay_ms, nf.for_ms);
    atexit(nf_report);
}

static bool netfault_on(void)
{
#ifndef TREATY_FAULTS
    /* Release builds (make RELEASE=1) carry no fault injection at all. */
    if (1)
        return false;
#endif
    pthread_once(&nf.once, nf_init);
    return nf.on;
}

/* Sends the held messages of sock that are due. */
static void netfault_release(void *sock)
{
    long long now = nf_now_ms();
    for (;;) {
        pthread_mutex_lock(&nf.mu);
        struct nf_held **pp = &nf.held, *m = NULL;
        for (; *pp != NULL; pp = &(*pp)->next) {
            if ((*pp)->sock == sock && (*pp)->due_ms <= now) {
                m = *pp;
                *pp = m->next;
                break;
            }
        }
        pthread_mutex_unlock(&nf.mu);
        if (m == NULL)
            return;
        /* The socket's memory may have been reused by another socket since:
         * only send when its type still matches. */
        int type = -1;
        size_t tl = sizeof type;
        zmq_msg_t msg;
        if (zmq_getsockopt(sock, ZMQ_TYPE, &type, &tl) == 0 && type == m->socktype &&
            zmq_msg_init_size(&msg, m->len) == 0) {
            if (m->len)
                memcpy(zmq_msg_data(&msg), m->data, m->len);
            (void)send_msg(sock, m->has_rid ? m->rid : NULL, m->rid_len, &msg);
        }
        free(m->data);
        free(m);
    }
}

/* Keeps a copy of m (left to its owner) to be sent delay_ms from now. */
static int nf_hold(void *sock, const uint8_t *rid, size_t rid_len, zmq_msg_t *m)
{
    struct nf_held *h = calloc(1, sizeof *h);
    if (h == NULL)
        return TREATY_ETRANSPORT;
    h->len = zmq_msg_size(m);
    h->data = malloc(h->len ? h->len : 1);
    if (h->data == NULL) {
        free(h);
        return TREATY_ETRANSPORT;
    }
    if (h->len)
        memcpy(h->data, zmq_msg_data(m), h->len);
    if (rid != NULL) {
        h->has_rid = true;
        h->rid_len = rid_len < sizeof h->rid ? rid_len : sizeof h->rid;
        memcpy(h->rid, rid, h->rid_len);
    }
    size_t tl = sizeof h->socktype;
    zmq_getsockopt(sock, ZMQ_TYPE, &h->socktype, &tl);
    h->sock = sock;
    h->due_ms = nf_now_ms() + nf.delay_ms;
    pthread_mutex_lock(&nf.mu);
    struct nf_held **pp = &nf.held;
    while (*pp != NULL)
        pp = &(*pp)->next;
    *pp = h;
    pthread_mutex_unlock(&nf.mu);
    return 0;
}

/* What the filter does with the next message of this type (counted). */
static enum nf_act nf_draw(uint8_t type)
{
    enum nf_act act = NF_PASS;
    if (type <= WIRE_TYPE_MAX_ && (nf.types & (1u << type))) {
        long long now = nf_now_ms();
        pthread_mutex_lock(&nf.mu);
        if (nf.start_ms < 0)
            nf.start_ms = now;
        if (nf.stop_file[0] && !nf.stopped && now - nf.checked_ms >= 100) {
            nf.checked_ms = now;
            nf.stopped = access(nf.stop_file, F_OK) == 0;
        }
        if (!nf.stopped && (nf.for_ms < 0 || now - nf.start_ms < nf.for_ms)) {
            nf.seen++;
            double r = (double)(nf_next() >> 11) / 9007199254740992.0;
            if (r < nf.drop) {
                act = NF_DROP;
                nf.dropped++;
            } else if (r < nf.drop + nf.dup) {
                act = NF_DUP;
                nf.duplicated++;
            } else if (r < nf.drop + nf.dup + nf.delay) {
                act = NF_DELAY;
                nf.delayed++;
            }
        }
        pthread_mutex_unlock(&nf.mu);
    }
    return act;
}

/* Sends, drops, duplicates or holds back m (a message of this type) as the
 * filter draws; m is sent or closed either way. */
static int netfault_send(void *sock, const uint8_t *rid, size_t rid_len, uint8_t type, zmq_msg_t *m)
{
    netfault_release(sock);
    switch (nf_draw(type)) {
    case NF_DROP:
        zmq_msg_close(m);
        return 0; /* as if the network lost it */
    case NF_DELAY: {
        int rc = nf_hold(sock, rid, rid_len, m);
        zmq_msg_close(m);
        return rc;
    }
    case NF_DUP: {
        zmq_msg_t copy;
        zmq_msg_init(&copy);
        if (zmq_msg_copy(&copy, m) != 0) {
            zmq_msg_close(&copy);
            zmq_msg_close(m);
            return TREATY_ETRANSPORT;
        }
        int rc = send_msg(sock, rid, rid_len, m);
        if (rc != 0) {
            zmq_msg_close(&copy);
            return rc;
        }
        return send_msg(sock, rid, rid_len, &copy);
    }
    case NF_PASS:
        break;
    }
    return send_msg(sock, rid, rid_len, m);
}
