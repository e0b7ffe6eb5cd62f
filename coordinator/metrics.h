/*
 * metrics.h - treatyd's metrics in the Prometheus text exposition format
 * (version 0.0.4): what is rendered, from where. The HTTP side that serves
 * it is metrics_http.h; every metric is described in docs/metrics.md.
 *
 * The numbers come from where they are kept, read when a scrape asks:
 *   - the core: struct core_stats (plain counters the core increments) and
 *     core_get_metrics (gauges found by walking the transactions in memory,
 *     the duration histograms), the registry's services (core_services);
 *   - the journal: journal_get_stats, journal_get_hists, journal_backlog,
 *     journal_healthy (atomics the writer thread updates);
 *   - the loop: messages received and sent by type (struct metrics_msgs,
 *     one plain increment per message);
 *   - the process: /proc/self and getrusage.
 * Nothing here runs unless somebody scrapes.
 *
 * Threads, who does what:
 *   - the loop thread updates every counter of the core (struct core_stats,
 *     the duration histograms) and of struct metrics_msgs with plain
 *     increments, as it handles messages and timers;
 *   - the journal's writer thread updates the journal's counters and its two
 *     group-commit histograms (atomics; metrics_hist.h: one writer thread per
 *     histogram, relaxed loads and stores, no read-modify-write);
 *   - the loop thread, again, renders the exposition when a scrape comes:
 *     libmicrohttpd runs in its external-event mode inside the loop
 *     (metrics_http.h), so the core is only ever read by the thread that
 *     writes it, and the journal's atomics are read without locks.
 * Every function here: the loop thread (the core is not thread-safe).
 */
#ifndef TREATY_METRICS_H
#define TREATY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"
#include "core.h"
#include "journal.h"
#include "wire.h"

/* Messages by direction and type, counted by the loop: n[dir][type], type 0
 * for a message that did not decode (and any type beyond WIRE_TYPE_MAX_). */
enum metrics_dir { METRICS_IN = 0, METRICS_OUT = 1 };
struct metrics_msgs {
    uint64_t n[2][WIRE_TYPE_MAX_ + 1];
};

/* One message of type in direction dir. O(1): one increment. */
static inline void metrics_count_msg(struct metrics_msgs *m, enum metrics_dir dir, unsigned type)
{
    m->n[dir][type <= WIRE_TYPE_MAX_ ? type : 0]++;
}

/* Where the exposition's numbers come from; everything borrowed. */
struct metrics_src {
    const struct config *cfg;        /* metrics.max_services */
    const struct core *core;         /* required */
    const struct journal *journal;   /* NULL: the journal's metrics are left out */
    const struct metrics_msgs *msgs; /* NULL: the message counts are left out */
};

/* A growing text buffer; zero-initialise it. */
struct metrics_text {
    char *data; /* NUL-terminated once anything was rendered */
    size_t len, cap;
};

/* Renders every metric of src at time now into *out, replacing what it
 * held. Aborts the daemon on out-of-memory. The number of series is bounded:
 * fixed families, plus at most metrics.max_services service series. */
void metrics_render(const struct metrics_src *src, struct core_time now, struct metrics_text *out);
/* Frees out's buffer and zeroes it. */
void metrics_text_free(struct metrics_text *out);

/* Writes in, escaped as a label value of the exposition format (backslash,
 * double quote and line feed as \\, \" and \n), into out (cap bytes, NUL
 * terminated; cut short at a character boundary of the escaping when it
 * does not fit). Returns the length written. */
size_t metrics_escape_label(const char *in, char *out, size_t cap);

/* The address of metrics.listen. */
struct metrics_addr {
    struct sockaddr_storage sa; /* sockaddr_in or sockaddr_in6 */
    socklen_t len;
    bool ipv6;
};

/* Parses "IPv4:PORT" or "[IPv6]:PORT" (a numeric address - host names are
 * not resolved - and a port 1..65535) into *out (may be NULL: check only).
 * 0, or TREATY_ECONFIG with the problem in err. */
int metrics_parse_listen(const char *s, struct metrics_addr *out, char *err, size_t errlen);

#endif
