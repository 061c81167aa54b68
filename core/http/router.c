#include "config.h"

#include "http/router.h"
#include "util/text.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

/* Longest template accepted, and longest parameter name. */
#define TEMPLATE_MAX 2048
#define PARAM_NAME_MAX 32

/*
 * Methods are an index into this table so that a node keeps one route slot
 * per method and the Allow list is a bit mask, built without allocating.
 * The order is the order of the Allow header.
 */
enum { M_GET, M_HEAD, M_POST, M_PUT, M_PATCH, M_DELETE, M_OPTIONS, M_COUNT };
static const char *const method_names[M_COUNT] = {"GET",   "HEAD",   "POST",   "PUT",
                                                  "PATCH", "DELETE", "OPTIONS"};

struct route {
    int method;
    void *data;
    char *owner;
    char *tmpl;
    size_t nparams;
    const char *names[KEEL__ROUTER_MAX_PARAMS]; /* point into namebuf */
    char *namebuf;
};

struct node {
    char *literal; /* NULL for the root and for parameter nodes */
    size_t literal_len;
    struct node **children; /* literal children, sorted by strcmp */
    size_t nchildren;
    struct node *param; /* the one "{...}" child; names live in routes */
    struct route *by_method[M_COUNT];
    unsigned mask; /* bit i set when by_method[i] != NULL */
};

/*
 * Templates without parameters, by their text: a path spelled exactly as
 * one of them needs no decoding (templates have no '%') and no search.
 * The literal-first search would reach the same node first, since every
 * segment of such a path matches a literal, so when that node has a route
 * for the method it is the answer; otherwise the search runs as before
 * (a parameter template may still take the method, and NO_METHOD needs the
 * methods of every template matching the path).  Open addressing; the
 * table is at most half full.
 */
struct exact {
    const char *path; /* the template text, owned by its route */
    size_t len;
    size_t hash;
    struct node *node;
};

struct keel__router {
    struct node root;
    struct route **routes; /* in the order added, for keel__router_each */
    size_t nroutes;
    size_t routes_cap;
    struct exact *exact; /* exact_cap slots, a power of two, or NULL */
    size_t nexact, exact_cap;
};

/* One segment of a parsed template: a view into the template string. */
struct tseg {
    const char *p;
    size_t len;
    bool param;
};

static int method_index(const char *method)
{
    if (method == NULL)
        return -1;
    for (int i = 0; i < M_COUNT; i++)
        if (strcmp(method, method_names[i]) == 0)
            return i;
    return -1;
}

static bool is_literal_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    /* RFC 3986 unreserved, sub-delims, ':' and '@' ('%' excluded on purpose:
     * literals are compared with decoded segments). */
    return c != '\0' && strchr("-._~!$&'()*+,;=:@", c) != NULL;
}

