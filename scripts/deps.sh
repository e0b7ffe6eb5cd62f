#!/bin/sh
# deps.sh: makes sure the Debian packages Treaty needs are installed.
# As root it installs what is missing; otherwise it prints the exact command.
set -eu
# Build: the compilers, pkg-config and the libraries' -dev packages
# (libmicrohttpd-dev: treatyd's /metrics endpoint; libjansson-dev: the admin
# endpoint's JSON). Tests: Criterion, PostgreSQL, clang-format, systemd
# (systemd-analyze verify), and the real tools the metrics tests drive:
# prometheus (prometheus and promtool) and curl (README, "Dependencies").
PKGS="build-essential pkg-config libpq-dev libzmq3-dev libconfig-dev libsodium-dev libsystemd-dev libmicrohttpd-dev \
libjansson-dev g++ clang systemd libcriterion-dev postgresql-15 postgresql-client-15 clang-format prometheus curl"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
else
    echo "deps: missing Debian packages:$missing" >&2
    echo "deps: run:  sudo apt-get install -y$missing" >&2
    exit 1
fi
