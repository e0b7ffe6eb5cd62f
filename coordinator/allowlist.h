/*
 * allowlist.h - who may talk to the coordinator: the allow-list file that
 * maps a CURVE public key to its roles (docs/security.md).
 *
 * Format: text, one entry per line:
 *
 *   <public key> <role> [services]
 *
 *   public key   40 characters of Z85 (ZeroMQ's text form of a 32-byte
 *                CURVE key, as treatyd --keygen writes it in PATH.pub)
 *   role         client                         may send SUBMIT, SAGA, QUERY
 *                participant <svc>[,<svc>...]   may say HELLO as an instance
 *                                               of the listed services and
 *                                               answer for them (VOTE, ACK,
 *                                               INQUIRE, RESULT)
 *                admin                          (the admin endpoint, issue 13)
 *   services     1..64 characters of [A-Za-z0-9._-] each, separated by
 *                commas; several words of them may follow "participant"
 *
 * Words are separated by spaces or tabs; a line may end in "\r\n". A line
 * whose first word starts with '#' is a comment (no key does: Z85 never
 * starts a 5-character group with '#'), so "#<key> client" is a
 * commented-out entry; after the role, a word starting with '#' starts a
 * comment to the end of the line. Blank lines are ignored. A key may
 * appear on several lines: its roles and services add up. Anything else -
 * an unknown role, a missing one, a bad key or service name, a byte other
 * than printable ASCII, spaces, tabs and line ends - is an error naming the
 * line: the file is refused as a whole, never half applied.
 *
 * Lookups are O(1): a hash table over the keys.
 *
 * Ownership: *out of a successful parse or load belongs to the caller
 * (allowlist_free); entries returned by allowlist_find are borrowed from
 * the list and live as long as it does. Thread safety: a list is immutable
 * once built: any number of threads may read it.
 */
#ifndef TREATY_ALLOWLIST_H
#define TREATY_ALLOWLIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum allow_role { ALLOW_CLIENT = 1, ALLOW_PARTICIPANT = 2, ALLOW_ADMIN = 4 };

#define ALLOW_ROLES_ALL (ALLOW_CLIENT | ALLOW_PARTICIPANT | ALLOW_ADMIN)
#define ALLOW_KEY_LEN 32       /* a CURVE public key */
#define ALLOW_KEY_TEXT_LEN 40  /* its Z85 text */
#define ALLOW_SERVICES_MAX 512 /* bytes of one key's service list, NUL included */
#define ALLOW_FILE_MAX (16u << 20)

struct allow_entry {
    uint8_t key[ALLOW_KEY_LEN];
    unsigned roles; /* enum allow_role bits; 0: none (a key the shell knows nothing of) */
    /* ALLOW_PARTICIPANT: the services it may register, comma-separated,
     * each once ("bank-a,bank-b"); "" otherwise. */
    char services[ALLOW_SERVICES_MAX];
};

struct allowlist;

/*
 * Parses text (len bytes, any content; never reads past len) into a new
 * list. Returns 0; TREATY_ECONFIG with "line N: problem" in err; or
 * TREATY_ENOMEM. Caller owns *out (NULL on failure). err may be NULL.
 */
int allowlist_parse(const char *text, size_t len, struct allowlist **out, char *err, size_t errlen);
/* Reads the file at path (at most ALLOW_FILE_MAX bytes) and parses it.
 * Errors as allowlist_parse, with "PATH: " in front; a file that cannot be
 * read is TREATY_ECONFIG too ("PATH: cannot open: ..."). */
int allowlist_load(const char *path, struct allowlist **out, char *err, size_t errlen);
/* The entry of key, or NULL. O(1). */
const struct allow_entry *allowlist_find(const struct allowlist *a, const uint8_t key[32]);
/* Keys in the list. */
size_t allowlist_count(const struct allowlist *a);
/* The i-th entry, 0 <= i < allowlist_count (in the order keys first appear). */
const struct allow_entry *allowlist_entry(const struct allowlist *a, size_t i);
/* Frees *a (accepts NULL) and sets it to NULL. */
void allowlist_free(struct allowlist **a);

/* True when e lists service (NUL-terminated) among its services. O(length
 * of the list): at most ALLOW_SERVICES_MAX bytes. */
bool allow_entry_has_service(const struct allow_entry *e, const char *service);

/* "client", "participant", "admin", "client+participant", ..., or "none". */
const char *allow_roles_name(unsigned roles);

#endif
