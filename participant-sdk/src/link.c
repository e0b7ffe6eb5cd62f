/*
 * link.c - the connection to the coordinator with its handshake watch; the
 * contract is in link.h.
 *
 * The monitor: zmq_socket_monitor() makes the DEALER publish its handshake
 * events on an inproc PAIR endpoint of the link's own context
 * (LINK_MONITOR_EP; one context per link, so the name is unique), to which
 * our PAIR socket connects before the DEALER connects anywhere, so no event
 * is missed. Each event is two frames: 6 bytes (u16 event, u32 value, host
 * order, unaligned) and the endpoint. libzmq sends them without blocking
 * and drops them when nobody reads (the PAIR's high-water mark): an idle
 * handle costs at most that queue.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "link.h"
#include "treaty.h"

#define LINK_MONITOR_EP "inproc://treaty-link-monitor"
#define LINK_EVENTS                                                                                                    \
    (ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |      \
     ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

struct link {
    void *ctx;
    void *sock;
    void *mon;
    char *endpoint;
    bool curve;
    bool refused;      /* the last handshake failed for good, none succeeded since */
    int closed_streak; /* NO_DETAIL failures since the last success */
    int64_t retry_at;  /* re-connect due (libzmq gave up on the endpoint), or -1 */
    int retry_ms;      /* the wait before the next re-connect after a refusal */
    char why[LINK_WHY_MAX];
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
why(struct link *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->why, sizeof l->why, fmt, ap);
    va_end(ap);
}

int link_open(const char *endpoint, bool immediate, const treaty_security_t *sec, struct link **out, char *err,
              size_t errlen)
{
    int zero = 0, imm = immediate ? 1 : 0;
    int rc = TREATY_ETRANSPORT;
    const char *what = "";
    *out = NULL;
    snprintf(err, errlen, "no error");
    struct link *l = calloc(1, sizeof *l);
    if (l == NULL)
        return TREATY_ENOMEM;
    l->retry_at = -1;
    l->retry_ms = LINK_RETRY_MIN_MS;
    l->curve = sec != NULL && sec->server_public_key != NULL;
    l->endpoint = strdup(endpoint);
    if (l->endpoint == NULL) {
        rc = TREATY_ENOMEM;
        goto fail_endpoint;
    }
    l->ctx = zmq_ctx_new();
    if (l->ctx == NULL) {
        what = "zmq_ctx_new";
        goto fail_ctx;
    }
    l->sock = zmq_socket(l->ctx, ZMQ_DEALER);
    if (l->sock == NULL) {
        what = "zmq_socket";
        goto fail_socket;
    }
    what = "socket options";
    if (zmq_setsockopt(l->sock, ZMQ_LINGER, &zero, sizeof zero) != 0 ||
        zmq_setsockopt(l->sock, ZMQ_IMMEDIATE, &imm, sizeof imm) != 0)
        goto fail_setup;
    if (l->curve) {
        /* The public key: given, or derived from the secret one (libzmq). */
        char pub[TREATY_KEY_LEN + 1];
        if (sec->public_key != NULL)
            snprintf(pub, sizeof pub, "%s", sec->public_key);
        else if (zmq_curve_public(pub, sec->secret_key) != 0)
            goto fail_setup;
        what = "CURVE keys";
        int ok = zmq_setsockopt(l->sock, ZMQ_CURVE_SERVERKEY, sec->server_public_key, TREATY_KEY_LEN + 1) == 0 &&
                 zmq_setsockopt(l->sock, ZMQ_CURVE_PUBLICKEY, pub, TREATY_KEY_LEN + 1) == 0 &&
                 zmq_setsockopt(l->sock, ZMQ_CURVE_SECRETKEY, sec->secret_key, TREATY_KEY_LEN + 1) == 0;
        if (!ok) {
            rc = errno == EINVAL ? TREATY_EINVAL : TREATY_ETRANSPORT;
            goto fail_setup;
        }
    }
    what = "socket monitor";
    if (zmq_socket_monitor(l->sock, LINK_MONITOR_EP, LINK_EVENTS) != 0)
        goto fail_setup;
    l->mon = zmq_socket(l->ctx, ZMQ_PAIR);
    if (l->mon == NULL)
        goto fail_monitor;
    if (zmq_setsockopt(l->mon, ZMQ_LINGER, &zero, sizeof zero) != 0 || zmq_connect(l->mon, LINK_MONITOR_EP) != 0)
        goto fail_pair;
    what = "connect";
    if (zmq_connect(l->sock, endpoint) != 0) {
        /* a malformed endpoint or an unknown transport is the caller's error */
        if (errno == EINVAL || errno == EPROTONOSUPPORT || errno == ENOCOMPATPROTO)
            rc = TREATY_EINVAL;
        goto fail_pair;
    }
    why(l, "%s", "");
    *out = l;
    return 0;

fail_pair:
    zmq_close(l->mon);
fail_monitor:
    zmq_socket_monitor(l->sock, NULL, 0);
fail_setup:
    snprintf(err, errlen, "%s: %s", what, zmq_strerror(errno));
    zmq_close(l->sock);
fail_socket:
    zmq_ctx_term(l->ctx);
fail_ctx:
    free(l->endpoint);
fail_endpoint:
    free(l);
    return rc;
}

