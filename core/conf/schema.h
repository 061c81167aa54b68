/*
 * The conf.d schema engine, the internal header of core/conf/ (the loader,
 * conf.c, includes it, and it builds on conf.h's model: a circle inside one
 * folder, on purpose, since conf.h is what the rest of the core sees): each
 * section is a table of fields naming the C member, its JSON type, its
 * bounds and its default, so a key is described once.  schema.c holds the
 * tables and applies them; keys.c (auth keys and secret files), conf.c (the
 * loader) and env.c (environment overrides) use the helpers below.
 */
#ifndef KEEL_CORE_CONF_SCHEMA_H
#define KEEL_CORE_CONF_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

/* include-ok: schema.h is the table half of conf; its entries name conf.h's structs */
#include "conf/conf.h"

/* What one key of a section is while it is being parsed. */
struct parse_ctx {
    struct keel__conf *conf;
    const char *file; /* for messages */
    json_t *section;  /* the section object being applied */
    char *err;
    size_t errlen;
};

/* database.pooler's values, NULL-terminated. */
extern const char *const keel__conf_poolers[];

/* The sections conf.d may hold, besides "plugin". */
extern const char *const keel__conf_section_names[];
extern const size_t keel__conf_nsections;

/* Sets every member that has a default.  0 or KEEL_ENOMEM. */
int keel__conf_set_defaults(struct keel__conf *conf);
/* Applies section number `index` (of keel__conf_section_names) from obj. */
int keel__conf_apply_section(struct parse_ctx *c, size_t index, json_t *obj);
/* Frees what the schema's members own (strings, origins, keys). */
void keel__conf_free_members(struct keel__conf *conf);

/* Replaces *slot with a copy of s (NULL allowed).  0 or KEEL_ENOMEM. */
int keel__conf_set_string(char **slot, const char *s);

/* keys.c: the auth section's custom keys. */
int keel__conf_parse_secret_file(struct parse_ctx *c, const char *section, const char *key,
                                 json_t *v);
int keel__conf_parse_keys(struct parse_ctx *c, const char *section, const char *key, json_t *v);
void keel__conf_free_keys(struct keel__conf *conf);

#endif
