/*
 * registry.c - see registry.h. Services and instances are few (tens), so
 * plain arrays are the right structure.
 */
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct service {
    char name[WIRE_NAME_MAX + 1];
    struct instance *inst;
    size_t ninst, cap;
    size_t next; /* round-robin cursor */
};

struct registry {
    struct service *svc;
    size_t nsvc, cap;
    int dead_after_ms;
};

struct registry *registry_new(int dead_after_ms)
{
    struct registry *r = util_xcalloc(1, sizeof *r);
    r->dead_after_ms = dead_after_ms;
    return r;
}

void registry_set_dead_after(struct registry *r, int dead_after_ms)
{
    r->dead_after_ms = dead_after_ms;
}

void registry_destroy(struct registry **rp)
{
    if (rp == NULL || *rp == NULL)
        return;
    struct registry *r = *rp;
    for (size_t i = 0; i < r->nsvc; i++)
        free(r->svc[i].inst);
    free(r->svc);
    free(r);
    *rp = NULL;
}

static struct service *find_service(const struct registry *r, const char *name)
{
    for (size_t i = 0; i < r->nsvc; i++)
        if (strcmp(r->svc[i].name, name) == 0)
            return &r->svc[i];
    return NULL;
}

static bool same_owner(const struct instance *in, const uint8_t *rid, size_t rid_len, const uint8_t *key)
{
    if (in->keyed || key != NULL)
        return in->keyed && key != NULL && memcmp(in->key, key, REGISTRY_KEY_LEN) == 0;
    return in->rid_len == rid_len && memcmp(in->rid, rid, rid_len) == 0;
}

static void bind_to(struct instance *in, const uint8_t *rid, size_t rid_len, const uint8_t *key)
{
    memcpy(in->rid, rid, rid_len);
    in->rid_len = rid_len;
    in->keyed = key != NULL;
    if (key != NULL)
        memcpy(in->key, key, REGISTRY_KEY_LEN);
    else
        memset(in->key, 0, sizeof in->key);
}

enum registry_hello_result registry_hello(struct registry *r, const char *sname, const char *iname, const uint8_t *rid,
                                          size_t rid_len, const uint8_t *key, int64_t now_ms)
{
    struct service *s = find_service(r, sname);
    if (s == NULL) {
        if (r->nsvc == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 8;
            r->svc = util_xrealloc(r->svc, r->cap * sizeof *r->svc);
        }
        s = &r->svc[r->nsvc++];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", sname);
    }
    for (size_t i = 0; i < s->ninst; i++) {
        struct instance *in = &s->inst[i];
        if (strcmp(in->name, iname) != 0)
            continue;
        if (!same_owner(in, rid, rid_len, key)) {
            if (now_ms - in->last_seen_ms <= r->dead_after_ms)
                return REGISTRY_TAKEN;
            /* its owner is gone (the sweep has not run yet): a new registration */
            bind_to(in, rid, rid_len, key);
            in->last_seen_ms = now_ms;
            log_info("registry: instance %s/%s joined again from another peer (the last one was silent)", sname, iname);
            return REGISTRY_JOINED;
        }
        in->last_seen_ms = now_ms;
        if (in->rid_len == rid_len && memcmp(in->rid, rid, rid_len) == 0)
            return REGISTRY_REFRESHED;
        bind_to(in, rid, rid_len, key);
        log_info("registry: instance %s/%s reconnected", sname, iname);
        return REGISTRY_MOVED;
    }
    if (s->ninst == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4;
        s->inst = util_xrealloc(s->inst, s->cap * sizeof *s->inst);
    }
    struct instance *in = &s->inst[s->ninst++];
    memset(in, 0, sizeof *in);
    snprintf(in->service, sizeof in->service, "%s", sname);
    snprintf(in->name, sizeof in->name, "%s", iname);
    bind_to(in, rid, rid_len, key);
    in->last_seen_ms = now_ms;
    log_info("registry: instance %s/%s joined (%zu live)", sname, iname, s->ninst);
    return REGISTRY_JOINED;
}

const struct instance *registry_pick(struct registry *r, const char *service)
{
    struct service *s = find_service(r, service);
    if (s == NULL || s->ninst == 0)
        return NULL;
    struct instance *in = &s->inst[s->next % s->ninst];
    s->next++;
    return in;
}

bool registry_is_live(const struct registry *r, const char *service, const uint8_t *rid, size_t rid_len)
{
    const struct service *s = find_service(r, service);
    if (s == NULL)
        return false;
    for (size_t i = 0; i < s->ninst; i++)
        if (s->inst[i].rid_len == rid_len && memcmp(s->inst[i].rid, rid, rid_len) == 0)
            return true;
    return false;
}

size_t registry_sweep(struct registry *r, int64_t now_ms)
{
    size_t dropped = 0;
    for (size_t i = 0; i < r->nsvc; i++) {
        struct service *s = &r->svc[i];
        for (size_t k = 0; k < s->ninst;) {
            if (now_ms - s->inst[k].last_seen_ms > r->dead_after_ms) {
                log_warn("registry: instance %s/%s silent for %lld ms, dropped", s->name, s->inst[k].name,
                         (long long)(now_ms - s->inst[k].last_seen_ms));
                s->inst[k] = s->inst[--s->ninst];
                dropped++;
                continue;
            }
            k++;
        }
    }
    return dropped;
}

size_t registry_drop_if(struct registry *r, bool (*keep)(void *arg, const struct instance *in), void *arg)
{
    size_t dropped = 0;
    for (size_t i = 0; i < r->nsvc; i++) {
        struct service *s = &r->svc[i];
        for (size_t k = 0; k < s->ninst;) {
            if (s->inst[k].keyed && !keep(arg, &s->inst[k])) {
                log_warn("registry: instance %s/%s dropped: its key may no longer register it", s->name,
                         s->inst[k].name);
                s->inst[k] = s->inst[--s->ninst];
                dropped++;
                continue;
            }
            k++;
        }
    }
    return dropped;
}

size_t registry_count(const struct registry *r)
{
    size_t n = 0;
    for (size_t i = 0; i < r->nsvc; i++)
        n += r->svc[i].ninst;
    return n;
}

void registry_each(const struct registry *r, void (*cb)(void *arg, const struct instance *in), void *arg)
{
    for (size_t i = 0; i < r->nsvc; i++)
        for (size_t k = 0; k < r->svc[i].ninst; k++)
            cb(arg, &r->svc[i].inst[k]);
}

size_t registry_nservices(const struct registry *r)
{
    return r->nsvc;
}

const char *registry_service_at(const struct registry *r, size_t i, size_t *live)
{
    *live = r->svc[i].ninst;
    return r->svc[i].name;
}
