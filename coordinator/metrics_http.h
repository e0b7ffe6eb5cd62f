/*
 * metrics_http.h - GET /metrics over HTTP for Prometheus, served by
 * libmicrohttpd (MHD) on the loop's own thread.
 *
 * MHD runs in its external-event mode with epoll: it owns no thread. The
 * loop polls metrics_http_fd() (MHD's epoll descriptor: readable when a
 * connection or the listening socket has work) among its ZeroMQ sockets,
 * bounds its poll timeout by metrics_http_timeout_ms(), and calls
 * metrics_http_run() after every poll. So the exposition is rendered on the
 * loop thread, reading the core's and the journal's counters without locks,
 * and while nobody scrapes the loop pays one descriptor in its poll set and
 * no call into MHD.
 *
 *   GET (or HEAD) /metrics  200, text/plain; version=0.0.4 (metrics.h)
 *   another path            404
 *   another method          405, Allow: GET, HEAD
 *
 * A hostile or broken client cannot hurt the coordinator: connections are
 * capped (metrics.max_connections; more are refused at accept), an idle or
 * slow one is closed after metrics.connection_timeout_s, a request's
 * headers must fit MHD's 32 KB per-connection memory, and a body is never
 * read. MHD never blocks the loop (non-blocking sockets). The exposition is
 * rendered at most once per 100 ms: scrapes closer together get the same
 * text, so a client asking in a tight loop costs copies, not walks of the
 * transactions in memory.
 *
 * Thread: the loop thread, every function.
 */
#ifndef TREATY_METRICS_HTTP_H
#define TREATY_METRICS_HTTP_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"

struct metrics_http;

/* Listens on cfg->metrics_listen (non-empty; checked by config_validate)
 * serving the metrics of src (copied; what it points to is borrowed and must
 * outlive the server). On success *out is owned by the caller
 * (metrics_http_stop). TREATY_ETRANSPORT when it cannot listen (logged,
 * with the address and the reason), TREATY_ECONFIG for an address that does
 * not parse, TREATY_ENOMEM. */
int metrics_http_start(const struct config *cfg, const struct metrics_src *src, struct metrics_http **out);

/* Closes every connection and the listening socket, frees. Accepts NULL;
 * sets *h to NULL. */
void metrics_http_stop(struct metrics_http **h);

/* The descriptor to poll for input (MHD's epoll descriptor). */
int metrics_http_fd(const struct metrics_http *h);

/* How long the loop may wait before metrics_http_run() must be called
 * although the descriptor stayed quiet (a connection's timeout, data MHD
 * already holds), in ms from now_ms; -1: no limit. h may be NULL (-1). */
long metrics_http_timeout_ms(const struct metrics_http *h, int64_t now_ms);

/* After a poll: lets MHD accept, read, answer and time out connections when
 * the descriptor was readable or its timeout is due; otherwise does
 * nothing. now_ms is the monotonic time. */
void metrics_http_run(struct metrics_http *h, bool readable, int64_t now_ms);

#endif
