/*
 * treatyctl - the operator's CLI for treatyd (docs/treatyctl.md).
 *
 * Sends one JSON request (core_admin.h) over a ZeroMQ REQ socket to
 * treatyd's admin endpoint (admin.listen, an ipc:// socket file only
 * treatyd's user may open) and prints the answer: a human table, or the
 * answer's JSON as is with --json. Exit codes (TCTL_*) say how it went.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pwd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libconfig.h>
#include <zmq.h>

enum {
    TCTL_OK = 0,
    TCTL_REFUSED = 1,     /* the protocol does not allow it (resolve) */
    TCTL_USAGE = 2,       /* bad command line or request */
    TCTL_NOT_FOUND = 3,   /* no such transaction */
    TCTL_UNREACHABLE = 4, /* treatyd did not answer within --timeout */
    TCTL_JOURNAL = 5,     /* the journal cannot be read or written now */
    TCTL_BUSY = 6,        /* too many admin requests at once */
};

#define DEFAULT_ENDPOINT "ipc:///tmp/treatyd-admin.sock"

static void usage(FILE *f)
{
    fprintf(f, "usage: treatyctl [options] COMMAND [ARGS]\n"
               "  status                          treatyd up, journal, counts by state, uptime, version\n"
               "  list [--state S] [--older-than D] [--service NAME] [--limit N]\n"
               "                                  transactions in flight; S: in-flight, in-doubt, deciding,\n"
               "                                  compensating, stuck; D: 500ms, 30s, 5m, 2h, 1d\n"
               "  show TXID                       its journal records, branches or steps, instances\n"
               "  services                        registered instances, last heartbeat, work in flight\n"
               "  resolve TXID abort --reason TEXT          abort a 2PC without a decision (or turn a\n"
               "                                            saga going forward around)\n"
               "  resolve TXID give-up STEP --reason TEXT   count a stuck compensation as done by hand\n"
               "options:\n"
               "  --admin EP      treatyd's admin endpoint (default: $TREATY_ADMIN, else admin.listen of -c,\n"
               "                  else " DEFAULT_ENDPOINT ")\n"
               "  -c FILE         treatyd's configuration file, for admin.listen\n"
               "  --json          print the answer as JSON\n"
               "  --timeout MS    how long to wait for treatyd (default 15000)\n"
               "exit codes: 0 ok, 1 refused, 2 usage or invalid, 3 not found, 4 treatyd unreachable,\n"
               "            5 journal unavailable, 6 busy\n");
}

/* "30s" -> 30000; -1 when malformed or over a year. */
static long long parse_duration(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0)
        return -1;
    long long mul = strcmp(end, "ms") == 0  ? 1
                    : strcmp(end, "s") == 0 ? 1000
                    : strcmp(end, "m") == 0 ? 60000
                    : strcmp(end, "h") == 0 ? 3600000
                    : strcmp(end, "d") == 0 ? 86400000
                                            : 0;
    if (mul == 0 || v > 366LL * 86400000 / mul)
        return -1;
    return v * mul;
}

static void fmt_age(long long ms, char *buf, size_t len)
{
    if (ms < 0)
        snprintf(buf, len, "?");
    else if (ms < 10000)
        snprintf(buf, len, "%lldms", ms);
    else if (ms < 600000)
        snprintf(buf, len, "%llds", ms / 1000);
    else if (ms < 36000000)
        snprintf(buf, len, "%lldm", ms / 60000);
    else
        snprintf(buf, len, "%lldh", ms / 3600000);
}

static void fmt_time(long long unix_ms, char *buf, size_t len)
{
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03lldZ", unix_ms % 1000);
}

static const char *str(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "-";
}

