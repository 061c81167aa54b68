/* Environment overrides (KEEL_LISTEN, KEEL_DATABASE_URL, ...) and the
 * checks that need the final values. */
#include "config.h"

#include "conf/schema.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <keel/error.h>

#include "util/log.h"

static bool valid_hostname(const char *h, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = h[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

int keel__parse_listen(const char *spec, char **host, int *port)
{
    const char *h = NULL, *portstr;
    size_t hlen = 0;

    *host = NULL;
    *port = 0;
    if (spec == NULL || spec[0] == '\0')
        return KEEL_EINVAL;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':')
            return KEEL_EINVAL;
        h = spec + 1;
        hlen = (size_t)(close - h);
        portstr = close + 2;
        char addr[INET6_ADDRSTRLEN + 1];
        struct in6_addr a6;
        if (hlen == 0 || hlen >= sizeof addr)
            return KEEL_EINVAL;
        memcpy(addr, h, hlen);
        addr[hlen] = '\0';
        if (inet_pton(AF_INET6, addr, &a6) != 1)
            return KEEL_EINVAL;
    } else {
        const char *colon = strrchr(spec, ':');
        if (colon == NULL) {
            portstr = spec;
        } else {
            /* A bare IPv6 address is ambiguous with a port: use brackets. */
            if (memchr(spec, ':', (size_t)(colon - spec)) != NULL)
                return KEEL_EINVAL;
            h = spec;
            hlen = (size_t)(colon - spec);
            portstr = colon + 1;
            if (hlen > 0 && !valid_hostname(h, hlen))
                return KEEL_EINVAL;
        }
    }

    size_t plen = strlen(portstr);
    if (plen == 0 || plen > 5 || strspn(portstr, "0123456789") != plen)
        return KEEL_EINVAL;
    long p = strtol(portstr, NULL, 10);
    if (p < 1 || p > 65535)
        return KEEL_EINVAL;

    if (hlen > 0) {
        *host = strndup(h, hlen);
        if (*host == NULL)
            return KEEL_ENOMEM;
    }
    *port = (int)p;
    return 0;
}

