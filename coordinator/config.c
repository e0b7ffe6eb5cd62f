/*
 * config.c - see config.h.
 *
 * Every key is one row of the table below (group, name, kind, field, range).
 * The file is walked setting by setting, not looked up key by key, so a key
 * the table does not know is found and reported, wherever it is. Both
 * config_load_file and config_from_args work on a copy and write the caller's
 * struct only on success.
 *
 * Not thread-safe: config_from_args uses getopt_long's global state.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <arpa/inet.h>

#include "log.h"
#include "metrics.h"
#include "treaty.h"
#include "util.h"

enum key_kind {
    KEY_INT,       /* int field, [min, max] */
    KEY_STRING,    /* char[] field of size cap */
    KEY_LOGLEVEL,  /* string in the file, enum log_level in the struct */
    KEY_LOGFORMAT, /* string in the file, enum log_format in the struct */
    KEY_BOOL,      /* bool field */
};

struct key {
    const char *group; /* NULL: top level */
    const char *name;
    enum key_kind kind;
    size_t off;
    size_t cap; /* KEY_STRING: size of the array, NUL included */
    long long min, max;
};

#define INT_KEY(g, n, field, lo, hi)                                                                                   \
    {                                                                                                                  \
        g, n, KEY_INT, offsetof(struct config, field), 0, lo, hi                                                       \
    }
#define BOOL_KEY(g, n, field)                                                                                          \
    {                                                                                                                  \
        g, n, KEY_BOOL, offsetof(struct config, field), 0, 0, 1                                                        \
    }
#define STR_KEY(g, n, field)                                                                                           \
    {                                                                                                                  \
        g, n, KEY_STRING, offsetof(struct config, field), sizeof(((struct config *)0)->field), 0, 0                    \
    }

static const struct key keys[] = {
    STR_KEY(NULL, "listen", listen),
    {NULL, "log_level", KEY_LOGLEVEL, offsetof(struct config, log_level), 0, 0, 0},
    {NULL, "log_format", KEY_LOGFORMAT, offsetof(struct config, log_format), 0, 0, 0},
    INT_KEY(NULL, "shutdown_deadline_ms", shutdown_deadline_ms, 0, 600000),

    STR_KEY("journal", "conninfo", journal_conninfo),
    INT_KEY("journal", "connect_initial_ms", journal_connect_initial_ms, 1, 60000),
    INT_KEY("journal", "connect_max_ms", journal_connect_max_ms, 1, 600000),
    INT_KEY("journal", "lazy_delay_ms", journal_lazy_delay_ms, 0, 10000),
    INT_KEY("journal", "retention_s", journal_retention_s, 60, 31536000),
    INT_KEY("journal", "gc_interval_ms", journal_gc_interval_ms, 100, 3600000),

    INT_KEY("txid", "max_age_s", txid_max_age_s, 1, 31536000),
    INT_KEY("txid", "max_future_s", txid_max_future_s, 0, 3600),

    INT_KEY("twopc", "default_timeout_ms", default_timeout_ms, 1, 3600000),
    INT_KEY("twopc", "max_timeout_ms", max_timeout_ms, 1, 86400000),
    INT_KEY("twopc", "resend_initial_ms", resend_initial_ms, 1, 60000),
    INT_KEY("twopc", "resend_max_ms", resend_max_ms, 1, 3600000),

    INT_KEY("saga", "max_steps", max_steps, 1, 64),
    INT_KEY("saga", "stuck_after_attempts", stuck_after_attempts, 1, 1000000),
    INT_KEY("saga", "stuck_retry_ms", stuck_retry_ms, 1, 86400000),
    INT_KEY("saga", "max_attempts", saga_max_attempts, 1, 65535),
    INT_KEY("saga", "max_backoff_ms", saga_max_backoff_ms, 1, 86400000),
    INT_KEY("saga", "max_try_timeout_ms", saga_max_try_timeout_ms, 1, 86400000),
    INT_KEY("saga", "max_deadline_ms", saga_max_deadline_ms, 1, 2147483647),

    INT_KEY("registry", "heartbeat_ms", heartbeat_ms, 10, 60000),
    INT_KEY("registry", "dead_after_ms", dead_after_ms, 20, 600000),

    INT_KEY("limits", "max_payload_bytes", max_payload_bytes, 0, 16777216),
    INT_KEY("limits", "max_branches", max_branches, 1, 128),
    INT_KEY("limits", "max_inflight", max_inflight, 1, 10000000),
    INT_KEY("limits", "outcome_cache", outcome_cache, 1, 100000000),
    INT_KEY("limits", "max_inflight_per_client", max_inflight_per_client, 1, 10000000),

    BOOL_KEY("security", "curve", curve),
    STR_KEY("security", "secret_key_file", secret_key_file),
    STR_KEY("security", "public_key_file", public_key_file),
    STR_KEY("security", "allow_list", allow_list),
    BOOL_KEY("security", "allow_insecure", allow_insecure),

    STR_KEY("admin", "listen", admin_listen),
    INT_KEY("admin", "max_list", admin_max_list, 1, 100000),
    INT_KEY("admin", "max_pending", admin_max_pending, 1, 1024),
    STR_KEY("metrics", "listen", metrics_listen),
    INT_KEY("metrics", "max_services", metrics_max_services, 1, 100000),
    INT_KEY("metrics", "max_connections", metrics_max_connections, 1, 1024),
    INT_KEY("metrics", "connection_timeout_s", metrics_connection_timeout_s, 1, 3600),
};

