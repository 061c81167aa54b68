/* Small text helpers several subsystems need. */
#ifndef KEEL_CORE_UTIL_TEXT_H
#define KEEL_CORE_UTIL_TEXT_H

#include <stddef.h>

/* The value of hex digit c (either case), or -1. */
int keel__hex_value(int c);

/* Removes trailing CR, LF (and, with spaces, blanks) from s in place, as
 * messages from libpq and files written by editors end; returns the new
 * length. */
size_t keel__trim_newlines(char *s, int spaces);

#endif
