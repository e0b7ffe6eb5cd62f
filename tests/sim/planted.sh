#!/bin/sh
# planted.sh - does the simulator bite? For every deliberately broken build
# in tests/sim/planted/*.patch: a copy of the tree at HEAD (a detached git
# worktree), the patch applied, treaty-sim built, and seeds run from 1 until
# the first violation (or MAX_SEEDS). Prints one line per patch: its name,
# the seeds needed, the violation. `make sim-planted` runs it.
#
#   MAX_SEEDS (5000)   give up after this many seeds
#   PLANTED="a b"      only these patches (file names without .patch)
# Exit status 0 when every planted defect was found, 1 otherwise.
set -u
TOP=$(cd "$(dirname "$0")/../.." && pwd)
MAX=${MAX_SEEDS:-5000}
WORK=$(mktemp -d /tmp/treaty-planted.XXXXXX)
cleanup() {
    git -C "$TOP" worktree remove --force "$WORK/tree" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git -C "$TOP" worktree add --detach "$WORK/tree" HEAD >/dev/null 2>&1 || { echo "planted: cannot make a worktree" >&2; exit 2; }
status=0
printf '%-34s %8s  %s\n' "planted defect" "seeds" "first violation"
for p in "$TOP"/tests/sim/planted/*.patch; do
    name=$(basename "$p" .patch)
    if [ -n "${PLANTED:-}" ] && ! echo " $PLANTED " | grep -q " $name "; then
        continue
    fi
    git -C "$WORK/tree" checkout -q -- . && git -C "$WORK/tree" clean -qfd -e build-planted
    if ! git -C "$WORK/tree" apply "$p"; then
        printf '%-34s %8s  %s\n' "$name" "-" "patch does not apply"
        status=1
        continue
    fi
    if ! make -s -C "$WORK/tree" BUILD=build-planted build-planted/bin/treaty-sim >"$WORK/build.log" 2>&1; then
        printf '%-34s %8s  %s\n' "$name" "-" "does not build (see $WORK/build.log)"
        tail -n 5 "$WORK/build.log" >&2
        status=1
        continue
    fi
    out=$("$WORK/tree/build-planted/bin/treaty-sim" --seed 1 --seeds "$MAX" --quiet 2>&1)
    v=$(echo "$out" | sed -n 's/^VIOLATION (seed \([0-9]*\)): \(.*\)$/\1|\2/p' | head -n 1)
    if [ -n "$v" ]; then
        printf '%-34s %8s  %s\n' "$name" "${v%%|*}" "$(echo "${v#*|}" | cut -c 1-110)"
    else
        printf '%-34s %8s  %s\n' "$name" ">$MAX" "not found"
        status=1
    fi
done
exit $status
