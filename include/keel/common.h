/* Compiler helpers used by keel's public headers. */
#ifndef KEEL_COMMON_H
#define KEEL_COMMON_H

#if defined(__GNUC__) || defined(__clang__)
#define KEEL_WARN_UNUSED __attribute__((warn_unused_result))
#define KEEL_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define KEEL_EXPORT __attribute__((visibility("default")))
#else
#define KEEL_WARN_UNUSED
#define KEEL_PRINTF(fmt, args)
#define KEEL_EXPORT
#endif

#endif /* KEEL_COMMON_H */
