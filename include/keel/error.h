/* keel error codes shared by the core and plugins. */
#ifndef KEEL_ERROR_H
#define KEEL_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * One list produces both the enum and keel_strerror().  Codes are small
 * negative integers; 0 is success.  New codes are only ever appended.
 */
#define KEEL_ERRNO_MAP(X)                                                                          \
    X(NOMEM, -1, "out of memory")                                                                  \
    X(INVAL, -2, "invalid argument")                                                               \
    X(NOTFOUND, -3, "not found")                                                                   \
    X(EXISTS, -4, "already exists")                                                                \
    X(IO, -5, "input/output error")                                                                \
    X(TOOBIG, -6, "too large")                                                                     \
    X(CONFIG, -7, "configuration error")                                                           \
    X(ABI, -8, "ABI mismatch")                                                                     \
    X(LOAD, -9, "load failed")                                                                     \
    X(INIT, -10, "plugin init failed")                                                             \
    X(ROUTES, -11, "route conflict")                                                               \
    X(DB_UNAVAILABLE, -12, "database unavailable")                                                 \
    X(DB_CONFLICT, -13, "database conflict or constraint violation")                               \
    X(DB_BADREQ, -14, "database rejected the input")                                               \
    X(DB_BUG, -15, "database error")                                                               \
    X(BUSY, -16, "resource busy")                                                                  \
    X(RESPONDED, -17, "a response was already queued")                                             \
    X(UNSUPPORTED, -18, "not supported by this host")                                              \
    X(AUTH, -19, "authentication failed")                                                          \
    X(TIMEOUT, -20, "timed out")                                                                   \
    X(UPSTREAM, -21, "upstream service unavailable")                                               \
    X(BADRESPONSE, -22, "upstream answer unusable")

typedef enum keel_errno {
#define KEEL__ERRNO_ENUM(name, value, text) KEEL_E##name = (value),
    KEEL_ERRNO_MAP(KEEL__ERRNO_ENUM)
#undef KEEL__ERRNO_ENUM
} keel_errno;

/* A static description of a keel error code. */
static inline const char *keel_strerror(int code)
{
    switch (code) {
    case 0:
        return "success";
#define KEEL__ERRNO_TEXT(name, value, text)                                                        \
    case value:                                                                                    \
        return text;
        KEEL_ERRNO_MAP(KEEL__ERRNO_TEXT)
#undef KEEL__ERRNO_TEXT
    default:
        return "unknown error";
    }
}

#ifdef __cplusplus
}
#endif

#endif /* KEEL_ERROR_H */