static long long num(json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

static void join_services(json_t *arr, char *buf, size_t len)
{
    size_t n = 0, i;
    json_t *v;
    buf[0] = '\0';
    json_array_foreach(arr, i, v)
    {
        int w = snprintf(buf + n, len - n, "%s%s", i ? "," : "", json_string_value(v));
        if (w < 0 || (size_t)w >= len - n)
            break;
        n += (size_t)w;
    }
}

/* ------------------------------------------------------------ human output */

static void print_status(json_t *a)
{
    char up[32];
    fmt_age(num(a, "uptime_ms"), up, sizeof up);
    json_t *c = json_object_get(a, "counts");
    printf("treatyd %s, up %s%s\n", str(a, "version"), up,
           json_is_true(json_object_get(a, "stopping")) ? ", stopping" : "");
    printf("journal: %s (schema %lld)\n",
           json_is_true(json_object_get(a, "journal_reachable")) ? "reachable" : "UNREACHABLE",
           num(a, "journal_schema"));
    printf("instances: %lld   2pc in flight: %lld   sagas in flight: %lld\n", num(a, "instances"),
           num(a, "twopc_in_flight"), num(a, "sagas_in_flight"));
    printf("%-12s %-12s %-12s %-12s %s\n", "IN-FLIGHT", "IN-DOUBT", "DECIDING", "COMPENSATING", "STUCK");
    printf("%-12lld %-12lld %-12lld %-12lld %lld\n", num(c, "in-flight"), num(c, "in-doubt"), num(c, "deciding"),
           num(c, "compensating"), num(c, "stuck"));
}

static void print_list(json_t *a)
{
    json_t *txs = json_object_get(a, "transactions"), *t;
    size_t i;
    printf("%-36s  %-4s  %-14s  %-7s  %s\n", "TXID", "KIND", "STATE", "AGE", "SERVICES");
    json_array_foreach(txs, i, t)
    {
        char age[32], svcs[256];
        fmt_age(num(t, "age_ms"), age, sizeof age);
        join_services(json_object_get(t, "services"), svcs, sizeof svcs);
        printf("%-36s  %-4s  %-14s  %-7s  %s%s\n", str(t, "txid"), str(t, "kind"), str(t, "state"), age, svcs,
               json_is_true(json_object_get(t, "stuck")) ? "  STUCK" : "");
    }
    printf("(%lld matched%s)\n", num(a, "matched"),
           json_is_true(json_object_get(a, "truncated")) ? ", list cut at --limit" : "");
}

static void print_show(json_t *a)
{
    char age[32];
    fmt_age(num(a, "age_ms"), age, sizeof age);
    printf("txid:    %s\n", str(a, "txid"));
    if (json_is_true(json_object_get(a, "in_memory"))) {
        printf("kind:    %s\nstate:   %s%s\nage:     %s\n", str(a, "kind"), str(a, "state"),
               json_is_true(json_object_get(a, "stuck")) ? " (STUCK)" : "", age);
        if (json_is_string(json_object_get(a, "reason")))
            printf("reason:  %s\n", str(a, "reason"));
    } else {
        printf("state:   %s%s%s\n", str(a, "state"), json_is_string(json_object_get(a, "outcome")) ? ", " : "",
               json_is_string(json_object_get(a, "outcome")) ? str(a, "outcome") : "");
    }
    json_t *arr, *v;
    size_t i;
    if ((arr = json_object_get(a, "branches")) != NULL) {
        printf("\n%-6s  %-20s  %-20s  %-5s  %-8s  %s\n", "BRANCH", "SERVICE", "INSTANCE", "VOTE", "PREPARED", "ACKED");
        json_array_foreach(arr, i, v)
        {
            json_t *in = json_object_get(v, "instance");
            printf("%-6lld  %-20s  %-20s  %-5s  %-8s  %s\n", num(v, "branch"), str(v, "service"),
                   json_is_string(in) ? json_string_value(in) : "-", str(v, "vote"),
                   json_is_true(json_object_get(v, "prepared")) ? "yes" : "no",
                   json_is_true(json_object_get(v, "acked")) ? "yes" : "no");
        }
    }
    if ((arr = json_object_get(a, "steps")) != NULL) {
        printf("\n%-4s  %-5s  %-16s  %-24s  %-13s  %-16s  %-5s  %s\n", "STEP", "GROUP", "SERVICE",
               "ACTION/COMPENSATION", "STATE", "INSTANCE", "TRIES", "LAST ERROR");
        json_array_foreach(arr, i, v)
        {
            char ac[64], tries[32];
            json_t *in = json_object_get(v, "instance");
            snprintf(ac, sizeof ac, "%s/%s", str(v, "action"), str(v, "compensation"));
            snprintf(tries, sizeof tries, "%lld/%lld", num(v, "attempts"), num(v, "compensation_attempts"));
            printf("%-4lld  %-5lld  %-16s  %-24s  %-13s  %-16s  %-5s  %s%s\n", num(v, "step"), num(v, "group"),
                   str(v, "service"), ac, str(v, "state"), json_is_string(in) ? json_string_value(in) : "-", tries,
                   json_is_string(json_object_get(v, "last_error")) ? str(v, "last_error") : "",
                   json_is_true(json_object_get(v, "stuck")) ? "  STUCK" : "");
        }
    }
    printf("\njournal records:\n%-8s  %-24s  %-7s  %-4s  %s\n", "SEQ", "WRITTEN (UTC)", "KIND", "STEP", "DETAIL");
    json_array_foreach(json_object_get(a, "records"), i, v)
    {
        char when[40], step[16] = "-";
        fmt_time(num(v, "written_ms"), when, sizeof when);
        if (num(v, "step") >= 0)
            snprintf(step, sizeof step, "%lld", num(v, "step"));
        const char *d = str(v, "detail");
        printf("%-8lld  %-24s  %-7s  %-4s  %s%s%s\n", num(v, "seq"), when, str(v, "kind"), step, d,
               *d && *str(v, "services") ? "  " : "", str(v, "services"));
    }
    if (json_is_true(json_object_get(a, "records_truncated")))
        printf("(more records in the journal than shown)\n");
    if (json_is_string(json_object_get(a, "journal_error")))
        printf("(the journal could not be read: %s)\n", str(a, "journal_error"));
}

static void print_services(json_t *a)
{
    json_t *v;
    size_t i;
    printf("%-20s  %-24s  %-14s  %s\n", "SERVICE", "INSTANCE", "LAST HEARTBEAT", "IN FLIGHT");
    json_array_foreach(json_object_get(a, "instances"), i, v)
    {
        char ago[32];
        fmt_age(num(v, "last_heartbeat_ms_ago"), ago, sizeof ago);
        strncat(ago, " ago", sizeof ago - strlen(ago) - 1);
        printf("%-20s  %-24s  %-14s  %lld\n", str(v, "service"), str(v, "instance"), ago, num(v, "in_flight"));
    }
}

/* ------------------------------------------------------------ main */

static int exit_code(const char *error)
{
    static const struct {
        const char *name;
        int code;
    } codes[] = {{"refused", TCTL_REFUSED},
                 {"invalid", TCTL_USAGE},
                 {"not-found", TCTL_NOT_FOUND},
                 {"journal", TCTL_JOURNAL},
                 {"busy", TCTL_BUSY}};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(error, codes[i].name) == 0)
            return codes[i].code;
    return TCTL_USAGE;
}

