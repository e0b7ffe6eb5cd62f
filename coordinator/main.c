/*
 * main.c - treatyd: arguments, configuration, signals, run, exit codes.
 *
 *   treatyd [options]        the coordinator (config.h for the options)
 *   treatyd --keygen PATH    writes a CURVE key pair to PATH.key and PATH.pub
 *                            and exits (security.h)
 *
 * Signals: SIGTERM, SIGINT stop (the loop lets in-flight work finish until
 * shutdown_deadline_ms); SIGHUP reloads the configuration and the allow-list,
 * all or nothing (reload.h).
 *
 * Exit codes: 0 clean stop (SIGTERM/SIGINT) or keys written, 1 failure (at
 * start-up: bad key files or allow-list, cannot listen, journal refused;
 * later: another coordinator took the journal, the transport failed;
 * --keygen failed), 2 usage or configuration error.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "loop.h"
#include "reload.h"
#include "log.h"
#include "security.h"
#include "treaty.h"

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t reload_requested;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        reload_requested = 1;
    else
        stop_requested = 1;
}

static int keygen(int argc, char **argv)
{
    if (argc != 3 || argv[2][0] == '\0') {
        fprintf(stderr, "usage: %s --keygen PATH\n", argv[0]);
        return 2;
    }
    char pub[41], err[1024];
    if (security_keygen(argv[2], pub, err, sizeof err) < 0) {
        fprintf(stderr, "treatyd: --keygen: %s\n", err);
        return 1;
    }
    printf("wrote %s.key (the secret key: keep it there, mode 0600) and %s.pub\n"
           "public key: %s\n"
           "allow-list line for it: %s client | participant <service>[,<service>...] | admin\n",
           argv[2], argv[2], pub, pub);
    return 0;
}

int main(int argc, char **argv)
{
    static struct config cfg;
    char err[1024];

    if (argc >= 2 && strcmp(argv[1], "--keygen") == 0)
        return keygen(argc, argv);

    int rc = config_from_args(&cfg, argc, argv, err, sizeof err);
    if (rc == 1)
        return 0; /* --help, --version, --check-config with a valid file */
    if (rc < 0) {
        fprintf(stderr, "treatyd: configuration error: %s\n", err);
        return 2;
    }
    if (config_validate(&cfg, err, sizeof err) < 0) {
        fprintf(stderr, "treatyd: configuration error: %s\n", err);
        return 2;
    }
    log_set_level((enum log_level)cfg.log_level);
    log_set_format((enum log_format)cfg.log_format);
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
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    log_info("treatyd %d.%d.%d starting (listen %s)", TREATY_VERSION_MAJOR, TREATY_VERSION_MINOR, TREATY_VERSION_PATCH,
             cfg.listen);
    /* SIGHUP: the file and flags again (reload.h), and the allow-list the
     * loop adds. */
    static struct reload_config live = {.live = &cfg};
    live.argc = argc;
    live.argv = argv;
    struct reload *items = reload_new();
    reload_add(items, "configuration", &reload_config_ops, &live);
    rc = loop_run(&cfg, items, &stop_requested, &reload_requested);
    reload_destroy(&items);
    if (rc < 0) {
        log_error("treatyd: stopped on an error: %s", treaty_strerror(rc));
        return 1;
    }
    log_info("treatyd stopped");
    return 0;
}
