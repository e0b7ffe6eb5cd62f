/*
 * core_admin.h - what an operator (treatyctl, docs/treatyctl.md) may ask the
 * coordinator's core, and how the answers come back.
 *
 * The shell receives an admin request (a JSON object, at most
 * ADMIN_REQUEST_MAX bytes) from its admin endpoint and hands it to
 * core_on_admin() with a token of its own. The core answers every request
 * exactly once, through io->admin_reply(token, json): at once (status, list,
 * services, a bad or refused request), after the journal's answer to
 * io->read_records (show: the shell hands that answer to core_on_records), or
 * once the record carrying out a resolve is durable (core_on_durable). Like
 * every other core event, nothing here does I/O or reads a clock.
 *
 * Requests (every number and string is capped; a bad one is answered
 * "invalid"):
 *   {"cmd":"status"}
 *   {"cmd":"list", "state":"in-flight|in-doubt|deciding|compensating|stuck",
 *    "older_than_ms":N (0..ADMIN_MAX_AGE_MS), "service":"NAME",
 *    "limit":N (1..admin.max_list)}                 every key but cmd optional
 *   {"cmd":"show", "txid":"UUID"}
 *   {"cmd":"services"}
 *   {"cmd":"resolve", "txid":"UUID", "action":"abort|give-up",
 *    "step":N (give-up only), "who":"...", "why":"..."}   who, why: 1..200 bytes
 *
 * Answers: {"ok":true, ...} or {"ok":false, "error":CODE, "message":"..."}
 * with CODE one of "invalid" (a malformed request), "not-found" (no such
 * transaction in memory or in the journal), "refused" (the protocol does not
 * allow it: a guarantee would break), "journal" (the journal cannot be read
 * or written now), "busy" (the shell's max_pending requests are in flight).
 *
 * A resolve appends a forced AUDIT record ("<action> by <who>: <why>") and,
 * in the same turn, the record that carries it out: a 2PC's ABORT (only while
 * it has no decision: PREPARING), a saga's TURN (only going forward), or the
 * STEP "compensation" record of a stuck compensation given up as done by
 * hand. It is answered once both are durable. Anything on a transaction that
 * is not in flight here (finished, or unknown) is refused.
 *
 * Threading: the core's (one thread). Ownership: req and r borrowed for the
 * call; the json given to admin_reply is borrowed for that call.
 */
#ifndef TREATY_CORE_ADMIN_H
#define TREATY_CORE_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "journal.h"

#define ADMIN_REQUEST_MAX 4096
#define ADMIN_TEXT_MAX 200                          /* who, why */
#define ADMIN_MAX_AGE_MS (366LL * 24 * 3600 * 1000) /* older_than_ms */

void core_on_admin(struct core *c, uint64_t token, const char *req, size_t len, struct core_time now);
/* The journal's answer to an io->read_records the core asked. */
void core_on_records(struct core *c, const struct journal_records *r, struct core_time now);

#endif
