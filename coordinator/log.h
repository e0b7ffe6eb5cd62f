/*
 * log.h - leveled logging to stderr for treatyd (and its journal).
 * One line per message: "2026-11-25T10:00:00.123Z LEVEL message". Thread-safe
 * (each line is one fprintf call).
 */
#ifndef TREATY_LOG_H
#define TREATY_LOG_H

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN = 1, LOG_LEVEL_INFO = 2, LOG_LEVEL_DEBUG = 3 };

/* Parses "error", "warn", "info", "debug". Returns the level or -1. */
int log_level_parse(const char *s);
void log_set_level(enum log_level l);
enum log_level log_get_level(void);
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
