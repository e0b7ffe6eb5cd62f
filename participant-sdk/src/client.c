/*
 * client.c - treaty_client_*: the shell around the client's protocol core
 * (client_core.h). One DEALER socket (with its own ZeroMQ context) per
 * client, connected to the coordinator's ROUTER, the monotonic clock, the
 * handle's errmsg, and the blocking calls. Which requests are in flight,
 * when they are re-sent or time out, which reply completes which - all of
 * that is the core's; read client_core.h. Transactions and sagas are built
 * by client_txn.c.
 *
 * Every turn drains the socket (each reply to ccore_on_message, or
 * ccore_on_malformed), then runs the core's timers at the current time
 * (ccore_on_tick), then drains again if sending swallowed ZMQ_FD's edge.
 * The blocking calls (submit, query, run_saga) start a blocking request and
 * turn and poll until it is done or timed out; they never run callbacks, so
 * a callback never runs inside a blocking call. treaty_client_process turns
 * once and then runs the callbacks of completed asynchronous requests
 * (ccore_run_callbacks).
 *
 * The connection is link.c's: the DEALER socket, CURVE keys when given, and
 * the watch over its handshakes. When the coordinator refuses the handshake
 * (link_poll says LINK_REFUSED) every request waiting then completes at once
 * with TREATY_EAUTH (ccore_fail_all) instead of waiting for its timeout, and
 * errmsg says why. Monitor events are read at every turn and before a
 * request starts (so a refusal older than the request does not fail it);
 * a request started while the coordinator refuses also makes the link try
 * a handshake again at once (link_retry_now). The blocking calls poll the
 * monitor next to the socket; an asynchronous user sees a refusal at the
 * next treaty_client_process (at most a re-send interval later).
 *
 * The re-send jitter's PRNG is seeded from the random half of a fresh txid
 * (the kernel's CSPRNG), so that clients started together do not re-send in
 * step.
 *
 * Nothing here is durable: a crash of the client loses only the waiting.
 * Whatever the coordinator decided stays decided and can be queried by txid.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "client_core.h"
#include "link.h"
#include "treaty.h"
#include "wire.h"

#define CLIENT_MAX_REPLY (64u * 1024u) /* replies carry short texts only */
#define CLIENT_ERRMSG_MAX CCORE_LOG_MAX