/* admin.listen of a treatyd configuration file, into buf. */
static int endpoint_from_config(const char *file, char *buf, size_t len)
{
    config_t cf;
    config_init(&cf);
    const char *ep = NULL;
    int rc = 0;
    if (config_read_file(&cf, file) != CONFIG_TRUE) {
        fprintf(stderr, "treatyctl: %s:%d: %s\n", file, config_error_line(&cf), config_error_text(&cf));
        rc = -1;
    } else if (config_lookup_string(&cf, "admin.listen", &ep) == CONFIG_TRUE) {
        snprintf(buf, len, "%s", ep);
    } else {
        snprintf(buf, len, "%s", DEFAULT_ENDPOINT);
    }
    config_destroy(&cf);
    return rc;
}

static char *who_am_i(void)
{
    static char who[128];
    uid_t uid = getuid();
    struct passwd *pw = getpwuid(uid);
    const char *sudo = getenv("SUDO_USER");
    snprintf(who, sizeof who, "uid %u (%s%s%s)", (unsigned)uid, pw ? pw->pw_name : "?", sudo ? ", sudo by " : "",
             sudo ? sudo : "");
    return who;
}

int main(int argc, char **argv)
{
    enum { OPT_ADMIN = 256, OPT_JSON, OPT_TIMEOUT, OPT_STATE, OPT_OLDER, OPT_SERVICE, OPT_LIMIT, OPT_REASON };
    static const struct option opts[] = {
        {"admin", required_argument, NULL, OPT_ADMIN},
        {"json", no_argument, NULL, OPT_JSON},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"state", required_argument, NULL, OPT_STATE},
        {"older-than", required_argument, NULL, OPT_OLDER},
        {"service", required_argument, NULL, OPT_SERVICE},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"reason", required_argument, NULL, OPT_REASON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char endpoint[512] = "";
    const char *config = NULL, *state = NULL, *service = NULL, *reason = NULL;
    bool as_json = false;
    long long older = -1, limit = -1, timeout = 15000;
    int o;
    while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        char *end;
        switch (o) {
        case OPT_ADMIN:
            snprintf(endpoint, sizeof endpoint, "%s", optarg);
            break;
        case 'c':
            config = optarg;
            break;
        case OPT_JSON:
            as_json = true;
            break;
        case OPT_TIMEOUT:
            timeout = strtoll(optarg, &end, 10);
            if (*end || timeout < 1 || timeout > 3600000) {
                fprintf(stderr, "treatyctl: --timeout: milliseconds in [1, 3600000]\n");
                return TCTL_USAGE;
            }
            break;
        case OPT_STATE:
            state = optarg;
            break;
        case OPT_OLDER:
            if ((older = parse_duration(optarg)) < 0) {
                fprintf(stderr,
                        "treatyctl: --older-than: a duration such as 500ms, 30s, 5m, 2h, 1d (at most a year)\n");
                return TCTL_USAGE;
            }
            break;
        case OPT_SERVICE:
            service = optarg;
            break;
        case OPT_LIMIT:
            limit = strtoll(optarg, &end, 10);
            if (*end || limit < 1 || limit > INT_MAX) {
                fprintf(stderr, "treatyctl: --limit: a positive number\n");
                return TCTL_USAGE;
            }
            break;
        case OPT_REASON:
            reason = optarg;
            break;
        case 'h':
            usage(stdout);
            return TCTL_OK;
        default:
            usage(stderr);
            return TCTL_USAGE;
        }
    }
    /* getopt_long permuted the options that followed the command. */
    int nargs = 0;
    const char *args[4] = {0};
    for (int i = optind; i < argc; i++) {
        if (nargs == 4) {
            fprintf(stderr, "treatyctl: too many arguments\n");
            return TCTL_USAGE;
        }
        args[nargs++] = argv[i];
    }
    if (nargs == 0) {
        usage(stderr);
        return TCTL_USAGE;
    }
    const char *cmd = args[0];
    json_t *req = json_pack("{s:s}", "cmd", cmd);
    if (strcmp(cmd, "status") == 0 || strcmp(cmd, "services") == 0) {
        if (nargs != 1)
            goto bad_args;
    } else if (strcmp(cmd, "list") == 0) {
        if (nargs != 1)
            goto bad_args;
        if (state)
            json_object_set_new(req, "state", json_string(state));
        if (older >= 0)
            json_object_set_new(req, "older_than_ms", json_integer(older));
        if (service)
            json_object_set_new(req, "service", json_string(service));
        if (limit > 0)
            json_object_set_new(req, "limit", json_integer(limit));
    } else if (strcmp(cmd, "show") == 0) {
        if (nargs != 2)
            goto bad_args;
        json_object_set_new(req, "txid", json_string(args[1]));
    } else if (strcmp(cmd, "resolve") == 0) {
        bool give_up = nargs == 4 && strcmp(args[2], "give-up") == 0;
        if (!(nargs == 3 && strcmp(args[2], "abort") == 0) && !give_up)
            goto bad_args;
        if (reason == NULL || reason[0] == '\0') {
            fprintf(stderr, "treatyctl: resolve needs --reason TEXT (it goes into the journal's audit record)\n");
            json_decref(req);
            return TCTL_USAGE;
        }
        json_object_set_new(req, "txid", json_string(args[1]));
        json_object_set_new(req, "action", json_string(args[2]));
        json_object_set_new(req, "who", json_string(who_am_i()));
        json_object_set_new(req, "why", json_string(reason));
        if (give_up) {
            char *end;
            long long step = strtoll(args[3], &end, 10);
            if (*end || step < 0 || step > 65535)
                goto bad_args;
            json_object_set_new(req, "step", json_integer(step));
        }
    } else {
        fprintf(stderr, "treatyctl: unknown command %s\n", cmd);
        json_decref(req);
        usage(stderr);
        return TCTL_USAGE;
    }

    if (endpoint[0] == '\0') {
        const char *env = getenv("TREATY_ADMIN");
        if (env && *env)
            snprintf(endpoint, sizeof endpoint, "%s", env);
        else if (config && endpoint_from_config(config, endpoint, sizeof endpoint) < 0)
            return TCTL_USAGE;
        else if (!config)
            snprintf(endpoint, sizeof endpoint, "%s", DEFAULT_ENDPOINT);
    }
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_REQ);
    int zero = 0, to = (int)timeout;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &to, sizeof to);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &to, sizeof to);
    int rc = TCTL_UNREACHABLE;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_connect(s, endpoint) != 0 || zmq_send(s, body, strlen(body), 0) < 0 || zmq_msg_recv(&m, s, 0) < 0) {
        fprintf(stderr, "treatyctl: no answer from treatyd at %s within %lld ms: %s\n", endpoint, timeout,
                zmq_strerror(errno));
        goto out;
    }
    json_error_t e;
    json_t *a = json_loadb(zmq_msg_data(&m), zmq_msg_size(&m), 0, &e);
    if (!json_is_object(a)) {
        fprintf(stderr, "treatyctl: treatyd's answer is not JSON: %s\n", e.text);
        json_decref(a);
        rc = TCTL_UNREACHABLE;
        goto out;
    }
    if (!json_is_true(json_object_get(a, "ok"))) {
        rc = exit_code(str(a, "error"));
        if (as_json)
            json_dumpf(a, stdout, JSON_INDENT(2)), putchar('\n');
        fprintf(stderr, "treatyctl: %s: %s\n", str(a, "error"), str(a, "message"));
    } else {
        rc = TCTL_OK;
        if (as_json) {
            json_dumpf(a, stdout, JSON_INDENT(2));
            putchar('\n');
        } else if (strcmp(cmd, "status") == 0) {
            print_status(a);
        } else if (strcmp(cmd, "list") == 0) {
            print_list(a);
        } else if (strcmp(cmd, "show") == 0) {
            print_show(a);
        } else if (strcmp(cmd, "services") == 0) {
            print_services(a);
        } else {
            printf("resolved: %s of %s, carried out by journal record %lld (audit record written before it)\n",
                   str(a, "resolved"), str(a, "txid"), num(a, "seq"));
        }
    }
    json_decref(a);
out:
    zmq_msg_close(&m);
    free(body);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return rc;

bad_args:
    fprintf(stderr, "treatyctl: wrong arguments for %s\n", cmd);
    json_decref(req);
    usage(stderr);
    return TCTL_USAGE;
}
