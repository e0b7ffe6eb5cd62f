/*
 * log.h - leveled logging for treatyd (and its journal).
 *
 * By default one line per message goes to stderr:
 * "2026-11-25T10:00:00.123Z LEVEL message", each line one fprintf call, so
 * threads may log at once. A shell may install a sink instead
 * (log_set_sink): the simulator prints lines with its simulated time, or
 * drops them; the wall clock is then not read.
 */
#ifndef TREATY_LOG_H
#define TREATY_LOG_H

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN = 1, LOG_LEVEL_INFO = 2, LOG_LEVEL_DEBUG = 3 };

/* Parses "error", "warn", "info", "debug". Returns the level or -1. */
int log_level_parse(const char *s);
void log_set_level(enum log_level l);
enum log_level log_get_level(void);
/* "ERROR", "WARN", "INFO", "DEBUG", or "?". */
const char *log_level_name(enum log_level l);

/* Receives every message at or below the level, formatted, without time or
 * level prefix and without a newline; line is borrowed for the call. */
typedef void (*log_sink_fn)(void *arg, enum log_level l, const char *line);
/* Sends messages to sink (with arg) instead of stderr; NULL restores
 * stderr. Call while no other thread logs (before the journal's threads
 * start, or after they stopped): the sink is called on the thread that
 * logs. */
void log_set_sink(log_sink_fn sink, void *arg);

void log_msg(enum log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                                                 \
    do {                                                                                                               \
        if (log_get_level() >= LOG_LEVEL_DEBUG)                                                                        \
            log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                                                                     \
    } while (0)

#endif
