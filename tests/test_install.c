/*
 * test_install.c - what `make install` ships carries no test rig.
 *
 * The development build (and every test and scenario) has fault points
 * compiled in: fault_point() SIGKILLs the process when TREATY_CRASH_AT names
 * it, the transport filter drops and delays messages under TREATY_NET_FAULTS,
 * and the journal has a fault hook under TREATY_JOURNAL_FAULT. None of that
 * may reach an installed library or daemon.
 *
 * The test runs `make install DESTDIR=<tmp> PREFIX=/usr` in the source tree
 * (TREATY_TOP; `make test` builds the release artifacts before the suites
 * run, so this only copies) and looks into the installed libtreaty.so,
 * libtreaty.a and treatyd: no symbol fault_point (nm, nm -D) and none of the
 * strings above anywhere in the files. The same check of the test build
 * (TREATY_BIN) must find them, so the check itself is known to see them.
 */
#include <criterion/criterion.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MARK_MAX 512

/* Strings that only fault-injection code reads from the environment. */
static const char *const fault_strings[] = {"TREATY_CRASH_AT", "TREATY_NET_FAULTS", "TREATY_JOURNAL_FAULT"};

static const char *env_dir(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        cr_assert_fail("%s is not set: run this suite through `make test` (tests/run.sh)", name);
    cr_assert_null(strchr(v, '\''), "%s has a quote: %s", name, v);
    return v;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    cr_assert_geq(n, 0);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    cr_assert_not_null(buf);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n, "short read of %s", path);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void add_mark(char *marks, const char *what)
{
    size_t used = strlen(marks);
    snprintf(marks + used, MARK_MAX - used, "%s%s", used ? ", " : "", what);
}

/* Adds to marks each symbol named fault_point that `nm <flags> path` lists. */
static void nm_marks(const char *flags, const char *path, char *marks)
{
    char cmd[1024], line[1024];
    snprintf(cmd, sizeof cmd, "nm %s '%s' 2>/dev/null", flags, path);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "cannot run %s", cmd);
    bool listed = false, found = false;
    while (fgets(line, sizeof line, p) != NULL) { /* to the end: nm must not die of SIGPIPE */
        line[strcspn(line, "\n")] = '\0';
        listed = listed || line[0] != '\0';
        const char *name = strrchr(line, ' ');
        name = name != NULL ? name + 1 : line;
        found = found || strcmp(name, "fault_point") == 0;
    }
    if (found) {
        char what[64];
        snprintf(what, sizeof what, "symbol fault_point (nm%s%s)", flags[0] ? " " : "", flags);
        add_mark(marks, what);
    }
    int rc = pclose(p);
    /* nm -D of a static archive or executable may list nothing; plain nm
     * must list something, or the check saw nothing at all */
    if (flags[0] == '\0')
        cr_assert(rc == 0 && listed, "nm %s failed or listed no symbols (status %d)", path, rc);
}

/* The fault-injection marks found in the file at path ("" when none). */
static void fault_marks(const char *path, char *marks)
{
    marks[0] = '\0';
    size_t len;
    char *data = read_all(path, &len);
    for (size_t i = 0; i < sizeof fault_strings / sizeof fault_strings[0]; i++)
        if (memmem(data, len, fault_strings[i], strlen(fault_strings[i])) != NULL)
            add_mark(marks, fault_strings[i]);
    free(data);
    nm_marks("", path, marks);
    nm_marks("-D", path, marks);
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

Test(install, ships_no_fault_points_or_fault_hooks, .timeout = 600)
{
    const char *top = env_dir("TREATY_TOP");
    char tmp[] = "/tmp/treaty-install.XXXXXX";
    cr_assert_not_null(mkdtemp(tmp));
    char cmd[2048];
    /* A make of its own: not a sub-make of the `make test` that runs us
     * (no jobserver, no variables handed down such as BUILD or SAN). */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u MAKEOVERRIDES "
             "make install DESTDIR='%s/root' PREFIX=/usr >'%s/make.log' 2>&1",
             top, tmp, tmp);
    int rc = system(cmd);
    if (rc != 0) {
        char log[512], tail[4096] = "";
        snprintf(log, sizeof log, "%s/make.log", tmp);
        size_t len;
        char *text = read_all(log, &len);
        snprintf(tail, sizeof tail, "%s", len > sizeof tail - 1 ? text + len - (sizeof tail - 1) : text);
        free(text);
        cr_assert_fail("make install failed (status %d):\n%s", rc, tail);
    }

    static const char *const shipped[] = {"bin/treatyd", "bin/treatyctl", "lib/libtreaty.so.0", "lib/libtreaty.a"};
    for (size_t i = 0; i < sizeof shipped / sizeof shipped[0]; i++) {
        char path[1024], marks[MARK_MAX];
        snprintf(path, sizeof path, "%s/root/usr/%s", tmp, shipped[i]);
        cr_assert(is_file(path), "make install did not install %s", path);
        fault_marks(path, marks);
        cr_expect_str_empty(marks, "installed %s carries the test rig: %s", shipped[i], marks);
    }
    static const char *const others[] = {"lib/libtreaty.so", "lib/pkgconfig/treaty.pc", "include/treaty.h",
                                         "share/treaty/sql/participant_barrier.sql"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/root/usr/%s", tmp, others[i]);
        cr_expect(is_file(path), "make install did not install %s", path);
    }
    char pc[1024];
    snprintf(pc, sizeof pc, "%s/root/usr/lib/pkgconfig/treaty.pc", tmp);
    if (is_file(pc)) {
        size_t len;
        char *text = read_all(pc, &len);
        cr_expect(strncmp(text, "prefix=/usr\n", 12) == 0, "treaty.pc: %s", text);
        free(text);
    }

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    cr_expect_eq(system(cmd), 0);
}

/* The check sees the rig where it is: in the test build. */
Test(install, the_check_finds_the_rig_in_the_test_build)
{
    const char *bin = env_dir("TREATY_BIN");
    static const char *const built[] = {"treatyd", "../lib/libtreaty.so", "../lib/libtreaty.a"};
    for (size_t i = 0; i < sizeof built / sizeof built[0]; i++) {
        char path[1024], marks[MARK_MAX];
        snprintf(path, sizeof path, "%s/%s", bin, built[i]);
        cr_assert(is_file(path), "no %s", path);
        fault_marks(path, marks);
        cr_expect(strstr(marks, "TREATY_CRASH_AT") != NULL, "%s: marks '%s'", path, marks);
        cr_expect(strstr(marks, "TREATY_NET_FAULTS") != NULL, "%s: marks '%s'", path, marks);
        cr_expect(strstr(marks, "symbol fault_point") != NULL, "%s: marks '%s'", path, marks);
    }
}
