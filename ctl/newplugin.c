#include "config.h"

#include "newplugin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The templates.  "@NAME@" stands for the plugin name everywhere, also in
 * file names.  Keep them in step with docs/plugin-guide.md, which walks
 * through the generated project, and with tests/integration/test_sdk.py,
 * which builds and serves it.
 */
static const char tmpl_plugin_c[] =
    "/*\n"
    " * @NAME@: a keel route plugin, made by `keelctl new-plugin` (the keel plugin\n"
    " * guide, docs/plugin-guide.md, explains every part).\n"
    " *\n"
    " *   GET /api/v1/@NAME@/hello  public  {\"plugin\":\"@NAME@\",\"message\":\"hello\"}\n"
    " *   GET /api/v1/@NAME@/me     user    {\"plugin\":\"@NAME@\",\"email\":\"<the user's>\"}\n"
    " *   GET /api/v1/@NAME@/ticks  public  {\"plugin\":\"@NAME@\",\"ticks\":N}\n"
    " *\n"
    " * It also shows the background capabilities: a table of its own\n"
    " * (migrations/0001_@NAME@.sql, applied by `keeld --migrate`), a periodic task\n"
    " * that writes a row to it every config.every_ms, an upstream service the task\n"
    " * calls when config.upstream names one ({\"url\": \"http://...\"}), and a\n"
    " * counter exported on /metrics as keel_plugin_@NAME@_ticks_total.\n"
    " *\n"
    " * Each route's auth level and the answer keeld gives while the plugin is\n"
    " * down live in @NAME@.json, not here: keeld authenticates the caller before\n"
    " * a handler runs.\n"
    " *\n"
    " * On the request path a handler responds exactly once; takes memory from\n"
    " * host->req_alloc (or frees it before returning); starts no threads and uses\n"
    " * no thread-locals, constructors or atexit; touches no global that is not\n"
    " * read-only or guarded by a lock; blocks on nothing but the database through\n"
    " * host->db_*; and passes input to SQL as parameters, never inside the text.\n"
    " */\n"
    "#include <stdio.h>\n"
    "#include <stdlib.h>\n"
    "\n"
    "#include <keel/plugin.h>\n"
    "\n"
    "/* Everything one generation needs, made in init and freed in fini.  No\n"
    " * mutable globals: during a reload two generations of this plugin are loaded\n"
    " * side by side and must not share anything. */\n"
    "struct @NAME@_state {\n"
    "    const keel_host *host;\n"
    "    char greeting[64];\n"
    "    keel_upstream *upstream; /* NULL unless config.upstream is set */\n"
    "    keel_metric *ticks;\n"
    "};\n"
    "\n"
    "/*\n"
    " * The periodic task.  The host runs it on a thread of its own with a\n"
    " * request of its own (req): the database and upstream calls work as in a\n"
    " * handler.  It must return soon after host->task_stopping(task) turns true:\n"
    " * keeld stops and joins every task before fini, at each reload.\n"
    " */\n"
    "static int @NAME@_tick(keel_task *task, keel_request *req, void *arg)\n"
    "{\n"
    "    struct @NAME@_state *st = arg;\n"
    "    const keel_host *host = st->host;\n"
    "    char status_text[16];\n"
    "    const char *params[1] = {NULL};\n"
    "\n"
    "    (void)task;\n"
    "    if (st->upstream != NULL) {\n"
    "        long status = 0;\n"
    "        json_t *answer = NULL; /* owned by req */\n"
    "        if (host->upstream_request(req, st->upstream, \"GET\", \"/\", NULL, 0, &status,\n"
    "                                   &answer) == 0) {\n"
    "            snprintf(status_text, sizeof status_text, \"%ld\", status);\n"
    "            params[0] = status_text;\n"
    "        } else {\n"
    "            host->log(req, KEEL_LOG_WARN, \"upstream: %s\", host->upstream_last_error(req));\n"
    "        }\n"
    "    }\n"
    "    int rc = host->db_query(req, \"INSERT INTO @NAME@_ticks (upstream_status) VALUES ($1::int)\",\n"
    "                            1, params, NULL);\n"
    "    if (rc == 0)\n"
    "        host->metric_observe(st->ticks, 1);\n"
    "    return rc;\n"
    "}\n"
    "\n"
    "static int @NAME@_init(const keel_host *host, const json_t *config, void **state)\n"
    "{\n"
    "    struct @NAME@_state *st = calloc(1, sizeof *st);\n"
    "    if (st == NULL)\n"
    "        return KEEL_ENOMEM;\n"
    "    st->host = host;\n"
    "    /* \"config\" of the manifest; borrowed for this call only, so copy what\n"
    "     * is kept. */\n"
    "    const char *greeting = json_string_value(json_object_get(config, \"greeting\"));\n"
    "    snprintf(st->greeting, sizeof st->greeting, \"%s\", greeting ? greeting : \"hello\");\n"
    "\n"
    "    /* Tasks, upstreams and metrics can only be registered here, in init. */\n"
    "    json_int_t every_ms = json_integer_value(json_object_get(config, \"every_ms\"));\n"
    "    const json_t *upstream = json_object_get(config, \"upstream\");\n"
    "    int rc = host->metric_add(KEEL_METRIC_COUNTER, \"@NAME@_ticks_total\",\n"
    "                              \"Rows the @NAME@ task wrote.\", &st->ticks);\n"
    "    if (rc == 0 && json_is_object(upstream))\n"
    "        rc = host->upstream_add(\"upstream\", upstream, &st->upstream);\n"
    "    if (rc == 0)\n"
    "        rc = host->task_add(\"tick\", every_ms > 0 ? (unsigned)every_ms : 60000, @NAME@_tick, st,\n"
    "                            NULL);\n"
    "    if (rc != 0) {\n"
    "        free(st);\n"
    "        return rc;\n"
    "    }\n"
    "    *state = st;\n"
    "    host->log(NULL, KEEL_LOG_INFO, \"@NAME@ ready (greeting \\\"%s\\\")\", st->greeting);\n"
    "    return 0;\n"
    "}\n"
    "\n"
    "/* Runs once no request uses this generation any more. */\n"
    "static void @NAME@_fini(void *state)\n"
    "{\n"
    "    free(state);\n"
    "}\n"
    "\n"
    "/* GET /api/v1/@NAME@/hello (public) */\n"
    "static int @NAME@_hello(keel_request *req, void *state)\n"
    "{\n"
    "    const struct @NAME@_state *st = state;\n"
    "    /* respond_json takes the body; a NULL body (out of memory) becomes a 500. */\n"
    "    return st->host->respond_json(\n"
    "        req, 200, json_pack(\"{s:s, s:s}\", \"plugin\", \"@NAME@\", \"message\", st->greeting));\n"
    "}\n"
    "\n"
    "/* GET /api/v1/@NAME@/me (user): the caller was authenticated by keeld. */\n"
    "static int @NAME@_me(keel_request *req, void *state)\n"
    "{\n"
    "    const struct @NAME@_state *st = state;\n"
    "    const char *email = st->host->req_user(req, KEEL_USER_EMAIL);\n"
    "    return st->host->respond_json(\n"
    "        req, 200, json_pack(\"{s:s, s:s?}\", \"plugin\", \"@NAME@\", \"email\", email));\n"
    "}\n"
    "\n"
    "/* GET /api/v1/@NAME@/ticks (public): rows in the plugin's own table. */\n"
    "static int @NAME@_ticks(keel_request *req, void *state)\n"
    "{\n"
    "    const struct @NAME@_state *st = state;\n"
    "    keel_db_result *res = NULL;\n"
    "    if (st->host->db_query(req, \"SELECT count(*) FROM @NAME@_ticks\", 0, NULL, &res) != 0) {\n"
    "        st->host->set_header(req, \"Retry-After\", \"5\");\n"
    "        return st->host->respond_error(req, 503, \"database unavailable\");\n"
    "    }\n"
    "    const char *n = st->host->db_value(res, 0, 0);\n"
    "    return st->host->respond_json(req, 200,\n"
    "                                  json_pack(\"{s:s, s:I}\", \"plugin\", \"@NAME@\", \"ticks\",\n"
    "                                            (json_int_t)(n ? strtoll(n, NULL, 10) : 0)));\n"
    "}\n"
    "\n"
    "/* Every route here must be in @NAME@.json and the other way round. */\n"
    "static const keel_route @NAME@_routes[] = {\n"
    "    {\"GET\", \"/api/v1/@NAME@/hello\", @NAME@_hello},\n"
    "    {\"GET\", \"/api/v1/@NAME@/me\", @NAME@_me},\n"
    "    {\"GET\", \"/api/v1/@NAME@/ticks\", @NAME@_ticks},\n"
    "    {NULL, NULL, NULL},\n"
    "};\n"
    "\n"
    "/* Capabilities this plugin cannot run without: a keeld that lacks one\n"
    " * refuses to load it and names it.  Test optional ones at run time with\n"
    " * KEEL_HOST_HAS(host, member). */\n"
    "static const char *const @NAME@_requires[] = {\"log\",   \"response\", \"user\",    \"db\",\n"
    "                                             \"tasks\", \"upstream\", \"metrics\", NULL};\n"
    "\n"
    "static const keel_plugin @NAME@_plugin = {\n"
    "    KEEL_PLUGIN_HEADER,\n"
    "    .name = \"@NAME@\",\n"
    "    .version = \"0.1.0\",\n"
    "    .init = @NAME@_init,\n"
    "    .fini = @NAME@_fini,\n"
    "    .routes = @NAME@_routes,\n"
    "    .requires = @NAME@_requires,\n"
    "};\n"
    "\n"
    "/* The one exported symbol. */\n"
    "const keel_plugin *keel_plugin_entry(void)\n"
    "{\n"
    "    return &@NAME@_plugin;\n"
    "}\n";

