/*
 * The per-connection statement cache of the database pool: which SQL texts
 * are prepared on a connection, and under which name.  An open-addressing
 * table twice the size of its bound so probe chains stay short.  It never
 * deletes single entries; it is emptied when its connection is replaced.
 * Once full, further SQL texts run unprepared (PQexecParams) rather than
 * evicting: a service has a fixed set of statements, so a full cache means a
 * caller is building SQL dynamically and preparing it would only leak
 * server memory.
 */
#ifndef KEEL_CORE_DATA_DB_STMT_H
#define KEEL_CORE_DATA_DB_STMT_H

#include <stdbool.h>
#include <stdint.h>

#define KEEL__STMT_CACHE_MAX 128
#define KEEL__STMT_TABLE_SIZE 256
/* Longer SQL texts are never prepared. */
#define KEEL__STMT_SQL_MAX 16384
#define KEEL__STMT_NAME_LEN 16

struct keel__stmt_entry {
    uint64_t hash;
    char *sql;                      /* NULL: free slot */
    char name[KEEL__STMT_NAME_LEN]; /* "": seen but must run unprepared */
};

struct keel__stmt_cache {
    unsigned next_name;
    int count;
    struct keel__stmt_entry slots[KEEL__STMT_TABLE_SIZE];
};

/* The hash keel__stmt_find and keel__stmt_put take. */
uint64_t keel__stmt_hash(const char *sql);
/* The slot holding sql (hash h), or the free slot where it would go. */
struct keel__stmt_entry *keel__stmt_find(struct keel__stmt_cache *c, const char *sql, uint64_t h);
/* True when sql may be prepared and cached: the cache has room and the
 * text is not too long. */
bool keel__stmt_room(const struct keel__stmt_cache *c, const char *sql);
/* Writes the next statement name ("keel_<n>") into name. */
void keel__stmt_next_name(struct keel__stmt_cache *c, char name[KEEL__STMT_NAME_LEN]);
/* Records sql as prepared under name in the free slot e (from
 * keel__stmt_find).  Copies sql; without memory for the copy nothing is
 * recorded and the text is merely prepared again next time. */
void keel__stmt_put(struct keel__stmt_cache *c, struct keel__stmt_entry *e, const char *sql,
                    uint64_t h, const char *name);
/* Forgets every entry (the connection was replaced). */
void keel__stmt_clear(struct keel__stmt_cache *c);

#endif
