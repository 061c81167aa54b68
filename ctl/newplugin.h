/*
 * keelctl new-plugin NAME DIR: writes a small plugin project that builds
 * against an installed keel (docs/plugin-guide.md): NAME.c, the NAME.json
 * manifest, a Makefile (build, check, install), exports.map and test.sh.
 * The templates are string tables inside keelctl, so the command needs no
 * data files.
 */
#ifndef KEEL_CTL_NEWPLUGIN_H
#define KEEL_CTL_NEWPLUGIN_H

#include <stdbool.h>

/* Plugin names are C identifiers, so they can prefix the plugin's symbols:
 * [a-z][a-z0-9_]{0,31}. */
#define NEWPLUGIN_NAME_MAX 32

/* True when name is a valid plugin name for new-plugin. */
bool newplugin_name_ok(const char *name);

/*
 * Creates dir (and missing parents) and writes the project into it.  Refuses,
 * writing nothing, when name is invalid or any of the files already exists.
 * Messages go to stderr, the list of files and next steps to stdout.
 * Returns keelctl's exit status: 0, or 2 (usage error or local failure; a
 * partly written project is removed again).
 */
int newplugin_create(const char *name, const char *dir);

#endif
