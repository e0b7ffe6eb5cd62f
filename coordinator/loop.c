/*
 * loop.c - treatyd's event loop: the shell around the core (see loop.h).
 *
 * One thread. zmq_poll() waits on the ROUTER socket (clients and
 * participants), the journal's notification socket and, with CURVE, the ZAP
 * handler's socket (security.h), at most until the core's next tick. Each
 * turn: a reload (reload.h: the configuration, and the allow-list with
 * CURVE) if SIGHUP asked for one; ZAP requests
 * answered; the journal's news (durable watermark, lookup answers) to the
 * core; every waiting message to the core, with its sender's allow-list
 * entry looked up by the key of its connection; the core's tick; then every
 * journal record appended during the turn is handed to the journal writer,
 * which commits them together (group commit), and the news is read again.
 *
 * The clocks are read here, once per event, and handed to the core; the
 * core's PRNG is seeded here from getrandom.
 *
 * systemd (sd_notify, a no-op without NOTIFY_SOCKET): STATUS= while the
 * journal is being connected and every second of recovery (with
 * EXTEND_TIMEOUT_USEC, so that a long recovery that progresses is not
 * killed by TimeoutStartSec), READY=1 once recovery is done and the socket
 * is bound, STOPPING=1 when SIGTERM starts the drain.
 */
#include "loop.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <zmq.h>

#include "core.h"
#include "core_admin.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "reload.h"
#include "security.h"
#include "treaty.h"
#include "util.h"
#include "wire.h"

#define MAX_MSGS_PER_TURN 4096

struct loop {
    const struct config *cfg;
    void *zctx;
    void *router;
    struct journal *journal;
    struct core *core;
    struct security *sec;       /* with security.curve; NULL without */
    void *admin;                /* ROUTER of admin.listen (treatyctl), or NULL */
    struct admin_peer *pending; /* admin.max_pending slots: requests the core has not answered */
    uint64_t admin_seq;         /* tokens: slot index + max_pending * sequence */
    struct wire_in *in;
    struct wire_batch *out;       /* what the core sends, bundled per peer until the turn ends */
    struct reload *reload;        /* borrowed from loop_run's caller */
    struct allowlist *allow_next; /* the allow-list item's prepared list */
    uint64_t durable_seq;         /* the watermark last handed to the core */
    int64_t stats_at_ms;          /* when log_stats last ran */
    uint64_t stats_write_us;      /* journal write time it saw then */
    struct metrics_msgs msgs;     /* messages in and out, by type */
    struct metrics_http *metrics; /* GET /metrics; NULL: metrics.listen is off */
};

static struct core_time now_time(void)
{
    struct core_time t = {util_mono_ms(), util_wall_ms()};
    return t;
}

/* ------------------------------------------------------------ struct core_io */

static void io_send(void *ctx, const uint8_t *rid, size_t rid_len, const struct wire_hdr *h,
                    const struct wire_frame *frames, size_t nframes)
{
    static const uint8_t none[16];
    struct loop *l = ctx;
    if (wire_batch_send(l->out, l->router, rid, rid_len, h, frames, nframes) < 0)
        log_txn(LOG_LEVEL_DEBUG, memcmp(h->txid, none, 16) != 0 ? h->txid : NULL, "send %s failed: %s (peer gone?)",
                wire_type_name(h->type), zmq_strerror(errno));
    else
        metrics_count_msg(&l->msgs, METRICS_OUT, h->type);
}

static uint64_t io_append(void *ctx, const struct journal_rec *r, bool force)
{
    struct loop *l = ctx;
    return journal_append(l->journal, r, force);
}

static void io_lookup(void *ctx, const uint8_t txid[16])
{
    struct loop *l = ctx;
    journal_lookup(l->journal, txid);
}

/* ------------------------------------------------------------ the admin endpoint
 *
 * A ROUTER on admin.listen (ipc:// only, its socket file 0600): treatyctl's
 * REQ sends [rid][""][request]; the request goes to the core with a token
 * naming the slot that keeps rid, and the core's answer, now or later, goes
 * back to that rid. More than admin.max_pending requests unanswered: "busy". */

