/*
 * participant.c - treaty_participant_*: the shell around the participant's
 * protocol core (participant_core.h) for one service instance: a ZeroMQ
 * DEALER socket, the SDK's thread (or the caller's loop), the handle's
 * errmsg and the monotonic clock. What the participant says and when - HELLO
 * and the heartbeat, WELCOME and the in-doubt sweep, VOTE, ACK, RESULT, and
 * the crash windows around them - is the core's; read participant_core.h.
 *
 * Lifecycle of a participant
 *   1. new: a DEALER socket (own ZeroMQ context; link.c: CURVE keys when
 *      given, a monitor on its handshakes) connects to the coordinator, and
 *      a core is made with the handlers. Nothing is sent yet.
 *   2. every turn (process, or the SDK thread after start): the link's
 *      handshake news (a refusal is written to errmsg and stderr once per
 *      streak; link.c connects again with backoff), the core's timers
 *      (pcore_on_tick: HELLO when due, the sweep), then up to
 *      PARTICIPANT_BATCH received messages, each handed to the core
 *      (pcore_on_message, or pcore_on_malformed when it did not decode) with
 *      the time it is handled at. The core's replies leave through
 *      shell_send - VOTE, ACK and RESULT bundled until the turn ends (flush),
 *      HELLO and INQUIRE at once - its texts land in errmsg through
 *      shell_log.
 *   3. destroy: stop the thread if started, close the socket, destroy the
 *      core (and with it the extension: pg_libpq.c's connection).
 *
 * Threading: the socket and the core are created by new() on the caller's
 * thread. After treaty_participant_start() the SDK thread owns both
 * exclusively until treaty_participant_stop() joins that thread;
 * pthread_create/pthread_join are the memory barriers that hand them over and
 * back (ZeroMQ sockets may move between threads that way, never be shared).
 * errmsg is written under a lock and may be read from any thread.
 *
 * ZMQ_IMMEDIATE 1: while the coordinator is unreachable a reply or HELLO is
 * dropped at once (HELLO's send fails, so the core tries again soon; the
 * bundled replies are dropped at the flush, counted in errmsg) instead of
 * piling up in the pipe and arriving in a burst after the reconnect.
 * Nothing is lost that matters: the coordinator re-sends PREPARE / COMMIT /
 * ABORT / STEP, and HELLO is periodic.
 *
 * Malformed or unexpected messages are dropped and counted; the handle's
 * errmsg says what was dropped. Nothing from the network can crash the host.
 * With TREATY_SDK_LOG set (non-empty, not "0") in the environment, every text
 * that lands in errmsg is also written to stderr, one line each. Alerts
 * (PCORE_ALERT: a decision the participant refuses because obeying it would
 * report something that did not happen) go to stderr always.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "link.h"
#include "participant_core.h"
#include "participant_int.h"
#include "treaty.h"
#include "wire.h"

#define PARTICIPANT_POLL_MS 100 /* SDK thread: longest sleep between stop checks */
#define PARTICIPANT_BATCH 64    /* messages handled per process call */
#define PARTICIPANT_MAX_PAYLOAD (64u * 1024u * 1024u)
#define PARTICIPANT_ERRMSG_MAX PCORE_LOG_MAX

struct treaty_participant {
    struct pcore *core;

    struct link *link;
    void *sock; /* link_socket(link) */
    int fd;
    bool refused_told; /* the current streak of refused handshakes was reported */

    pthread_t thread;
    atomic_bool running; /* written by the caller's thread only */
    atomic_bool stop;

    bool log_stderr;

    struct wire_in in;
    struct wire_batch *out; /* what the core sends, bundled until the turn ends */

    pthread_mutex_t err_lock;
    char errmsg[PARTICIPANT_ERRMSG_MAX];     /* written under err_lock, any thread */
    char errmsg_out[PARTICIPANT_ERRMSG_MAX]; /* the reader's copy */
};

/* The participant whose SDK thread this is (NULL on other threads). */
static _Thread_local const struct treaty_participant *current;

int64_t participant_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------- the core's io */

/* Sends what the core sent since the last flush (shell_send bundles the answers).
 * Every way into the core that can make it send ends with this: turn(),
 * treaty_participant_inquire(); a new one must too, or its messages wait
 * for the next turn. */