static const char tmpl_manifest_json[] =
    "{\n"
    "  \"plugin\": {\n"
    "    \"name\": \"@NAME@\",\n"
    "    \"enabled\": true,\n"
    "    \"file\": \"@NAME@.so\",\n"
    "    \"migrations\": \"@NAME@\",\n"
    "    \"config\": { \"greeting\": \"hello\", \"every_ms\": 2000, \"upstream\": null },\n"
    "    \"routes\": [\n"
    "      {\n"
    "        \"method\": \"GET\",\n"
    "        \"path\": \"/api/v1/@NAME@/hello\",\n"
    "        \"auth\": \"public\",\n"
    "        \"fallback\": {\n"
    "          \"status\": 503,\n"
    "          \"headers\": { \"Retry-After\": \"30\" },\n"
    "          \"body\": { \"detail\": \"@NAME@ is unavailable (${reason})\" }\n"
    "        }\n"
    "      },\n"
    "      {\n"
    "        \"method\": \"GET\",\n"
    "        \"path\": \"/api/v1/@NAME@/me\",\n"
    "        \"auth\": \"user\",\n"
    "        \"fallback\": {\n"
    "          \"status\": 200,\n"
    "          \"body\": { \"plugin\": \"@NAME@\", \"email\": null, \"fallback\": true }\n"
    "        }\n"
    "      },\n"
    "      {\n"
    "        \"method\": \"GET\",\n"
    "        \"path\": \"/api/v1/@NAME@/ticks\",\n"
    "        \"auth\": \"public\",\n"
    "        \"fallback\": {\n"
    "          \"status\": 503,\n"
    "          \"headers\": { \"Retry-After\": \"30\" },\n"
    "          \"body\": { \"detail\": \"@NAME@ is unavailable (${reason})\" }\n"
    "        }\n"
    "      }\n"
    "    ]\n"
    "  }\n"
    "}\n";

