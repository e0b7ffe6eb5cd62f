/*
 * client_txn.c - treaty_txn_* and treaty_saga_*: build a transaction or a
 * saga (client_int.h) for the client to submit. Plain data, no I/O; the
 * client core (client_core.c) encodes what is built here.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_int.h"
#include "treaty.h"
#include "wire.h"

/* ------------------------------------------------------------------ txn */

int treaty_txn_new_with_id(const treaty_txid_t *id, treaty_txn_t **out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (id == NULL)
        return TREATY_EINVAL;
    struct treaty_txn *t = calloc(1, sizeof *t);
    if (t == NULL)
        return TREATY_ENOMEM;
    t->id = *id;
    *out = t;
    return 0;
}

int treaty_txn_new(treaty_txn_t **out)
{
    treaty_txid_t id;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    int rc = treaty_txid_generate(&id);
    if (rc < 0)
        return rc;
    return treaty_txn_new_with_id(&id, out);
}

void treaty_txn_destroy(treaty_txn_t **tp)
{
    if (tp == NULL || *tp == NULL)
        return;
    struct treaty_txn *t = *tp;
    for (size_t i = 0; i < t->nbranches; i++)
        free(t->branches[i].payload);
    free(t->branches);
    free(t);
    *tp = NULL;
}

const treaty_txid_t *treaty_txn_id(const treaty_txn_t *t)
{
    return t != NULL ? &t->id : NULL;
}

int treaty_txn_add_branch(treaty_txn_t *t, const char *service, const void *payload, size_t len)
{
    if (t == NULL || service == NULL || (payload == NULL && len > 0))
        return TREATY_EINVAL;
    size_t slen = strnlen(service, WIRE_NAME_MAX + 1);
    if (!wire_name_ok((const uint8_t *)service, slen))
        return TREATY_EINVAL;
    if (t->nbranches >= WIRE_MAX_BRANCHES)
        return TREATY_ETOOBIG;
    if (t->nbranches == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4;
        if (cap > WIRE_MAX_BRANCHES)
            cap = WIRE_MAX_BRANCHES;
        struct txn_branch *nb = realloc(t->branches, cap * sizeof *nb);
        if (nb == NULL)
            return TREATY_ENOMEM;
        t->branches = nb;
        t->cap = cap;
    }
    struct txn_branch *b = &t->branches[t->nbranches];
    memset(b, 0, sizeof *b);
    memcpy(b->service, service, slen);
    b->service_len = slen;
    if (len > 0) {
        b->payload = malloc(len);
        if (b->payload == NULL)
            return TREATY_ENOMEM;
        memcpy(b->payload, payload, len);
    }
    b->len = len;
    t->nbranches++;
    return 0;
}

/* ----------------------------------------------------------------- saga */

#define SAGA_DEFAULT_MAX_ATTEMPTS 3
#define SAGA_DEFAULT_FIRST_BACKOFF_MS 100
#define SAGA_DEFAULT_MAX_BACKOFF_MS 5000
#define SAGA_DEFAULT_TRY_TIMEOUT_MS 5000

int treaty_saga_new_with_id(const treaty_txid_t *id, treaty_saga_t **out)
{
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    if (id == NULL)
        return TREATY_EINVAL;
    struct treaty_saga *s = calloc(1, sizeof *s);
    if (s == NULL)
        return TREATY_ENOMEM;
    s->id = *id;
    *out = s;
    return 0;
}

int treaty_saga_new(treaty_saga_t **out)
{
    treaty_txid_t id;
    if (out == NULL)
        return TREATY_EINVAL;
    *out = NULL;
    int rc = treaty_txid_generate(&id);
    if (rc < 0)
        return rc;
    return treaty_saga_new_with_id(&id, out);
}

void treaty_saga_destroy(treaty_saga_t **sp)
{
    if (sp == NULL || *sp == NULL)
        return;
    struct treaty_saga *s = *sp;
    for (size_t i = 0; i < s->nsteps; i++) {
        free(s->steps[i].payload);
        free(s->steps[i].comp_payload);
    }
    free(s);
    *sp = NULL;
}

const treaty_txid_t *treaty_saga_id(const treaty_saga_t *s)
{
    return s != NULL ? &s->id : NULL;
}

static bool name_ok(const char *name)
{
    return name != NULL && wire_name_ok((const uint8_t *)name, strnlen(name, WIRE_NAME_MAX + 1));
}

