/*
 * Data providers of the job runner (README.md, "Search jobs"):
 *
 *  kind "keel":  GET {url}/{username} answers one import line, or 404.
 *  kind "apify": POST {url} {"usernames":["..."]} (the Apify Instagram
 *                profile scraper's run-sync-get-dataset-items call, bearer
 *                token from token_env) answers an array of items; an empty
 *                array, or no item for the name, means not found.
 *
 * Everything the provider sends is checked again by the import code, so a
 * provider can never store what POST /admin/import would refuse.
 */
#include "config.h"

#include "runner.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "creator.h"

/* Copies key from src to dst under another name when it has the right type. */
static void copy_member(json_t *dst, const char *to, const json_t *src, const char *from, int type)
{
    const json_t *v = json_object_get(src, from);

    if (v == NULL || json_typeof(v) != (json_type)type)
        return;
    /* Apify reports hidden counts as -1; the import wants none then. */
    if (type == JSON_INTEGER && json_integer_value(v) < 0)
        return;
    json_object_set(dst, to, (json_t *)v);
}

json_t *creator_apify_item(const json_t *item)
{
    static const struct {
        const char *to, *from;
        int type;
    } profile_map[] =
        {
            {"full_name", "fullName", JSON_STRING},
            {"biography", "biography", JSON_STRING},
            {"followers_count", "followersCount", JSON_INTEGER},
            {"following_count", "followsCount", JSON_INTEGER},
            {"posts_count", "postsCount", JSON_INTEGER},
            {"profile_pic_url", "profilePicUrl", JSON_STRING},
        },
      post_map[] = {
          {"shortcode", "shortCode", JSON_STRING},
          {"caption", "caption", JSON_STRING},
          {"likes_count", "likesCount", JSON_INTEGER},
          {"comments_count", "commentsCount", JSON_INTEGER},
          {"display_url", "displayUrl", JSON_STRING},
          {"taken_at", "timestamp", JSON_STRING},
      };
    const json_t *username = json_object_get(item, "username");
    const json_t *posts, *post;
    json_t *line, *rows;
    size_t i;

    if (!json_is_object(item) || !json_is_string(username))
        return NULL;
    line = json_pack("{s:O}", "username", username);
    rows = json_array();
    if (line == NULL || rows == NULL) {
        json_decref(line);
        json_decref(rows);
        return NULL;
    }
    for (i = 0; i < sizeof profile_map / sizeof profile_map[0]; i++)
        copy_member(line, profile_map[i].to, item, profile_map[i].from, profile_map[i].type);
    if (json_is_boolean(json_object_get(item, "verified")))
        json_object_set(line, "is_verified", json_object_get(item, "verified"));
    if (json_is_boolean(json_object_get(item, "private")))
        json_object_set(line, "is_private", json_object_get(item, "private"));
    posts = json_object_get(item, "latestPosts");
    json_array_foreach(posts, i, post)
    {
        json_t *row = json_object();
        size_t k;

        if (row == NULL)
            break;
        for (k = 0; k < sizeof post_map / sizeof post_map[0]; k++)
            copy_member(row, post_map[k].to, post, post_map[k].from, post_map[k].type);
        json_array_append_new(rows, row);
    }
    json_object_set_new(line, "posts", rows);
    return line;
}

static void release_json(void *v)
{
    json_decref(v);
}

static bool same_name(const json_t *v, const char *username)
{
    return json_is_string(v) && strcasecmp(json_string_value(v), username) == 0;
}

/* Classifies an upstream failure: unreachable means wait, the rest retry. */
static int failure(keel_request *req, int rc, char *why, size_t whylen)
{
    const char *detail = creator_host->upstream_last_error(req);

    snprintf(why, whylen, "provider: %s", detail != NULL && *detail ? detail : keel_strerror(rc));
    return rc == KEEL_EUPSTREAM ? CREATOR_FETCH_WAIT : CREATOR_FETCH_RETRY;
}

int creator_provider_fetch(keel_request *req, int kind, keel_upstream *up, const char *username,
                           json_t **line, char *why, size_t whylen)
{
    const keel_host *h = creator_host;
    json_t *answer = NULL, *body = NULL;
    long status = 0;
    int rc;

    *line = NULL;
    why[0] = '\0';
    if (kind == CREATOR_PROVIDER_KEEL) {
        char path[64];

        snprintf(path, sizeof path, "/%s", username);
        rc = h->upstream_request(req, up, "GET", path, NULL, 0, &status, &answer);
    } else {
        body = json_pack("{s:[s]}", "usernames", username);
        if (body == NULL) {
            snprintf(why, whylen, "out of memory");
            return CREATOR_FETCH_RETRY;
        }
        rc = h->upstream_request(req, up, "POST", "", body, 0, &status, &answer);
        json_decref(body);
    }
    if (rc != 0)
        return failure(req, rc, why, whylen);
    if (status == 404)
        return CREATOR_FETCH_NOT_FOUND;
    if (status < 200 || status > 299) {
        snprintf(why, whylen, "provider answered HTTP %ld", status);
        return CREATOR_FETCH_RETRY;
    }
    if (kind == CREATOR_PROVIDER_KEEL) {
        if (!json_is_object(answer) || !same_name(json_object_get(answer, "username"), username)) {
            snprintf(why, whylen, "provider answered something other than %s's import line",
                     username);
            return CREATOR_FETCH_RETRY;
        }
        *line = answer;
        return CREATOR_FETCH_OK;
    }
    if (!json_is_array(answer)) {
        snprintf(why, whylen, "provider answered something other than an array of items");
        return CREATOR_FETCH_RETRY;
    }
    {
        size_t i;
        json_t *item;

        json_array_foreach(answer, i, item)
        {
            if (!json_is_object(item) || !same_name(json_object_get(item, "username"), username))
                continue;
            *line = creator_apify_item(item);
            if (*line == NULL) {
                snprintf(why, whylen, "out of memory");
                return CREATOR_FETCH_RETRY;
            }
            /* The request owns what it hands back. */
            if (h->req_on_cleanup(req, release_json, *line) != 0) {
                json_decref(*line);
                *line = NULL;
                snprintf(why, whylen, "out of memory");
                return CREATOR_FETCH_RETRY;
            }
            return CREATOR_FETCH_OK;
        }
    }
    /* An empty array, or only items about other names or errors. */
    return CREATOR_FETCH_NOT_FOUND;
}
