/*
 * wire.h - Treaty's wire codec, shared by the coordinator and libtreaty.
 *
 * Every message is one ZeroMQ frame (seen from a DEALER; the coordinator's
 * ROUTER sees one extra routing-id frame in front):
 *
 *   bytes 0..27   the header, WIRE_HDR_LEN bytes, big-endian fields:
 *                   0..1   magic 'T' 'Y'
 *                   2      version (WIRE_VERSION = 2)
 *                   3      type (enum wire_type)
 *                   4..19  txid (16 bytes; zero for HELLO/WELCOME)
 *                   20..21 branch index (u16)
 *                   22..23 attempt (u16): re-send counter of this message
 *                   24..25 code (u16): vote, status or error, per type
 *                   26..27 reserved, must be zero
 *   bytes 28..    the payload frames, back to back to the end of the ZeroMQ
 *                 frame, each a u32 big-endian length and that many bytes.
 *                 ("Frames" for the history: in version 1 each was a ZeroMQ
 *                 frame of its own. CURVE encrypts and authenticates every
 *                 ZeroMQ frame separately, at a fixed cost per frame, so
 *                 version 2 sends one where version 1 sent two to six.)
 *
 * A bundle carries several messages for one peer in one ZeroMQ frame:
 *
 *   bytes 0..3    'T' 'B', version (WIRE_VERSION), reserved (zero)
 *   then          one or more entries, back to back to the end of the
 *                 ZeroMQ frame: a u32 big-endian length and that many bytes
 *                 of one message as above (never another bundle)
 *
 * A sender bundles what it has for one peer at the end of a turn of its
 * loop (struct wire_batch, below), at most WIRE_BUNDLE_BYTES a bundle (a
 * receiver refuses a bigger one whole, TREATY_ETOOBIG); the messages are
 * handled in their order, exactly as if they had come one by one. Under
 * load a coordinator sends many PREPAREs and COMMITs to each participant per
 * turn and gets as many VOTEs and ACKs back: one bundle instead of one
 * ZeroMQ frame (and, with CURVE, one encryption) each.
 *
 * The payload frames per type:
 *
 *   type      dir    code                     frames
 *   HELLO     P->C   0                        service, instance
 *   WELCOME   C->P   0                        heartbeat_ms (u32)
 *   SUBMIT    X->C   0                        timeout_ms (u32), then per branch: service, payload
 *   QUERY     X->C   0                        -
 *   OUTCOME   C->X   treaty_status            reason (text, may be empty)   branch = failed branch
 *   ERROR     C->*   -TREATY_E* (positive)    message (text)
 *   PREPARE   C->P   0                        payload
 *   VOTE      P->C   treaty_vote              reason (text, may be empty)
 *   COMMIT    C->P   0                        -
 *   ABORT     C->P   0                        -
 *   ACK       P->C   treaty_status            -        (COMMITTED or ABORTED: what was applied)
 *   INQUIRE   P->C   0                        -        (answered by COMMIT or ABORT)
 *   SAGA      X->C   0                        deadline_ms (u32), then per step 6 frames:
 *                                             service, action, action payload, compensation,
 *                                             compensation payload, policy (WIRE_POLICY_LEN bytes)
 *   STEP      C->P   WIRE_STEP_ACTION or      name, payload           branch = step index
 *                    WIRE_STEP_COMPENSATION
 *   RESULT    P->C   WIRE_RESULT(kind, r)     reason (text, may be empty)   branch = step index
 *
 * A saga step's policy frame (big-endian): u16 group (steps of one group run
 * in parallel; groups run in ascending order), u16 max_attempts, u32
 * first_backoff_ms, u32 max_backoff_ms, u32 try_timeout_ms.
 * OUTCOME for a saga carries TREATY_STATUS_COMPLETED, _COMPENSATED, _STUCK or
 * _PENDING, with branch = the failing step.
 *
 * (P participant, C coordinator, X client.) Decoding checks the magic,
 * version, type, reserved bits, that the frames fill the message exactly, and
 * the frame count and sizes of each type; it never reads outside the buffer
 * it is given. A version-1 peer's message (a multipart message whose first
 * frame is a version-1 header) decodes as TREATY_EVERSION, so it is answered
 * with a clear error.
 */