static void flush(struct treaty_participant *p)
{
    size_t lost = wire_batch_flush(p->out, p->sock);
    if (lost > 0)
        participant_errorf(p, "%zu messages to the coordinator not sent (it re-sends what matters)", lost);
}

static int shell_send(void *ctx, const struct wire_hdr *h, const struct wire_frame *frames, size_t nframes,
                      const char **why)
{
    struct treaty_participant *p = ctx;
    int rc;
    if (h->type == WIRE_VOTE || h->type == WIRE_ACK || h->type == WIRE_RESULT) {
        /* the answers, many a turn under load: bundled (a loss is the
         * coordinator's to re-ask) */
        rc = wire_batch_send(p->out, p->sock, NULL, 0, h, frames, nframes);
    } else {
        /* HELLO and INQUIRE at once, after what is held, so that the core
         * learns when they could not go (HELLO is retried sooner then) */
        flush(p);
        rc = wire_send(p->sock, NULL, 0, h, frames, nframes);
    }
    if (rc < 0)
        *why = zmq_strerror(errno);
    return rc;
}

static void shell_log(void *ctx, enum pcore_level level, const char *text)
{
    struct treaty_participant *p = ctx;
    pthread_mutex_lock(&p->err_lock);
    snprintf(p->errmsg, sizeof p->errmsg, "%s", text);
    pthread_mutex_unlock(&p->err_lock);
    if (level == PCORE_ALERT)
        fprintf(stderr, "treaty participant %s/%s: ALERT: %s\n", pcore_service(p->core), pcore_instance(p->core), text);
    else if (p->log_stderr)
        fprintf(stderr, "treaty participant %s/%s: %s\n", pcore_service(p->core), pcore_instance(p->core), text);
}

void participant_errorf(treaty_participant_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pcore_vlog(p->core, PCORE_NOTE, fmt, ap);
    va_end(ap);
}

struct pcore *participant_core(const treaty_participant_t *p)
{
    return p->core;
}

bool participant_started(const treaty_participant_t *p)
{
    return atomic_load(&((struct treaty_participant *)p)->running);
}

const char *treaty_participant_errmsg(const treaty_participant_t *cp)
{
    if (cp == NULL)
        return "no participant handle";
    treaty_participant_t *p = (treaty_participant_t *)cp;
    pthread_mutex_lock(&p->err_lock);
    memcpy(p->errmsg_out, p->errmsg, sizeof p->errmsg_out);
    pthread_mutex_unlock(&p->err_lock);
    return p->errmsg_out;
}

static bool name_ok(const char *s)
{
    return s != NULL && wire_name_ok((const uint8_t *)s, strnlen(s, WIRE_NAME_MAX + 1));
}

int treaty_participant_new_secure(const char *endpoint, const char *service, const char *instance,
                                  const treaty_handlers_t *h, const treaty_security_t *sec, treaty_participant_t **out)
{
    int err;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (endpoint == NULL || *endpoint == '\0' || !name_ok(service) || !name_ok(instance) ||
        (h != NULL && (h->prepare == NULL || h->commit == NULL || h->abort == NULL)))
        return TREATY_EINVAL;
    err = treaty_security_check(sec, NULL, 0);
    if (err < 0)
        return err;

    struct treaty_participant *p = calloc(1, sizeof *p);
    if (p == NULL)
        return TREATY_ENOMEM;
    atomic_init(&p->stop, false);
    atomic_init(&p->running, false);
    const char *log = getenv("TREATY_SDK_LOG");
    p->log_stderr = log != NULL && *log != '\0' && strcmp(log, "0") != 0;
    snprintf(p->errmsg, sizeof p->errmsg, "no error");
    p->out = wire_batch_new();
    if (p->out == NULL) {
        err = TREATY_ENOMEM;
        goto fail_batch;
    }
    if (pthread_mutex_init(&p->err_lock, NULL) != 0) {
        err = TREATY_EIO;
        goto fail_mutex;
    }
    struct pcore_io io = {p, shell_send, shell_log};
    err = pcore_new(service, instance, h, &io, participant_now_ms(), &p->core); /* the first HELLO is due now */
    if (err < 0)
        goto fail_core;

    /* ZMQ_IMMEDIATE 1: see the file's header. */
    char why[PARTICIPANT_ERRMSG_MAX];
    err = link_open(endpoint, true, sec, &p->link, why, sizeof why);
    if (err < 0)
        goto fail_link;
    p->sock = link_socket(p->link);
    size_t fdlen = sizeof p->fd;
    if (zmq_getsockopt(p->sock, ZMQ_FD, &p->fd, &fdlen) != 0) {
        err = TREATY_ETRANSPORT;
        goto fail_fd;
    }
    *out = p;
    return 0;

fail_fd:
    link_close(&p->link);
fail_link:
    pcore_destroy(&p->core);
fail_core:
    pthread_mutex_destroy(&p->err_lock);
fail_mutex:
    wire_batch_free(&p->out);
fail_batch:
    free(p);
    return err;
}

