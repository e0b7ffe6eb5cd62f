# Treaty - one non-recursive build.
#
#   make            build/bin/treatyd, build/lib/libtreaty.{a,so}, build/treaty.pc
#   make test       every Criterion suite against a throwaway PostgreSQL
#   make demo       the bank demo (throwaway PostgreSQL unless TREATY_PG is set)
#   make asan       build and test with AddressSanitizer + UndefinedBehaviorSanitizer
#   make valgrind   run the unit suites under valgrind
#   make fuzz       libFuzzer targets: wire decoder, allow-list parser (clang); FUZZ_SECONDS=60 each
#   make install PREFIX=/usr/local   installs the release build (build-release/, see "release")
#   make RELEASE=1  without fault points, -O2

PREFIX ?= /usr/local
BUILD ?= build
CC ?= cc

PKGS := libzmq libconfig libpq libsodium libsystemd jansson libmicrohttpd
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
ifeq ($(PKG_LIBS),)
PKG_LIBS := -lzmq -lconfig -lpq -lsodium -lsystemd -ljansson -lmicrohttpd
PKG_CFLAGS := -I/usr/include/postgresql
endif

WARN := -std=c11 -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wformat=2 -Wimplicit-fallthrough -Wwrite-strings -Werror=vla -Werror
ifdef RELEASE
OPT := -O2 -DNDEBUG
else
OPT := -O2 -g -DTREATY_FAULTS
endif
SAN ?=
CFLAGS_ALL := $(WARN) $(OPT) $(SAN) -D_GNU_SOURCE -pthread -fPIC -fvisibility=hidden -DTREATY_BUILDING \
              -Iparticipant-sdk/include -Iparticipant-sdk/src -Ijournal -Icoordinator -I$(BUILD)/gen \
              $(PKG_CFLAGS) $(CFLAGS)
LDLIBS_ALL := $(SAN) -pthread $(PKG_LIBS) $(LDLIBS)