#define NKEYS (sizeof keys / sizeof keys[0])

static const char *const groups[] = {"journal", "txid",     "twopc", "saga",   "registry",
                                     "limits",  "security", "admin", "metrics"};

#define NGROUPS (sizeof groups / sizeof groups[0])

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "%s", "tcp://127.0.0.1:7600");
    c->log_level = LOG_LEVEL_INFO;
    c->log_format = LOG_FORMAT_TEXT;
    c->shutdown_deadline_ms = 5000;

    c->journal_conninfo[0] = '\0';
    c->journal_connect_initial_ms = 100;
    c->journal_connect_max_ms = 5000;
    c->journal_lazy_delay_ms = 20;
    c->journal_retention_s = 3600;
    c->journal_gc_interval_ms = 5000;

    c->txid_max_age_s = 1800;
    c->txid_max_future_s = 10;

    c->default_timeout_ms = 10000;
    c->max_timeout_ms = 600000;
    c->resend_initial_ms = 200;
    c->resend_max_ms = 5000;

    c->heartbeat_ms = 1000;
    c->dead_after_ms = 5000;
    c->max_steps = 32;
    c->stuck_after_attempts = 10;
    c->stuck_retry_ms = 30000;
    c->saga_max_attempts = 100;
    c->saga_max_backoff_ms = 60000;
    c->saga_max_try_timeout_ms = 300000;
    c->saga_max_deadline_ms = 86400000;

    c->max_payload_bytes = 65536;
    c->max_branches = 16;
    c->max_inflight = 100000;
    c->outcome_cache = 100000;
    c->max_inflight_per_client = 10000;

    c->curve = false;
    c->allow_insecure = false;

    snprintf(c->admin_listen, sizeof c->admin_listen, "%s", "ipc:///tmp/treatyd-admin.sock");
    c->admin_max_list = 1000;
    c->admin_max_pending = 16;
    c->metrics_max_services = 256;
    c->metrics_max_connections = 8;
    c->metrics_connection_timeout_s = 10;
}

/* The problem in err, TREATY_ECONFIG returned (util_errf). */
#define fail(...) util_errf(TREATY_ECONFIG, __VA_ARGS__)

/* ------------------------------------------------------------ the file */

static const char *type_name(int type)
{
    switch (type) {
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a float";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "an unknown type";
    }
}

/* Where a setting was read: "file:line". */
struct where {
    const char *file;
    unsigned line;
};

static struct where where_of(const config_setting_t *s, const char *path)
{
    struct where w = {config_setting_source_file(s), config_setting_source_line(s)};
    if (w.file == NULL)
        w.file = path;
    return w;
}