static const char tmpl_makefile[] =
    "# Builds, checks and installs the @NAME@ keel plugin (made by keelctl new-plugin).\n"
    "#\n"
    "#   make             build @NAME@.so\n"
    "#   make check       run keel-plugin-check on it (exports, unloading, routes)\n"
    "#   make install     @NAME@.so -> $(PLUGINDIR), @NAME@.json -> $(CONFDIR),\n"
    "#                    migrations/*.sql -> $(MIGRATIONSDIR)/@NAME@ (then run\n"
    "#                    `keeld --migrate` before `keelctl reload @NAME@`)\n"
    "#   make uninstall   remove both again\n"
    "#   make clean\n"
    "#\n"
    "# Everything about keel comes from pkg-config (keel-plugin.pc, installed with\n"
    "# keel).  When keel is not installed in a standard prefix, set\n"
    "# PKG_CONFIG_PATH=<keel prefix>/lib/pkgconfig.  DESTDIR, PLUGINDIR, CONFDIR\n"
    "# and KEEL_PLUGIN_CHECK can be set on the command line.  After installing,\n"
    "# `keelctl reload @NAME@` makes a running keeld load it.\n"
    "\n"
    "NAME = @NAME@\n"
    "PKG_CONFIG ?= pkg-config\n"
    "\n"
    "ifneq ($(shell $(PKG_CONFIG) --exists keel-plugin && echo yes),yes)\n"
    "$(error pkg-config cannot find keel-plugin: install keel, or set PKG_CONFIG_PATH=<keel prefix>/lib/pkgconfig)\n"
    "endif\n"
    "\n"
    "KEEL_CFLAGS := $(shell $(PKG_CONFIG) --cflags keel-plugin)\n"
    "JANSSON_LIBS := $(shell $(PKG_CONFIG) --libs jansson)\n"
    "PLUGINDIR ?= $(shell $(PKG_CONFIG) --variable=plugindir keel-plugin)\n"
    "CONFDIR ?= $(shell $(PKG_CONFIG) --variable=confdir keel-plugin)\n"
    "MIGRATIONSDIR ?= $(shell $(PKG_CONFIG) --variable=migrationsdir keel-plugin)\n"
    "KEEL_PLUGIN_CHECK ?= $(or $(shell $(PKG_CONFIG) --variable=plugin_check keel-plugin),keel-plugin-check)\n"
    "INSTALL ?= install\n"
    "\n"
    "CFLAGS ?= -O2 -g\n"
    "WARNINGS = -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes\n"
    "# Hidden visibility and the version script export keel_plugin_entry alone;\n"
    "# -z now resolves every symbol at load time instead of mid-request; -z defs\n"
    "# turns a missing library into a link error instead of a load failure.\n"
    "PLUGIN_CFLAGS = -std=gnu11 -fPIC -fvisibility=hidden $(WARNINGS)\n"
    "PLUGIN_LDFLAGS = -shared -Wl,--version-script=exports.map -Wl,-z,now -Wl,-z,relro -Wl,-z,defs\n"
    "\n"
    "all: $(NAME).so\n"
    "\n"
    "$(NAME).so: $(NAME).c exports.map\n"
    "\t$(CC) $(PLUGIN_CFLAGS) $(KEEL_CFLAGS) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) $(PLUGIN_LDFLAGS) \\\n"
    "\t  -o $@ $(NAME).c $(JANSSON_LIBS) $(LDLIBS)\n"
    "\n"
    "check: $(NAME).so\n"
    "\t$(KEEL_PLUGIN_CHECK) --manifest $(NAME).json ./$(NAME).so\n"
    "\n"
    "install: $(NAME).so\n"
    "\t$(INSTALL) -d $(DESTDIR)$(PLUGINDIR) $(DESTDIR)$(CONFDIR)\n"
    "\t$(INSTALL) -m 0755 $(NAME).so $(DESTDIR)$(PLUGINDIR)/$(NAME).so\n"
    "\t$(INSTALL) -d $(DESTDIR)$(MIGRATIONSDIR)/$(NAME)\n"
    "\t$(INSTALL) -m 0644 migrations/*.sql $(DESTDIR)$(MIGRATIONSDIR)/$(NAME)/\n"
    "\t# The installed manifest names the installed migrations by absolute path.\n"
    "\tsed 's|\"migrations\": \"$(NAME)\"|\"migrations\": \"$(MIGRATIONSDIR)/$(NAME)\"|' $(NAME).json \\\n"
    "\t  > $(DESTDIR)$(CONFDIR)/$(NAME).json.tmp\n"
    "\tmv $(DESTDIR)$(CONFDIR)/$(NAME).json.tmp $(DESTDIR)$(CONFDIR)/$(NAME).json\n"
    "\n"
    "uninstall:\n"
    "\trm -f $(DESTDIR)$(PLUGINDIR)/$(NAME).so $(DESTDIR)$(CONFDIR)/$(NAME).json\n"
    "\trm -rf $(DESTDIR)$(MIGRATIONSDIR)/$(NAME)\n"
    "\n"
    "clean:\n"
    "\trm -f $(NAME).so\n"
    "\n"
    ".PHONY: all check install uninstall clean\n";

