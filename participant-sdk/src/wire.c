/*
 * wire.c - the codec described in wire.h.
 */
#include "wire.h"

#include <errno.h>
#include <string.h>

#include "treaty.h"

static const char *const type_names[] = {
    "?",       "HELLO", "WELCOME", "SUBMIT", "QUERY", "OUTCOME", "ERROR",
    "PREPARE", "VOTE",  "COMMIT",  "ABORT",  "ACK",   "INQUIRE", "SAGA", "STEP", "RESULT",
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
    const uint8_t *b = f->data;
    *v = ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
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
    struct wire_frame w;
    out->group = get_u16(b);
    out->max_attempts = get_u16(b + 2);
    w.len = 4;
    w.data = b + 4;
    wire_get_u32(&w, &out->first_backoff_ms);
    w.data = b + 8;
    wire_get_u32(&w, &out->max_backoff_ms);
    w.data = b + 12;
    wire_get_u32(&w, &out->try_timeout_ms);
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
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                  c == '_' || c == '-';
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
        if (n < 1 + WIRE_SAGA_FRAMES_PER_STEP || (n - 1) % WIRE_SAGA_FRAMES_PER_STEP != 0 ||
            !wire_get_u32(&f[0], &u))
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

int wire_decode(const struct wire_frame *hdr, const struct wire_frame *frames, size_t nframes,
                size_t max_payload, struct wire_msg *out)
{
    memset(&out->hdr, 0, sizeof out->hdr);
    out->nframes = 0;
    if (hdr->len != WIRE_HDR_LEN || hdr->data == NULL)
        return TREATY_EPROTO;
    const uint8_t *b = hdr->data;
    if (b[0] != 'T' || b[1] != 'Y')
        return TREATY_EPROTO;
    if (b[2] != WIRE_VERSION)
        return TREATY_EVERSION;
    if (b[3] < 1 || b[3] > WIRE_TYPE_MAX_ || get_u16(b + 26) != 0)
        return TREATY_EPROTO;
    if (nframes > WIRE_MAX_FRAMES)
        return TREATY_ETOOBIG;
    out->hdr.type = b[3];
    memcpy(out->hdr.txid, b + 4, 16);
    out->hdr.branch = get_u16(b + 20);
    out->hdr.attempt = get_u16(b + 22);
    out->hdr.code = get_u16(b + 24);
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

/* ------------------------------------------------------------ socket I/O */

static void close_parts(struct wire_in *in)
{
    for (size_t i = 0; i < in->nparts; i++)
        zmq_msg_close(&in->parts[i]);
    in->nparts = 0;
}

void wire_in_close(struct wire_in *in)
{
    close_parts(in);
}

int wire_recv(void *sock, bool router, size_t max_payload, struct wire_in *in)
{
    int more = 1;
    size_t more_len = sizeof more;
    bool overflow = false;

    in->nparts = 0;
    in->rid_len = 0;
    memset(&in->msg.hdr, 0, sizeof in->msg.hdr);
    for (;;) {
        zmq_msg_t scratch;
        zmq_msg_t *part = in->nparts < sizeof in->parts / sizeof in->parts[0] ? &in->parts[in->nparts] : &scratch;
        zmq_msg_init(part);
        int flags = in->nparts == 0 && part != &scratch ? ZMQ_DONTWAIT : 0;
        if (zmq_msg_recv(part, sock, flags) < 0) {
            int e = errno;
            zmq_msg_close(part);
            if (in->nparts == 0 && e == EAGAIN)
                return TREATY_ETIMEDOUT;
            if (e == EINTR && in->nparts == 0)
                return TREATY_ETIMEDOUT;
            close_parts(in);
            return TREATY_ETRANSPORT;
        }
        more = zmq_msg_more(part);
        if (part == &scratch) {
            overflow = true;
            zmq_msg_close(part);
        } else {
            in->nparts++;
        }
        if (!more)
            break;
    }
    (void)more_len;

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
    }
    if (overflow) {
        close_parts(in);
        return TREATY_ETOOBIG;
    }
    if (in->nparts <= first) {
        close_parts(in);
        return TREATY_EPROTO;
    }
    struct wire_frame hdr = {zmq_msg_data(&in->parts[first]), zmq_msg_size(&in->parts[first])};
    size_t n = in->nparts - first - 1;
    struct wire_frame frames[WIRE_MAX_FRAMES];
    if (n > WIRE_MAX_FRAMES) {
        close_parts(in);
        return TREATY_ETOOBIG;
    }
    for (size_t i = 0; i < n; i++) {
        frames[i].data = zmq_msg_data(&in->parts[first + 1 + i]);
        frames[i].len = zmq_msg_size(&in->parts[first + 1 + i]);
    }
    int rc = wire_decode(&hdr, frames, n, max_payload, &in->msg);
    if (rc < 0) {
        /* keep the header's txid for an error reply when it decoded that far */
        close_parts(in);
        return rc;
    }
    return 0;
}

int wire_send(void *sock, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
              const struct wire_frame *frames, size_t nframes)
{
    uint8_t buf[WIRE_HDR_LEN];
    wire_encode_hdr(h, buf);
    /* ZMQ_DONTWAIT on every part: a multipart message is queued atomically
     * once its first part is accepted. */
    if (rid != NULL) {
        if (zmq_send(sock, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
            return TREATY_ETRANSPORT;
    }
    if (zmq_send(sock, buf, sizeof buf, (nframes ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0)
        return TREATY_ETRANSPORT;
    for (size_t i = 0; i < nframes; i++) {
        int flags = (i + 1 < nframes ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT;
        if (zmq_send(sock, frames[i].data, frames[i].len, flags) < 0)
            return TREATY_ETRANSPORT;
    }
    return 0;
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
