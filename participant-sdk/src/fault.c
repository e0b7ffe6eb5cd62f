/*
 * fault.c - see fault.h.
 */
#include "fault.h"

#ifdef TREATY_FAULTS
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_long hits;

void fault_point(const char *name)
{
    const char *spec = getenv("TREATY_CRASH_AT");
    if (spec == NULL || *spec == '\0')
        return;
    size_t n = strlen(name);
    if (strncmp(spec, name, n) != 0 || (spec[n] != '\0' && spec[n] != ':'))
        return;
    long want = spec[n] == ':' ? strtol(spec + n + 1, NULL, 10) : 1;
    if (atomic_fetch_add(&hits, 1) + 1 < want)
        return;
    fprintf(stderr, "fault point %s reached: SIGKILL\n", name);
    fflush(stderr);
    kill(getpid(), SIGKILL);
}
#else
/* Release build: no fault points (ISO C wants at least one declaration). */
typedef int fault_points_disabled;
#endif