struct treaty_client {
    struct ccore *core;
    struct link *link;
    void *sock; /* link_socket(link) */
    int fd;
    struct wire_in in;
    char errmsg[CLIENT_ERRMSG_MAX];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
client_errorf(struct treaty_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->errmsg, sizeof c->errmsg, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------- the core's io */

static int shell_send(void *ctx, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes,
                      const char **why)
{
    struct treaty_client *c = ctx;
    int rc = wire_send(c->sock, NULL, 0, h, frames, nframes);
    if (rc < 0)
        *why = zmq_strerror(errno);
    return rc;
}

static void shell_log(void *ctx, const char *text)
{
    struct treaty_client *c = ctx;
    snprintf(c->errmsg, sizeof c->errmsg, "%s", text);
}

int treaty_client_new_secure(const char *endpoint, const treaty_security_t *sec, treaty_client_t **out)
{
    int err;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (endpoint == NULL || *endpoint == '\0')
        return TREATY_EINVAL;
    err = treaty_security_check(sec, NULL, 0);
    if (err < 0)
        return err;

    struct treaty_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return TREATY_ENOMEM;
    uint64_t seed = 0;
    treaty_txid_t rnd;
    if (treaty_txid_generate(&rnd) == 0)
        memcpy(&seed, rnd.b + 8, sizeof seed); /* the random half of a UUIDv7 */
    if (seed == 0)
        seed = 0x9E3779B97F4A7C15ULL ^ (uint64_t)now_ms();
    struct ccore_io io = {c, shell_send, shell_log};
    c->core = ccore_new(&io, seed);
    if (c->core == NULL) {
        err = TREATY_ENOMEM;
        goto fail_core;
    }
    /* ZMQ_IMMEDIATE 0: requests wait in the pipe for the connection. */
    err = link_open(endpoint, false, sec, &c->link, c->errmsg, sizeof c->errmsg);
    if (err < 0)
        goto fail_link;
    c->sock = link_socket(c->link);
    size_t fdlen = sizeof c->fd;
    if (zmq_getsockopt(c->sock, ZMQ_FD, &c->fd, &fdlen) != 0) {
        err = TREATY_ETRANSPORT;
        goto fail_fd;
    }
    snprintf(c->errmsg, sizeof c->errmsg, "no error");
    *out = c;
    return 0;

fail_fd:
    link_close(&c->link);
fail_link:
    ccore_destroy(&c->core);
fail_core:
    free(c);
    return err;
}

int treaty_client_new(const char *endpoint, treaty_client_t **out)
{
    return treaty_client_new_secure(endpoint, NULL, out);
}

void treaty_client_destroy(treaty_client_t **cp)
{
    if (cp == NULL || *cp == NULL)
        return;
    struct treaty_client *c = *cp;
    ccore_destroy(&c->core); /* every request, without callbacks */
    wire_in_discard(&c->in);
    link_close(&c->link); /* ZMQ_LINGER 0: queued requests are dropped */
    free(c);
    *cp = NULL;
}

const char *treaty_client_errmsg(const treaty_client_t *c)
{
    if (c == NULL)
        return "no client handle";
    return c->errmsg;
}

/* ------------------------------------------------------------- the loop */

/* Receives every waiting reply without blocking. Returns the number of
 * messages read or a negative TREATY_E* (transport failure). */
static int drain(struct treaty_client *c)
{
    int n = 0;
    for (;;) {
        int rc = wire_recv(c->sock, false, CLIENT_MAX_REPLY, &c->in);
        if (rc == TREATY_ETIMEDOUT)
            return n;
        if (rc == TREATY_ETRANSPORT) {
            if (errno == EINTR)
                return n;
            client_errorf(c, "receive failed: %s", zmq_strerror(errno));
            return TREATY_ETRANSPORT;
        }
        n++;
        if (rc < 0) {
            ccore_on_malformed(c->core, rc);
            continue;
        }
        ccore_on_message(c->core, &c->in.msg);
        wire_in_close(&c->in);
    }
}

static bool readable(struct treaty_client *c)
{
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(c->sock, ZMQ_EVENTS, &ev, &len) != 0)
        return false;
    return (ev & ZMQ_POLLIN) != 0;
}

/* The link's news: a refused handshake fails every waiting request. */
static void watch_link(struct treaty_client *c)
{
    if (link_poll(c->link, now_ms()) != LINK_REFUSED)
        return;
    client_errorf(c, "%s", link_why(c->link));
    ccore_fail_all(c->core, TREATY_EAUTH, link_why(c->link));
}

/* Before a request starts: older news first (not for the new request), and
 * a link the coordinator refused tries again now. */
static void before_start(struct treaty_client *c)
{
    watch_link(c);
    link_retry_now(c->link);
}

/* One non-blocking turn: replies, re-sends, timeouts, the link's news.
 * Callbacks are not run. */
static int turn(struct treaty_client *c)
{
    watch_link(c);
    int rc = drain(c);
    if (rc < 0)
        return rc;
    ccore_on_tick(c->core, now_ms());
    /* Sending may have swallowed ZMQ_FD's edge for a reply that is now
     * waiting: look at ZMQ_EVENTS and drain again if so. */
    if (readable(c)) {
        rc = drain(c);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int treaty_client_next_timeout(const treaty_client_t *c)
{
    if (c == NULL)
        return -1;
    if (ccore_has_callbacks(c->core))
        return 0; /* a callback is waiting to run */
    int64_t now = now_ms();
    int64_t next = ccore_next_tick(c->core);
    int64_t retry = link_next_due(c->link);
    if (retry >= 0 && (next < 0 || retry < next))
        next = retry;
    if (readable((struct treaty_client *)c))
        return 0;
    if (next < 0)
        return -1;
    if (next <= now)
        return 0;
    return next - now > INT32_MAX ? INT32_MAX : (int)(next - now);
}

/* Waits until r is done (it was started, so it is in the core's heap until
 * then). */
static int wait_for(struct treaty_client *c, struct ccore_req *r)
{
    for (;;) {
        int rc = turn(c);
        if (rc < 0)
            return rc;
        if (ccore_req_done(r))
            return 0;
        int64_t now = now_ms();
        int64_t due = ccore_next_tick(c->core);
        int64_t retry = link_next_due(c->link);
        if (retry >= 0 && retry < due)
            due = retry;
        long wait = due > now ? (long)(due - now) : 0;
        zmq_pollitem_t items[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {link_monitor(c->link), 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, wait) < 0 && errno != EINTR) {
            client_errorf(c, "poll failed: %s", zmq_strerror(errno));
            return TREATY_ETRANSPORT;
        }
    }
}

/* The blocking calls: a started request (rc from its start), waited for. */
static int finish_blocking(struct treaty_client *c, int rc, struct ccore_req *r, treaty_outcome_t *out)
{
    if (rc < 0) {
        if (rc == TREATY_ENOMEM)
            out->status = TREATY_STATUS_UNKNOWN;
        return rc;
    }
    rc = wait_for(c, r);
    if (rc == 0)
        return ccore_take(c->core, &r, out);
    ccore_take(c->core, &r, NULL);
    out->status = TREATY_STATUS_UNKNOWN;
    return rc;
}

static void outcome_init(treaty_outcome_t *o, const treaty_txid_t *id)
{
    memset(o, 0, sizeof *o);
    if (id != NULL)
        o->txid = *id;
    o->status = TREATY_STATUS_NONE;
    o->failed_branch = TREATY_NO_BRANCH;
}

int treaty_client_submit(treaty_client_t *c, const treaty_txn_t *t, int timeout_ms, treaty_outcome_t *out)
{
    if (out != NULL)
        outcome_init(out, treaty_txn_id(t));
    if (c == NULL || t == NULL || out == NULL || timeout_ms <= 0)
        return TREATY_EINVAL;
    struct ccore_req *r;
    before_start(c);
    int rc = ccore_submit(c->core, t, timeout_ms, NULL, NULL, now_ms(), &r);
    return finish_blocking(c, rc, r, out);
}

int treaty_client_query(treaty_client_t *c, const treaty_txid_t *id, int timeout_ms, treaty_outcome_t *out)
{
    if (out != NULL)
        outcome_init(out, id);
    if (c == NULL || id == NULL || out == NULL || timeout_ms <= 0)
        return TREATY_EINVAL;
    struct ccore_req *r;
    before_start(c);
    int rc = ccore_query(c->core, id, timeout_ms, NULL, NULL, now_ms(), &r);
    return finish_blocking(c, rc, r, out);
}

int treaty_client_run_saga(treaty_client_t *c, const treaty_saga_t *s, int timeout_ms, treaty_outcome_t *out)
{
    if (out != NULL)
        outcome_init(out, treaty_saga_id(s));
    if (c == NULL || s == NULL || out == NULL || timeout_ms <= 0)
        return TREATY_EINVAL;
    struct ccore_req *r;
    before_start(c);
    int rc = ccore_run_saga(c->core, s, timeout_ms, NULL, NULL, now_ms(), &r);
    return finish_blocking(c, rc, r, out);
}

int treaty_client_submit_async(treaty_client_t *c, const treaty_txn_t *t, int timeout_ms, treaty_outcome_fn cb,
                               void *arg)
{
    if (c == NULL || t == NULL || cb == NULL || timeout_ms <= 0)
        return TREATY_EINVAL;
    before_start(c);
    return ccore_submit(c->core, t, timeout_ms, cb, arg, now_ms(), NULL);
}

int treaty_client_run_saga_async(treaty_client_t *c, const treaty_saga_t *s, int timeout_ms, treaty_outcome_fn cb,
                                 void *arg)
{
    if (c == NULL || s == NULL || cb == NULL || timeout_ms <= 0)
        return TREATY_EINVAL;
    before_start(c);
    return ccore_run_saga(c->core, s, timeout_ms, cb, arg, now_ms(), NULL);
}

int treaty_client_fd(const treaty_client_t *c)
{
    if (c == NULL)
        return TREATY_EINVAL;
    return c->fd;
}

int treaty_client_process(treaty_client_t *c)
{
    if (c == NULL)
        return TREATY_EINVAL;
    int rc = turn(c);
    if (rc < 0)
        return rc;
    /* Each request leaves the core before its callback runs, so a callback
     * may submit new requests. */
    return ccore_run_callbacks(c->core);
}