#ifndef TREATY_WIRE_H
#define TREATY_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#define WIRE_VERSION 2
#define WIRE_HDR_LEN 28
#define WIRE_FRAME_LEN_MAX UINT32_MAX /* what a frame's u32 length can say */
#define WIRE_BUNDLE_HDR_LEN 4
#define WIRE_BUNDLE_BYTES 65536 /* a bundle's size at most; a bigger message goes alone */
#define WIRE_BATCH_PEERS 64     /* peers a struct wire_batch holds bundles for at once */
#define WIRE_NAME_MAX 64        /* service and instance names */
#define WIRE_MAX_BRANCHES 128   /* hard ceiling; the coordinator's limit is configurable below it */
#define WIRE_MAX_STEPS 64       /* saga steps, likewise */
#define WIRE_SAGA_FRAMES_PER_STEP 6
#define WIRE_POLICY_LEN 16
#define WIRE_MAX_FRAMES (1 + WIRE_SAGA_FRAMES_PER_STEP * WIRE_MAX_STEPS) /* >= 2 + 2 * WIRE_MAX_BRANCHES */

/* STEP code */
#define WIRE_STEP_ACTION 1
#define WIRE_STEP_COMPENSATION 2
/* RESULT code: (kind << 8) | result, kind a WIRE_STEP_* value */
#define WIRE_RESULT_OK 1        /* done (or a duplicate of a done step) */
#define WIRE_RESULT_FAILED 2    /* business failure: the saga turns around (actions only) */
#define WIRE_RESULT_TRANSIENT 3 /* try again later */
#define WIRE_RESULT(kind, r) ((uint16_t)(((kind) << 8) | (r)))
#define WIRE_RESULT_KIND(code) ((code) >> 8)
#define WIRE_RESULT_VALUE(code) ((code)&0xff)

struct wire_policy {
    uint16_t group;
    uint16_t max_attempts;
    uint32_t first_backoff_ms;
    uint32_t max_backoff_ms;
    uint32_t try_timeout_ms;
};
#define WIRE_ROUTING_ID_MAX 255 /* ZeroMQ's limit */

enum wire_type {
    WIRE_HELLO = 1,
    WIRE_WELCOME = 2,
    WIRE_SUBMIT = 3,
    WIRE_QUERY = 4,
    WIRE_OUTCOME = 5,
    WIRE_ERROR = 6,
    WIRE_PREPARE = 7,
    WIRE_VOTE = 8,
    WIRE_COMMIT = 9,
    WIRE_ABORT = 10,
    WIRE_ACK = 11,
    WIRE_INQUIRE = 12,
    WIRE_SAGA = 13,
    WIRE_STEP = 14,
    WIRE_RESULT = 15,
    WIRE_TYPE_MAX_ = 15
};

struct wire_hdr {
    uint8_t type;
    uint8_t txid[16];
    uint16_t branch;
    uint16_t attempt;
    uint16_t code;
};

struct wire_frame {
    const uint8_t *data;
    size_t len;
};

/* A decoded message. Frames point into storage owned by whoever filled it
 * (wire_decode's caller, or the zmq_msg_t array of a struct wire_in). */
struct wire_msg {
    struct wire_hdr hdr;
    size_t nframes; /* payload frames after the header */
    struct wire_frame frames[WIRE_MAX_FRAMES];
};

void wire_encode_policy(const struct wire_policy *p, uint8_t buf[WIRE_POLICY_LEN]);
bool wire_decode_policy(const struct wire_frame *f, struct wire_policy *out); /* false unless exactly 16 bytes */

/* "HELLO", ... or "?" */
const char *wire_type_name(int type);

