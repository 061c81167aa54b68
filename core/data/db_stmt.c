#include "config.h"

#include "data/db_stmt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t keel__stmt_hash(const char *s)
{
    /* FNV-1a: the keys are our own SQL texts, not attacker input. */
    uint64_t h = 14695981039346656037ull;
    for (; *s != '\0'; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

struct keel__stmt_entry *keel__stmt_find(struct keel__stmt_cache *c, const char *sql, uint64_t h)
{
    size_t i = (size_t)h & (KEEL__STMT_TABLE_SIZE - 1);
    for (;;) {
        struct keel__stmt_entry *e = &c->slots[i];
        if (e->sql == NULL || (e->hash == h && strcmp(e->sql, sql) == 0))
            return e;
        i = (i + 1) & (KEEL__STMT_TABLE_SIZE - 1);
    }
}

bool keel__stmt_room(const struct keel__stmt_cache *c, const char *sql)
{
    return c->count < KEEL__STMT_CACHE_MAX && strlen(sql) <= KEEL__STMT_SQL_MAX;
}

void keel__stmt_next_name(struct keel__stmt_cache *c, char name[KEEL__STMT_NAME_LEN])
{
    snprintf(name, KEEL__STMT_NAME_LEN, "keel_%u", c->next_name++);
}

void keel__stmt_put(struct keel__stmt_cache *c, struct keel__stmt_entry *e, const char *sql,
                    uint64_t h, const char *name)
{
    char *copy = strdup(sql);
    if (copy == NULL)
        return;
    e->sql = copy;
    e->hash = h;
    snprintf(e->name, sizeof e->name, "%s", name);
    c->count++;
}

void keel__stmt_clear(struct keel__stmt_cache *c)
{
    for (int i = 0; i < KEEL__STMT_TABLE_SIZE; i++) {
        free(c->slots[i].sql);
        c->slots[i].sql = NULL;
    }
    c->count = 0;
}