static bool is_name_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_name_char(unsigned char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/*
 * Splits and validates a template.  segs receives up to
 * KEEL__ROUTER_MAX_SEGMENTS views into tmpl.
 */
static int parse_template(const char *tmpl, struct tseg *segs, size_t *nsegs, char *err,
                          size_t errlen)
{
    size_t n = 0, nparams = 0;

    if (tmpl == NULL || tmpl[0] != '/') {
        snprintf(err, errlen, "path must start with '/'");
        return KEEL_EINVAL;
    }
    if (strlen(tmpl) > TEMPLATE_MAX) {
        snprintf(err, errlen, "path longer than %d bytes", TEMPLATE_MAX);
        return KEEL_EINVAL;
    }
    if (strcmp(tmpl, "/") == 0) {
        *nsegs = 0;
        return 0;
    }
    const char *p = tmpl + 1;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);

        if (len == 0) {
            snprintf(err, errlen, "empty segment in path");
            return KEEL_EINVAL;
        }
        if (n == KEEL__ROUTER_MAX_SEGMENTS) {
            snprintf(err, errlen, "more than %d segments", KEEL__ROUTER_MAX_SEGMENTS);
            return KEEL_EINVAL;
        }
        struct tseg *s = &segs[n];
        s->p = p;
        s->len = len;
        s->param = p[0] == '{';
        if (s->param) {
            if (len < 3 || p[len - 1] != '}') {
                snprintf(err, errlen, "segment %zu: a parameter is a whole segment \"{name}\"",
                         n + 1);
                return KEEL_EINVAL;
            }
            if (len - 2 > PARAM_NAME_MAX || !is_name_start((unsigned char)p[1])) {
                snprintf(err, errlen,
                         "segment %zu: parameter name must match [A-Za-z_][A-Za-z0-9_]{0,31}",
                         n + 1);
                return KEEL_EINVAL;
            }
            for (size_t i = 2; i < len - 1; i++) {
                if (!is_name_char((unsigned char)p[i])) {
                    snprintf(err, errlen,
                             "segment %zu: parameter name must match [A-Za-z_][A-Za-z0-9_]{0,31}",
                             n + 1);
                    return KEEL_EINVAL;
                }
            }
            for (size_t j = 0; j < n; j++) {
                if (segs[j].param && segs[j].len == len && memcmp(segs[j].p, p, len) == 0) {
                    snprintf(err, errlen, "parameter %.*s appears twice", (int)len, p);
                    return KEEL_EINVAL;
                }
            }
            if (++nparams > KEEL__ROUTER_MAX_PARAMS) {
                snprintf(err, errlen, "more than %d parameters", KEEL__ROUTER_MAX_PARAMS);
                return KEEL_EINVAL;
            }
        } else {
            if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.')) {
                snprintf(err, errlen, "segment %zu: \".\" and \"..\" are not allowed", n + 1);
                return KEEL_EINVAL;
            }
            for (size_t i = 0; i < len; i++) {
                if (!is_literal_char((unsigned char)p[i])) {
                    snprintf(err, errlen, "segment %zu: character '%c' not allowed", n + 1,
                             (p[i] > 0x20 && p[i] < 0x7f) ? p[i] : '?');
                    return KEEL_EINVAL;
                }
            }
        }
        n++;
        if (end == NULL)
            break;
        p = end + 1;
    }
    *nsegs = n;
    return 0;
}

int keel__router_check_template(const char *path_template, char *err, size_t errlen)
{
    struct tseg segs[KEEL__ROUTER_MAX_SEGMENTS];
    size_t n;
    char dummy[1];

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    return parse_template(path_template, segs, &n, err, errlen);
}

keel__router *keel__router_new(void)
{
    return calloc(1, sizeof(keel__router));
}

static void node_free_children(struct node *n)
{
    for (size_t i = 0; i < n->nchildren; i++) {
        node_free_children(n->children[i]);
        free(n->children[i]->literal);
        free(n->children[i]);
    }
    free(n->children);
    if (n->param) {
        node_free_children(n->param);
        free(n->param);
    }
}

static void route_free(struct route *rt)
{
    if (rt == NULL)
        return;
    free(rt->owner);
    free(rt->tmpl);
    free(rt->namebuf);
    free(rt);
}

void keel__router_free(keel__router *r)
{
    if (r == NULL)
        return;
    node_free_children(&r->root);
    for (size_t i = 0; i < r->nroutes; i++)
        route_free(r->routes[i]);
    free(r->routes);
    free(r->exact);
    free(r);
}

/* Eight bytes a step, then the tail's bytes as one word: a path is tens of
 * bytes and is hashed on every request.  The multiplier is odd with its bits
 * spread; the final folds bring the high bits, where a product's mixing is,
 * down to the low ones the table index takes. */
static size_t path_hash(const char *p, size_t len)
{
    const uint64_t k = 0x9e3779b97f4a7c15ULL;
    uint64_t h = len * k, w;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, p + i, 8);
        h = (h ^ w) * k;
    }
    if (i < len) {
        w = 0;
        for (size_t j = len; j > i; j--)
            w = w << 8 | (unsigned char)p[j - 1];
        h = (h ^ w) * k;
    }
    h ^= h >> 32;
    h *= k;
    h ^= h >> 29;
    return (size_t)h;
}

static struct exact *exact_slot(struct exact *table, size_t cap, const char *path, size_t len,
                                size_t hash)
{
    size_t i = hash & (cap - 1);
    while (table[i].path != NULL &&
           !(table[i].hash == hash && table[i].len == len && memcmp(table[i].path, path, len) == 0))
        i = (i + 1) & (cap - 1);
    return &table[i];
}

/* Records n as the node of the parameterless template tmpl (once per
 * template, whatever its methods).  false when out of memory. */
