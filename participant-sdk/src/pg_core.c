/*
 * pg_core.c - the pg core's life, its reports, gids and the purge
 * (pg_core.h). The decisions themselves: pg_branch.c (2PC) and pg_saga.c
 * (saga steps).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "participant_core.h"
#include "pg_core.h"
#include "pg_core_int.h"
#include "treaty.h"
#include "wire.h"

/* --------------------------------------------------------------- reports */

void pg_core_log(struct pg_core *g, enum pcore_level level, const char *fmt, ...)
{
    va_list ap;
    if (g->pc == NULL)
        return;
    va_start(ap, fmt);
    pcore_vlog(g->pc, level, fmt, ap);
    va_end(ap);
}

void pg_core_note(struct pg_core *g, char *reason, const char *fmt, ...)
{
    char buf[TREATY_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *c = buf; *c; c++) /* one line: libpq's messages span several */
        if ((unsigned char)*c < 0x20)
            *c = ' ';
    pg_core_log(g, PCORE_NOTE, "%s", buf);
    if (reason != NULL)
        snprintf(reason, TREATY_REASON_MAX, "%s", buf);
}

void pg_core_report(struct pg_core *g, char *reason)
{
    pg_core_note(g, reason, "%s", g->ops.errtext(g->ctx));
}

bool pg_core_before_horizon(const treaty_txid_t *id, long long horizon_ms)
{
    long long t = treaty_txid_time_ms(id);
    return horizon_ms >= 0 && t >= 0 && t < horizon_ms;
}

/* ------------------------------------------------------------------ gids */

void pg_gid_make(const treaty_txid_t *id, unsigned branch, char *gid)
{
    char ids[TREATY_TXID_STRLEN];
    snprintf(gid, PG_GID_MAX, "treaty:%s:%u", treaty_txid_format(id, ids), branch);
}

bool pg_gid_parse(const char *gid, treaty_txid_t *id, unsigned *branch)
{
    static const char prefix[] = "treaty:";
    char uuid[TREATY_TXID_STRLEN];
    size_t pl = sizeof prefix - 1;

    if (strncmp(gid, prefix, pl) != 0 || strlen(gid) < pl + 36 + 2 || gid[pl + 36] != ':')
        return false;
    memcpy(uuid, gid + pl, 36);
    uuid[36] = '\0';
    if (treaty_txid_parse(uuid, id) < 0)
        return false;
    const char *d = gid + pl + 37;
    unsigned long v = 0;
    size_t n = 0;
    for (; d[n] != '\0'; n++) {
        if (d[n] < '0' || d[n] > '9' || n >= 5)
            return false;
        v = v * 10 + (unsigned long)(d[n] - '0');
    }
    if (n == 0 || v > UINT16_MAX)
        return false;
    *branch = (unsigned)v;
    return true;
}

/* ------------------------------------------------------------- lifecycle */

struct pg_core *pg_core_new(const struct pg_ops *ops, void *ops_ctx, treaty_pg_work_fn work, void *work_arg)
{
    struct pg_core *g = calloc(1, sizeof *g);
    if (g == NULL) {
        if (ops->destroy != NULL)
            ops->destroy(ops_ctx);
        return NULL;
    }
    g->ops = *ops;
    g->ctx = ops_ctx;
    g->work = work;
    g->arg = work_arg;
    return g;
}

void pg_core_free(struct pg_core *g)
{
    if (g == NULL)
        return;
    if (g->ops.destroy != NULL)
        g->ops.destroy(g->ctx);
    free(g);
}

/* on_destroy of the extension: the participant core is going. */
static void pg_core_release(void *arg)
{
    pg_core_free(arg);
}

void pg_core_handlers(struct pg_core *g, treaty_handlers_t *h)
{
    h->prepare = pg_core_prepare;
    h->commit = pg_core_commit;
    h->abort = pg_core_abort;
    h->arg = g;
}

void pg_core_install(struct pg_core *g, struct pcore *c)
{
    g->pc = c;
    struct pcore_ext ext = {pg_core_sweep, pg_core_release, g};
    pcore_set_ext(c, &ext);
}

struct pg_core *pg_core_of(const struct pcore *c)
{
    const struct pcore_ext *ext = pcore_get_ext(c);
    return ext->on_destroy == pg_core_release ? ext->arg : NULL;
}

void *pg_core_ops_ctx(const struct pg_core *g)
{
    return g->ctx;
}

int pg_core_participant_new(const char *service, const char *instance, const struct pcore_io *io,
                            const struct pg_ops *ops, void *ops_ctx, treaty_pg_work_fn work, void *work_arg,
                            int64_t now, struct pcore **out)
{
    if (out == NULL || ops == NULL) {
        if (ops != NULL && ops->destroy != NULL)
            ops->destroy(ops_ctx);
        return TREATY_EINVAL;
    }
    *out = NULL;
    struct pg_core *g = pg_core_new(ops, ops_ctx, work, work_arg);
    if (g == NULL)
        return TREATY_ENOMEM;
    treaty_handlers_t h;
    pg_core_handlers(g, &h);
    struct pcore *c;
    int rc = pcore_new(service, instance, &h, io, now, &c);
    if (rc < 0) {
        pg_core_free(g);
        return rc;
    }
    pg_core_install(g, c); /* c owns g from here on */
    *out = c;
    return 0;
}

int pg_core_on_step(struct pcore *c, enum pcore_step_kind kind, const char *name, treaty_pg_step_fn fn, void *arg)
{
    if (c == NULL || fn == NULL)
        return TREATY_EINVAL;
    struct pg_core *g = pg_core_of(c);
    if (g == NULL)
        return TREATY_EINVAL;
    struct pg_core_step *ps = calloc(1, sizeof *ps);
    if (ps == NULL)
        return TREATY_ENOMEM;
    ps->g = g;
    ps->fn = fn;
    ps->arg = arg;
    return pcore_add_step(c, kind, name, kind == PCORE_ACTION ? pg_core_action : pg_core_compensation, ps, free);
}

/* ------------------------------------------------------------------ purge */

long pg_core_purge(struct pcore *c, unsigned older_than_s)
{
    if (c == NULL)
        return TREATY_EINVAL;
    struct pg_core *g = pg_core_of(c);
    if (g == NULL)
        return TREATY_EINVAL;
    enum pg_txn st = g->ops.txn_state(g->ctx);
    if (st == PG_TXN_OPEN || st == PG_TXN_FAILED)
        return TREATY_ESTATE; /* inside a handler's transaction: not ours to end */
    if (g->ops.ready(g->ctx, false) < 0) {
        pg_core_report(g, NULL);
        return TREATY_EPG;
    }
    /* If we crash before its commit nothing changed; after it, both the
     * rows and the horizon did. */
    long n = g->ops.purge(g->ctx, older_than_s);
    if (n < 0) {
        pg_core_report(g, NULL);
        return TREATY_EPG;
    }
    return n;
}
