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

#endif
