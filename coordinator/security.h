/*
 * security.h - treatyd's CURVE authentication (docs/security.md): the key
 * files and treatyd --keygen, the ZAP handler that admits a connection only
 * for a key on the allow-list, the allow-list itself and its reload on
 * SIGHUP, and the per-message lookup of the sender's roles.
 *
 * Shell code: it reads files and serves a socket. What a peer may do with
 * its roles is decided by the core (core.h, core_on_message). No crypto of
 * our own: CURVE and ZAP are libzmq's (RFC 26, RFC 27).
 *
 * Lifecycle (the loop's thread, loop.c):
 *   1. security_new(cfg): reads the key pair and the allow-list; any problem
 *      stops start-up with a message naming the key and the file.
 *   2. security_bind(s, zctx, router): binds the ZAP handler, a REP socket on
 *      inproc://zeromq.zap.01 in zctx, and makes router a CURVE server. Call
 *      it before router binds: a CURVE server whose context has no ZAP
 *      handler admits every key (libzmq's "Stonehouse" fallback).
 *   3. serving: the loop polls security_zap_socket() with its other sockets
 *      and calls security_serve_zap() when it is readable; for every message
 *      security_peer() gives the sender's current allow-list entry;
 *      security_reload() on SIGHUP.
 *   4. security_destroy(): closes the ZAP socket (before zmq_ctx_term).
 *
 * Why the ZAP handler is served by the loop and not by a thread of its own:
 * the loop owns the allow-list alone, so neither the per-message lookup nor
 * the reload needs a lock, and a reload takes effect between two turns for
 * connections and messages alike - nothing admitted or accepted after it
 * saw the old list. A ZAP request waits at most one turn of the loop
 * (handshakes of other connections go on meanwhile in libzmq's I/O thread).
 *
 * Thread safety: none; one thread.
 */
#ifndef TREATY_SECURITY_H
#define TREATY_SECURITY_H

#include <stddef.h>
#include <stdint.h>

#include "allowlist.h"
#include "config.h"

#define SECURITY_ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define SECURITY_ZAP_DOMAIN "treaty"

struct security;

/* Reads cfg's security.secret_key_file (which must not be readable by group
 * or others), public_key_file (which must match it) and allow_list. 0, or
 * TREATY_ECONFIG with the problem in err ("security.secret_key_file: PATH:
 * ..."), or TREATY_ENOMEM. Caller owns *out. */
int security_new(const struct config *cfg, struct security **out, char *err, size_t errlen);
/* Binds the ZAP handler in zctx and makes router a CURVE server with our
 * secret key (step 2 above). 0, or TREATY_ETRANSPORT (logged). */
int security_bind(struct security *s, void *zctx, void *router);
/* The ZAP socket, for zmq_poll (NULL before security_bind). */
void *security_zap_socket(const struct security *s);
/* Answers every waiting ZAP request without blocking: 200 with the key's
 * Z85 text as User-Id for a key on the allow-list, 400 otherwise (logged
 * with the key and the peer's address, at most a line a second). */
void security_serve_zap(struct security *s);
/* The allow-list entry of the sender of a message whose connection had
 * User-Id user_id (wire_in.user_id), as the list is now: borrowed until the
 * next call. A key that is no longer listed, or no User-Id at all, gets an
 * entry with roles 0 (the core refuses everything from it). O(1). */
const struct allow_entry *security_peer(struct security *s, const char *user_id);
/* Reads the allow-list file again (SIGHUP). On success the new list
 * replaces the old (new connections and messages are judged by it from now
 * on) and 0 is returned; on failure the old list stays, and the problem is
 * in err. */
int security_reload(struct security *s, char *err, size_t errlen);
/* The two halves of security_reload, for an all-or-nothing reload of more
 * than the allow-list (reload.h): security_reload_read reads and checks the
 * file into *out (the caller owns it; nothing live changes), then
 * security_reload_install makes it the list (taking ownership of a). */
int security_reload_read(const struct security *s, struct allowlist **out, char *err, size_t errlen);
void security_reload_install(struct security *s, struct allowlist *a);
/* The current allow-list (borrowed: valid until the next reload). */
const struct allowlist *security_allowlist(const struct security *s);
/* Our public key, Z85 (41 bytes with the NUL). */
const char *security_public_key(const struct security *s);
/* Closes the ZAP socket and frees s. Accepts NULL; sets *s to NULL. */
void security_destroy(struct security **s);

/* treatyd --keygen PATH: a new key pair from zmq_curve_keypair, the secret
 * key's Z85 text in PATH.key (created with mode 0600), the public key's in
 * PATH.pub (0644), each one line; neither file may exist. The public key
 * goes to pub (41 bytes). 0, or TREATY_ECONFIG / TREATY_EIO with err. */
int security_keygen(const char *path, char pub[41], char *err, size_t errlen);
/* Reads a key file: its 40-character Z85 text, blanks and line ends around
 * it allowed, nothing else. secret: the file must not be readable by group
 * or others. 0, or TREATY_ECONFIG with "PATH: problem" in err. */
int security_read_key(const char *path, bool secret, char z85[41], char *err, size_t errlen);

#endif