static int apply_setting(struct config *c, const struct key *k, const config_setting_t *s, const char *path, char *err,
                         size_t errlen)
{
    struct where w = where_of(s, path);
    const char *g = k->group ? k->group : "";
    const char *dot = k->group ? "." : "";
    int type = config_setting_type(s);

    if (k->kind == KEY_INT) {
        if (type != CONFIG_TYPE_INT && type != CONFIG_TYPE_INT64)
            return fail(err, errlen, "%s:%u: %s%s%s: expected an integer, got %s", w.file, w.line, g, dot, k->name,
                        type_name(type));
        long long v = config_setting_get_int64(s);
        if (v < k->min || v > k->max)
            return fail(err, errlen, "%s:%u: %s%s%s: must be between %lld and %lld, got %lld", w.file, w.line, g, dot,
                        k->name, k->min, k->max, v);
        *(int *)(void *)((char *)c + k->off) = (int)v;
        return 0;
    }

    if (k->kind == KEY_BOOL) {
        if (type != CONFIG_TYPE_BOOL)
            return fail(err, errlen, "%s:%u: %s%s%s: expected true or false, got %s", w.file, w.line, g, dot, k->name,
                        type_name(type));
        *(bool *)(void *)((char *)c + k->off) = config_setting_get_bool(s) != 0;
        return 0;
    }

    if (type != CONFIG_TYPE_STRING)
        return fail(err, errlen, "%s:%u: %s%s%s: expected a string, got %s", w.file, w.line, g, dot, k->name,
                    type_name(type));
    const char *v = config_setting_get_string(s);
    if (v == NULL)
        v = "";
    if (k->kind == KEY_LOGLEVEL) {
        int l = log_level_parse(v);
        if (l < 0)
            return fail(err, errlen, "%s:%u: %s%s%s: must be error, warn, info or debug, got \"%.32s\"", w.file, w.line,
                        g, dot, k->name, v);
        *(int *)(void *)((char *)c + k->off) = l;
        return 0;
    }
    if (k->kind == KEY_LOGFORMAT) {
        int f = log_format_parse(v);
        if (f < 0)
            return fail(err, errlen, "%s:%u: %s%s%s: must be text or json, got \"%.32s\"", w.file, w.line, g, dot,
                        k->name, v);
        *(int *)(void *)((char *)c + k->off) = f;
        return 0;
    }
    size_t n = strlen(v);
    if (n >= k->cap)
        return fail(err, errlen, "%s:%u: %s%s%s: too long (%zu bytes, at most %zu)", w.file, w.line, g, dot, k->name, n,
                    k->cap - 1);
    memcpy((char *)c + k->off, v, n + 1);
    return 0;
}

static const struct key *find_key(const char *group, const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        bool same_group = (group == NULL && keys[i].group == NULL) ||
                          (group != NULL && keys[i].group != NULL && strcmp(group, keys[i].group) == 0);
        if (same_group && strcmp(name, keys[i].name) == 0)
            return &keys[i];
    }
    return NULL;
}

static bool is_group_name(const char *name)
{
    for (size_t i = 0; i < NGROUPS; i++)
        if (strcmp(name, groups[i]) == 0)
            return true;
    return false;
}