static bool exact_add(keel__router *r, const char *tmpl, struct node *n)
{
    size_t len = strlen(tmpl), hash = path_hash(tmpl, len);
    if (r->exact != NULL && exact_slot(r->exact, r->exact_cap, tmpl, len, hash)->path != NULL)
        return true;
    if (2 * (r->nexact + 1) > r->exact_cap) {
        size_t cap = r->exact_cap ? r->exact_cap * 2 : 16;
        struct exact *grown = calloc(cap, sizeof *grown);
        if (grown == NULL)
            return false;
        for (size_t i = 0; i < r->exact_cap; i++)
            if (r->exact[i].path != NULL)
                *exact_slot(grown, cap, r->exact[i].path, r->exact[i].len,
                            r->exact[i].hash) = r->exact[i];
        free(r->exact);
        r->exact = grown;
        r->exact_cap = cap;
    }
    *exact_slot(r->exact, r->exact_cap, tmpl, len,
                hash) = (struct exact){.path = tmpl, .len = len, .hash = hash, .node = n};
    r->nexact++;
    return true;
}

/* The node of the parameterless template spelled exactly as path, or NULL. */
static const struct node *exact_find(const keel__router *r, const char *path)
{
    if (r->exact == NULL)
        return NULL;
    size_t len = strlen(path);
    return exact_slot(r->exact, r->exact_cap, path, len, path_hash(path, len))->node;
}

/* Binary search for the literal child equal to seg[0..len). */
static struct node *find_child(const struct node *n, const char *seg, size_t len, size_t *pos)
{
    size_t lo = 0, hi = n->nchildren;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        /* strcmp's order from the lengths both sides know; most neighbours
         * differ in their first byte (literals are never empty, an empty
         * segment sorts first). */
        const struct node *child = n->children[mid];
        size_t ll = child->literal_len;
        int c = len == 0 ? 1 : (unsigned char)child->literal[0] - (unsigned char)seg[0];
        if (c == 0)
            c = memcmp(child->literal, seg, ll < len ? ll : len);
        if (c == 0)
            c = (ll > len) - (ll < len);
        if (c == 0) {
            if (pos)
                *pos = mid;
            return n->children[mid];
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (pos)
        *pos = lo;
    return NULL;
}

static struct node *add_literal_child(struct node *n, const char *seg, size_t len)
{
    size_t pos;
    struct node *c = find_child(n, seg, len, &pos);
    if (c)
        return c;

    struct node **grown = realloc(n->children, (n->nchildren + 1) * sizeof *grown);
    if (grown == NULL)
        return NULL;
    n->children = grown;
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->literal = strndup(seg, len);
    if (c->literal == NULL) {
        free(c);
        return NULL;
    }
    c->literal_len = len;
    memmove(&n->children[pos + 1], &n->children[pos], (n->nchildren - pos) * sizeof *grown);
    n->children[pos] = c;
    n->nchildren++;
    return c;
}

static struct route *route_new(int method, const char *tmpl, const struct tseg *segs, size_t nsegs,
                               const char *owner, void *data)
{
    struct route *rt = calloc(1, sizeof *rt);
    if (rt == NULL)
        return NULL;
    rt->method = method;
    rt->data = data;
    rt->tmpl = strdup(tmpl);
    rt->owner = strdup(owner ? owner : "core");
    /* Names are copied into one buffer: each "{name}" segment becomes "name\0",
     * which needs no more bytes than the template itself. */
    rt->namebuf = malloc(strlen(tmpl) + 1);
    if (rt->tmpl == NULL || rt->owner == NULL || rt->namebuf == NULL) {
        route_free(rt);
        return NULL;
    }
    char *w = rt->namebuf;
    for (size_t i = 0; i < nsegs; i++) {
        if (!segs[i].param)
            continue;
        size_t len = segs[i].len - 2;
        memcpy(w, segs[i].p + 1, len);
        w[len] = '\0';
        rt->names[rt->nparams++] = w;
        w += len + 1;
    }
    return rt;
}

int keel__router_add(keel__router *r, const char *method, const char *path_template,
                     const char *owner, void *data, char *err, size_t errlen)
{
    struct tseg segs[KEEL__ROUTER_MAX_SEGMENTS];
    size_t nsegs;
    char dummy[1];
    int rc;

    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    int mi = method_index(method);
    if (mi < 0) {
        snprintf(err, errlen, "unsupported method \"%s\"", method ? method : "(null)");
        return KEEL_EINVAL;
    }
    rc = parse_template(path_template, segs, &nsegs, err, errlen);
    if (rc < 0)
        return rc;

    struct node *n = &r->root;
    for (size_t i = 0; i < nsegs; i++) {
        if (segs[i].param) {
            if (n->param == NULL) {
                n->param = calloc(1, sizeof *n->param);
                if (n->param == NULL)
                    goto nomem;
            }
            n = n->param;
        } else {
            n = add_literal_child(n, segs[i].p, segs[i].len);
            if (n == NULL)
                goto nomem;
        }
    }

    const struct route *old = n->by_method[mi];
    if (old) {
        snprintf(err, errlen, "route %s %s of plugin \"%s\" conflicts with %s %s of plugin \"%s\"",
                 method, path_template, owner ? owner : "core", method_names[old->method],
                 old->tmpl, old->owner);
        return KEEL_EROUTES;
    }

    if (r->nroutes == r->routes_cap) {
        size_t cap = r->routes_cap ? r->routes_cap * 2 : 16;
        struct route **grown = realloc(r->routes, cap * sizeof *grown);
        if (grown == NULL)
            goto nomem;
        r->routes = grown;
        r->routes_cap = cap;
    }
    struct route *rt = route_new(mi, path_template, segs, nsegs, owner, data);
    if (rt == NULL)
        goto nomem;
    if (rt->nparams == 0 && !exact_add(r, rt->tmpl, n)) {
        route_free(rt);
        goto nomem;
    }
    r->routes[r->nroutes++] = rt;
    n->by_method[mi] = rt;
    n->mask |= 1u << mi;
    return 0;

nomem:
    /* Nodes created on the way stay in the tree; without routes they match
     * nothing, so the router is still consistent. */
    snprintf(err, errlen, "out of memory");
    return KEEL_ENOMEM;
}

/* True when s[0..n) is well-formed UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF).  Path parameters reach plugins as C
 * strings that they put into JSON, which must be valid UTF-8. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t more;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            else if (c == 0xF4)
                hi = 0x8F; /* past U+10FFFF */
        } else {
            return false;
        }
        if (n - i <= more)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= more; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return false;
        i += more + 1;
    }
    return true;
}