/* Encodes h into buf[WIRE_HDR_LEN]. */
void wire_encode_hdr(const struct wire_hdr *h, uint8_t *buf);

/*
 * Decodes a header (WIRE_HDR_LEN bytes) and nframes payload frames given
 * apart into out, checking the per-type frame table above. max_payload bounds
 * every payload frame. Returns 0, TREATY_EVERSION (good magic, other
 * version), TREATY_ETOOBIG (a frame larger than max_payload, or more than
 * WIRE_MAX_FRAMES) or TREATY_EPROTO (anything else). On an error out->hdr is
 * all zero, or the decoded header when only the frames were at fault (so a
 * reply can echo the txid). out->frames point into the caller's buffers.
 */
int wire_decode(const struct wire_frame *hdr, const struct wire_frame *frames, size_t nframes, size_t max_payload,
                struct wire_msg *out);

/*
 * Decodes one whole message as it travels (header, then length-prefixed
 * frames: the layout above) from buf[len], as wire_decode would the same
 * header and frames given apart, with the same results; a frame whose length
 * runs past the end of buf is TREATY_EPROTO. out->frames point into buf.
 */
int wire_unpack(const uint8_t *buf, size_t len, size_t max_payload, struct wire_msg *out);

/* The largest message the frame table above allows when no payload frame is
 * over max_payload bytes (names WIRE_NAME_MAX, up to WIRE_MAX_BRANCHES
 * branches or WIRE_MAX_STEPS steps): a receiver's message size limit. */
uint64_t wire_message_max(size_t max_payload);

/* True when buf[len] starts like a bundle ('T' 'B'). */
bool wire_is_bundle(const uint8_t *buf, size_t len);

/*
 * The next message of the bundle buf[len], whose entry starts at *off
 * (WIRE_BUNDLE_HDR_LEN for the first, where the header is checked too; then
 * where the last call left it): returns 0 with *msg, *msg_len set to it and
 * *off past it; TREATY_EVERSION (the bundle's header says another version)
 * or TREATY_EPROTO (a bad header, no entry at all, or an entry whose length
 * runs past the end) with *off = len. At *off == len there is nothing more:
 * TREATY_EPROTO.
 */
int wire_bundle_next(const uint8_t *buf, size_t len, size_t *off, const uint8_t **msg, size_t *msg_len);

/* The size of the message wire_pack writes for nframes frames. */
size_t wire_packed_len(const struct wire_frame *frames, size_t nframes);

/* Writes h and the frames into buf[wire_packed_len(frames, nframes)]; every
 * frame must be at most WIRE_FRAME_LEN_MAX bytes. */
void wire_pack(const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes, uint8_t *buf);

/* Big-endian u32 helpers for the small numeric frames. */
void wire_put_u32(uint8_t *buf, uint32_t v);
bool wire_get_u32(const struct wire_frame *f, uint32_t *v); /* false unless exactly 4 bytes */

/* True when f is 1..WIRE_NAME_MAX bytes of [A-Za-z0-9._-]. */
bool wire_name_ok(const uint8_t *s, size_t len);

/* ------------------------------------------------------------ socket I/O */

#define WIRE_USER_ID_MAX 255 /* ZAP's limit */

/* One received message with its storage. */
struct wire_in {
    uint8_t rid[WIRE_ROUTING_ID_MAX]; /* ROUTER only: the sender's routing id */
    size_t rid_len;
    /* ROUTER only, and only when want_user_id: the User-Id a ZAP handler
     * gave the sender's connection (libzmq's "User-Id" message property),
     * NUL-terminated; "" when none (no ZAP handler authenticated it, not a
     * ROUTER, or not wanted). */
    char user_id[WIRE_USER_ID_MAX + 1];
    /* Set by the owner before the first wire_recv, never touched by it:
     * read the User-Id (a property lookup per message, so only when a ZAP
     * handler runs). A struct wire_in starts zeroed (then set this). */
    bool want_user_id;
    size_t nparts;
    zmq_msg_t parts[2]; /* the routing id (ROUTER only) and the message */
    /* While a bundle is being read: the offset of its next entry in
     * parts[nparts - 1], and its length (both 0 otherwise). */
    size_t bundle_off, bundle_len;
    struct wire_msg msg;
};

