#include "config.h"

#include "util/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <keel/error.h>

int keel__file_read(const char *path, size_t cap, char **out, size_t *len, char *why, size_t whylen)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, whylen, "cannot open %s: %s", path, strerror(errno));
        return KEEL_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, whylen, "%s is not a regular file", path);
        close(fd);
        return KEEL_EIO;
    }
    if ((uintmax_t)st.st_size > cap) {
        snprintf(why, whylen, "%s is larger than %zu bytes", path, cap);
        close(fd);
        return KEEL_ETOOBIG;
    }
    /* Room for what fstat said, one byte more to see a file that grew past
     * it, and the NUL; grown while the file keeps growing, up to the cap. */
    size_t room = (size_t)st.st_size + 2, got = 0;
    char *buf = malloc(room);
    int rc = buf != NULL ? 0 : KEEL_ENOMEM;
    while (rc == 0) {
        if (got + 1 == room) {
            size_t more = room > cap / 2 ? cap + 2 : room * 2;
            char *grown = more > room ? realloc(buf, more) : NULL;
            if (grown == NULL) {
                rc = KEEL_ENOMEM;
                break;
            }
            buf = grown;
            room = more;
        }
        ssize_t r = read(fd, buf + got, room - 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(why, whylen, "cannot read %s: %s", path, strerror(errno));
            rc = KEEL_EIO;
        } else if (r == 0) {
            break;
        } else if ((got += (size_t)r) > cap) {
            snprintf(why, whylen, "%s is larger than %zu bytes", path, cap);
            rc = KEEL_ETOOBIG;
        }
    }
    close(fd);
    if (rc == KEEL_ENOMEM)
        snprintf(why, whylen, "out of memory");
    if (rc < 0) {
        free(buf);
        return rc;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    return 0;
}
