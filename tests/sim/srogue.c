/*
 * srogue.c - a hostile peer on the simulated network. It overhears the
 * coordinator's requests (world_send keeps the last SIM_SNIFF_MAX PREPARE,
 * COMMIT, ABORT and STEP headers: as if txids leaked) and, during the fault
 * phase, forges answers to them from its own connection:
 *
 *   VOTE YES or NO, INQUIRE      for a (txid, branch) it saw PREPARE'd
 *   ACK COMMITTED or ABORTED     for a (txid, branch) it saw decided
 *   RESULT OK, FAILED, TRANSIENT for a (txid, step, attempt) it saw sent
 *   HELLO                        as a live participant (service, instance),
 *                                or as a new instance of a real service -
 *                                only with authentication: without it anyone
 *                                may register a new instance, and a takeover
 *                                of a name whose owner fell silent is allowed
 *                                (docs/security.md): both would be the
 *                                documented weakness, not a finding
 *
 * With authentication its key has what the seed gave it: nothing (revoked
 * since it connected), client, participant of "rogue" (a service nobody
 * uses), or both. None of that may have an effect: the coordinator must
 * never register it as an instance of a real service, never send it a
 * request, and the workload's invariants must hold. A WELCOME, PREPARE or
 * STEP reaching it is a violation right there.
 */
#include <stdio.h>
#include <string.h>

#include "sim.h"
#include "treaty.h"

static const struct {
    const char *service, *instance;
} names[] = {
    {"bank-a", "a1"},  {"bank-a", "a2"},    {"bank-b", "b1"},    {"orders", "o1"}, {"inventory", "i1"},
    {"payment", "p1"}, {"bank-a", "rogue"}, {"bank-b", "rogue"}, {"payment", "x"},
};

static void next_tick(struct world *w, struct node *n)
{
    if (w->p.rogue_rate <= 0 || w->healed)
        return;
    int64_t mean = (int64_t)(1000.0 / w->p.rogue_rate) + 1;
    world_tick_at(w, n->id, w->now + sim_rng_range(&w->rng, 1, 2 * mean));
}

void srogue_start(struct world *w, struct node *n)
{
    next_tick(w, n);
}

static void send(struct world *w, struct node *n, uint8_t type, const uint8_t *txid, unsigned branch, unsigned attempt,
                 unsigned code, const struct wire_frame *f, size_t nf)
{
    struct wire_hdr h;
    memset(&h, 0, sizeof h);
    h.type = type;
    if (txid != NULL)
        memcpy(h.txid, txid, 16);
    h.branch = (uint16_t)branch;
    h.attempt = (uint16_t)attempt;
    h.code = (uint16_t)code;
    sim_trace(w, "%s forges %s branch %u code %u", n->name, wire_type_name(type), branch, code);
    world_send(w, n->id, NULL, 0, &h, f, nf);
}

void srogue_tick(struct world *w, struct node *n)
{
    if (w->healed || w->p.rogue_rate <= 0)
        return;
    struct wire_frame reason = wire_str("forged");
    if (w->p.auth && sim_rng_chance(&w->rng, 0.15)) {
        size_t k = (size_t)sim_rng_range(&w->rng, 0, sizeof names / sizeof names[0] - 1);
        struct wire_frame f[2] = {wire_str(names[k].service), wire_str(names[k].instance)};
        send(w, n, WIRE_HELLO, NULL, 0, 0, 0, f, 2);
    } else if (w->nsniff > 0) {
        size_t have = w->nsniff < SIM_SNIFF_MAX ? w->nsniff : SIM_SNIFF_MAX;
        const struct sniffed *sn = &w->sniff[sim_rng_range(&w->rng, 0, (int64_t)have - 1)];
        int pick = (int)sim_rng_range(&w->rng, 0, 2);
        switch (sn->type) {
        case WIRE_PREPARE:
            if (pick == 2)
                send(w, n, WIRE_INQUIRE, sn->txid, sn->branch, 0, 0, NULL, 0);
            else
                send(w, n, WIRE_VOTE, sn->txid, sn->branch, 0, pick == 0 ? TREATY_VOTE_YES : TREATY_VOTE_NO, &reason,
                     1);
            break;
        case WIRE_COMMIT:
        case WIRE_ABORT:
            if (pick == 2)
                send(w, n, WIRE_VOTE, sn->txid, sn->branch, 0, TREATY_VOTE_YES, &reason, 1);
            else
                send(w, n, WIRE_ACK, sn->txid, sn->branch, 0,
                     (sn->type == WIRE_COMMIT) == (pick == 0) ? TREATY_STATUS_COMMITTED : TREATY_STATUS_ABORTED, NULL,
                     0);
            break;
        case WIRE_STEP: {
            static const unsigned results[] = {WIRE_RESULT_OK, WIRE_RESULT_FAILED, WIRE_RESULT_TRANSIENT};
            send(w, n, WIRE_RESULT, sn->txid, sn->branch, sn->attempt, WIRE_RESULT(sn->code, results[pick]), &reason,
                 1);
            break;
        }
        default:
            break;
        }
    }
    next_tick(w, n);
}

void srogue_msg(struct world *w, struct node *n, const struct wire_msg *m)
{
    (void)n;
    /* ERROR: refusals. COMMIT or ABORT: the decision on a txid the
     * coordinator no longer holds, which any participant may hear (an
     * INQUIRE of a finished or unknown txid, docs/security.md). */
    if (m->hdr.type != WIRE_WELCOME && m->hdr.type != WIRE_PREPARE && m->hdr.type != WIRE_STEP)
        return;
    world_violation(w, "the hostile peer (%s) was sent %s branch %u: it was registered or chosen for a request",
                    w->p.auth ? "authenticated" : "unauthenticated", wire_type_name(m->hdr.type), m->hdr.branch);
}