int treaty_participant_new(const char *endpoint, const char *service, const char *instance, const treaty_handlers_t *h,
                           treaty_participant_t **out)
{
    return treaty_participant_new_secure(endpoint, service, instance, h, NULL, out);
}

void treaty_participant_destroy(treaty_participant_t **pp)
{
    if (pp == NULL || *pp == NULL)
        return;
    struct treaty_participant *p = *pp;
    if (atomic_load(&p->running))
        treaty_participant_stop(p);
    wire_in_discard(&p->in);
    wire_batch_free(&p->out); /* unsent replies are dropped; the coordinator re-sends */
    link_close(&p->link);     /* ZMQ_LINGER 0: likewise */
    pcore_destroy(&p->core);  /* step handlers' args, then the extension */
    pthread_mutex_destroy(&p->err_lock);
    free(p);
    *pp = NULL;
}

/* ---------------------------------------------------------- saga handlers */

static int add_step(treaty_participant_t *p, enum pcore_step_kind kind, const char *name, treaty_step_fn fn, void *arg)
{
    if (p == NULL || fn == NULL || !name_ok(name))
        return TREATY_EINVAL;
    if (atomic_load(&p->running))
        return TREATY_ESTATE; /* the SDK thread reads the table without a lock */
    return pcore_add_step(p->core, kind, name, fn, arg, NULL);
}

int treaty_participant_on_action(treaty_participant_t *p, const char *name, treaty_step_fn fn, void *arg)
{
    return add_step(p, PCORE_ACTION, name, fn, arg);
}

int treaty_participant_on_compensation(treaty_participant_t *p, const char *name, treaty_step_fn fn, void *arg)
{
    return add_step(p, PCORE_COMPENSATION, name, fn, arg);
}

/* ------------------------------------------------------------- the loop */

static bool readable(const struct treaty_participant *p)
{
    int ev = 0;
    size_t len = sizeof ev;
    if (zmq_getsockopt(p->sock, ZMQ_EVENTS, &ev, &len) != 0)
        return false;
    return (ev & ZMQ_POLLIN) != 0;
}

/* The link's news: a refused handshake is told once per streak, to errmsg
 * and stderr (an operator must fix keys or the allow-list); link.c tries
 * again by itself. */
static void watch_link(struct treaty_participant *p)
{
    switch (link_poll(p->link, participant_now_ms())) {
    case LINK_REFUSED:
        if (!p->refused_told)
            pcore_log(p->core, PCORE_ALERT, "%s", link_why(p->link));
        p->refused_told = true;
        break;
    case LINK_UP:
        if (p->refused_told)
            pcore_log(p->core, PCORE_NOTE, "the coordinator accepted the handshake again");
        p->refused_told = false;
        break;
    case LINK_NONE:
        break;
    }
}

/* One turn: the link's news and the timers first, then up to
 * PARTICIPANT_BATCH messages. Returns the number of messages read (malformed
 * ones included) or TREATY_ETRANSPORT. */