static const char tmpl_migration_sql[] =
    "-- The @NAME@ plugin's own table.  `keeld --migrate` applies the files of\n"
    "-- migrations/ in name order (NNNN_name.sql), each once, recorded in\n"
    "-- plugin_migrations; keeld refuses to load the plugin while one is pending.\n"
    "-- Prefix table names with the plugin's name: the database is shared.\n"
    "CREATE TABLE @NAME@_ticks (\n"
    "    id              bigserial PRIMARY KEY,\n"
    "    upstream_status int,\n"
    "    created_at      timestamptz NOT NULL DEFAULT now()\n"
    ");\n";

static const char tmpl_exports_map[] =
    "/* The linker's version script for @NAME@.so: keeld looks up\n"
    " * keel_plugin_entry and nothing else, so nothing else is exported. */\n"
    "{\n"
    "  global:\n"
    "    keel_plugin_entry;\n"
    "  local:\n"
    "    *;\n"
    "};\n";

static const char tmpl_test_sh[] =
    "#!/bin/sh\n"
    "# Calls the routes of the @NAME@ plugin on a running keeld and checks the\n"
    "# answers (made by keelctl new-plugin).\n"
    "#\n"
    "#   KEEL_URL  keeld's main listener (default http://127.0.0.1:8080)\n"
    "#   TOKEN     a user's bearer token; without it the user route is only\n"
    "#             checked to refuse anonymous callers\n"
    "#   EMAIL     that user's email, to check the user route's body exactly\n"
    "#\n"
    "# Exit status 0 when every check passed.\n"
    "set -u\n"
    "base=${KEEL_URL:-http://127.0.0.1:8080}\n"
    "failed=0\n"
    "body_file=$(mktemp) || exit 2\n"
    "trap 'rm -f \"$body_file\"' EXIT\n"
    "\n"
    "# expect STATUS BODY CURL-ARGS...; an empty BODY accepts any body.\n"
    "expect() {\n"
    "\twant_status=$1\n"
    "\twant_body=$2\n"
    "\tshift 2\n"
    "\tstatus=$(curl -sS -o \"$body_file\" -w '%{http_code}' \"$@\") || status=\"(curl failed)\"\n"
    "\tbody=$(cat \"$body_file\")\n"
    "\tif [ \"$status\" = \"$want_status\" ] && { [ -z \"$want_body\" ] || [ \"$body\" = \"$want_body\" ]; }; then\n"
    "\t\techo \"ok   $status $body\"\n"
    "\telse\n"
    "\t\techo \"FAIL got $status $body; want $want_status ${want_body:-(any body)}\"\n"
    "\t\tfailed=1\n"
    "\tfi\n"
    "}\n"
    "\n"
    "echo \"GET $base/api/v1/@NAME@/hello\"\n"
    "expect 200 '{\"plugin\":\"@NAME@\",\"message\":\"hello\"}' \"$base/api/v1/@NAME@/hello\"\n"
    "echo \"GET $base/api/v1/@NAME@/me (no token)\"\n"
    "expect 403 '{\"detail\":\"Not authenticated\"}' \"$base/api/v1/@NAME@/me\"\n"
    "if [ -n \"${TOKEN:-}\" ]; then\n"
    "\twant=\"\"\n"
    "\tif [ -n \"${EMAIL:-}\" ]; then\n"
    "\t\twant=\"{\\\"plugin\\\":\\\"@NAME@\\\",\\\"email\\\":\\\"$EMAIL\\\"}\"\n"
    "\tfi\n"
    "\techo \"GET $base/api/v1/@NAME@/me (with TOKEN)\"\n"
    "\texpect 200 \"$want\" -H \"Authorization: Bearer $TOKEN\" \"$base/api/v1/@NAME@/me\"\n"
    "fi\n"
    "if [ \"$failed\" = 0 ]; then\n"
    "\techo \"all checks passed\"\n"
    "fi\n"
    "exit \"$failed\"\n";