static int apply_group(struct config *c, const config_setting_t *grp, const char *path, char *err, size_t errlen)
{
    const char *gname = config_setting_name(grp);
    int n = config_setting_length(grp);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(grp, (unsigned)i);
        const char *name = config_setting_name(s);
        const struct key *k = find_key(gname, name ? name : "");
        if (k == NULL) {
            struct where w = where_of(s, path);
            return fail(err, errlen, "%s:%u: %s.%s: unknown key", w.file, w.line, gname, name ? name : "?");
        }
        int rc = apply_setting(c, k, s, path, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * libconfig 1.5 parses an integer literal without an L suffix with atoi(), so
 * 4294967297 silently becomes 1 and would pass a range check. After a clean
 * parse, this scans the file's text for integer literals that do not fit the
 * type libconfig gives them and reports the first one with the key it belongs
 * to. The file is known to be well-formed here, so the scanner only has to
 * know comments, strings, names, group braces and numbers. (@include'd files
 * are not scanned.)
 */
#define SCAN_DEPTH 8

static bool name_start(int ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '*' || ch == '@';
}

static bool name_char(int ch)
{
    return name_start(ch) || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
}

static bool num_char(int ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '.';
}

/* Is the integer literal num (sign, digits or 0x hex, optional L) outside
 * the type libconfig stores it in? Floats are never. */
static bool int_literal_overflows(const char *num)
{
    const char *digits = num + (num[0] == '-' || num[0] == '+');
    bool hex = digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X');
    size_t n = strlen(num);
    if (n == 0 || strchr(num, '.') != NULL || (!hex && strpbrk(num, "eE") != NULL))
        return false;
    bool is64 = num[n - 1] == 'L' || num[n - 1] == 'l';
    errno = 0;
    if (hex) {
        unsigned long long v = strtoull(digits + 2, NULL, 16);
        return errno == ERANGE || v > (is64 ? (unsigned long long)LLONG_MAX : (unsigned long long)INT_MAX);
    }
    long long v = strtoll(num, NULL, 10);
    return errno == ERANGE || (!is64 && (v < INT_MIN || v > INT_MAX));
}

static int check_int_literals(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0; /* it was readable a moment ago; libconfig's parse is what we have */
    char stack[SCAN_DEPTH][64];
    int depth = 0;
    char name[64] = "", last[64] = "";
    unsigned line = 1;
    int rc = 0;
    int ch = getc(f);

    while (ch != EOF && rc == 0) {
        if (ch == '\n') {
            line++;
            ch = getc(f);
        } else if (ch == '#') {
            while (ch != EOF && ch != '\n')
                ch = getc(f);
        } else if (ch == '/') {
            ch = getc(f);
            if (ch == '/') {
                while (ch != EOF && ch != '\n')
                    ch = getc(f);
            } else if (ch == '*') {
                int prev = 0;
                while ((ch = getc(f)) != EOF && !(prev == '*' && ch == '/')) {
                    if (ch == '\n')
                        line++;
                    prev = ch;
                }
                ch = getc(f);
            }
        } else if (ch == '"') {
            while ((ch = getc(f)) != EOF && ch != '"') {
                if (ch == '\\')
                    ch = getc(f);
                if (ch == '\n')
                    line++;
            }
            ch = getc(f);
        } else if (name_start(ch)) {
            size_t n = 0;
            do {
                if (n + 1 < sizeof last)
                    last[n++] = (char)ch;
                ch = getc(f);
            } while (name_char(ch));
            last[n] = '\0';
        } else if (ch == '=' || ch == ':') {
            memcpy(name, last, sizeof name);
            ch = getc(f);
        } else if (ch == '{') {
            if (depth < SCAN_DEPTH)
                memcpy(stack[depth], name, sizeof name);
            depth++;
            name[0] = '\0';
            ch = getc(f);
        } else if (ch == '}') {
            if (depth > 0)
                depth--;
            ch = getc(f);
        } else if ((ch >= '0' && ch <= '9') || ch == '-' || ch == '+' || ch == '.') {
            char num[96];
            size_t n = 0;
            int prev;
            do { /* sign, digits/letters/dots, and a sign right after an exponent 'e' */
                if (n + 1 < sizeof num)
                    num[n++] = (char)ch;
                prev = ch;
                ch = getc(f);
            } while (num_char(ch) || ((ch == '-' || ch == '+') && (prev == 'e' || prev == 'E')));
            num[n] = '\0';
            if (!int_literal_overflows(num))
                continue;
            const char *g = depth == 1 ? stack[0] : "";
            const struct key *k = depth <= 1 ? find_key(depth == 1 ? g : NULL, name) : NULL;
            if (k != NULL && k->kind == KEY_INT)
                rc = fail(err, errlen, "%s:%u: %s%s%s: must be between %lld and %lld, got %s", path, line, g,
                          *g ? "." : "", name, k->min, k->max, num);
            else
                rc = fail(err, errlen, "%s:%u: %s%s%s: integer %s does not fit", path, line, g, *g ? "." : "", name,
                          num);
        } else {
            ch = getc(f);
        }
    }
    fclose(f);
    return rc;
}

int config_load_file(struct config *c, const char *path, char *err, size_t errlen)
{
    /* libconfig only says "file I/O error"; open it once to say why. */
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    bool is_dir = fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode);
    fclose(f);
    if (is_dir)
        return fail(err, errlen, "%s: cannot open: %s", path, strerror(EISDIR));

    struct config tmp = *c;
    config_t cf;
    int rc = 0;
    config_init(&cf);

    if (config_read_file(&cf, path) != CONFIG_TRUE) {
        const char *file = config_error_file(&cf) ? config_error_file(&cf) : path;
        const char *text = config_error_text(&cf) ? config_error_text(&cf) : "unreadable";
        if (config_error_type(&cf) == CONFIG_ERR_PARSE)
            rc = fail(err, errlen, "%s:%d: %s", file, config_error_line(&cf), text);
        else
            rc = fail(err, errlen, "%s: %s", file, text);
        goto fail_read;
    }

    /* before the walk, so that a wrapped value is not reported as itself */
    rc = check_int_literals(path, err, errlen);

    const config_setting_t *root = config_root_setting(&cf);
    int n = config_setting_length(root);
    for (int i = 0; i < n && rc == 0; i++) {
        const config_setting_t *s = config_setting_get_elem(root, (unsigned)i);
        const char *name = config_setting_name(s);
        if (name == NULL)
            name = "?";
        const struct key *k = find_key(NULL, name);
        if (k != NULL) {
            rc = apply_setting(&tmp, k, s, path, err, errlen);
        } else if (is_group_name(name)) {
            if (config_setting_type(s) != CONFIG_TYPE_GROUP) {
                struct where w = where_of(s, path);
                rc = fail(err, errlen, "%s:%u: %s: expected a group, got %s", w.file, w.line, name,
                          type_name(config_setting_type(s)));
            } else {
                rc = apply_group(&tmp, s, path, err, errlen);
            }
        } else {
            struct where w = where_of(s, path);
            rc = fail(err, errlen, "%s:%u: %s: unknown key", w.file, w.line, name);
        }
    }
    if (rc == 0)
        *c = tmp;

fail_read:
    config_destroy(&cf);
    return rc;
}

/* ------------------------------------------------------------ the flags */

enum { OPT_LISTEN = 256, OPT_JOURNAL, OPT_LOG_LEVEL, OPT_HELP, OPT_VERSION, OPT_CHECK_CONFIG };

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"journal", required_argument, NULL, OPT_JOURNAL},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {"check-config", required_argument, NULL, OPT_CHECK_CONFIG},
    {NULL, 0, NULL, 0},
};