/* Copies len bytes of data (NULL when len == 0). 0 or TREATY_ENOMEM. */
static int copy_payload(const void *data, size_t len, uint8_t **out)
{
    *out = NULL;
    if (len == 0)
        return 0;
    *out = malloc(len);
    if (*out == NULL)
        return TREATY_ENOMEM;
    memcpy(*out, data, len);
    return 0;
}

/* Appends a step to s in group group. Returns its index or a TREATY_E*. */
static int saga_add(struct treaty_saga *s, bool parallel, const char *service, const char *action, const void *payload,
                    size_t len, const char *compensation, const void *comp_payload, size_t comp_len)
{
    if (s == NULL || !name_ok(service) || !name_ok(action) || !name_ok(compensation) || (payload == NULL && len > 0) ||
        (comp_payload == NULL && comp_len > 0))
        return TREATY_EINVAL;
    if (parallel && s->nsteps == 0)
        return TREATY_ESTATE;
    if (s->nsteps >= WIRE_MAX_STEPS)
        return TREATY_ETOOBIG;
    struct saga_step *st = &s->steps[s->nsteps];
    memset(st, 0, sizeof *st);
    if (copy_payload(payload, len, &st->payload) < 0)
        return TREATY_ENOMEM;
    if (copy_payload(comp_payload, comp_len, &st->comp_payload) < 0) {
        free(st->payload);
        st->payload = NULL;
        return TREATY_ENOMEM;
    }
    snprintf(st->service, sizeof st->service, "%s", service);
    snprintf(st->action, sizeof st->action, "%s", action);
    snprintf(st->compensation, sizeof st->compensation, "%s", compensation);
    st->len = len;
    st->comp_len = comp_len;
    /* Groups run in ascending order: a new step opens the next group, a
     * parallel one joins the group of the step before it. */
    if (s->nsteps == 0)
        st->policy.group = 0;
    else
        st->policy.group = (uint16_t)(s->steps[s->nsteps - 1].policy.group + (parallel ? 0 : 1));
    st->policy.max_attempts = SAGA_DEFAULT_MAX_ATTEMPTS;
    st->policy.first_backoff_ms = SAGA_DEFAULT_FIRST_BACKOFF_MS;
    st->policy.max_backoff_ms = SAGA_DEFAULT_MAX_BACKOFF_MS;
    st->policy.try_timeout_ms = SAGA_DEFAULT_TRY_TIMEOUT_MS;
    return (int)s->nsteps++;
}

int treaty_saga_add_step(treaty_saga_t *s, const char *service, const char *action, const void *payload, size_t len,
                         const char *compensation, const void *comp_payload, size_t comp_len)
{
    return saga_add(s, false, service, action, payload, len, compensation, comp_payload, comp_len);
}

int treaty_saga_add_parallel_step(treaty_saga_t *s, const char *service, const char *action, const void *payload,
                                  size_t len, const char *compensation, const void *comp_payload, size_t comp_len)
{
    return saga_add(s, true, service, action, payload, len, compensation, comp_payload, comp_len);
}

int treaty_saga_set_retry(treaty_saga_t *s, unsigned step, const treaty_retry_t *policy)
{
    if (s == NULL || policy == NULL || step >= s->nsteps || policy->max_attempts > UINT16_MAX)
        return TREATY_EINVAL;
    struct wire_policy *w = &s->steps[step].policy;
    w->max_attempts = (uint16_t)(policy->max_attempts ? policy->max_attempts : SAGA_DEFAULT_MAX_ATTEMPTS);
    w->first_backoff_ms = policy->first_backoff_ms ? policy->first_backoff_ms : SAGA_DEFAULT_FIRST_BACKOFF_MS;
    w->max_backoff_ms = policy->max_backoff_ms ? policy->max_backoff_ms : SAGA_DEFAULT_MAX_BACKOFF_MS;
    w->try_timeout_ms = policy->try_timeout_ms ? policy->try_timeout_ms : SAGA_DEFAULT_TRY_TIMEOUT_MS;
    return 0;
}

int treaty_saga_set_deadline(treaty_saga_t *s, unsigned deadline_ms)
{
    if (s == NULL)
        return TREATY_EINVAL;
    s->deadline_ms = (uint32_t)deadline_ms; /* unsigned is at most 32 bits on every supported target */
    return 0;
}
