/*
 * log.h - leveled logging for treatyd (and its journal).
 *
 * By default one line per message goes to stderr, in one of two formats
 * (log_set_format):
 *
 *   text   2026-11-25T10:00:00.123Z INFO  txn: abort (branch 1: no funds) txid=0190c3c4-...
 *   json   {"ts":"2026-11-25T10:00:00.123Z","level":"info","msg":"txn: abort (branch 1: no
 * funds)","txid":"0190c3c4-..."}
 *
 * " txid=..." / "txid" only on lines about a transaction (log_txn). In
 * json, every string is escaped (log_json_escape): the line is one valid
 * JSON object whatever bytes a message holds. In text, control characters
 * of the message are written as \n, \r, \t or \xNN, so that a message (a
 * participant's reason, say) cannot start a line of its own.
 *
 * Each line is one fprintf call, so threads may log at once; the level and
 * the format may be changed (SIGHUP reload) while other threads log. A
 * shell may install a sink instead (log_set_sink): the simulator prints
 * lines with its simulated time, or drops them; the wall clock is then not
 * read.
 *
 * Cost of a line below the level: log_debug and log_txn test the level
 * (a call and one relaxed atomic load) before their arguments are
 * evaluated; log_error, log_warn and log_info evaluate them and call
 * log_msg, which tests the level before formatting anything.
 */
#ifndef TREATY_LOG_H
#define TREATY_LOG_H

#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN = 1, LOG_LEVEL_INFO = 2, LOG_LEVEL_DEBUG = 3 };

enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

/* Parses "error", "warn", "info", "debug". Returns the level or -1. */
int log_level_parse(const char *s);
/* Any thread. */
void log_set_level(enum log_level l);
enum log_level log_get_level(void);
/* "ERROR", "WARN", "INFO", "DEBUG", or "?". */
const char *log_level_name(enum log_level l);

/* Parses "text", "json". Returns the format or -1. */
int log_format_parse(const char *s);
/* "text", "json", or "?". */
const char *log_format_name(enum log_format f);
/* Any thread. */
void log_set_format(enum log_format f);
enum log_format log_get_format(void);

/* Receives every message at or below the level, formatted, without time or
 * level prefix and without a newline (a transaction's line ends in
 * " txid=<uuid>"), whatever the format; line is borrowed for the call. */
typedef void (*log_sink_fn)(void *arg, enum log_level l, const char *line);
/* Sends messages to sink (with arg) instead of stderr; NULL restores
 * stderr. Call while no other thread logs (before the journal's threads
 * start, or after they stopped): the sink is called on the thread that
 * logs. */
void log_set_sink(log_sink_fn sink, void *arg);

void log_msg(enum log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A message about the transaction txid (16 bytes; NULL: about none, as
 * log_msg). The message should not repeat the txid: the line carries it. */
void log_txn_msg(enum log_level l, const uint8_t *txid, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * Writes s (len bytes, any content) into out as the inside of a JSON string
 * (no quotes): '"' and '\' escaped, control characters as \b \f \n \r \t or
 * \u00XX (DEL too), and every byte that is not part of well-formed UTF-8 as
 * \ufffd. out always ends in NUL when cap > 0; when out is too small, the
 * output stops before the first escape or character that does not fit
 * whole. Returns the bytes written (without the NUL). Any thread.
 */
size_t log_json_escape(char *out, size_t cap, const char *s, size_t len);

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...)                                                                                                 \
    do {                                                                                                               \
        if (log_get_level() >= LOG_LEVEL_DEBUG)                                                                        \
            log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__);                                                                     \
    } while (0)
/* log_txn(LOG_LEVEL_INFO, t->h.txid, "txn: abort (branch %d: %s)", ...):
 * nothing is evaluated when the level filters the line out. */
#define log_txn(l, txid, ...)                                                                                          \
    do {                                                                                                               \
        if (log_get_level() >= (l))                                                                                    \
            log_txn_msg((l), (txid), __VA_ARGS__);                                                                     \
    } while (0)

#endif
