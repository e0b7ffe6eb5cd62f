/*
 * reload.c - see reload.h.
 */
#include "reload.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "treaty.h"
#include "util.h"

struct item {
    const char *name;
    const struct reload_ops *ops;
    void *arg;
};

struct reload {
    struct item *items;
    size_t n, cap;
};

struct reload *reload_new(void)
{
    return util_xcalloc(1, sizeof(struct reload));
}

void reload_destroy(struct reload **rp)
{
    if (rp == NULL || *rp == NULL)
        return;
    free((*rp)->items);
    free(*rp);
    *rp = NULL;
}

void reload_add(struct reload *r, const char *name, const struct reload_ops *ops, void *arg)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 4;
        r->items = util_xrealloc(r->items, r->cap * sizeof *r->items);
    }
    r->items[r->n++] = (struct item){name, ops, arg};
}

int reload_run(struct reload *r)
{
    char err[1024];
    for (size_t i = 0; i < r->n; i++) {
        err[0] = '\0';
        int rc = r->items[i].ops->prepare(r->items[i].arg, err, sizeof err);
        if (rc == 0)
            continue;
        log_error("SIGHUP: the %s was not reloaded, the previous one stays, and nothing else changed either: %s",
                  r->items[i].name, err[0] ? err : treaty_strerror(rc));
        for (size_t k = 0; k < i; k++)
            if (r->items[k].ops->abort != NULL)
                r->items[k].ops->abort(r->items[k].arg);
        return rc;
    }
    for (size_t i = 0; i < r->n; i++)
        r->items[i].ops->commit(r->items[i].arg);
    return 0;
}

/* ------------------------------------------------------------ the configuration */

static int config_prepare(void *arg, char *err, size_t errlen)
{
    struct reload_config *rc = arg;
    struct config file, merged;
    int ret = config_from_args(&file, rc->argc, rc->argv, err, errlen);
    if (ret == 0)
        ret = config_reload_merge(rc->live, &file, &merged, err, errlen);
    else if (ret > 0)
        ret = TREATY_ECONFIG; /* --help, --version, --check-config: treatyd did not start with those */
    if (ret < 0)
        return ret;
    rc->file = file;
    return 0;
}

#define MAX_CHANGES 64

static void config_commit(void *arg)
{
    struct reload_config *rc = arg;
    struct config_change ch[MAX_CHANGES];
    size_t n = config_diff(rc->live, &rc->file, ch, MAX_CHANGES);
    if (n > MAX_CHANGES)
        n = MAX_CHANGES;

    /* The lines about the change are written at the more verbose of the old
     * and the new level: raising it to debug shows them, and so does
     * lowering it from info. */
    enum log_level after = (enum log_level)rc->file.log_level;
    if (after > log_get_level())
        log_set_level(after);
    /* They are written in the new format already. */
    log_set_format((enum log_format)rc->file.log_format);
    size_t applied = 0, kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (ch[i].reloadable) {
            log_info("reload: %s: %s -> %s", ch[i].key, ch[i].from, ch[i].to);
            applied++;
        } else {
            log_warn("reload: %s: %s -> %s in the file needs a restart; keeps %s until then", ch[i].key, ch[i].from,
                     ch[i].to, ch[i].from);
            kept++;
        }
    }
    log_info("reload: configuration read again: %zu keys changed, %zu keys need a restart", applied, kept);
    config_apply_reloadable(rc->live, &rc->file);
    log_set_level((enum log_level)rc->live->log_level);
    log_set_format((enum log_format)rc->live->log_format);
}

const struct reload_ops reload_config_ops = {
    .prepare = config_prepare,
    .commit = config_commit,
    .abort = NULL,
};
