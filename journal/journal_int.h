/*
 * journal_int.h - internals of the journal shared with its unit tests
 * (tests/test_journal.c): the row codec (codec.c), the queries of the scan
 * and the lookups, a fault point. Not part of the contract: the coordinator
 * includes journal.h only. (What the journal's own files share beyond this
 * is in journal_priv.h.)
 *
 * The row codec. journal_append() turns each record into one line of
 * PostgreSQL COPY text format at append time; the writer thread splits a
 * group's lines into one text[] array literal per column (undoing COPY's
 * escapes) for its single INSERT ... SELECT FROM unnest(...) statement;
 * journal_scan() parses the text[] column back.
 *
 *   column         COPY text
 *   txid           lowercase UUID "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
 *   kind           "commit" | "abort" | "end" | "saga" | "step" | "turn" | "audit"
 *   services       \N when nservices == 0, else {"a","b"}: every element is
 *                  double-quoted (so a service named NULL stays a string),
 *                  '"' and '\' inside an element are backslash-escaped
 *   failed_branch  the number for ABORT and TURN with failed_branch >= 0,
 *                  else \N
 *   detail         \N when NULL, else the text
 *   step           the number for STEP and AUDIT with step >= 0, else \N (records are
 *                  zero-initialised by callers: step 0 of another kind is
 *                  not a step)
 *   data           \N when data == NULL, else bytea in hex form with COPY's
 *                  own backslash escaped: \\x0a1b... (2 bytes a byte; a
 *                  1 MB saga definition is a 2 MB line, and a group takes at
 *                  least one batch whatever its size)
 *
 * journal_scan() gives step back for STEP and AUDIT rows only (-1 otherwise), and data
 * decoded (NULL when the column is NULL; non-NULL, data_len 0 for an empty
 * bytea) in a buffer reused for the next row.
 *
 * Every text is made storable before it is escaped: invalid UTF-8 bytes (or,
 * when the database encoding is neither UTF8 nor SQL_ASCII, every non-ASCII
 * byte) become '?'. A record must never be refused by Postgres: the writer
 * retries a failed group forever, so one unstorable record would stall the
 * journal. Then '\', TAB, LF and CR are escaped for COPY.
 */
#ifndef TREATY_JOURNAL_INT_H
#define TREATY_JOURNAL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "journal.h"
#include "treaty.h"

/* A growable byte buffer. Zero-initialise; free with journal_buf_free(). */
struct journal_buf {
    char *data;
    size_t len;
    size_t cap;
};

/* Frees b's bytes and empties it for reuse. Static inline, as are the txid
 * helpers below: the writer frees a group's batches and formats its id on
 * every group, and they compile inline there as in the one journal.c. */
static inline void journal_buf_free(struct journal_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Appends r as one COPY text line (with its trailing '\n') to b. r->kind must
 * be a valid journal_kind (asserted). Aborts on out-of-memory. */
void journal_encode_row(struct journal_buf *b, const struct journal_rec *r, bool ascii_only);

/* A growable array of borrowed string pointers. Zero-initialise; free with
 * journal_strv_free() (frees the array, not the strings). */
struct journal_strv {
    const char **v;
    unsigned n;
    unsigned cap;
};

void journal_strv_free(struct journal_strv *sv);

/* Parses a one-dimensional text[] in PostgreSQL's output syntax ("{}",
 * "{a,b}", "{\"a b\",\"c\\\"d\"}") in place: s is modified and out->v points
 * into it. An unquoted NULL element becomes "". Returns 0 or TREATY_EPROTO
 * when s is not such a literal. Aborts on out-of-memory. */
int journal_parse_text_array(char *s, struct journal_strv *out);

/* txids travel as treaty_txid_t's bytes; the SDK's formatter and parser are
 * the one implementation of the UUID text form. */

/* Formats a txid as a lowercase UUID into buf (37 bytes). */
static inline void journal_txid_format(const uint8_t txid[16], char buf[37])
{
    treaty_txid_format((const treaty_txid_t *)txid, buf);
}

/* Parses a UUID (36 characters, any case). 0 or TREATY_EINVAL. */
static inline int journal_txid_parse(const char *s, uint8_t txid[16])
{
    return treaty_txid_parse(s, (treaty_txid_t *)txid);
}

/* Parses a kind column ("commit", ...; journal_kind_name's inverse) into
 * *out. 0 or TREATY_EPROTO. */
int journal_kind_parse(const char *s, enum journal_kind *out);

/*
 * The recovery scan's query (scan.c explains its plan), and the settings
 * journal_scan() runs it with (SET LOCAL statements, inside the scan's
 * transaction): for tests that EXPLAIN it.
 */
#define JOURNAL_SCAN_SETTINGS                                                                                          \
    "SET LOCAL cursor_tuple_fraction = 1; SET LOCAL work_mem = '64MB'; SET LOCAL bytea_output = 'hex'; "               \
    "SET LOCAL enable_mergejoin = off; SET LOCAL enable_nestloop = off"
extern const char journal_scan_sql[];

/* The outcome lookups' query ($1: the txids as a uuid[] literal; lookup.c
 * explains how its rows become outcomes): for tests that EXPLAIN it. */
extern const char journal_lookup_sql[];

/*
 * Test-only fault point, compiled in with TREATY_FAULTS (every build but
 * make RELEASE=1): the next n groups the writer sends lose their
 * acknowledgement. After the pipeline's Sync has gone out, the writer waits
 * until the server's answer to it (ReadyForQuery, sent after the commit) is
 * in the socket's receive buffer, looking with MSG_PEEK, and then swaps the
 * socket for one whose peer is closed before libpq reads a byte: the group
 * has committed, and the writer sees "server closed the connection
 * unexpectedly", as when Postgres dies between its commit and our read. Needs
 * a connection without SSL (the test cluster's unix socket); if the answer
 * cannot be seen within 10 s the connection is broken anyway and a warning
 * logged. Any thread; arm it on one journal of a process at a time (the
 * fault peeks into one static buffer). Returns 0, or TREATY_ESTATE in a build
 * without fault points (the test then fails, it never passes vacuously).
 */
int journal_fault_lose_acks(struct journal *j, unsigned n);

#endif /* TREATY_JOURNAL_INT_H */
