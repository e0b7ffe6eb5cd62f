/*
 * client_int.h - the insides of treaty_txn_t and treaty_saga_t (built by
 * client_txn.c through treaty.h's builders), read by the client core
 * (client_core.c) when it encodes a SUBMIT or a SAGA. Not part of the public
 * API.
 *
 * Every field is valid as the builders leave it: names checked, payloads
 * owned by the object (NULL when their length is 0), a saga step's policy
 * with its defaults applied.
 */
#ifndef TREATY_CLIENT_INT_H
#define TREATY_CLIENT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "treaty.h"
#include "wire.h"

struct txn_branch {
    char service[WIRE_NAME_MAX + 1];
    size_t service_len;
    uint8_t *payload; /* owned; NULL when len == 0 */
    size_t len;
};

struct treaty_txn {
    treaty_txid_t id;
    size_t nbranches; /* 0..WIRE_MAX_BRANCHES */
    size_t cap;
    struct txn_branch *branches;
};

struct saga_step {
    char service[WIRE_NAME_MAX + 1];
    char action[WIRE_NAME_MAX + 1];
    char compensation[WIRE_NAME_MAX + 1];
    uint8_t *payload; /* owned; NULL when len == 0 */
    size_t len;
    uint8_t *comp_payload; /* owned; NULL when comp_len == 0 */
    size_t comp_len;
    struct wire_policy policy; /* defaults already applied */
};

struct treaty_saga {
    treaty_txid_t id;
    uint32_t deadline_ms; /* 0: none */
    size_t nsteps;        /* 0..WIRE_MAX_STEPS */
    struct saga_step steps[WIRE_MAX_STEPS];
};

#endif /* TREATY_CLIENT_INT_H */