static bool is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;

    if (strcmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

/* An environment variable, or NULL when unset or empty. */
static const char *env(const char *name)
{
    const char *v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : NULL;
}

/* Parses the listen address in variable `name`, if it is set. */
static int env_listen(const char *name, char **host, int *port, char *err, size_t errlen)
{
    const char *value = env(name);
    int rc = value != NULL ? keel__parse_listen(value, host, port) : 0;

    if (rc == KEEL_ENOMEM)
        return keel__conf_nomem(err, errlen);
    if (rc < 0)
        return keel__conf_fail(err, errlen,
                               "%s: expected host:port, [ipv6]:port or :port with a "
                               "port 1-65535, got \"%s\"",
                               name, value);
    return 0;
}

/* Moves *value, when there is one, into *slot and frees what *slot held. */
static void move_string(char **slot, char **value)
{
    if (*value == NULL)
        return;
    free(*slot);
    *slot = *value;
    *value = NULL;
}

int keel__conf_apply_env(struct keel__conf *conf, char *err, size_t errlen)
{
    const char *url = env("KEEL_DATABASE_URL");
    const char *secret = env("KEEL_JWT_SECRET");
    const char *plugin_dir = env("KEEL_PLUGIN_DIR");
    const char *level_name = env("KEEL_LOG_LEVEL");
    const char *pooler = env("KEEL_DATABASE_POOLER");
    char *host = NULL, *admin_host = NULL, *url_copy = NULL, *secret_copy = NULL;
    char *pooler_copy = NULL;
    char *dir_copy = NULL;
    char **files = NULL;
    int port = 0, admin_port = 0, level = -1, rc = 0;

    /* Check and copy everything first, so that a bad variable changes nothing. */
    if ((rc = env_listen("KEEL_LISTEN", &host, &port, err, errlen)) < 0 ||
        (rc = env_listen("KEEL_ADMIN_LISTEN", &admin_host, &admin_port, err, errlen)) < 0)
        goto out;
    if (level_name != NULL && (level = keel__log_parse_level(level_name)) < 0) {
        rc = keel__conf_fail(err, errlen,
                             "KEEL_LOG_LEVEL: expected error, warn, info or debug, got \"%s\"",
                             level_name);
        goto out;
    }
    if (pooler != NULL) {
        size_t i = 0;
        while (keel__conf_poolers[i] != NULL && strcmp(keel__conf_poolers[i], pooler) != 0)
            i++;
        if (keel__conf_poolers[i] == NULL) {
            rc = keel__conf_fail(err, errlen,
                                 "KEEL_DATABASE_POOLER: expected none, pgbouncer-session or "
                                 "pgbouncer-transaction, got \"%s\"",
                                 pooler);
            goto out;
        }
    }
    const char *final_admin = admin_host ? admin_host : conf->admin.host;
    if (!is_loopback(final_admin) && conf->admin.token == NULL) {
        rc = keel__conf_fail(err, errlen,
                             "%s: the admin listener on %s is not loopback-only, so admin.token "
                             "is required",
                             admin_host ? "KEEL_ADMIN_LISTEN" : "admin.host", final_admin);
        goto out;
    }
    if ((url != NULL && (url_copy = strdup(url)) == NULL) ||
        (secret != NULL && (secret_copy = strdup(secret)) == NULL) ||
        (plugin_dir != NULL && (dir_copy = strdup(plugin_dir)) == NULL) ||
        (pooler != NULL && (pooler_copy = strdup(pooler)) == NULL)) {
        rc = keel__conf_nomem(err, errlen);
        goto out;
    }
    if (dir_copy != NULL && conf->nplugins > 0) {
        files = calloc(conf->nplugins, sizeof *files);
        if (files == NULL) {
            rc = keel__conf_nomem(err, errlen);
            goto out;
        }
        for (size_t i = 0; i < conf->nplugins; i++) {
            files[i] = keel__conf_manifest_ops()->resolve_file(conf->plugins[i].file_spec,
                                                               dir_copy);
            if (files[i] == NULL) {
                rc = keel__conf_nomem(err, errlen);
                goto out;
            }
        }
    }

    /* Nothing below can fail. */
    move_string(&conf->server.host, &host);
    if (port != 0)
        conf->server.port = port;
    move_string(&conf->admin.host, &admin_host);
    if (admin_port != 0)
        conf->admin.port = admin_port;
    if (level >= 0)
        conf->log.level = level;
    move_string(&conf->database.url, &url_copy);
    move_string(&conf->database.pooler, &pooler_copy);
    move_string(&conf->auth.jwt_secret, &secret_copy);
    move_string(&conf->server.plugin_dir, &dir_copy);
    /* files is set only when KEEL_PLUGIN_DIR is, so these match plugin_dir. */
    for (size_t i = 0; files != NULL && i < conf->nplugins; i++)
        move_string(&conf->plugins[i].file, &files[i]);

out:
    free(host);
    free(admin_host);
    free(url_copy);
    free(secret_copy);
    free(dir_copy);
    free(pooler_copy);
    if (files != NULL) {
        for (size_t i = 0; i < conf->nplugins; i++)
            free(files[i]);
        free(files);
    }
    if (rc < 0)
        return rc == KEEL_ENOMEM ? rc : KEEL_ECONFIG;
    return 0;
}

int keel__conf_read(const char *dir, struct keel__conf **out, char *err, size_t errlen)
{
    int rc = keel__conf_load(dir, out, err, errlen);
    if (rc == 0 && (rc = keel__conf_apply_env(*out, err, errlen)) != 0) {
        keel__conf_free(*out);
        *out = NULL;
    }
    return rc;
}
