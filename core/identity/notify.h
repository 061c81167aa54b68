/*
 * Fleet-wide user-cache invalidation.  Every keeld keeps one connection of
 * its own that LISTENs on the channel keel_user_changed; a trigger on users
 * (db/migrations/0003_notify.sql) and `keelctl evict` NOTIFY it with a
 * Supabase id or an email, and each instance drops that user from its
 * user-sync cache, within a second of the commit.
 *
 * The connection is outside the pool and may bypass a transaction pooler
 * (database.listen_url), where LISTEN cannot work.  When it is lost it is
 * made again with a growing pause (at most 2 s); notifications sent while
 * nobody listened are gone, so the whole cache is flushed once after every
 * reconnect.
 */
#ifndef KEEL_CORE_IDENTITY_NOTIFY_H
#define KEEL_CORE_IDENTITY_NOTIFY_H

#include <keel/common.h>

#include "identity/usersync.h"

/* The channel, for senders too. */
#define KEEL__NOTIFY_CHANNEL "keel_user_changed"

typedef struct keel__notify keel__notify;

/* Starts the listener thread on conninfo (copied); us must outlive it.
 * The first connection is made by the thread, so a database that is down
 * does not fail this. */
int keel__notify_start(const char *conninfo, keel__usersync *us,
                       keel__notify **out) KEEL_WARN_UNUSED;
/* Stops the thread (within about 250 ms) and closes its connection. */
void keel__notify_stop(keel__notify *n);

#endif