/* The state of one lookup; lives on the caller's stack. */
struct search {
    const char *segs[KEEL__ROUTER_MAX_SEGMENTS];
    size_t lens[KEEL__ROUTER_MAX_SEGMENTS];
    size_t nsegs;
    int method;
    unsigned allow_mask;
    const char *vals[KEEL__ROUTER_MAX_PARAMS];
    const struct route *found;
};

/*
 * Literal-first depth-first search.  Each tree node is visited at most once
 * per lookup (a node sits at one depth and is reached by one path), so the
 * cost is bounded by the size of the tree, with no pathological backtracking.
 * Recursion depth is at most KEEL__ROUTER_MAX_SEGMENTS.
 */
static bool search(const struct node *n, size_t depth, size_t nvals, struct search *s)
{
    if (depth == s->nsegs) {
        if (n->mask == 0)
            return false;
        s->allow_mask |= n->mask;
        if (s->method >= 0 && n->by_method[s->method]) {
            s->found = n->by_method[s->method];
            return true;
        }
        return false;
    }
    const char *seg = s->segs[depth];
    const struct node *c = find_child(n, seg, s->lens[depth], NULL);
    if (c && search(c, depth + 1, nvals, s))
        return true;
    if (n->param && nvals < KEEL__ROUTER_MAX_PARAMS) {
        s->vals[nvals] = seg;
        if (search(n->param, depth + 1, nvals + 1, s))
            return true;
    }
    return false;
}