struct admin_peer {
    bool used;
    uint64_t token;
    uint8_t rid[256];
    size_t rid_len;
};

static void admin_send(struct loop *l, const uint8_t *rid, size_t rid_len, const char *body, size_t len)
{
    if (zmq_send(l->admin, rid, rid_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
        zmq_send(l->admin, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 || zmq_send(l->admin, body, len, ZMQ_DONTWAIT) < 0)
        log_debug("admin: cannot answer (treatyctl gone?): %s", zmq_strerror(errno));
}

static void io_admin_reply(void *ctx, uint64_t token, const char *json, size_t len)
{
    struct loop *l = ctx;
    size_t cap = (size_t)l->cfg->admin_max_pending;
    struct admin_peer *p = &l->pending[token % cap];
    if (l->admin == NULL || !p->used || p->token != token)
        return;
    admin_send(l, p->rid, p->rid_len, json, len);
    p->used = false;
}

static void io_read_records(void *ctx, const uint8_t txid[16], uint64_t token)
{
    struct loop *l = ctx;
    journal_read_records(l->journal, txid, token);
}

/* Receives one admin request. Returns false when none was waiting. */
static bool handle_admin(struct loop *l)
{
    zmq_msg_t part[3];
    int nparts = 0;
    bool more = true, bad = false;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, l->admin, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            if (nparts == 0)
                return false;
            bad = true;
            break;
        }
        more = zmq_msg_more(&m);
        if (nparts < 3)
            part[nparts++] = m;
        else {
            zmq_msg_close(&m);
            bad = true;
        }
    }
    const uint8_t *rid = zmq_msg_data(&part[0]);
    size_t rid_len = zmq_msg_size(&part[0]);
    if (bad || nparts != 3 || zmq_msg_size(&part[1]) != 0 || rid_len > sizeof l->pending[0].rid) {
        log_warn("admin: a malformed request (not a REQ envelope) dropped");
    } else {
        size_t cap = (size_t)l->cfg->admin_max_pending;
        struct admin_peer *p = NULL;
        for (size_t i = 0; i < cap && p == NULL; i++)
            if (!l->pending[i].used) {
                p = &l->pending[i];
                p->used = true;
                p->token = ++l->admin_seq * cap + i;
                memcpy(p->rid, rid, rid_len);
                p->rid_len = rid_len;
            }
        if (p == NULL) {
            static const char busy[] = "{\"ok\":false,\"error\":\"busy\",\"message\":\"admin.max_pending requests "
                                       "are being answered; try again\"}";
            admin_send(l, rid, rid_len, busy, sizeof busy - 1);
        } else {
            core_on_admin(l->core, p->token, zmq_msg_data(&part[2]), zmq_msg_size(&part[2]), now_time());
        }
    }
    for (int i = 0; i < nparts; i++)
        zmq_msg_close(&part[i]);
    return true;
}

/* Binds admin.listen with its socket file readable and writable by our user
 * only (the umask while binding, then chmod to be sure). */