struct template
{
    const char *file; /* "@NAME@" expanded */
    mode_t mode;
    const char *text;
    const char *what; /* for the listing */
};

static const struct template templates[] = {
    {"@NAME@.c", 0644, tmpl_plugin_c, "the plugin: init/fini, routes, a task, an upstream"},
    {"@NAME@.json", 0644, tmpl_manifest_json, "its conf.d manifest: routes, auth, fallbacks"},
    {"Makefile", 0644, tmpl_makefile, "make, make check, make install (via pkg-config)"},
    {"exports.map", 0644, tmpl_exports_map, "linker version script: export the entry only"},
    {"migrations/0001_@NAME@.sql", 0644, tmpl_migration_sql, "its own table (keeld --migrate)"},
    {"test.sh", 0755, tmpl_test_sh, "curls the routes of a running keeld"},
};

#define NTEMPLATES (sizeof templates / sizeof templates[0])

bool newplugin_name_ok(const char *name)
{
    if (name == NULL || !(name[0] >= 'a' && name[0] <= 'z'))
        return false;
    size_t n = 1;
    for (; name[n] != '\0'; n++) {
        char c = name[n];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return n <= NEWPLUGIN_NAME_MAX;
}

/* text with every "@NAME@" replaced by name; NULL when memory runs out. */
static char *expand(const char *text, const char *name)
{
    static const char mark[] = "@NAME@";
    const size_t marklen = sizeof mark - 1, namelen = strlen(name);
    size_t count = 0;
    for (const char *p = strstr(text, mark); p != NULL; p = strstr(p + marklen, mark))
        count++;
    /* Names are at most NEWPLUGIN_NAME_MAX bytes, so this cannot overflow. */
    size_t len = strlen(text) + count * namelen + 1;
    char *out = malloc(len);
    if (out == NULL)
        return NULL;
    size_t used = 0;
    for (const char *p = text;;) {
        const char *hit = strstr(p, mark);
        size_t n = hit ? (size_t)(hit - p) : strlen(p);
        memcpy(out + used, p, n);
        used += n;
        if (hit == NULL)
            break;
        memcpy(out + used, name, namelen);
        used += namelen;
        p = hit + marklen;
    }
    out[used] = '\0';
    return out;
}

/* Like mkdir -p: creates dir and its missing parents. */
static int make_dirs(const char *dir)
{
    char *path = strdup(dir);
    if (path == NULL)
        return -ENOMEM;
    int rc = 0;
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            rc = -errno;
            break;
        }
        *p = saved;
        if (saved == '\0')
            break;
    }
    struct stat st;
    if (rc == 0 && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)))
        rc = -ENOTDIR;
    free(path);
    return rc;
}

