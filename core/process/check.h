/*
 * keeld --check beyond loading the plugins: the database URL (parsed with
 * libpq; with --connect also connected to and its schema version checked),
 * the JWT keys against the routes that need a user, and a plugin problem
 * named by its conf.d file and key.
 */
#ifndef KEEL_CORE_PROCESS_CHECK_H
#define KEEL_CORE_PROCESS_CHECK_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

#include "conf/conf.h"

/* Prints one "problem: ..." line per finding to out; true when none. */
bool keel__check_settings(const struct keel__conf *c, bool connect, FILE *out);

/* Where a plugin problem of stage (a keel__stage_name) is fixed, as
 * "FILE: plugin.KEY" for the report; source is the manifest's conf.d file.
 * Writes into buf and returns it. */
const char *keel__check_where(const char *source, const char *stage, char *buf, size_t len);

#endif
