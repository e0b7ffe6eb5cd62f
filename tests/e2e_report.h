/*
 * e2e_report.h - Criterion report hooks shared by the end-to-end suites:
 * every test's process logs go to a directory under one root; a failed
 * test prints the tail of each log, a passed one deletes them
 * (TREATY_E2E_KEEP_LOGS=1 keeps them). Include once, in the suite's file,
 * after defining E2E_SUITE (the Criterion suite name).
 */
#ifndef TREATY_E2E_REPORT_H
#define TREATY_E2E_REPORT_H

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/hooks.h>

#ifndef E2E_SUITE
#error "define E2E_SUITE before including e2e_report.h"
#endif

static char logroot[256];

ReportHook(PRE_ALL)(struct criterion_test_set *set)
{
    (void)set;
    const char *given = getenv("TREATY_E2E_LOGDIR");
    if (given != NULL && *given != '\0') {
        snprintf(logroot, sizeof logroot, "%s", given);
        return;
    }
    snprintf(logroot, sizeof logroot, "/tmp/treaty-" E2E_SUITE ".XXXXXX");
    if (mkdtemp(logroot) == NULL) {
        logroot[0] = '\0';
        return;
    }
    setenv("TREATY_E2E_LOGDIR", logroot, 1);
}

static void test_log_dir(const struct criterion_test *t, char *buf, size_t len)
{
    /* Same name as support_log_dir() computes inside the test. */
    char name[256];
    snprintf(name, sizeof name, "%s-%s", t->category, t->name);
    for (char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '.' || *p == '-'))
            *p = '_';
    snprintf(buf, len, "%s/%s", logroot, name);
}

static void tail_file(const char *path, int lines)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    long starts[64] = {0};
    long n = 0;
    char *line = NULL;
    size_t cap = 0;
    long pos = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) >= 0) {
        starts[n % 64] = pos;
        pos += got;
        n++;
    }
    long first = n > lines ? n - lines : 0;
    if (n > 0)
        fseek(f, starts[first % 64], SEEK_SET);
    while (getline(&line, &cap, f) >= 0)
        fputs(line, stderr);
    free(line);
    fclose(f);
}

static void report_test(struct criterion_test_stats *stats)
{
    if (logroot[0] == '\0' || strcmp(stats->test->category, E2E_SUITE) != 0)
        return;
    char dir[512];
    test_log_dir(stats->test, dir, sizeof dir);
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    bool failed = stats->test_status == CR_STATUS_FAILED || stats->crashed || stats->timed_out;
    const char *keep = getenv("TREATY_E2E_KEEP_LOGS");
    if (!failed && keep != NULL && *keep != '\0' && strcmp(keep, "0") != 0) {
        closedir(d);
        return;
    }
    if (failed)
        fprintf(stderr, "\n==== %s::%s failed; process logs in %s\n", E2E_SUITE, stats->test->name, dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[800];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (failed) {
            size_t l = strlen(e->d_name);
            if (l > 4 && strcmp(e->d_name + l - 4, ".log") == 0) {
                fprintf(stderr, "---- %s (last 30 lines)\n", path);
                tail_file(path, 30);
            }
        } else {
            unlink(path);
        }
    }
    closedir(d);
    if (!failed)
        rmdir(dir);
}

/* POST_FINI carries the verdict of a test that ran to its end, TEST_CRASH
 * that of one that crashed or timed out. */
ReportHook(POST_FINI)(struct criterion_test_stats *stats)
{
    report_test(stats);
}

ReportHook(TEST_CRASH)(struct criterion_test_stats *stats)
{
    report_test(stats);
}

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    (void)stats;
    if (logroot[0] != '\0')
        rmdir(logroot); /* only when empty: every test passed */
}

#endif