void link_close(struct link **lp)
{
    if (lp == NULL || *lp == NULL)
        return;
    struct link *l = *lp;
    zmq_socket_monitor(l->sock, NULL, 0);
    zmq_close(l->mon);
    zmq_close(l->sock); /* ZMQ_LINGER 0: unsent messages are dropped */
    zmq_ctx_term(l->ctx);
    free(l->endpoint);
    free(l);
    *lp = NULL;
}

void *link_socket(const struct link *l)
{
    return l->sock;
}

void *link_monitor(const struct link *l)
{
    return l->mon;
}

bool link_refused(const struct link *l)
{
    return l->refused;
}

const char *link_why(const struct link *l)
{
    return l->why;
}

int64_t link_next_due(const struct link *l)
{
    return l->retry_at;
}

/* libzmq gave up on the endpoint: connect it again at now + retry_ms. */
static void schedule_retry(struct link *l, int64_t now)
{
    l->retry_at = now + l->retry_ms;
    l->retry_ms = l->retry_ms > LINK_RETRY_MAX_MS / 2 ? LINK_RETRY_MAX_MS : 2 * l->retry_ms;
}

static void reconnect(struct link *l)
{
    l->retry_at = -1;
    zmq_disconnect(l->sock, l->endpoint); /* the ended session's leftovers; ENOENT is fine */
    if (zmq_connect(l->sock, l->endpoint) != 0)
        why(l, "connect %s again after a refused handshake failed: %s", l->endpoint, zmq_strerror(errno));
}

void link_retry_now(struct link *l)
{
    if (l->retry_at >= 0)
        reconnect(l);
}

static void describe_auth(struct link *l, uint32_t status)
{
    switch (status) {
    case 300:
        why(l, "authentication refused by the coordinator for now (ZAP status 300, temporary failure)");
        break;
    case 500:
        why(l, "authentication with the coordinator failed: its authenticator had an internal error (ZAP status 500)");
        break;
    default:
        why(l,
            "authentication refused by the coordinator (ZAP status %u): this peer's public key is not in its "
            "allow-list, or not with this role",
            status);
        break;
    }
}

static void describe_protocol(struct link *l, uint32_t code)
{
    if (code == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH && !l->curve)
        why(l, "the coordinator requires CURVE (security mechanism mismatch): give its public key and this peer's "
               "key pair (the *_new_secure constructors)");
    else if (code == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
        why(l, "the coordinator does not use CURVE (security mechanism mismatch): connect without keys, or enable "
               "security in its configuration");
    else if (code == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
        why(l, "CURVE handshake with the coordinator failed: a message did not decrypt (is server_public_key the "
               "coordinator's public key?)");
    else
        why(l, "handshake with the coordinator failed: ZMTP protocol error 0x%08x", code);
}

static void describe_closed(struct link *l, uint32_t err)
{
    if (l->curve)
        why(l,
            "the coordinator closes the connection during the CURVE handshake (%d times in a row, last: %s): is "
            "server_public_key the coordinator's public key, and does it use CURVE?",
            l->closed_streak, zmq_strerror((int)err));
    else
        why(l,
            "the coordinator closes the connection during the handshake (%d times in a row, last: %s): does it "
            "require CURVE?",
            l->closed_streak, zmq_strerror((int)err));
}

/* Reads one event; false when none is waiting. *ev 0 for a malformed one. */
static bool read_event(struct link *l, uint16_t *ev, uint32_t *value)
{
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, l->mon, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return false;
    }
    *ev = 0;
    if (zmq_msg_size(&m) >= 6) {
        const uint8_t *d = zmq_msg_data(&m);
        memcpy(ev, d, sizeof *ev);
        memcpy(value, d + 2, sizeof *value);
    }
    int more = zmq_msg_more(&m);
    zmq_msg_close(&m);
    while (more) { /* the endpoint frame */
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, l->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return true;
}

enum link_event link_poll(struct link *l, int64_t now)
{
    enum link_event last = LINK_NONE;
    uint16_t ev;
    uint32_t value = 0;
    while (read_event(l, &ev, &value)) {
        switch (ev) {
        case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
            l->refused = false;
            l->closed_streak = 0;
            l->retry_ms = LINK_RETRY_MIN_MS;
            last = LINK_UP;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
            describe_auth(l, value);
            l->refused = true;
            schedule_retry(l, now); /* libzmq ended the session */
            last = LINK_REFUSED;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
            describe_protocol(l, value);
            l->refused = true;
            schedule_retry(l, now); /* libzmq ended the session */
            last = LINK_REFUSED;
            break;
        case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            if (l->closed_streak < INT32_MAX)
                l->closed_streak++;
            if (l->closed_streak >= LINK_CLOSED_LIMIT) {
                describe_closed(l, value); /* libzmq keeps reconnecting by itself */
                l->refused = true;
                last = LINK_REFUSED;
            }
            break;
        default:
            break;
        }
    }
    if (l->retry_at >= 0 && now >= l->retry_at)
        reconnect(l);
    return last;
}
