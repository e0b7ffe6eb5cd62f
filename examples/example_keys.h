/*
 * example_keys.h - the CURVE options every example program takes, on the
 * public API only (treaty_key_load, treaty_security_check):
 *
 *   --server-key FILE   the coordinator's public key (the PATH.pub that
 *                       treatyd --keygen PATH wrote)
 *   --key BASE          this program's key pair: BASE.pub and BASE.key
 *                       (BASE.key readable by its owner only)
 *
 * Both or neither: without them the program talks plaintext, as before.
 * Header-only so that each example stays one .c file; bench/ and scenarios/
 * include it too.
 */
#ifndef TREATY_EXAMPLE_KEYS_H
#define TREATY_EXAMPLE_KEYS_H

#include <stdio.h>
#include <string.h>

#include "treaty.h"

#define EXAMPLE_KEYS_USAGE "[--server-key FILE --key BASE]"

struct example_keys {
    const char *server_key_file; /* --server-key, or NULL */
    const char *key_base;        /* --key, or NULL */
    char server[TREATY_KEY_LEN + 1];
    char pub[TREATY_KEY_LEN + 1];
    char sec[TREATY_KEY_LEN + 1];
    treaty_security_t security;
};

/* Reads the key files named by k->server_key_file and k->key_base (set from
 * the command line). Returns the keys to give a *_new_secure constructor
 * (inside k), or NULL for plaintext when neither option was given; on a
 * problem NULL with *failed set, after writing why to stderr (prog: the
 * program's name). */
static inline const treaty_security_t *example_keys_load(struct example_keys *k, const char *prog, int *failed)
{
    char err[512], path[4096];
    *failed = 0;
    if (k->server_key_file == NULL && k->key_base == NULL)
        return NULL;
    if (k->server_key_file == NULL || k->key_base == NULL) {
        fprintf(stderr, "%s: --server-key and --key go together\n", prog);
        *failed = 1;
        return NULL;
    }
    if (treaty_key_load(k->server_key_file, TREATY_KEY_PUBLIC, k->server, err, sizeof err) != 0)
        goto fail;
    snprintf(path, sizeof path, "%s.pub", k->key_base);
    if (treaty_key_load(path, TREATY_KEY_PUBLIC, k->pub, err, sizeof err) != 0)
        goto fail;
    snprintf(path, sizeof path, "%s.key", k->key_base);
    if (treaty_key_load(path, TREATY_KEY_SECRET, k->sec, err, sizeof err) != 0)
        goto fail;
    k->security.server_public_key = k->server;
    k->security.public_key = k->pub;
    k->security.secret_key = k->sec;
    if (treaty_security_check(&k->security, err, sizeof err) != 0)
        goto fail;
    return &k->security;

fail:
    fprintf(stderr, "%s: %s\n", prog, err);
    *failed = 1;
    return NULL;
}

#endif /* TREATY_EXAMPLE_KEYS_H */