static const char *opt_name(int val)
{
    if (val == 'c')
        return "-c/--config";
    for (size_t i = 0; long_opts[i].name != NULL; i++)
        if (long_opts[i].val == val)
            return long_opts[i].name;
    return "?";
}

static void usage(const char *prog)
{
    printf("usage: %s [options]\n"
           "\n"
           "  -c, --config FILE       read the libconfig file FILE (see treatyd.conf.example)\n"
           "      --listen EP         ZeroMQ endpoint to bind (default tcp://127.0.0.1:7600)\n"
           "      --journal CONNINFO  libpq conninfo of the journal database (default: PG* env)\n"
           "      --log-level LEVEL   error, warn, info or debug (default info)\n"
           "      --check-config FILE check FILE (with the other flags) and exit: prints ok (exit 0)\n"
           "                          or the problem (exit 2)\n"
           "      --version           print the version and exit\n"
           "      --help              print this help and exit\n"
           "\n"
           "Flags override the file, whatever their order.\n"
           "\n"
           "       %s --keygen PATH\n"
           "  writes a new CURVE key pair to PATH.key (the secret key, mode 0600) and\n"
           "  PATH.pub (the public key), prints the public key, and exits (docs/security.md)\n",
           prog, prog);
    fflush(stdout);
}

static int set_string(char *dst, size_t cap, const char *flag, const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);
    if (n >= cap)
        return fail(err, errlen, "--%s: too long (%zu bytes, at most %zu)", flag, n, cap - 1);
    memcpy(dst, v, n + 1);
    return 0;
}

