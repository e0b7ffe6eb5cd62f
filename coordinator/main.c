/*
 * main.c - treatyd: arguments, configuration, signals, run, exit codes.
 *
 * Exit codes: 0 clean stop (SIGTERM/SIGINT), 1 start-up failure (bad
 * configuration, cannot listen, journal refused), 2 usage error.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "loop.h"
#include "log.h"
#include "treaty.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int main(int argc, char **argv)
{
    static struct config cfg;
    char err[1024];

    int rc = config_from_args(&cfg, argc, argv, err, sizeof err);
    if (rc == 1)
        return 0; /* --help */
    if (rc < 0) {
        fprintf(stderr, "treatyd: configuration error: %s\n", err);
        return 2;
    }
    if (config_validate(&cfg, err, sizeof err) < 0) {
        fprintf(stderr, "treatyd: configuration error: %s\n", err);
        return 2;
    }
    log_set_level((enum log_level)cfg.log_level);
    if (cfg.curve) {
        /* Never run in plaintext when the file asks for CURVE. */
        fprintf(stderr, "treatyd: configuration error: security.curve: not supported by this build yet\n");
        return 2;
    }
    if (cfg.allow_insecure && !config_endpoint_is_local(cfg.listen))
        log_warn("listening on %s without CURVE (security.allow_insecure = true): anyone who can connect is trusted "
                 "with everything - registering as any participant, voting, acknowledging, reading payloads",
                 cfg.listen);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    log_info("treatyd %d.%d.%d starting (listen %s)", TREATY_VERSION_MAJOR, TREATY_VERSION_MINOR, TREATY_VERSION_PATCH,
             cfg.listen);
    rc = loop_run(&cfg, &stop_requested);
    if (rc < 0) {
        log_error("treatyd: start-up failed: %s", treaty_strerror(rc));
        return 1;
    }
    log_info("treatyd stopped");
    return 0;
}
