/*
 * log.c - see log.h.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum log_level current = LOG_LEVEL_INFO;
static log_sink_fn sink;
static void *sink_arg;
static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

int log_level_parse(const char *s)
{
    static const char *const lower[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcmp(s, lower[i]) == 0)
            return i;
    return -1;
}

void log_set_level(enum log_level l)
{
    current = l;
}

enum log_level log_get_level(void)
{
    return current;
}

const char *log_level_name(enum log_level l)
{
    return (unsigned)l < sizeof names / sizeof names[0] ? names[l] : "?";
}

void log_set_sink(log_sink_fn fn, void *arg)
{
    sink = fn;
    sink_arg = arg;
}

void log_msg(enum log_level l, const char *fmt, ...)
{
    if (l > current)
        return;
    char line[2048];
    size_t n = 0;
    if (sink == NULL) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %-5s ", ts.tv_nsec / 1000000L, log_level_name(l));
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - n, fmt, ap);
    va_end(ap);
    if (sink != NULL)
        sink(sink_arg, l, line);
    else
        fprintf(stderr, "%s\n", line);
}
