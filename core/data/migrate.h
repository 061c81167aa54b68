/*
 * Schema migrations: the SQL files shipped with keeld, applied in order by
 * `keeld --migrate` and compared with the database at start-up.
 */
#ifndef KEEL_CORE_DATA_MIGRATE_H
#define KEEL_CORE_DATA_MIGRATE_H

#include <stddef.h>

#include <keel/common.h>

/*
 * Migrations: files "NNNN_name.sql" of dir, applied in order, each in its own
 * transaction, recorded in schema_migrations(version, name, applied_at).
 */
int keel__db_migrate(const char *conninfo, const char *dir, int *applied, char *err,
                     size_t errlen) KEEL_WARN_UNUSED;
/* Sets *behind to the number of files not yet applied.  KEEL_EDB_UNAVAILABLE
 * when the database cannot be reached. */
int keel__db_schema_behind(const char *conninfo, const char *dir, int *behind, char *err,
                           size_t errlen) KEEL_WARN_UNUSED;
/* The same for one plugin's own migrations, recorded per plugin in
 * plugin_migrations(plugin, version, name, applied_at). */
int keel__db_migrate_plugin(const char *conninfo, const char *plugin, const char *dir, int *applied,
                            char *err, size_t errlen) KEEL_WARN_UNUSED;
int keel__db_plugin_schema_behind(const char *conninfo, const char *plugin, const char *dir,
                                  int *behind, char *err, size_t errlen) KEEL_WARN_UNUSED;
/* A manifest's "migrations" resolved against the core's migrations
 * directory (unless absolute); malloc'd, NULL for NULL or no memory. */
char *keel__plugin_migrations_dir(const char *spec, const char *core_dir);

#endif