int config_from_args(struct config *c, int argc, char **argv, char *err, size_t errlen)
{
    const char *file = NULL, *listen = NULL, *journal = NULL, *level = NULL, *check = NULL;
    const char *prog = argc > 0 && argv[0] != NULL ? argv[0] : "treatyd";

    /* glibc: optind = 0 re-initialises getopt completely (including a
     * half-parsed "-xyz" cluster left by an earlier call). "+": stop at the
     * first non-option instead of permuting argv; ":": report a missing
     * argument as ':' and print nothing ourselves. */
    optind = 0;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "+:c:", long_opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            file = optarg;
            break;
        case OPT_LISTEN:
            listen = optarg;
            break;
        case OPT_JOURNAL:
            journal = optarg;
            break;
        case OPT_LOG_LEVEL:
            level = optarg;
            break;
        case OPT_HELP:
            usage(prog);
            return 1;
        case OPT_VERSION:
            printf("treatyd %d.%d.%d\n", TREATY_VERSION_MAJOR, TREATY_VERSION_MINOR, TREATY_VERSION_PATCH);
            fflush(stdout);
            return 1;
        case OPT_CHECK_CONFIG:
            check = optarg;
            break;
        case ':':
            if (optopt == 'c')
                return fail(err, errlen, "-c/--config: missing argument");
            return fail(err, errlen, "--%s: missing argument", opt_name(optopt));
        default:
            if (optopt >= OPT_LISTEN)
                return fail(err, errlen, "--%s: takes no argument", opt_name(optopt));
            if (optopt != 0)
                return fail(err, errlen, "-%c: unknown option", optopt);
            return fail(err, errlen, "%s: unknown option", optind > 0 && optind <= argc ? argv[optind - 1] : "?");
        }
    }
    if (optind < argc)
        return fail(err, errlen, "%s: unexpected argument", argv[optind]);
    if (check != NULL && file != NULL)
        return fail(err, errlen, "--check-config and -c/--config: give the file once");
    if (check != NULL)
        file = check;

    struct config tmp;
    config_defaults(&tmp);
    int rc;
    if (file != NULL && (rc = config_load_file(&tmp, file, err, errlen)) < 0)
        return rc;
    if (listen != NULL && (rc = set_string(tmp.listen, sizeof tmp.listen, "listen", listen, err, errlen)) < 0)
        return rc;
    if (journal != NULL &&
        (rc = set_string(tmp.journal_conninfo, sizeof tmp.journal_conninfo, "journal", journal, err, errlen)) < 0)
        return rc;
    if (level != NULL) {
        int l = log_level_parse(level);
        if (l < 0)
            return fail(err, errlen, "--log-level: must be error, warn, info or debug, got \"%.32s\"", level);
        tmp.log_level = l;
    }
    if (check != NULL) {
        if ((rc = config_validate(&tmp, err, errlen)) < 0)
            return rc;
        printf("ok\n");
        fflush(stdout);
        return 1;
    }
    *c = tmp;
    return 0;
}

/* ------------------------------------------------------------ cross-key */

bool config_endpoint_is_local(const char *ep)
{
    if (strncmp(ep, "inproc://", 9) == 0 || strncmp(ep, "ipc://", 6) == 0)
        return true;
    if (strncmp(ep, "tcp://", 6) != 0)
        return false; /* pgm, epgm, ws, tipc, vmci, udp: networks */
    const char *host = ep + 6, *end;
    char buf[INET6_ADDRSTRLEN + 1];
    if (*host == '[') {
        end = strchr(host, ']');
        if (end == NULL || end[1] != ':')
            return false;
        host++;
    } else {
        end = strrchr(host, ':');
        if (end == NULL)
            return false;
    }
    size_t n = (size_t)(end - host);
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, host, n);
    buf[n] = '\0';
    if (strcmp(buf, "localhost") == 0)
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, buf, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, buf, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6);
    return false; /* "*", an interface or host name: maybe reachable from anywhere */
}

