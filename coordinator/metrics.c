/*
 * metrics.c - see metrics.h. docs/metrics.md describes every metric; a name
 * or a label changed here is changed there, and in the alert rules
 * (contrib/prometheus/treaty-rules.yml).
 *
 * Every family is written with its HELP and TYPE lines, then its samples.
 * Label values are fixed strings of this file, except service names, which
 * come from participants' HELLO: the wire codec allows only
 * [A-Za-z0-9._-] in them, and they are escaped anyway.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "treaty.h"
#include "util.h"

/* ------------------------------------------------------------ text */

__attribute__((format(printf, 2, 3))) static void put(struct metrics_text *t, const char *fmt, ...)
{
    for (;;) {
        size_t room = t->cap - t->len;
        va_list ap;
        va_start(ap, fmt);
        int n = t->data != NULL ? vsnprintf(t->data + t->len, room, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t want = t->len + (n > 0 ? (size_t)n : 0) + 1;
        size_t cap = t->cap ? t->cap : 16384;
        while (cap < want)
            cap *= 2;
        t->data = util_xrealloc(t->data, cap);
        t->cap = cap;
    }
}

void metrics_text_free(struct metrics_text *t)
{
    free(t->data);
    memset(t, 0, sizeof *t);
}

size_t metrics_escape_label(const char *in, char *out, size_t cap)
{
    size_t n = 0;
    if (cap == 0)
        return 0;
    for (; *in != '\0'; in++) {
        const char *rep = *in == '\\' ? "\\\\" : *in == '"' ? "\\\"" : *in == '\n' ? "\\n" : NULL;
        size_t k = rep != NULL ? 2 : 1;
        if (n + k >= cap)
            break;
        if (rep != NULL)
            memcpy(out + n, rep, 2);
        else
            out[n] = *in;
        n += k;
    }
    out[n] = '\0';
    return n;
}

/* The HELP and TYPE lines of a family. */
static void family(struct metrics_text *t, const char *name, const char *type, const char *help)
{
    put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct metrics_text *t, const char *name, const char *help, uint64_t v)
{
    family(t, name, "counter", help);
    put(t, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(struct metrics_text *t, const char *name, const char *help, double v)
{
    family(t, name, "gauge", help);
    put(t, "%s %.15g\n", name, v);
}

/* The samples of one histogram (its family lines written already); labels
 * is "" or 'name="value"'; values are divided by scale. */
static void hist(struct metrics_text *t, const char *name, const char *labels, const struct metrics_hist_snap *h,
                 double scale)
{
    const char *sep = labels[0] != '\0' ? "," : "";
    for (unsigned i = 0; i < h->n; i++)
        put(t, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, (double)h->bound[i] / scale,
            (unsigned long long)h->cumulative[i]);
    put(t, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)h->cumulative[h->n]);
    if (labels[0] != '\0') {
        put(t, "%s_sum{%s} %.15g\n", name, labels, (double)h->sum / scale);
        put(t, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->cumulative[h->n]);
    } else {
        put(t, "%s_sum %.15g\n", name, (double)h->sum / scale);
        put(t, "%s_count %llu\n", name, (unsigned long long)h->cumulative[h->n]);
    }
}

/* ------------------------------------------------------------ the core */

static void render_core(struct metrics_text *t, const struct metrics_src *src, struct core_time now)
{
    struct core_stats st;
    struct core_metrics cm;
    core_get_stats(src->core, &st);
    core_get_metrics(src->core, now, &cm);

    family(t, "treaty_transactions_total", "counter",
           "Transactions by kind and outcome: 2pc committed or aborted (decided in this process), saga completed "
           "or compensated (END durable), refused (an ERROR answered a SUBMIT or SAGA).");
    put(t, "treaty_transactions_total{kind=\"2pc\",outcome=\"committed\"} %llu\n", (unsigned long long)st.committed);
    put(t, "treaty_transactions_total{kind=\"2pc\",outcome=\"aborted\"} %llu\n", (unsigned long long)st.aborted);
    put(t, "treaty_transactions_total{kind=\"2pc\",outcome=\"refused\"} %llu\n", (unsigned long long)st.refused_2pc);
    put(t, "treaty_transactions_total{kind=\"saga\",outcome=\"completed\"} %llu\n",
        (unsigned long long)st.sagas_completed);
    put(t, "treaty_transactions_total{kind=\"saga\",outcome=\"compensated\"} %llu\n",
        (unsigned long long)st.sagas_compensated);
    put(t, "treaty_transactions_total{kind=\"saga\",outcome=\"refused\"} %llu\n", (unsigned long long)st.refused_saga);

    family(t, "treaty_transactions_started_total", "counter",
           "Transactions accepted and started by this process, by kind.");
    put(t, "treaty_transactions_started_total{kind=\"2pc\"} %llu\n", (unsigned long long)st.submitted);
    put(t, "treaty_transactions_started_total{kind=\"saga\"} %llu\n", (unsigned long long)st.sagas);

    family(t, "treaty_transaction_duration_seconds", "histogram",
           "From the SUBMIT or SAGA that started a transaction to its outcome being told, on a millisecond clock; "
           "transactions started by this process only.");
    hist(t, "treaty_transaction_duration_seconds", "kind=\"2pc\"", &cm.duration_2pc, 1000.0);
    hist(t, "treaty_transaction_duration_seconds", "kind=\"saga\"", &cm.duration_saga, 1000.0);

    family(t, "treaty_transactions_in_flight", "gauge", "Transactions in memory (running or finishing), by kind.");
    put(t, "treaty_transactions_in_flight{kind=\"2pc\"} %zu\n", st.inflight_2pc);
    put(t, "treaty_transactions_in_flight{kind=\"saga\"} %zu\n", st.inflight_sagas);

    gauge(t, "treaty_in_doubt_transactions",
          "2PC transactions with a branch that may be prepared at its participant and has not acknowledged a "
          "decision.",
          (double)cm.in_doubt_txns);
    gauge(t, "treaty_in_doubt_branches", "The branches of treaty_in_doubt_transactions that are in doubt.",
          (double)cm.in_doubt_branches);
    gauge(t, "treaty_in_doubt_oldest_age_seconds",
          "Age of the oldest in-doubt transaction, by its txid's creation time; 0 when there is none.",
          cm.in_doubt_oldest_ms > 0 ? (double)cm.in_doubt_oldest_ms / 1000.0 : 0.0);
    gauge(t, "treaty_sagas_compensating", "Sagas that turned around and have not finished compensating.",
          (double)cm.sagas_compensating);
    gauge(t, "treaty_sagas_stuck",
          "Sagas with a compensation that failed saga.stuck_after_attempts times and is still being retried.",
          (double)cm.sagas_stuck);
    counter(t, "treaty_sagas_became_stuck_total", "Sagas that became stuck.", st.sagas_stuck);
    counter(t, "treaty_decision_resends_total",
            "COMMIT and ABORT messages sent again to a branch that had not acknowledged.", st.decision_resends);
    counter(t, "treaty_saga_step_retries_total", "Saga actions and compensations tried again after a failed try.",
            st.step_retries);
    counter(t, "treaty_transactions_recovered_total", "Unfinished transactions and sagas resumed from the journal.",
            st.recovered);
    counter(t, "treaty_presumed_aborts_total",
            "Aborts recorded for txids nobody holds (a QUERY, INQUIRE or late YES about an unknown txid).",
            st.presumed_aborts);

    family(t, "treaty_refusals_total", "counter",
           "Requests refused with an ERROR, by reason; reasons denied_*: messages dropped by authorization "
           "(docs/security.md) with no answer.");
    for (int r = 0; r < CORE_REFUSAL_COUNT_; r++)
        put(t, "treaty_refusals_total{reason=\"%s\"} %llu\n", core_refusal_name((enum core_refusal)r),
            (unsigned long long)st.refusals[r]);
    /* denied_limit is the client_limit above (refused with an ERROR), not repeated. */
    put(t, "treaty_refusals_total{reason=\"denied_role\"} %llu\n", (unsigned long long)st.denied_role);
    put(t, "treaty_refusals_total{reason=\"denied_service\"} %llu\n", (unsigned long long)st.denied_service);
    put(t, "treaty_refusals_total{reason=\"denied_instance\"} %llu\n", (unsigned long long)st.denied_instance);
    put(t, "treaty_refusals_total{reason=\"denied_sender\"} %llu\n", (unsigned long long)st.denied_sender);

    counter(t, "treaty_malformed_messages_total",
            "Messages that did not decode or are not accepted by the coordinator.", st.malformed);
    counter(t, "treaty_late_messages_total",
            "Votes and results that came after their transaction moved on or finished.", st.late_votes);
    counter(t, "treaty_inquiries_total", "INQUIRE messages from participants.", st.inquiries);
    gauge(t, "treaty_outcomes_cached", "Finished outcomes kept in memory (limits.outcome_cache).",
          (double)st.outcomes_cached);
    counter(t, "treaty_outcomes_evicted_total", "Finished outcomes dropped from memory (still in the journal).",
            st.outcomes_evicted);
    counter(t, "treaty_journal_lookups_total", "Journal lookups of txids no longer in memory.", st.lookups);
    counter(t, "treaty_journal_lookup_errors_total", "Journal lookups that could not read the journal.",
            st.lookup_errors);
    gauge(t, "treaty_live_instances", "Live participant instances, all services.", (double)st.instances);
}

/* ------------------------------------------------------------ services */

struct svc_ctx {
    struct metrics_text *t;
};

static void one_service(void *arg, const char *service, size_t instances)
{
    struct svc_ctx *x = arg;
    char esc[2 * WIRE_NAME_MAX + 1];
    metrics_escape_label(service, esc, sizeof esc);
    put(x->t, "treaty_service_instances{service=\"%s\"} %zu\n", esc, instances);
}

static void render_services(struct metrics_text *t, const struct metrics_src *src)
{
    size_t max = (size_t)src->cfg->metrics_max_services;
    struct svc_ctx x = {t};
    family(t, "treaty_service_instances", "gauge",
           "Live instances of each service that ever said HELLO (0: none live now); the first metrics.max_services "
           "services only.");
    size_t known = core_services(src->core, max, one_service, &x);
    gauge(t, "treaty_services_known", "Services that ever said HELLO to this process.", (double)known);
    gauge(t, "treaty_services_unlisted",
          "Known services without a treaty_service_instances series (beyond metrics.max_services).",
          (double)(known > max ? known - max : 0));
}

/* ------------------------------------------------------------ the journal */

static void render_journal(struct metrics_text *t, const struct journal *j)
{
    struct journal_stats js;
    struct metrics_hist_snap recs, us;
    journal_get_stats(j, &js);
    journal_get_hists(j, &recs, &us);
    gauge(t, "treaty_journal_healthy", "1 while the journal writes to PostgreSQL, 0 while it cannot.",
          journal_healthy(j) ? 1.0 : 0.0);
    gauge(t, "treaty_journal_backlog_records", "Records appended and not yet durable.", (double)journal_backlog(j));
    counter(t, "treaty_journal_groups_total", "Group commits: PostgreSQL transactions of the journal writer.",
            js.batches);
    counter(t, "treaty_journal_forced_groups_total", "Group commits that held a forced record.", js.forced_batches);
    counter(t, "treaty_journal_records_total", "Records written to the journal.", js.records);
    counter(t, "treaty_journal_reconnects_total", "Connections the journal writer made again after losing one.",
            js.reconnects);
    counter(t, "treaty_journal_collected_total", "Journal rows of finished transactions deleted after retention.",
            js.gc_deleted);
    family(t, "treaty_journal_write_seconds_total", "counter",
           "Time the journal writer spent writing groups (its busy time; near 1 s/s the journal is the limit).");
    put(t, "treaty_journal_write_seconds_total %.15g\n", (double)js.write_us / 1e6);
    family(t, "treaty_journal_group_records", "histogram", "Records per group commit.");
    hist(t, "treaty_journal_group_records", "", &recs, 1.0);
    family(t, "treaty_journal_group_duration_seconds", "histogram",
           "A group's time from its first write attempt to its commit (rewrites after a lost connection included).");
    hist(t, "treaty_journal_group_duration_seconds", "", &us, 1e6);
}

/* ------------------------------------------------------------ messages */

static const char *const msg_type_labels[WIRE_TYPE_MAX_ + 1] = {
    "invalid", "hello",  "welcome", "submit", "query",   "outcome", "error", "prepare",
    "vote",    "commit", "abort",   "ack",    "inquire", "saga",    "step",  "result",
};

static void render_msgs(struct metrics_text *t, const struct metrics_msgs *m)
{
    family(t, "treaty_messages_total", "counter",
           "Messages by type and direction (in: received, out: sent); type invalid: did not decode.");
    for (int d = 0; d < 2; d++)
        for (int k = 0; k <= WIRE_TYPE_MAX_; k++)
            put(t, "treaty_messages_total{type=\"%s\",direction=\"%s\"} %llu\n", msg_type_labels[k],
                d == METRICS_IN ? "in" : "out", (unsigned long long)m->n[d][k]);
}

/* ------------------------------------------------------------ the process */

/* The process's start time (Unix seconds) from /proc/self/stat's starttime
 * and /proc/stat's btime; -1 when they cannot be read. */
static double process_start_time(void)
{
    long long start_ticks = -1, btime = -1;
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (f != NULL) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        const char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
        /* after ") ": field 3 (state) .. field 22 (starttime) */
        for (int field = 2; p != NULL && field < 22; field++) {
            p = strchr(p + 1, ' ');
        }
        if (p != NULL)
            start_ticks = strtoll(p + 1, NULL, 10);
    }
    f = fopen("/proc/stat", "r");
    if (f != NULL) {
        char line[256];
        while (fgets(line, sizeof line, f) != NULL)
            if (strncmp(line, "btime ", 6) == 0) {
                btime = strtoll(line + 6, NULL, 10);
                break;
            }
        fclose(f);
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (start_ticks < 0 || btime < 0 || hz <= 0)
        return -1;
    return (double)btime + (double)start_ticks / (double)hz;
}

static void render_process(struct metrics_text *t)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                     (double)ru.ru_stime.tv_usec / 1e6;
        family(t, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        put(t, "process_cpu_seconds_total %.15g\n", cpu);
    }
    long page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        unsigned long long size = 0, resident = 0;
        if (fscanf(f, "%llu %llu", &size, &resident) == 2 && page > 0) {
            gauge(t, "process_virtual_memory_bytes", "Virtual memory size in bytes.", (double)size * (double)page);
            gauge(t, "process_resident_memory_bytes", "Resident memory size in bytes.",
                  (double)resident * (double)page);
        }
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        long n = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            n += e->d_name[0] != '.';
        closedir(d);
        gauge(t, "process_open_fds", "Number of open file descriptors.", (double)(n > 0 ? n - 1 : 0));
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        gauge(t, "process_max_fds", "Maximum number of open file descriptors.", (double)rl.rlim_cur);
    static double start = -2; /* read once: it does not change */
    if (start == -2)
        start = process_start_time();
    if (start >= 0)
        gauge(t, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.", start);
}

/* ------------------------------------------------------------ all */

void metrics_render(const struct metrics_src *src, struct core_time now, struct metrics_text *out)
{
    out->len = 0;
    family(out, "treaty_build_info", "gauge", "treatyd's version, as a label; the value is 1.");
    put(out, "treaty_build_info{version=\"%d.%d.%d\"} 1\n", TREATY_VERSION_MAJOR, TREATY_VERSION_MINOR,
        TREATY_VERSION_PATCH);
    render_core(out, src, now);
    render_services(out, src);
    if (src->journal != NULL)
        render_journal(out, src->journal);
    if (src->msgs != NULL)
        render_msgs(out, src->msgs);
    render_process(out);
}

/* ------------------------------------------------------------ metrics.listen */

/* The problem in err, TREATY_ECONFIG returned (util_errf). */
#define bad(...) util_errf(TREATY_ECONFIG, __VA_ARGS__)

int metrics_parse_listen(const char *s, struct metrics_addr *out, char *err, size_t errlen)
{
    static const char example[] = "expected IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\"";
    char host[INET6_ADDRSTRLEN + 1];
    const char *port;
    bool v6 = s[0] == '[';
    if (v6) {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return bad(err, errlen, "%s, got \"%.64s\"", example, s);
        size_t n = (size_t)(end - s - 1);
        if (n == 0 || n >= sizeof host)
            return bad(err, errlen, "%s, got \"%.64s\"", example, s);
        memcpy(host, s + 1, n);
        host[n] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL || colon == s)
            return bad(err, errlen, "%s, got \"%.64s\"", example, s);
        size_t n = (size_t)(colon - s);
        if (n >= sizeof host)
            return bad(err, errlen, "\"%.64s\": not an IP address (host names are not resolved)", s);
        memcpy(host, s, n);
        host[n] = '\0';
        port = colon + 1;
    }
    long p = 0;
    size_t digits = strspn(port, "0123456789");
    if (digits == 0 || digits > 5 || port[digits] != '\0' || (p = strtol(port, NULL, 10)) < 1 || p > 65535)
        return bad(err, errlen, "port must be a number between 1 and 65535, got \"%.16s\"", port);
    struct metrics_addr a;
    memset(&a, 0, sizeof a);
    if (v6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&a.sa;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return bad(err, errlen, "\"%.64s\": not an IPv6 address", host);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        a.len = sizeof *in6;
        a.ipv6 = true;
    } else {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&a.sa;
        if (inet_pton(AF_INET, host, &in4->sin_addr) != 1)
            return bad(err, errlen, "\"%.64s\": not an IPv4 address (host names are not resolved; IPv6 goes in [])",
                       host);
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p);
        a.len = sizeof *in4;
    }
    if (out != NULL)
        *out = a;
    return 0;
}
