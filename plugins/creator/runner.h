/*
 * The creator plugin's search-job runner (runner.c) and its data providers
 * (provider.c): what the two share.  docs/plugin-guide.md shows the host
 * capabilities they use; CONTRACT-level behaviour is in README.md.
 */
#ifndef KEEL_PLUGINS_CREATOR_RUNNER_H
#define KEEL_PLUGINS_CREATOR_RUNNER_H

#include <stddef.h>

#include <jansson.h>

#include <keel/plugin.h>

enum creator_provider_kind { CREATOR_PROVIDER_KEEL = 0, CREATOR_PROVIDER_APIFY = 1 };

/* What one fetch came to. */
enum creator_fetch {
    CREATOR_FETCH_OK = 0,        /* *line is an import line */
    CREATOR_FETCH_NOT_FOUND = 1, /* the provider does not know the name */
    CREATOR_FETCH_RETRY = 2,     /* a failure worth another attempt (5xx, timeout, bad data) */
    CREATOR_FETCH_WAIT = 3       /* the provider is unreachable: wait, costs no attempt */
};

/*
 * Fetches username from the provider and returns the profile as an import
 * line (the POST /admin/import format), owned by req.  why says what went
 * wrong for anything but CREATOR_FETCH_OK.
 */
int creator_provider_fetch(keel_request *req, int kind, keel_upstream *up, const char *username,
                           json_t **line, char *why, size_t whylen);

/* Maps one Apify Instagram profile scraper item to an import line (new
 * reference), or NULL when it is not a profile item. */
json_t *creator_apify_item(const json_t *item);

#endif
