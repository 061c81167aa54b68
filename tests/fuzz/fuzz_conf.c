/*
 * Fuzzes conf.d loading (keel__conf_load) end to end: directory listing,
 * file reading, JSON parsing, every section's schema, manifests, and the
 * checks that run once the directory has been read.
 *
 * Input: the bytes of one file, written as 10-fuzz.json into a private
 * directory that is otherwise empty.  A load that fails must say why (the
 * message names the file); one that succeeds must free cleanly.
 */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <keel/error.h>

#include "conf/conf.h"
#include "plugin/manifest.h"
#include "fuzz_common.h"

static char dir[256];
static char file[300];

static void remove_dir(void)
{
    unlink(file);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_logs();
    keel__manifest_install();
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/keel-fuzz-conf-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL)
        abort();
    snprintf(file, sizeof file, "%s/10-fuzz.json", dir);
    atexit(remove_dir);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(file, "wb");
    if (f == NULL)
        abort();
    if (size > 0 && fwrite(data, 1, size, f) != size)
        abort();
    if (fclose(f) != 0)
        abort();
    struct keel__conf *conf = NULL;
    char err[1024] = "";
    int rc = keel__conf_load(dir, &conf, err, sizeof err);
    if (rc == 0) {
        if (conf == NULL)
            abort();
        keel__conf_free(conf);
    } else {
        if (conf != NULL || err[0] == '\0')
            abort();
    }
    return 0;
}
