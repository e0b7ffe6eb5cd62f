/*
 * metrics_http.c - see metrics_http.h.
 *
 * MHD in external-event epoll mode (MHD_USE_EPOLL, no internal thread): its
 * epoll descriptor holds the listening socket and every connection, and
 * becomes readable when any of them has work. MHD_run() does that work
 * without blocking. MHD_get_timeout() says how long MHD may be left alone
 * (a connection's idle timeout, or 0 when it holds data it has not
 * processed yet); it is asked after every MHD_run(), which is the only
 * place MHD's state changes, and kept as a due time for the loop.
 */
#include "metrics_http.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "log.h"
#include "treaty.h"
#include "util.h"

#define RENDER_EVERY_MS 100 /* scrapes closer together get the same text */
#define CONN_MEMORY 32768   /* MHD's memory per connection: request line and headers must fit */

struct metrics_http {
    struct MHD_Daemon *d;
    int fd;
    struct metrics_src src;
    int64_t due_ms; /* MHD_run is due then (monotonic) even if fd stays quiet; -1: only when readable */
    struct metrics_text text;
    int64_t rendered_ms; /* when text was rendered; -1: never */
};

static const char not_found[] = "not found: treatyd serves GET /metrics\n";
static const char not_allowed[] = "method not allowed: GET or HEAD /metrics\n";

/* MHD's messages (a client's broken request, a refused connection) are a
 * client's business, not the coordinator's: debug level, so that a hostile
 * client cannot flood the log. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (log_get_level() < LOG_LEVEL_DEBUG)
        return;
    char line[256];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    log_debug("metrics: http: %s", line);
}

static enum MHD_Result reply_static(struct MHD_Connection *conn, unsigned status, const char *body, bool allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO; /* MHD closes the connection */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

/* Called by MHD_run (on the loop thread) once a request's headers are in.
 * The answer is queued at once: no request body is ever read. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    struct metrics_http *h = cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    if (strcmp(url, "/metrics") != 0)
        return reply_static(conn, MHD_HTTP_NOT_FOUND, not_found, false);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply_static(conn, MHD_HTTP_METHOD_NOT_ALLOWED, not_allowed, true);

    int64_t now = util_mono_ms();
    if (h->rendered_ms < 0 || now - h->rendered_ms >= RENDER_EVERY_MS) {
        struct core_time t = {now, util_wall_ms()};
        metrics_render(&h->src, t, &h->text);
        h->rendered_ms = now;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(h->text.len, h->text.data, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

/* Asks MHD when it must run next, after it ran. */
static void update_due(struct metrics_http *h, int64_t now_ms)
{
    MHD_UNSIGNED_LONG_LONG t = 0;
    if (MHD_get_timeout(h->d, &t) != MHD_YES)
        h->due_ms = -1;
    else
        h->due_ms = now_ms + (t > 3600000 ? 3600000 : (int64_t)t);
}

int metrics_http_start(const struct config *cfg, const struct metrics_src *src, struct metrics_http **out)
{
    char err[160];
    struct metrics_addr a;
    *out = NULL;
    if (metrics_parse_listen(cfg->metrics_listen, &a, err, sizeof err) < 0) {
        log_error("metrics.listen: %s", err);
        return TREATY_ECONFIG;
    }
    struct metrics_http *h = calloc(1, sizeof *h);
    if (h == NULL)
        return TREATY_ENOMEM;
    h->src = *src;
    h->rendered_ms = -1;
    h->due_ms = -1;
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (a.ipv6 ? MHD_USE_IPv6 : 0);
    errno = 0;
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&a.sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->metrics_max_connections,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->metrics_connection_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, MHD_OPTION_EXTERNAL_LOGGER,
                            mhd_log, NULL, MHD_OPTION_END);
    if (h->d == NULL) {
        log_error("metrics: cannot listen on %s: %s", cfg->metrics_listen,
                  errno != 0 ? strerror(errno) : "libmicrohttpd refused to start");
        free(h);
        return TREATY_ETRANSPORT;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL || info->epoll_fd < 0) {
        log_error("metrics: libmicrohttpd gave no epoll descriptor");
        MHD_stop_daemon(h->d);
        free(h);
        return TREATY_ETRANSPORT;
    }
    h->fd = info->epoll_fd;
    log_info("metrics: serving http://%s/metrics", cfg->metrics_listen);
    *out = h;
    return 0;
}

void metrics_http_stop(struct metrics_http **hp)
{
    if (hp == NULL || *hp == NULL)
        return;
    struct metrics_http *h = *hp;
    MHD_stop_daemon(h->d);
    metrics_text_free(&h->text);
    free(h);
    *hp = NULL;
}

int metrics_http_fd(const struct metrics_http *h)
{
    return h->fd;
}

long metrics_http_timeout_ms(const struct metrics_http *h, int64_t now_ms)
{
    if (h == NULL || h->due_ms < 0)
        return -1;
    return h->due_ms <= now_ms ? 0 : (long)(h->due_ms - now_ms);
}

void metrics_http_run(struct metrics_http *h, bool readable, int64_t now_ms)
{
    if (!readable && (h->due_ms < 0 || now_ms < h->due_ms))
        return;
    MHD_run(h->d);
    update_due(h, util_mono_ms());
}
