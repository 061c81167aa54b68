/*
 * Plugin manifests: the "plugin" object of a conf.d file, parsed into the
 * configuration model's struct keel__manifest (conf/conf.h).
 */
#ifndef KEEL_CORE_PLUGIN_MANIFEST_H
#define KEEL_CORE_PLUGIN_MANIFEST_H

#include <jansson.h>

#include <keel/common.h>

#include "conf/conf.h"

/*
 * Parses one manifest object (the value of "plugin").  source names the file
 * for messages; plugin_dir resolves a relative "file" (a relative plugin_dir
 * is taken from the working directory).  Checks the routes strictly,
 * including conflicts between routes of the same manifest.  Used by the
 * loader on reload too.  obj is not modified or stolen; on success *out owns
 * copies and is released with keel__manifest_clear(); on failure *out is
 * left empty (zeroed) and err says "SOURCE: plugin.KEY: why".
 */
int keel__manifest_parse(const json_t *obj, const char *source, const char *plugin_dir,
                         struct keel__manifest *out, char *err, size_t errlen) KEEL_WARN_UNUSED;
void keel__manifest_clear(struct keel__manifest *m);

/*
 * Makes a plugin's "file" absolute: as written when absolute, else under
 * plugin_dir (KEEL_PLUGINDIR when NULL or empty; itself taken from the
 * working directory when relative).  malloc'd; NULL when out of memory.
 */
char *keel__manifest_resolve_file(const char *spec, const char *plugin_dir);

/* Hands the parser to the conf.d loader (keel__conf_set_manifest_ops); call
 * once before the first keel__conf_load. */
void keel__manifest_install(void);

#endif