/*
 * Receives one whole message without blocking and decodes it (wire_unpack;
 * a message of more than one ZeroMQ frame after the routing id is
 * TREATY_EVERSION when its first frame is another version's header, else
 * TREATY_EPROTO). A bundle's messages come one per call, in order, the
 * rest held in in (wire_in_pending) and returned before the socket is read
 * again; a bundle over WIRE_BUNDLE_BYTES is TREATY_ETOOBIG, whole. router:
 * expect a routing-id frame first, and take the sender's ZAP User-Id
 * (in->user_id; a bundle's messages share their sender's). Returns 0
 * (in->msg valid, close with wire_in_close), TREATY_ETIMEDOUT when nothing
 * is waiting, TREATY_ETRANSPORT, or a decode error (that message has been
 * consumed; in->rid and in->user_id are valid when router and in->msg.hdr
 * as wire_decode leaves it, so the caller can answer; in needs no close).
 */
int wire_recv(void *sock, bool router, size_t max_payload, struct wire_in *in);
/* Done with in->msg. Keeps a bundle's storage while it has more messages. */
void wire_in_close(struct wire_in *in);
/* True while a bundle received has messages left: wire_recv returns them
 * without the socket being readable, so poll with no wait meanwhile. */
bool wire_in_pending(const struct wire_in *in);
/* Lets go of everything in holds, a bundle's rest included (before the
 * socket or in goes away). */
void wire_in_discard(struct wire_in *in);

/*
 * Sends one message without blocking: the routing id when rid is given, then
 * the header and frames packed into one ZeroMQ frame (wire_pack). Returns 0,
 * TREATY_ETOOBIG (a frame over WIRE_FRAME_LEN_MAX: nothing sent), or
 * TREATY_ETRANSPORT (peer gone, queue full: the message is dropped; the
 * protocol re-sends what matters).
 */
int wire_send(void *sock, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h, const struct wire_frame *frames,
              size_t nframes);

/*
 * Messages held for sending in bundles, one per peer (routing id; or the
 * DEALER's one peer, rid NULL), for one socket's owner thread.
 * wire_batch_send takes a message like wire_send but only copies it into
 * its peer's bundle (sending that first when the message would not fit; a
 * message over WIRE_BUNDLE_BYTES goes alone at once, after it; more than
 * WIRE_BATCH_PEERS peers at once send everything held first).
 * wire_batch_flush sends every bundle held (a bundle of one message as that
 * message alone) and returns how many messages could not be sent
 * (TREATY_ETRANSPORT's cases: dropped, the protocol re-sends). The owner
 * flushes before it waits (at the end of each turn of its loop) so nothing
 * is held for long. The transport fault filter (TREATY_NET_FAULTS) judges
 * each message in wire_batch_send.
 */
struct wire_batch;
struct wire_batch *wire_batch_new(void); /* NULL: out of memory */
void wire_batch_free(struct wire_batch **b);
int wire_batch_send(struct wire_batch *b, void *sock, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
                    const struct wire_frame *frames, size_t nframes); /* 0, TREATY_ETOOBIG, TREATY_ETRANSPORT */
size_t wire_batch_flush(struct wire_batch *b, void *sock);
bool wire_batch_empty(const struct wire_batch *b);

/* Convenience: a frame over a NUL-terminated string (may be NULL: empty). */
struct wire_frame wire_str(const char *s);

/* Copies a text frame into buf (NUL-terminated, truncated to cap-1 bytes,
 * control characters replaced by '?'). */
void wire_copy_text(const struct wire_frame *f, char *buf, size_t cap);

#endif /* TREATY_WIRE_H */
