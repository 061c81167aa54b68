/*
 * SQLSTATE classification: which failures mean "try later" (the database is
 * unavailable or overloaded), which a conflict, which bad input, and which a
 * bug in the statement.
 */
#ifndef KEEL_CORE_DATA_SQLSTATE_H
#define KEEL_CORE_DATA_SQLSTATE_H

#include <stdbool.h>

/* Maps a SQLSTATE (NULL for a connection-level failure) to a KEEL_EDB_* code. */
int keel__db_classify(const char *sqlstate);

/* s (may be NULL) is exactly code / is of class cls (its first two chars). */
bool keel__sqlstate_is(const char *s, const char *code);
bool keel__sqlstate_class(const char *s, const char *cls);
/* The server ended the session (57P01, 57P02, 57P03). */
bool keel__sqlstate_session_over(const char *s);

#endif