int config_validate(const struct config *c, char *err, size_t errlen)
{
    if (c->listen[0] == '\0')
        return fail(err, errlen, "listen: must not be empty");
    char why[160];
    if (c->metrics_listen[0] != '\0' && metrics_parse_listen(c->metrics_listen, NULL, why, sizeof why) < 0)
        return fail(err, errlen, "metrics.listen: %s", why);
    if (c->curve) {
        const char *missing = c->secret_key_file[0] == '\0'   ? "secret_key_file"
                              : c->public_key_file[0] == '\0' ? "public_key_file"
                              : c->allow_list[0] == '\0'      ? "allow_list"
                                                              : NULL;
        if (missing != NULL)
            return fail(err, errlen, "security.%s: required when security.curve = true (docs/security.md)", missing);
    } else if (!c->allow_insecure && !config_endpoint_is_local(c->listen)) {
        return fail(err, errlen,
                    "listen = \"%s\" can be reached from other hosts, and security.curve is off: anyone who can "
                    "connect could register as any participant, vote and acknowledge for it, decide transactions "
                    "and read their payloads. Turn security.curve on (docs/security.md), listen on a loopback "
                    "address, or set security.allow_insecure = true to accept that risk",
                    c->listen);
    }
    if (c->admin_listen[0] != '\0' && strncmp(c->admin_listen, "ipc://", 6) != 0)
        return fail(err, errlen,
                    "admin.listen = \"%s\": must be an ipc:// path (its socket file is made 0600: only treatyd's "
                    "user and root may connect), or \"\" for none",
                    c->admin_listen);
    if (c->journal_connect_initial_ms > c->journal_connect_max_ms)
        return fail(err, errlen, "journal.connect_initial_ms (%d) must not exceed journal.connect_max_ms (%d)",
                    c->journal_connect_initial_ms, c->journal_connect_max_ms);
    if (c->resend_initial_ms > c->resend_max_ms)
        return fail(err, errlen, "twopc.resend_initial_ms (%d) must not exceed twopc.resend_max_ms (%d)",
                    c->resend_initial_ms, c->resend_max_ms);
    if (c->default_timeout_ms > c->max_timeout_ms)
        return fail(err, errlen, "twopc.default_timeout_ms (%d) must not exceed twopc.max_timeout_ms (%d)",
                    c->default_timeout_ms, c->max_timeout_ms);
    if (c->heartbeat_ms >= c->dead_after_ms)
        return fail(err, errlen, "registry.heartbeat_ms (%d) must be less than registry.dead_after_ms (%d)",
                    c->heartbeat_ms, c->dead_after_ms);
    /* A txid is refused once older than max_age_s, and its records are kept
     * retention_s after its END (which comes after the txid was made, give
     * or take the clock difference max_future_s allows): so a txid that is
     * still accepted always finds its outcome. */
    if ((long long)c->txid_max_age_s + c->txid_max_future_s > c->journal_retention_s)
        return fail(err, errlen,
                    "txid.max_age_s (%d) plus txid.max_future_s (%d) must not exceed journal.retention_s (%d): a "
                    "resubmitted txid must still find its outcome in the journal",
                    c->txid_max_age_s, c->txid_max_future_s, c->journal_retention_s);
    return 0;
}

/* ------------------------------------------------------------ reload */

/* The keys a reload (SIGHUP) changes in the running process; config.h says
 * why the others need a restart. */
static const char *const reloadable[] = {
    "log_level",
    "log_format",
    "shutdown_deadline_ms",
    "txid.max_age_s",
    "twopc.default_timeout_ms",
    "twopc.max_timeout_ms",
    "twopc.resend_initial_ms",
    "twopc.resend_max_ms",
    "saga.max_steps",
    "saga.stuck_after_attempts",
    "saga.stuck_retry_ms",
    "saga.max_attempts",
    "saga.max_backoff_ms",
    "saga.max_try_timeout_ms",
    "saga.max_deadline_ms",
    "registry.heartbeat_ms",
    "registry.dead_after_ms",
    "limits.max_branches",
    "limits.max_inflight",
    "limits.max_inflight_per_client",
    "admin.max_list",
};