/* Decodes path into NUL-terminated segments in scratch; false = not found. */
static bool split_path(const char *path, struct search *s, char *scratch, size_t scratchlen)
{
    s->nsegs = 0;
    if (path == NULL || path[0] != '/')
        return false;
    if (path[1] == '\0')
        return true;

    size_t used = 0;
    const char *p = path + 1;
    for (;;) {
        if (*p == '/' || *p == '\0')
            return false; /* empty segment, including a trailing slash */
        if (s->nsegs == KEEL__ROUTER_MAX_SEGMENTS)
            return false;
        char *out = scratch + used;
        /* What needs no decoding (usually the whole segment) is copied at
         * once; the loop goes on from the first escape. */
        size_t len = 0;
        while (p[len] != '/' && p[len] != '%' && p[len] != '\0')
            len++;
        if (used + len + 1 > scratchlen)
            return false;
        memcpy(out, p, len);
        p += len;
        while (*p != '/' && *p != '\0') {
            unsigned char c = (unsigned char)*p++;
            if (c == '%') {
                int hi = keel__hex_value((unsigned char)p[0]);
                int lo = hi < 0 ? -1 : keel__hex_value((unsigned char)p[1]);
                if (lo < 0)
                    return false;
                c = (unsigned char)(hi * 16 + lo);
                p += 2;
                if (c == '\0' || c == '/')
                    return false;
            }
            if (used + len + 1 >= scratchlen)
                return false;
            out[len++] = (char)c;
        }
        out[len] = '\0';
        if ((len == 1 && out[0] == '.') || (len == 2 && out[0] == '.' && out[1] == '.'))
            return false;
        if (!utf8_valid((const unsigned char *)out, len))
            return false;
        s->lens[s->nsegs] = len;
        s->segs[s->nsegs++] = out;
        used += len + 1;
        if (*p == '\0')
            return true;
        p++; /* the '/' */
    }
}

static void format_allow(unsigned mask, char *allow, size_t allowlen)
{
    size_t used = 0;

    if (allow == NULL || allowlen == 0)
        return;
    allow[0] = '\0';
    mask |= 1u << M_OPTIONS;
    for (int i = 0; i < M_COUNT; i++) {
        if (!(mask & (1u << i)))
            continue;
        int w = snprintf(allow + used, allowlen - used, "%s%s", used ? ", " : "", method_names[i]);
        if (w < 0 || (size_t)w >= allowlen - used) {
            /* Out of room: keep only whole entries. */
            allow[used] = '\0';
            return;
        }
        used += (size_t)w;
    }
}

/* The result for route rt, whose parameters' values are vals (NULL when it
 * has none). */
static void set_match(struct keel__route_match *m, const struct route *rt, const char *const *vals)
{
    m->data = rt->data;
    m->template_path = rt->tmpl;
    m->nparams = rt->nparams;
    for (size_t i = 0; i < rt->nparams; i++) {
        m->names[i] = rt->names[i];
        m->values[i] = vals != NULL ? vals[i] : NULL;
    }
}

int keel__router_match(const keel__router *r, const char *method, const char *path,
                       struct keel__route_match *m, char *scratch, size_t scratchlen, char *allow,
                       size_t allowlen)
{
    struct search s;

    if (allow && allowlen)
        allow[0] = '\0';
    if (r == NULL || scratch == NULL || path == NULL)
        return KEEL__MATCH_NOT_FOUND;
    int mi = method_index(method);
    const struct node *n = mi >= 0 ? exact_find(r, path) : NULL;
    if (n != NULL && n->by_method[mi] != NULL) {
        set_match(m, n->by_method[mi], NULL);
        return KEEL__MATCH_OK;
    }
    if (!split_path(path, &s, scratch, scratchlen))
        return KEEL__MATCH_NOT_FOUND;
    s.method = mi;
    s.allow_mask = 0;
    s.found = NULL;

    if (search(&r->root, 0, 0, &s)) {
        set_match(m, s.found, s.vals);
        return KEEL__MATCH_OK;
    }
    if (s.allow_mask == 0)
        return KEEL__MATCH_NOT_FOUND;
    format_allow(s.allow_mask, allow, allowlen);
    return KEEL__MATCH_NO_METHOD;
}

int keel__router_methods(const keel__router *r, const char *path, char *scratch, size_t scratchlen,
                         char *allow, size_t allowlen)
{
    struct search s;

    if (allow && allowlen)
        allow[0] = '\0';
    if (r == NULL || scratch == NULL || !split_path(path, &s, scratch, scratchlen))
        return KEEL__MATCH_NOT_FOUND;
    /* No method: the search visits every template matching the path and
     * collects their methods. */
    s.method = -1;
    s.allow_mask = 0;
    s.found = NULL;
    (void)search(&r->root, 0, 0, &s);
    if (s.allow_mask == 0)
        return KEEL__MATCH_NOT_FOUND;
    format_allow(s.allow_mask, allow, allowlen);
    return KEEL__MATCH_OK;
}

void keel__router_each(const keel__router *r,
                       void (*fn)(void *ctx, const char *method, const char *tmpl, void *data),
                       void *ctx)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->nroutes; i++) {
        const struct route *rt = r->routes[i];
        fn(ctx, method_names[rt->method], rt->tmpl, rt->data);
    }
}
