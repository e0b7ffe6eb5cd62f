/*
 * sjournal.h - the simulated journal's side for the simulated coordinator
 * (scoord.c) and the checks; see sjournal.c for what it models.
 */
#ifndef TREATY_SIM_SJOURNAL_H
#define TREATY_SIM_SJOURNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "journal.h"
#include "sim.h"

/* A coordinator incarnation starts using the journal: sequence numbers from 1. */
void sjournal_attach(struct world *w, struct sjournal *j, struct node *coord);
/* The coordinator died: its pending records are lost; a group in flight
 * landed or not (the seed decides). */
void sjournal_coord_crash(struct world *w, struct sjournal *j);
/* journal_append: the next sequence number of this incarnation. */
uint64_t sjournal_append(struct sjournal *j, const struct journal_rec *r, bool force);
/* journal_flush: the pending records go out as one group (unless one is in flight). */
void sjournal_flush(struct world *w, struct sjournal *j);
/* The group in flight returned: the new durable watermark, or 0 (failed; it
 * is written again once PostgreSQL is back). */
uint64_t sjournal_commit_done(struct world *w, struct sjournal *j);
/* journal_healthy. */
bool sjournal_healthy(const struct sjournal *j);
/* PostgreSQL is up (the coordinator can start). */
bool sjournal_up_now(const struct sjournal *j);
/* journal_lookup: answered by EV_LOOKUP_DONE (data: the txid). */
void sjournal_lookup(struct world *w, struct sjournal *j, const uint8_t txid[16]);
void sjournal_lookup_answer(const struct sjournal *j, const uint8_t txid[16], struct journal_lookup_result *out);
/* journal_scan: the unfinished runs. */
int sjournal_scan(const struct sjournal *j, journal_scan_fn cb, void *arg);
/* journal_newest_txid: the creation time of the newest txid with a record,
 * among those made up to below_ms (-1: none). */
int64_t sjournal_newest_txid(const struct sjournal *j, int64_t below_ms);
/* For the checks: whether a COMMIT / ABORT record of txid was ever durable. */
int sjournal_decision(const struct sjournal *j, const uint8_t txid[16], bool *committed, bool *aborted);

#endif