SDK_SRC := $(wildcard participant-sdk/src/*.c)
SDK_OBJ := $(SDK_SRC:%.c=$(BUILD)/obj/%.o)
COORD_SRC := $(filter-out coordinator/main.c coordinator/treatyctl.c,$(wildcard coordinator/*.c)) $(wildcard journal/*.c)
COORD_OBJ := $(COORD_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_SUPPORT_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(filter-out $(TEST_SRC) tests/fuzz_%.c,$(wildcard tests/*.c)))
EXAMPLE_SRC := $(wildcard examples/*.c)
EXAMPLE_BIN := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/bin/%)

LIB_A := $(BUILD)/lib/libtreaty.a
LIB_SO := $(BUILD)/lib/libtreaty.so
TREATYD := $(BUILD)/bin/treatyd
TREATYCTL := $(BUILD)/bin/treatyctl

.PHONY: all test demo asan valgrind fuzz install deps clean check-header scenarios format check-format
all: $(TREATYD) $(TREATYCTL) $(LIB_A) $(LIB_SO) $(BUILD)/treaty.pc $(EXAMPLE_BIN)

# SQL files become C strings so the binaries carry their schema.
$(BUILD)/gen/sql_journal.h: sql/001_journal.sql scripts/sql2c.sh
	@mkdir -p $(@D)
	sh scripts/sql2c.sh sql_journal $< > $@
$(BUILD)/gen/sql_barrier.h: sql/participant_barrier.sql scripts/sql2c.sh
	@mkdir -p $(@D)
	sh scripts/sql2c.sh sql_barrier $< > $@
$(BUILD)/gen/sql_saga.h: sql/002_saga.sql scripts/sql2c.sh
	@mkdir -p $(@D)
	sh scripts/sql2c.sh sql_saga $< > $@
$(BUILD)/gen/sql_batched_end.h: sql/003_batched_end.sql scripts/sql2c.sh
	@mkdir -p $(@D)
	sh scripts/sql2c.sh sql_batched_end $< > $@
$(BUILD)/gen/sql_runs_and_lookups.h: sql/004_runs_and_lookups.sql scripts/sql2c.sh
	@mkdir -p $(@D)
	sh scripts/sql2c.sh sql_runs_and_lookups $< > $@
$(BUILD)/gen/sql_audit.h: sql/005_audit.sql scripts/sql2c.sh
	@mkdir -p $(@D)
	sh scripts/sql2c.sh sql_audit $< > $@
GEN := $(BUILD)/gen/sql_journal.h $(BUILD)/gen/sql_saga.h $(BUILD)/gen/sql_batched_end.h \
       $(BUILD)/gen/sql_runs_and_lookups.h $(BUILD)/gen/sql_audit.h $(BUILD)/gen/sql_barrier.h

# Objects depend on the flags they were compiled with, so that `make
# RELEASE=1` after `make` (or the reverse) in one build directory recompiles
# instead of mixing fault-enabled and release objects.
FLAGS_STAMP := $(BUILD)/cflags.txt
$(FLAGS_STAMP): FORCE
	@mkdir -p $(@D)
	@echo '$(CFLAGS_ALL)' | cmp -s - $@ || echo '$(CFLAGS_ALL)' > $@
.PHONY: FORCE
FORCE:

# Nothing compiles before scripts/deps.sh found (or, as root, installed) the
# Debian packages: a plain `make` without them prints the apt-get command
# instead of a compiler error. Once per build directory.
DEPS_OK := $(BUILD)/deps.ok
$(DEPS_OK): scripts/deps.sh
	@sh scripts/deps.sh
	@mkdir -p $(@D) && touch $@

$(BUILD)/obj/%.o: %.c $(GEN) $(FLAGS_STAMP) | $(DEPS_OK)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(LIB_A): $(SDK_OBJ)
	@mkdir -p $(@D)
	rm -f $@
	ar rcs $@ $^

$(LIB_SO): $(SDK_OBJ)
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,libtreaty.so.0 -o $@ $^ $(LDLIBS_ALL)

$(TREATYD): $(BUILD)/obj/coordinator/main.o $(COORD_OBJ) $(LIB_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

# treatyctl: the operator's CLI (docs/treatyctl.md); talks to treatyd's admin endpoint only.
$(TREATYCTL): $(BUILD)/obj/coordinator/treatyctl.o
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/bin/%: $(BUILD)/obj/examples/%.o $(LIB_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TEST_SUPPORT_OBJ) $(COORD_OBJ) $(LIB_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(LDLIBS_ALL) -lcriterion

$(BUILD)/treaty.pc: Makefile
	@mkdir -p $(@D)
	printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: treaty\nDescription: Treaty distributed transaction SDK\nVersion: 0.1.0\nRequires.private: libzmq libpq\nCflags: -I$${includedir}\nLibs: -L$${libdir} -ltreaty\nLibs.private: -lzmq -lpq -pthread\n' '$(PREFIX)' > $@

# The public header compiles alone, as C11 and as C++.
check-header:
	@mkdir -p $(BUILD)
	echo '#include "treaty.h"' | $(CC) -std=c11 -Wall -Wextra -Werror -Iparticipant-sdk/include -x c -fsyntax-only -
	echo '#include "treaty.h"' | g++ -std=c++11 -Wall -Wextra -Werror -Iparticipant-sdk/include -x c++ -fsyntax-only -

deps:
	@sh scripts/deps.sh

# The tree follows .clang-format; make test checks it.
FORMAT_SRC = $(shell git ls-files '*.c' '*.h' 2>/dev/null)
format:
	clang-format -i $(FORMAT_SRC)
check-format:
	@clang-format --dry-run --Werror $(FORMAT_SRC) || { echo "make: run 'make format'" >&2; exit 1; }

test: deps
	$(MAKE) all $(TEST_BIN) $(SCEN_BIN) $(BUILD)/bin/treaty-sim check-header check-format release
	BUILD=$(BUILD) sh tests/run.sh

demo: deps
	$(MAKE) all
	BUILD=$(BUILD) sh examples/demo.sh

asan: deps
	$(MAKE) BUILD=build-asan SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" test

valgrind: deps
	$(MAKE) all $(TEST_BIN) $(SCEN_BIN) $(BUILD)/bin/treaty-sim release
	BUILD=$(BUILD) VALGRIND=1 sh tests/run.sh

# make fuzz   both libFuzzer targets, FUZZ_SECONDS (60) each, in turn:
#   fuzz_wire       the wire decoder (tests/fuzz_wire.c), corpus tests/fuzz-corpus/wire
#   fuzz_allowlist  the coordinator's allow-list parser (tests/fuzz_allowlist.c),
#                   corpus tests/fuzz-corpus/allowlist; skipped, saying so, in a
#                   tree without coordinator/allowlist.c
# New inputs found are added to the corpus directories. FUZZ_RUNS=N runs N
# inputs instead of FUZZ_SECONDS; FUZZ_SAN (address,undefined) and FUZZ_OPT
# (-O1) choose the build: FUZZ_SAN=undefined FUZZ_OPT=-O2 is several times
# faster, for long runs. The long runs and their counts: docs/testing.md
# ("Fuzzing").
FUZZ_SECONDS ?= 60
FUZZ_SAN ?= address,undefined
FUZZ_OPT ?= -O1
FUZZ_LIMIT = $(if $(FUZZ_RUNS),-runs=$(FUZZ_RUNS),-max_total_time=$(FUZZ_SECONDS))
FUZZ_CC = clang -g $(FUZZ_OPT) -fsanitize=fuzzer,$(FUZZ_SAN) -fno-sanitize-recover=undefined -D_GNU_SOURCE \
          -Iparticipant-sdk/include -Iparticipant-sdk/src -Icoordinator $(PKG_CFLAGS)
.PHONY: fuzz-wire fuzz-allowlist
fuzz: deps
	$(MAKE) fuzz-wire fuzz-allowlist

fuzz-wire:
	@mkdir -p $(BUILD)/fuzz tests/fuzz-corpus/wire
	$(FUZZ_CC) tests/fuzz_wire.c participant-sdk/src/wire.c participant-sdk/src/common.c \
	  -o $(BUILD)/fuzz/fuzz_wire $(PKG_LIBS)
	$(BUILD)/fuzz/fuzz_wire $(FUZZ_LIMIT) -max_len=4096 -print_final_stats=1 tests/fuzz-corpus/wire

ifneq ($(wildcard coordinator/allowlist.c),)
fuzz-allowlist:
	@mkdir -p $(BUILD)/fuzz tests/fuzz-corpus/allowlist
	$(FUZZ_CC) tests/fuzz_allowlist.c coordinator/allowlist.c participant-sdk/src/common.c participant-sdk/src/util.c \
	  -o $(BUILD)/fuzz/fuzz_allowlist $(PKG_LIBS)
	$(BUILD)/fuzz/fuzz_allowlist $(FUZZ_LIMIT) -max_len=4096 -print_final_stats=1 tests/fuzz-corpus/allowlist
else
fuzz-allowlist:
	@echo "make fuzz: no coordinator/allowlist.c in this tree yet: fuzz_allowlist skipped"
endif

# What make install ships: a release build (RELEASE=1: no fault points, no
# transport fault filter, no journal fault hook) in a build directory of its
# own, whatever BUILD, SAN or RELEASE this make was given. Tests and
# scenarios keep their fault-enabled build; tests/test_install.c checks that
# the installed files carry none of it (make test builds the release first).
RELEASE_BUILD ?= build-release
RELEASE_TARGETS := $(RELEASE_BUILD)/bin/treatyd $(RELEASE_BUILD)/bin/treatyctl $(RELEASE_BUILD)/lib/libtreaty.a $(RELEASE_BUILD)/lib/libtreaty.so \
                   $(RELEASE_BUILD)/treaty.pc
.PHONY: release
release:
	$(MAKE) RELEASE=1 BUILD=$(RELEASE_BUILD) SAN= $(RELEASE_TARGETS)

install: release
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/share/treaty/sql
	install -m 755 $(RELEASE_BUILD)/bin/treatyd $(DESTDIR)$(PREFIX)/bin/
	install -m 755 $(RELEASE_BUILD)/bin/treatyctl $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(RELEASE_BUILD)/lib/libtreaty.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(RELEASE_BUILD)/lib/libtreaty.so $(DESTDIR)$(PREFIX)/lib/libtreaty.so.0
	ln -sf libtreaty.so.0 $(DESTDIR)$(PREFIX)/lib/libtreaty.so
	install -m 644 participant-sdk/include/treaty.h $(DESTDIR)$(PREFIX)/include/
	sed 's|^prefix=.*|prefix=$(PREFIX)|' $(RELEASE_BUILD)/treaty.pc > $(DESTDIR)$(PREFIX)/lib/pkgconfig/treaty.pc
	install -m 644 sql/*.sql $(DESTDIR)$(PREFIX)/share/treaty/sql/

clean:
	rm -rf build build-asan $(RELEASE_BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# ------------------------------------------------------------ bench (issue 5)
# make bench   build treaty-bench and noop_participant, then run bench/run.sh:
#              a throwaway PostgreSQL, treatyd, the participants, pgbench
#              baselines and every workload, about 5 minutes; the comparison
#              table goes to stdout and $(BUILD)/bench/results.json.
#              Not part of `make test`. Knobs (environment): BENCH_SECONDS,
#              BENCH_WARMUP, BENCH_REPS, BENCH_NOOP_CLIENTS, BENCH_BANK_CLIENTS,
#              BENCH_BANK_INSTANCES (see bench/README.md).
BENCH_BIN := $(BUILD)/bin/treaty-bench $(BUILD)/bin/noop_participant
.PHONY: bench bench-bin
bench-bin: $(BENCH_BIN)

$(BUILD)/bin/treaty-bench: $(BUILD)/obj/bench/treaty_bench.o $(LIB_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(SAN) -pthread $(PKG_LIBS)

$(BUILD)/bin/noop_participant: $(BUILD)/obj/bench/noop_participant.o $(LIB_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(SAN) -pthread $(PKG_LIBS)

bench: deps
	$(MAKE) all bench-bin
	BUILD=$(BUILD) sh bench/run.sh

# make bench-ab BASE=<rev>   the change against the tree at <rev>, in one
#                            invocation: bench/ab.sh (rounds alternate)
#                            AB_BASE_DIR: where the base tree is built
.PHONY: bench-ab
AB_BASE_DIR ?= /tmp/treaty-ab-base
bench-ab: deps
	@test -n "$(BASE)" || { echo "make bench-ab: say BASE=<git revision>" >&2; exit 2; }
	$(MAKE) all bench-bin
	rm -rf $(AB_BASE_DIR) && git worktree add --force --detach $(AB_BASE_DIR) $(BASE)
	$(MAKE) -C $(AB_BASE_DIR) all bench-bin
	BENCH_AB_BASE=$(AB_BASE_DIR)/$(BUILD)/bin BENCH_AB_NEW=$(CURDIR)/$(BUILD)/bin sh bench/ab.sh; \
	  rc=$$?; git worktree remove --force $(AB_BASE_DIR); exit $$rc

# ------------------------------------------------------- scenarios (issue 4)
# make scenarios   build treaty-scenario (scenarios/runner.c) and run every
#                  scenarios/*.conf through scenarios/run on a throwaway
#                  PostgreSQL; SEED=N (default 1), REPEAT=K, SCENARIOS="a b".
#                  Not part of `make test` (tests/test_scenarios.c runs the
#                  two fast ones there).
SCEN_BIN := $(BUILD)/bin/treaty-scenario
.PHONY: scenarios-bin
scenarios-bin: $(SCEN_BIN)

$(SCEN_BIN): $(BUILD)/obj/scenarios/runner.o $(LIB_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(LDLIBS_ALL)

scenarios: deps
	$(MAKE) all scenarios-bin
	BUILD=$(BUILD) sh scenarios/run --seed $(or $(SEED),1) --repeat $(or $(REPEAT),1) $(SCENARIOS)

# ------------------------------------------------------ simulation (issue 11)
# make sim   build treaty-sim (tests/sim/) and search schedules: the real
#            protocol cores of the coordinator, participants and clients on a
#            simulated network, journal, databases and clock, every fault from
#            one seed. SEED=N replays one seed (TRACE=1 prints its trace);
#            otherwise SEEDS (20000) seeds from FIRST (1) within BUDGET (290)
#            seconds. See docs/testing.md.
SIM_SRC := $(wildcard tests/sim/*.c)
SIM_OBJ := $(SIM_SRC:%.c=$(BUILD)/obj/%.o)
SIM_BIN := $(BUILD)/bin/treaty-sim
.PHONY: sim sim-bin
sim-bin: $(SIM_BIN)

$(SIM_BIN): $(SIM_OBJ) $(COORD_OBJ) $(LIB_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(LDLIBS_ALL) -lm

sim: deps
	$(MAKE) $(SIM_BIN)
	$(SIM_BIN) $(if $(SEED),--seed $(SEED) --seeds 1,--seed $(or $(FIRST),1) --seeds $(or $(SEEDS),20000) --budget-s $(or $(BUDGET),290)) $(if $(TRACE),--trace)

# make sim-planted   every deliberately broken build of tests/sim/planted/
#                    and the seeds the simulator needs to find each
.PHONY: sim-planted
sim-planted: deps
	sh tests/sim/planted.sh
