/* What a failed statement's SQLSTATE means to keel (docs/database.md). */
#include "config.h"

#include "data/sqlstate.h"

#include <string.h>

#include <keel/error.h>

bool keel__sqlstate_is(const char *s, const char *code)
{
    return s != NULL && strcmp(s, code) == 0;
}

bool keel__sqlstate_class(const char *s, const char *cls)
{
    return s != NULL && s[0] == cls[0] && s[1] == cls[1];
}

/* The server ended the session: administrator command (57P01), crash of
 * another backend (57P02), or it cannot accept connections now (57P03). */
bool keel__sqlstate_session_over(const char *s)
{
    return keel__sqlstate_is(s, "57P01") || keel__sqlstate_is(s, "57P02") ||
           keel__sqlstate_is(s, "57P03");
}

int keel__db_classify(const char *s)
{
    if (s == NULL)
        return KEEL_EDB_UNAVAILABLE;
    if (strlen(s) != 5)
        return KEEL_EDB_BUG;
    /* Unavailable: the statement may well succeed later, against a database
     * that is reachable and not overloaded.  Timeouts belong here because
     * they mean "too slow now", not "wrong". */
    if (keel__sqlstate_class(s, "08") || keel__sqlstate_class(s, "53") ||
        keel__sqlstate_session_over(s) || keel__sqlstate_is(s, "57014") ||
        keel__sqlstate_is(s, "55P03"))
        return KEEL_EDB_UNAVAILABLE;
    if (keel__sqlstate_class(s, "23") || keel__sqlstate_is(s, "40001") ||
        keel__sqlstate_is(s, "40P01"))
        return KEEL_EDB_CONFLICT;
    if (keel__sqlstate_class(s, "22") || keel__sqlstate_is(s, "42P02"))
        return KEEL_EDB_BADREQ;
    return KEEL_EDB_BUG;
}