static int turn(struct treaty_participant *p)
{
    watch_link(p);
    pcore_on_tick(p->core, participant_now_ms());

    int n = 0;
    while (n < PARTICIPANT_BATCH) {
        int rc = wire_recv(p->sock, false, PARTICIPANT_MAX_PAYLOAD, &p->in);
        if (rc == TREATY_ETIMEDOUT)
            break;
        if (rc == TREATY_ETRANSPORT) {
            if (errno == EINTR)
                break;
            participant_errorf(p, "receive failed: %s", zmq_strerror(errno));
            return TREATY_ETRANSPORT;
        }
        n++;
        if (rc < 0) {
            pcore_on_malformed(p->core, rc);
            continue;
        }
        /* The time the message is handled at: handlers before it may have
         * taken a while. */
        pcore_on_message(p->core, &p->in.msg, participant_now_ms());
        wire_in_close(&p->in);
    }
    flush(p);
    return n;
}

static bool on_own_thread(const struct treaty_participant *p)
{
    return current == p;
}

bool participant_on_owner_thread(const treaty_participant_t *p)
{
    return !atomic_load(&((struct treaty_participant *)p)->running) || on_own_thread(p);
}

int treaty_participant_fd(const treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    return p->fd;
}

int treaty_participant_next_timeout(const treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (!participant_on_owner_thread(p))
        return TREATY_ESTATE;
    if (readable(p))
        return 0;
    int64_t due = pcore_next_tick(p->core);
    int64_t retry = link_next_due(p->link);
    if (retry >= 0 && retry < due)
        due = retry;
    int64_t wait = due - participant_now_ms();
    if (wait <= 0)
        return 0;
    return wait > INT32_MAX ? INT32_MAX : (int)wait;
}

int treaty_participant_process(treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (atomic_load(&p->running))
        return TREATY_ESTATE; /* the SDK thread owns the socket */
    return turn(p);
}

int treaty_participant_inquire(treaty_participant_t *p, const treaty_txid_t *id, unsigned branch)
{
    if (p == NULL || id == NULL || branch > UINT16_MAX)
        return TREATY_EINVAL;
    if (!participant_on_owner_thread(p))
        return TREATY_ESTATE;
    int rc = pcore_inquire(p->core, id, branch) < 0 ? TREATY_ETRANSPORT : 0;
    flush(p);
    return rc;
}

/* ----------------------------------------------------------- SDK thread */

static void *participant_thread(void *arg)
{
    struct treaty_participant *p = arg;
    zmq_pollitem_t items[2] = {{p->sock, 0, ZMQ_POLLIN, 0}, {link_monitor(p->link), 0, ZMQ_POLLIN, 0}};

    current = p;
    while (!atomic_load(&p->stop)) {
        int n = turn(p);
        if (n >= PARTICIPANT_BATCH)
            continue; /* more may be waiting; timers were run too */
        long wait = PARTICIPANT_POLL_MS;
        int64_t until = pcore_next_tick(p->core) - participant_now_ms();
        if (until < wait)
            wait = until > 0 ? (long)until : 0;
        if (n < 0)
            wait = PARTICIPANT_POLL_MS; /* transport trouble: do not spin */
        if (zmq_poll(items, 2, wait) < 0 && errno != EINTR) {
            participant_errorf(p, "poll failed: %s", zmq_strerror(errno));
            struct timespec ts = {0, PARTICIPANT_POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    current = NULL;
    return NULL;
}

int treaty_participant_start(treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (atomic_load(&p->running))
        return TREATY_ESTATE;
    atomic_store(&p->stop, false);
    atomic_store(&p->running, true);
    /* pthread_create hands the socket, the core and the handlers' state to
     * the thread. */
    int rc = pthread_create(&p->thread, NULL, participant_thread, p);
    if (rc != 0) {
        atomic_store(&p->running, false);
        participant_errorf(p, "pthread_create: %s", strerror(rc));
        return TREATY_EIO;
    }
    return 0;
}

int treaty_participant_stop(treaty_participant_t *p)
{
    if (p == NULL)
        return TREATY_EINVAL;
    if (!atomic_load(&p->running))
        return TREATY_ESTATE;
    if (on_own_thread(p))
        return TREATY_ESTATE; /* from a handler: joining ourselves would deadlock */
    atomic_store(&p->stop, true);
    int rc = pthread_join(p->thread, NULL);
    /* pthread_join hands the socket and the core back to the caller's thread. */
    atomic_store(&p->running, false);
    if (rc != 0) {
        participant_errorf(p, "pthread_join: %s", strerror(rc));
        return TREATY_EIO;
    }
    return 0;
}
