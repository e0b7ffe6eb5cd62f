/*
 * noop_participant.c - a Treaty participant whose handlers do nothing, for
 * benchmarks that measure the coordinator alone (workload 2pc-noop).
 *
 *   noop_participant --endpoint EP --service NAME --instance ID [--hold]
 *                    [--server-key FILE --key BASE]
 *
 * --server-key / --key: CURVE with the coordinator (examples/example_keys.h).
 * prepare votes YES at once, commit and abort return 0 (ACK); the saga
 * action "noop" and compensation "undo" return TREATY_STEP_OK (workload
 * saga-noop). With --hold prepare sends no vote at all (it returns
 * TREATY_EBUSY), so every transaction stays in flight at the coordinator
 * until its deadline (workload 2pc-hold, the memory measurement). There is no
 * database and nothing durable: this participant is only fit for measuring.
 * It runs on the SDK's own thread (treaty_participant_start); the main thread
 * waits for SIGTERM or SIGINT, then stops it and prints what it handled.
 * Exit status 0 after a clean stop, 1 when the participant cannot start,
 * 2 on bad arguments.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../examples/example_keys.h"
#include "treaty.h"

/* Counters; touched only by the participant's thread until it is stopped. */
struct noop {
    unsigned long prepares;
    unsigned long commits;
    unsigned long aborts;
    unsigned long steps;
    unsigned long undos;
    bool hold;
};

static int on_prepare(void *arg, const treaty_branch_t *b, char *reason)
{
    struct noop *n = arg;
    (void)b;
    (void)reason;
    n->prepares++;
    return n->hold ? TREATY_EBUSY : TREATY_VOTE_YES;
}

static int on_step(void *arg, const treaty_step_t *s, char *reason)
{
    struct noop *n = arg;
    (void)s;
    (void)reason;
    n->steps++;
    return TREATY_STEP_OK;
}

static int on_undo(void *arg, const treaty_step_t *s, char *reason)
{
    struct noop *n = arg;
    (void)s;
    (void)reason;
    n->undos++;
    return TREATY_STEP_OK;
}

static int on_commit(void *arg, const treaty_branch_t *b)
{
    struct noop *n = arg;
    (void)b;
    n->commits++;
    return 0;
}

static int on_abort(void *arg, const treaty_branch_t *b)
{
    struct noop *n = arg;
    (void)b;
    n->aborts++;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: noop_participant --endpoint EP --service NAME --instance ID [--hold] " EXAMPLE_KEYS_USAGE "\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"service", required_argument, NULL, 's'},
        {"instance", required_argument, NULL, 'i'},
        {"hold", no_argument, NULL, 'H'},
        {"server-key", required_argument, NULL, 'K'},
        {"key", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct example_keys keys = {0};
    const char *endpoint = NULL, *service = NULL, *instance = NULL;
    bool hold = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e':
            endpoint = optarg;
            break;
        case 's':
            service = optarg;
            break;
        case 'i':
            instance = optarg;
            break;
        case 'H':
            hold = true;
            break;
        case 'K':
            keys.server_key_file = optarg;
            break;
        case 'k':
            keys.key_base = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (endpoint == NULL || service == NULL || instance == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }
    int keys_failed;
    const treaty_security_t *security = example_keys_load(&keys, "noop_participant", &keys_failed);
    if (keys_failed)
        return 2;

    /* Block the stop signals before the SDK's thread exists so that it
     * inherits the mask and sigwait() below receives them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    struct noop counts = {0, 0, 0, 0, 0, hold};
    treaty_handlers_t h = {on_prepare, on_commit, on_abort, &counts};
    treaty_participant_t *p = NULL;
    int rc = treaty_participant_new_secure(endpoint, service, instance, &h, security, &p);
    if (rc != 0) {
        fprintf(stderr, "noop_participant %s/%s: cannot create the participant: %s (%s)\n", service, instance,
                treaty_strerror(rc), p != NULL ? treaty_participant_errmsg(p) : "no detail");
        treaty_participant_destroy(&p);
        return 1;
    }
    if ((rc = treaty_participant_on_action(p, "noop", on_step, &counts)) != 0 ||
        (rc = treaty_participant_on_compensation(p, "undo", on_undo, &counts)) != 0) {
        fprintf(stderr, "noop_participant %s/%s: cannot register the saga handlers: %s\n", service, instance,
                treaty_strerror(rc));
        treaty_participant_destroy(&p);
        return 1;
    }
    rc = treaty_participant_start(p);
    if (rc != 0) {
        fprintf(stderr, "noop_participant %s/%s: cannot start: %s (%s)\n", service, instance, treaty_strerror(rc),
                treaty_participant_errmsg(p));
        treaty_participant_destroy(&p);
        return 1;
    }
    fprintf(stderr, "noop_participant %s/%s: ready at %s\n", service, instance, endpoint);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    rc = treaty_participant_stop(p);
    if (rc != 0)
        fprintf(stderr, "noop_participant %s/%s: stop: %s (%s)\n", service, instance, treaty_strerror(rc),
                treaty_participant_errmsg(p));
    treaty_participant_destroy(&p);
    /* The participant's thread has been joined: the counters are ours now. */
    fprintf(stderr,
            "noop_participant %s/%s: stopped after %lu prepares, %lu commits, %lu aborts, %lu actions, %lu "
            "compensations\n",
            service, instance, counts.prepares, counts.commits, counts.aborts, counts.steps, counts.undos);
    return 0;
}