static int open_admin(struct loop *l)
{
    if (l->cfg->admin_listen[0] == '\0')
        return 0;
    l->pending = calloc((size_t)l->cfg->admin_max_pending, sizeof *l->pending);
    l->admin = zmq_socket(l->zctx, ZMQ_ROUTER);
    if (l->pending == NULL || l->admin == NULL)
        return TREATY_ENOMEM;
    int zero = 0;
    int64_t maxmsg = ADMIN_REQUEST_MAX;
    zmq_setsockopt(l->admin, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(l->admin, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    mode_t old = umask(0077);
    int rc = zmq_bind(l->admin, l->cfg->admin_listen);
    umask(old);
    const char *path = l->cfg->admin_listen + strlen("ipc://");
    if (rc != 0 || chmod(path, 0600) != 0) {
        log_error("admin: cannot listen on %s: %s", l->cfg->admin_listen,
                  rc != 0 ? zmq_strerror(errno) : strerror(errno));
        zmq_close(l->admin);
        l->admin = NULL;
        return TREATY_ETRANSPORT;
    }
    log_info("admin endpoint (treatyctl) on %s, socket file 0600", l->cfg->admin_listen);
    return 0;
}

static bool io_journal_healthy(void *ctx)
{
    struct loop *l = ctx;
    return journal_healthy(l->journal);
}

/* ------------------------------------------------------------ events */

static void on_lookup(void *arg, const struct journal_lookup_result *r)
{
    struct loop *l = arg;
    core_on_lookup(l->core, r, now_time());
}

static void on_records(void *arg, const struct journal_records *r)
{
    struct loop *l = arg;
    core_on_records(l->core, r, now_time());
}

/* What the journal has to say: the durable watermark, lookup answers. */
static void journal_news(struct loop *l)
{
    uint64_t w = journal_durable(l->journal);
    if (w > l->durable_seq) {
        l->durable_seq = w;
        core_on_durable(l->core, w, now_time());
    }
    journal_lookup_results(l->journal, on_lookup, l);
    journal_records_results(l->journal, on_records, l);
}

/* The bound of every payload frame a peer may send: names and numbers must
 * always fit; branch payloads are checked against max_payload_bytes by the
 * core. */
static size_t frame_limit(const struct loop *l)
{
    return (size_t)l->cfg->max_payload_bytes > TREATY_REASON_MAX ? (size_t)l->cfg->max_payload_bytes
                                                                 : TREATY_REASON_MAX;
}

/* Receives one message for the core. Returns false when none was waiting. */
static bool handle_message(struct loop *l)
{
    int rc = wire_recv(l->router, true, frame_limit(l), l->in);
    if (rc == TREATY_ETIMEDOUT)
        return false;
    metrics_count_msg(&l->msgs, METRICS_IN, rc < 0 ? 0 : l->in->msg.hdr.type);
    if (rc < 0) {
        core_on_malformed(l->core, l->in->rid, l->in->rid_len, &l->in->msg.hdr, rc, now_time());
        return true;
    }
    /* The roles of the key as the allow-list says now: a key revoked since
     * its connection was made is refused from the next message on. */
    const struct allow_entry *peer = l->sec != NULL ? security_peer(l->sec, l->in->user_id) : NULL;
    core_on_message(l->core, l->in->rid, l->in->rid_len, peer, &l->in->msg, now_time());
    wire_in_close(l->in);
    return true;
}

/* ------------------------------------------------------------ the loop */

static int open_router(struct loop *l)
{
    l->router = zmq_socket(l->zctx, ZMQ_ROUTER);
    if (l->router == NULL)
        return TREATY_ETRANSPORT;
    int one = 1, zero = 0, hwm = 1000000;
    /* the largest message the wire's frame table allows: bigger ones are cut
     * off by libzmq before they take memory */
    int64_t maxmsg = (int64_t)wire_message_max(frame_limit(l));
    if (maxmsg < WIRE_BUNDLE_BYTES)
        maxmsg = WIRE_BUNDLE_BYTES; /* a bundle of participants' answers */
    zmq_setsockopt(l->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(l->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(l->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(l->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(l->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    /* The ZAP handler before the bind: a CURVE server with no handler in
     * its context would admit every key. */
    if (l->sec != NULL && security_bind(l->sec, l->zctx, l->router) < 0) {
        zmq_close(l->router);
        l->router = NULL;
        return TREATY_ETRANSPORT;
    }
    if (zmq_bind(l->router, l->cfg->listen) != 0) {
        log_error("cannot listen on %s: %s", l->cfg->listen, zmq_strerror(errno));
        zmq_close(l->router);
        l->router = NULL;
        return TREATY_ETRANSPORT;
    }
    return 0;
}

/* Every 60 s. journal_busy: the share of the last interval the journal's
 * writer spent writing (near 100 %: the journal is the limit). */
static void log_stats(struct loop *l)
{
    struct core_stats cs;
    struct journal_stats js;
    core_get_stats(l->core, &cs);
    journal_get_stats(l->journal, &js);
    int64_t now = util_mono_ms();
    double busy = now > l->stats_at_ms && l->stats_at_ms > 0
                      ? (double)(js.write_us - l->stats_write_us) / 10.0 / (double)(now - l->stats_at_ms)
                      : 0;
    l->stats_at_ms = now;
    l->stats_write_us = js.write_us;
    log_info("stats: submitted=%llu committed=%llu aborted=%llu in_flight=%zu refused=%llu malformed=%llu "
             "late_votes=%llu inquiries=%llu recovered=%llu journal_batches=%llu journal_records=%llu "
             "forced_batches=%llu journal_busy=%.0f%% instances=%zu sagas=%llu sagas_completed=%llu "
             "sagas_compensated=%llu sagas_stuck=%llu sagas_in_flight=%zu step_retries=%llu presumed_aborts=%llu "
             "outcomes_cached=%zu outcomes_evicted=%llu lookups=%llu lookup_errors=%llu denied_role=%llu "
             "denied_service=%llu denied_instance=%llu denied_sender=%llu denied_limit=%llu",
             (unsigned long long)cs.submitted, (unsigned long long)cs.committed, (unsigned long long)cs.aborted,
             cs.inflight_2pc, (unsigned long long)cs.refused, (unsigned long long)cs.malformed,
             (unsigned long long)cs.late_votes, (unsigned long long)cs.inquiries, (unsigned long long)cs.recovered,
             (unsigned long long)js.batches, (unsigned long long)js.records, (unsigned long long)js.forced_batches,
             busy, cs.instances, (unsigned long long)cs.sagas, (unsigned long long)cs.sagas_completed,
             (unsigned long long)cs.sagas_compensated, (unsigned long long)cs.sagas_stuck, cs.inflight_sagas,
             (unsigned long long)cs.step_retries, (unsigned long long)cs.presumed_aborts, cs.outcomes_cached,
             (unsigned long long)cs.outcomes_evicted, (unsigned long long)cs.lookups,
             (unsigned long long)cs.lookup_errors, (unsigned long long)cs.denied_role,
             (unsigned long long)cs.denied_service, (unsigned long long)cs.denied_instance,
             (unsigned long long)cs.denied_sender, (unsigned long long)cs.denied_limit);
}

/* ------------------------------------------------------------ reload */

/* The allow-list as a reload item (reload.h), with security.curve. */
static int allow_prepare(void *arg, char *err, size_t errlen)
{
    struct loop *l = arg;
    return security_reload_read(l->sec, &l->allow_next, err, errlen);
}

static void allow_commit(void *arg)
{
    struct loop *l = arg;
    security_reload_install(l->sec, l->allow_next);
    l->allow_next = NULL;
    const struct allowlist *a = security_allowlist(l->sec);
    log_info("SIGHUP: allow-list reloaded: %zu keys; new connections and every message are judged by it from now on",
             allowlist_count(a));
    core_on_allowlist(l->core, a, now_time());
}

static void allow_abort(void *arg)
{
    struct loop *l = arg;
    allowlist_free(&l->allow_next);
}

static const struct reload_ops allow_ops = {allow_prepare, allow_commit, allow_abort};

/* SIGHUP: every item of the reload set, all or nothing (reload.h). */
static void reload(struct loop *l)
{
    sd_notify(0, "STATUS=reloading");
    if (reload_run(l->reload) == 0)
        core_config_changed(l->core);
    sd_notifyf(0, "STATUS=serving on %s", l->cfg->listen);
}

/* Serves until stopped (0) or deposed from the journal (TREATY_ESTATE). */
static int serve(struct loop *l, volatile sig_atomic_t *stop, volatile sig_atomic_t *reload_requested)
{
    int64_t next_stats = util_mono_ms() + 60000;
    l->stats_at_ms = util_mono_ms();
    int64_t deadline = -1;
    bool stopping = false;

    for (;;) {
        int64_t now = util_mono_ms();
        if (journal_deposed(l->journal)) {
            /* Nothing appended any more becomes durable, so nothing waiting
             * on it is told: stopping loses no promise. */
            log_error("stopping: another coordinator has taken the journal; %zu transactions unfinished here are "
                      "its to finish",
                      core_unfinished(l->core));
            return TREATY_ESTATE;
        }
        if (*reload_requested) {
            *reload_requested = 0;
            reload(l);
        }
        if (*stop && !stopping) {
            struct core_stats cs;
            core_get_stats(l->core, &cs);
            stopping = true;
            sd_notifyf(0, "STOPPING=1\nSTATUS=stopping: %zu transactions and %zu sagas in flight, deadline %d ms",
                       cs.inflight_2pc, cs.inflight_sagas, l->cfg->shutdown_deadline_ms);
            core_stop(l->core);
            deadline = now + l->cfg->shutdown_deadline_ms;
            log_info("stopping: refusing new transactions; %zu in flight, deadline %d ms", cs.inflight_2pc,
                     l->cfg->shutdown_deadline_ms);
        }
        if (stopping && (core_unfinished(l->core) == 0 || now >= deadline)) {
            struct core_stats cs;
            core_get_stats(l->core, &cs);
            if (core_unfinished(l->core) > 0)
                log_warn("stopping with %zu transactions and %zu sagas unfinished; recovery resumes them at next "
                         "start",
                         cs.inflight_2pc, cs.inflight_sagas);
            return 0;
        }
        long timeout = 1000;
        int64_t nt = core_next_tick(l->core);
        if (nt >= 0)
            timeout = nt <= now ? 0 : (long)(nt - now);
        if (timeout > 100 && stopping)
            timeout = 100;
        if (timeout > 1000)
            timeout = 1000;
        long mt = metrics_http_timeout_ms(l->metrics, now);
        if (mt >= 0 && mt < timeout)
            timeout = mt;
        /* The router and the journal always; then ZAP (security.curve), the
         * admin socket (admin.listen) and MHD's epoll descriptor
         * (metrics.listen) when they are on. */
        zmq_pollitem_t items[5] = {
            {l->router, 0, ZMQ_POLLIN, 0},
            {journal_socket(l->journal), 0, ZMQ_POLLIN, 0},
        };
        int nitems = 2, zap = -1, admin = -1, mhd = -1;
        if (l->sec != NULL) {
            zap = nitems++;
            items[zap] = (zmq_pollitem_t){security_zap_socket(l->sec), 0, ZMQ_POLLIN, 0};
        }
        if (l->admin != NULL) {
            admin = nitems++;
            items[admin] = (zmq_pollitem_t){l->admin, 0, ZMQ_POLLIN, 0};
        }
        if (l->metrics != NULL) {
            mhd = nitems++;
            items[mhd] = (zmq_pollitem_t){NULL, metrics_http_fd(l->metrics), ZMQ_POLLIN, 0};
        }
        /* What the last turn sent goes out before we wait; a bundle with
         * messages left to read is read without waiting. */
        size_t lost = wire_batch_flush(l->out, l->router);
        if (lost > 0)
            log_debug("%zu messages not sent (peers gone or queues full); the protocol re-sends what matters", lost);
        if (wire_in_pending(l->in))
            timeout = 0;
        int n = zmq_poll(items, nitems, timeout);
        if (n < 0 && errno != EINTR) {
            log_error("zmq_poll: %s", zmq_strerror(errno));
            return TREATY_ETRANSPORT;
        }
        if (n > 0 && zap >= 0 && (items[zap].revents & ZMQ_POLLIN))
            security_serve_zap(l->sec);
        if (n > 0 && admin >= 0 && (items[admin].revents & ZMQ_POLLIN))
            while (handle_admin(l))
                ;
        if (n > 0 && (items[1].revents & ZMQ_POLLIN))
            journal_news(l);
        if ((n > 0 && (items[0].revents & ZMQ_POLLIN)) || wire_in_pending(l->in)) {
            /* Receive until EAGAIN: asking ZMQ_EVENTS before every message
             * costs a system call each. */
            for (int k = 0; k < MAX_MSGS_PER_TURN && handle_message(l); k++)
                ;
        }
        if (l->metrics)
            metrics_http_run(l->metrics, n > 0 && (items[mhd].revents & ZMQ_POLLIN), util_mono_ms());
        core_on_tick(l->core, now_time());
        now = util_mono_ms();
        if (now >= next_stats) {
            log_stats(l);
            next_stats = now + 60000;
        }
        journal_flush(l->journal);
        /* Durability and lookups can also be answered while we handled messages. */
        journal_news(l);
    }
}

/* ------------------------------------------------------------ recovery */

struct scan_progress {
    struct core *core;
    unsigned long long records;
    int64_t t0_ms, next_ms;
    long delay_us; /* test builds: TREATY_TEST_SCAN_DELAY_US slows the scan down */
};

static void scan_report(const struct scan_progress *p, size_t resumed, bool done)
{
    long long ms = (long long)(util_mono_ms() - p->t0_ms);
    log_info("recovery: %s%llu records read, %zu transactions resumed (%lld ms)", done ? "done: " : "", p->records,
             resumed, ms);
    sd_notifyf(0, "STATUS=recovery%s: %llu records read, %zu transactions resumed%s", done ? " done" : "", p->records,
               resumed, done ? "" : "\nEXTEND_TIMEOUT_USEC=30000000");
}

static int scan_record(void *arg, const struct journal_rec *r, long long finished_at_unix)
{
    struct scan_progress *p = arg;
#ifdef TREATY_FAULTS
    if (p->delay_us > 0)
        usleep((useconds_t)p->delay_us);
#endif
    p->records++;
    int rc = core_recover_record(p->core, r, finished_at_unix);
    int64_t now = util_mono_ms();
    if (now >= p->next_ms) {
        scan_report(p, core_recover_progress(p->core), false);
        p->next_ms = now + 1000;
    }
    return rc;
}

int loop_run(const struct config *cfg, struct reload *reload_set, volatile sig_atomic_t *stop,
             volatile sig_atomic_t *reload_requested)
{
    int rc;
    char err[512];
    struct loop *l = calloc(1, sizeof *l);
    if (l == NULL)
        return TREATY_ENOMEM;
    l->cfg = cfg;
    l->reload = reload_set;
    if (cfg->curve) {
        rc = security_new(cfg, &l->sec, err, sizeof err);
        if (rc < 0) {
            log_error("%s", err);
            goto fail_in;
        }
        log_info("security: CURVE on, public key %s, %zu keys on the allow-list %s", security_public_key(l->sec),
                 allowlist_count(security_allowlist(l->sec)), cfg->allow_list);
    } else {
        log_info("security: CURVE off: every peer that connects to %s is trusted with every role (docs/security.md)",
                 cfg->listen);
    }
    l->in = calloc(1, sizeof *l->in);
    l->out = wire_batch_new();
    if (l->in == NULL || l->out == NULL) {
        rc = TREATY_ENOMEM;
        goto fail_core;
    }
    l->in->want_user_id = l->sec != NULL;
    struct core_io io = {
        .ctx = l,
        .send = io_send,
        .append = io_append,
        .lookup = io_lookup,
        .journal_healthy = io_journal_healthy,
        .admin_reply = io_admin_reply,
        .read_records = io_read_records,
    };
    l->core = core_new(cfg, &io, util_fresh_seed()); /* hash keys clients cannot predict */
    if (l->core == NULL) {
        rc = TREATY_ENOMEM;
        goto fail_core;
    }

    struct journal_config jc = {
        .conninfo = cfg->journal_conninfo,
        .connect_initial_ms = cfg->journal_connect_initial_ms,
        .connect_max_ms = cfg->journal_connect_max_ms,
        .lazy_delay_ms = cfg->journal_lazy_delay_ms,
        .retention_s = cfg->journal_retention_s,
        .gc_interval_ms = cfg->journal_gc_interval_ms,
        .stop = (volatile int *)stop,
    };
    sd_notify(0, "STATUS=connecting to the journal");
    rc = journal_connect(&jc, &l->journal, err, sizeof err);
    if (rc < 0) {
        log_error("journal: %s", err);
        goto fail_journal;
    }
    struct scan_progress sp = {.core = l->core, .t0_ms = util_mono_ms()};
    sp.next_ms = sp.t0_ms + 1000;
#ifdef TREATY_FAULTS
    const char *delay = getenv("TREATY_TEST_SCAN_DELAY_US");
    sp.delay_us = delay != NULL ? atol(delay) : 0;
#endif
    log_info("recovery: reading the journal's unfinished transactions");
    sd_notify(0, "STATUS=recovery: reading the journal");
    rc = journal_scan(l->journal, scan_record, &sp);
    if (rc < 0) {
        log_error("recovery: cannot read the journal: %s", treaty_strerror(rc));
        goto fail_recover;
    }
    /* The newest txid on record: fresh txids made after it need no lookup
     * (without it, every txid of the next txid.max_future_s would). */
    int64_t newest = -1;
    if (journal_newest_txid(l->journal, util_wall_ms() + (int64_t)cfg->txid_max_future_s * 1000, &newest) == 0)
        core_recover_newest(l->core, newest);
    l->zctx = zmq_ctx_new();
    if (l->zctx == NULL) {
        rc = TREATY_ETRANSPORT;
        goto fail_recover;
    }
    rc = journal_start(l->journal, l->zctx);
    if (rc < 0) {
        log_error("journal: cannot start the writer: %s", treaty_strerror(rc));
        goto fail_start;
    }
    rc = open_router(l);
    if (rc < 0)
        goto fail_start;
    rc = open_admin(l);
    if (rc < 0) {
        zmq_close(l->router);
        goto fail_start;
    }
    if (cfg->metrics_listen[0] != '\0') {
        struct metrics_src src = {cfg, l->core, l->journal, &l->msgs};
        rc = metrics_http_start(cfg, &src, &l->metrics);
        if (rc < 0) {
            zmq_close(l->router);
            goto fail_start;
        }
    }
    size_t resumed = core_recover_done(l->core, now_time());
    scan_report(&sp, resumed, true);
    if (l->sec != NULL)
        reload_add(l->reload, "allow-list", &allow_ops, l);
    log_info("treatyd serving on %s", cfg->listen);
    sd_notifyf(0, "READY=1\nSTATUS=serving on %s", cfg->listen);
    rc = serve(l, stop, reload_requested);
    log_stats(l);

    metrics_http_stop(&l->metrics);
    (void)wire_batch_flush(l->out, l->router);
    wire_in_discard(l->in);
    zmq_close(l->router);
fail_start:
    if (l->admin != NULL)
        zmq_close(l->admin);
    free(l->pending);
    security_destroy(&l->sec); /* its ZAP socket, before the context ends */
    journal_close(&l->journal, cfg->shutdown_deadline_ms > 0 ? cfg->shutdown_deadline_ms : 1000);
    zmq_ctx_term(l->zctx);
    goto fail_journal;
fail_recover:
    journal_close(&l->journal, 0);
fail_journal:
    core_destroy(&l->core);
fail_core:
    wire_batch_free(&l->out);
    free(l->in);
fail_in:
    allowlist_free(&l->allow_next);
    security_destroy(&l->sec);
    free(l);
    return rc;
}
