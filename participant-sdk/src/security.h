/*
 * security.h - checks of CURVE keys shared by the SDK's modules (security.c;
 * the public part, treaty_security_check and treaty_key_load, is in
 * treaty.h). Not part of the public API.
 */
#ifndef TREATY_SECURITY_H
#define TREATY_SECURITY_H

#include <stddef.h>

/* 0 when key is TREATY_KEY_LEN characters of the Z85 alphabet that decode to
 * 32 bytes and encode back to themselves; else TREATY_EINVAL with
 * err[errlen] (when err is not NULL) naming what (e.g. "secret_key") and the
 * problem. key NULL is "missing". */
int security_key_check(const char *key, const char *what, char *err, size_t errlen);

#endif /* TREATY_SECURITY_H */