static char *join(const char *dir, const char *file)
{
    size_t dl = strlen(dir), fl = strlen(file);
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    char *out = malloc(dl + fl + 2);
    if (out == NULL)
        return NULL;
    memcpy(out, dir, dl);
    out[dl] = '/';
    memcpy(out + dl + 1, file, fl + 1);
    return out;
}

/* Writes text into a new file; refuses to replace one that exists. */
static int write_new(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    size_t len = strlen(text);
    int rc = 0;
    while (len > 0) {
        ssize_t w = write(fd, text, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        text += w;
        len -= (size_t)w;
    }
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    /* open() applied the umask; the script must stay executable. */
    if (rc == 0 && chmod(path, mode) != 0)
        rc = -errno;
    return rc;
}

int newplugin_create(const char *name, const char *dir)
{
    if (!newplugin_name_ok(name)) {
        fprintf(stderr,
                "keelctl: new-plugin: invalid name '%s': it must match [a-z][a-z0-9_]{0,%d} "
                "(it prefixes the plugin's C symbols and its routes)\n",
                name, NEWPLUGIN_NAME_MAX - 1);
        return 2;
    }
    if (dir[0] == '\0') {
        fputs("keelctl: new-plugin: DIR must not be empty\n", stderr);
        return 2;
    }
    char *paths[NTEMPLATES] = {NULL};
    int status = 0;
    size_t written = 0;

    for (size_t i = 0; i < NTEMPLATES && status == 0; i++) {
        char *file = expand(templates[i].file, name);
        paths[i] = file ? join(dir, file) : NULL;
        free(file);
        if (paths[i] == NULL) {
            fputs("keelctl: new-plugin: out of memory\n", stderr);
            status = 2;
        } else if (access(paths[i], F_OK) == 0) {
            fprintf(stderr, "keelctl: new-plugin: %s already exists; not overwriting anything\n",
                    paths[i]);
            status = 2;
        }
    }
    if (status == 0) {
        char *mig = join(dir, "migrations");
        int rc = make_dirs(dir);
        if (rc == 0)
            rc = mig != NULL ? make_dirs(mig) : -ENOMEM;
        free(mig);
        if (rc != 0) {
            fprintf(stderr, "keelctl: new-plugin: cannot create %s: %s\n", dir, strerror(-rc));
            status = 2;
        }
    }
    for (size_t i = 0; i < NTEMPLATES && status == 0; i++) {
        char *text = expand(templates[i].text, name);
        int rc = text ? write_new(paths[i], text, templates[i].mode) : -ENOMEM;
        free(text);
        if (rc != 0) {
            fprintf(stderr, "keelctl: new-plugin: cannot write %s: %s\n", paths[i], strerror(-rc));
            /* A file another process created since the check is not ours. */
            if (rc != -EEXIST)
                unlink(paths[i]);
            status = 2;
            break;
        }
        written++;
    }
    if (status != 0) {
        /* Leave nothing half made. */
        for (size_t i = 0; i < written; i++)
            unlink(paths[i]);
    } else {
        printf("created plugin \"%s\" in %s:\n", name, dir);
        for (size_t i = 0; i < NTEMPLATES; i++)
            printf("  %-40s %s\n", paths[i], templates[i].what);
        printf("\nnext steps:\n"
               "  cd %s\n"
               "  make                   # build %s.so against the installed keel headers\n"
               "  make check             # conformance check (keel-plugin-check)\n"
               "  make install           # %s.so -> plugindir, %s.json -> confdir\n"
               "  keeld --migrate        # creates the plugin's table\n"
               "  keelctl reload %s\n"
               "  ./test.sh              # curl its routes (KEEL_URL, TOKEN)\n",
               dir, name, name, name, name);
    }
    for (size_t i = 0; i < NTEMPLATES; i++)
        free(paths[i]);
    return status;
}
