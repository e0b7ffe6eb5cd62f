/*
 * main.c - treaty-sim: runs worlds (one per seed) until a budget is spent or
 * an invariant breaks.
 *
 *   treaty-sim [--seed N] [--seeds K] [--trace] [--budget-s S] [--txns T]
 *              [--determinism] [--quiet]
 *
 *   --seed N       first seed (default 1)
 *   --seeds K      how many seeds, N .. N+K-1 (default 1; 0: until the budget)
 *   --trace        print the readable trace of every world (use with one seed)
 *   --budget-s S   stop starting new worlds after S seconds of wall time
 *   --txns T       stop after T simulated transactions in all
 *   --determinism  run every seed twice and compare the hashes of the traces
 *   --quiet        no progress line
 *
 * Exit status 0: no violation; 1: a violation (the seed, the broken
 * invariant and the command that replays it are printed); 2: usage.
 * A progress line every 2 s: seeds, transactions, simulated time, rates.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "log.h"
#include "sim.h"

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: treaty-sim [--seed N] [--seeds K] [--trace] [--budget-s S] [--txns T] [--determinism] "
                    "[--quiet]\n");
}

struct tally {
    unsigned long long seeds, txns, events, messages, crashes;
    double sim_s;
};

/* The cores' log lines go into the trace, with the simulated time. */
static void log_into_trace(void *arg, enum log_level l, const char *line)
{
    struct world **w = arg;
    (void)l;
    if (*w != NULL)
        sim_trace(*w, "log: %s", line);
}

static struct world *current;

/* Runs one world; 0 or 1 (violation). */
static int run_seed(uint64_t seed, bool trace, bool determinism, struct tally *t)
{
    struct world *w = world_new(seed, trace, determinism, stdout);
    current = w;
    world_run(w);
    int rc = w->violated ? 1 : 0;
    if (rc == 0 && determinism) {
        uint64_t h = w->trace_hash;
        struct world *again = world_new(seed, false, true, NULL);
        current = again;
        world_run(again);
        if (again->trace_hash != h || again->violated) {
            printf("NOT DETERMINISTIC: seed %llu gave trace hashes %016llx and %016llx\n", (unsigned long long)seed,
                   (unsigned long long)h, (unsigned long long)again->trace_hash);
            rc = 1;
        }
        world_free(again);
    }
    if (w->violated) {
        printf("VIOLATION (seed %llu): %s\n", (unsigned long long)seed, w->violation);
        printf("replay: make sim SEED=%llu TRACE=1\n", (unsigned long long)seed);
    }
    t->seeds++;
    for (size_t i = 0; i < w->check->ntx; i++)
        t->txns += w->check->tx[i].started;
    t->events += w->events;
    t->messages += w->messages;
    t->crashes += w->crashes;
    t->sim_s += (double)w->now / 1000.0;
    world_free(w);
    return rc;
}

int main(int argc, char **argv)
{
    unsigned long long seed = 1, seeds = 1, max_txns = 0;
    double budget = 0;
    bool trace = false, determinism = false, quiet = false;
    static const struct option opts[] = {
        {"seed", required_argument, NULL, 's'},
        {"seeds", required_argument, NULL, 'k'},
        {"trace", no_argument, NULL, 't'},
        {"budget-s", required_argument, NULL, 'b'},
        {"txns", required_argument, NULL, 'x'},
        {"determinism", no_argument, NULL, 'd'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 's':
            seed = strtoull(optarg, NULL, 10);
            break;
        case 'k':
            seeds = strtoull(optarg, NULL, 10);
            break;
        case 't':
            trace = true;
            break;
        case 'b':
            budget = strtod(optarg, NULL);
            break;
        case 'x':
            max_txns = strtoull(optarg, NULL, 10);
            break;
        case 'd':
            determinism = true;
            break;
        case 'q':
            quiet = true;
            break;
        default:
            usage();
            return ch == 'h' ? 0 : 2;
        }
    }
    /* The cores log through log.h, into the trace (hashed for --determinism). */
    log_set_level(trace || determinism ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR);
    log_set_sink(log_into_trace, &current);

    struct tally t = {0};
    double t0 = wall_s(), last = t0;
    int rc = 0;
    for (unsigned long long s = seed; seeds == 0 || s < seed + seeds; s++) {
        rc = run_seed(s, trace, determinism, &t);
        if (rc != 0)
            break;
        double now = wall_s();
        if (!quiet && now - last >= 2.0) {
            last = now;
            fprintf(stderr,
                    "treaty-sim: %llu seeds (%llu..%llu), %llu transactions, %.0f simulated s, %.0f s: %.0f "
                    "txns/s, %.1f simulated s per s\n",
                    t.seeds, seed, s, t.txns, t.sim_s, now - t0, (double)t.txns / (now - t0), t.sim_s / (now - t0));
        }
        if ((budget > 0 && now - t0 >= budget) || (max_txns > 0 && t.txns >= max_txns))
            break;
    }
    double el = wall_s() - t0;
    printf("treaty-sim: %s: %llu seeds from %llu, %llu transactions, %llu events, %llu messages, %llu crashes, "
           "%.0f simulated s in %.1f s (%.0f transactions/s)\n",
           rc ? "VIOLATION" : "ok", t.seeds, seed, t.txns, t.events, t.messages, t.crashes, t.sim_s, el,
           el > 0 ? (double)t.txns / el : 0);
    return rc;
}