/* Keys whose values are not shown in logs: a conninfo may hold a password. */
static const char *const secret[] = {"journal.conninfo"};

static void key_name(const struct key *k, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s%s", k->group ? k->group : "", k->group ? "." : "", k->name);
}

static bool listed(const char *const *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0)
            return true;
    return false;
}

bool config_key_reloadable(const char *key)
{
    return listed(reloadable, sizeof reloadable / sizeof reloadable[0], key);
}

static const void *field(const struct config *c, const struct key *k)
{
    return (const char *)c + k->off;
}

static bool key_differs(const struct key *k, const struct config *a, const struct config *b)
{
    switch (k->kind) {
    case KEY_INT:
    case KEY_LOGLEVEL:
    case KEY_LOGFORMAT:
        return *(const int *)field(a, k) != *(const int *)field(b, k);
    case KEY_BOOL:
        return *(const bool *)field(a, k) != *(const bool *)field(b, k);
    case KEY_STRING:
        return strcmp(field(a, k), field(b, k)) != 0;
    }
    return true;
}

static void key_text(const struct key *k, const struct config *c, bool hide, char *buf, size_t len)
{
    int v = k->kind == KEY_STRING ? 0 : k->kind == KEY_BOOL ? *(const bool *)field(c, k) : *(const int *)field(c, k);
    if (hide) {
        snprintf(buf, len, "(not shown)");
        return;
    }
    switch (k->kind) {
    case KEY_INT:
        snprintf(buf, len, "%d", v);
        return;
    case KEY_LOGLEVEL: {
        static const char *const level[] = {"error", "warn", "info", "debug"};
        snprintf(buf, len, "%s", v >= 0 && v < 4 ? level[v] : "?");
        return;
    }
    case KEY_LOGFORMAT:
        snprintf(buf, len, "%s", log_format_name((enum log_format)v));
        return;
    case KEY_BOOL:
        snprintf(buf, len, "%s", v ? "true" : "false");
        return;
    case KEY_STRING:
        snprintf(buf, len, "\"%s\"", (const char *)field(c, k));
        return;
    }
}

size_t config_diff(const struct config *a, const struct config *b, struct config_change *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        if (!key_differs(k, a, b))
            continue;
        if (n < cap) {
            struct config_change *ch = &out[n];
            key_name(k, ch->key, sizeof ch->key);
            bool hide = listed(secret, sizeof secret / sizeof secret[0], ch->key);
            key_text(k, a, hide, ch->from, sizeof ch->from);
            key_text(k, b, hide, ch->to, sizeof ch->to);
            ch->reloadable = config_key_reloadable(ch->key);
        }
        n++;
    }
    return n;
}

void config_apply_reloadable(struct config *live, const struct config *next)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key *k = &keys[i];
        char name[64];
        key_name(k, name, sizeof name);
        if (!config_key_reloadable(name) || !key_differs(k, live, next))
            continue;
        if (k->kind == KEY_STRING)
            memcpy((char *)live + k->off, field(next, k), k->cap);
        else if (k->kind == KEY_BOOL)
            *(bool *)(void *)((char *)live + k->off) = *(const bool *)field(next, k);
        else
            *(int *)(void *)((char *)live + k->off) = *(const int *)field(next, k);
    }
}

int config_reload_merge(const struct config *live, const struct config *next, struct config *out, char *err,
                        size_t errlen)
{
    int rc = config_validate(next, err, errlen);
    if (rc < 0)
        return rc;
    *out = *live;
    config_apply_reloadable(out, next);
    char why[512];
    if (config_validate(out, why, sizeof why) < 0)
        return fail(err, errlen,
                    "%s (with the values of the keys that need a restart kept: the file's new values of those only "
                    "take effect after a restart)",
                    why);
    return 0;
}
