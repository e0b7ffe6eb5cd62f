#!/bin/sh
# run.sh - runs every Criterion suite in $BUILD/tests against one throwaway
# PostgreSQL (scripts/pgtmp.sh), stopped and removed on exit, failure or ^C.
#
# Environment given to the suites:
#   TREATY_TEST_PG     base libpq conninfo ("host=... port=... user=...")
#   TREATY_TEST_PGDIR  the cluster's directory (scripts/pgtmp.sh restart it)
#   TREATY_BIN         directory of treatyd and the example binaries
#   TREATY_TOP         the source tree
# VALGRIND=1 runs the suites under valgrind (memcheck, errors fail the run).
set -u
BUILD=${BUILD:-build}
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP"
PGDIR=$(mktemp -d /tmp/treaty-test.XXXXXX)
cleanup() { sh "$TOP/scripts/pgtmp.sh" stop "$PGDIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
TREATY_TEST_PG=$(sh scripts/pgtmp.sh start "$PGDIR") || { echo "run.sh: could not start PostgreSQL" >&2; exit 1; }
export TREATY_TEST_PG TREATY_TEST_PGDIR="$PGDIR" TREATY_BIN="$TOP/$BUILD/bin" TREATY_TOP="$TOP"
echo "run.sh: throwaway PostgreSQL at $TREATY_TEST_PG"
# Sanitizer builds (make asan): Criterion's runner leaks a little by itself.
export LSAN_OPTIONS="suppressions=$TOP/tests/lsan.supp:print_suppressions=0"

passed=0
failed=0
failed_suites=""
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    echo "=== $name"
    if [ "${VALGRIND:-}" = 1 ]; then
        valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
            --trace-children=yes --trace-children-skip='*/sh,/bin/sh,*/pg_ctl,*/postgres,*/runuser,*/bash,*/psql,*/prometheus,*/promtool,*/curl,*/systemd-analyze,*/git' -q "$t" --jobs 1 --no-early-exit 2>&1 | tee "$BUILD/$name.log"
        rc=$?
    else
        "$t" --jobs "${TEST_JOBS:-2}" 2>&1 | tee "$BUILD/$name.log"
        rc=$?
    fi
    # POSIX sh has no PIPESTATUS: read the verdict from Criterion's summary line.
    summary=$(grep -E '^\[====\] Synthesis:' "$BUILD/$name.log" | tail -n 1)
    p=$(echo "$summary" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
    f=$(echo "$summary" | sed -n 's/.*Failing: \([0-9]*\).*/\1/p')
    c=$(echo "$summary" | sed -n 's/.*Crashing: \([0-9]*\).*/\1/p')
    if [ -z "$p" ]; then
        echo "run.sh: $name produced no Criterion summary" >&2
        failed=$((failed + 1)); failed_suites="$failed_suites $name"; continue
    fi
    passed=$((passed + p))
    failed=$((failed + f + c))
    # valgrind errors and sanitizer reports fail the suite even when every test passed
    if [ "$((f + c))" -gt 0 ] || grep -qE "ERROR SUMMARY: [1-9]|ERROR: (Address|Leak)Sanitizer|runtime error:" "$BUILD/$name.log"; then
        failed_suites="$failed_suites $name"
        [ "$((f + c))" -eq 0 ] && failed=$((failed + 1))
    fi
    : "$rc"
done
echo
[ -n "$failed_suites" ] && echo "failing suites:$failed_suites"
echo "tests: $passed passed, $failed failed"
[ -z "$failed_suites" ] && [ "$passed" -gt 0 ]
