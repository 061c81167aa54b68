#include "config.h"

#include "util/time.h"

#include <time.h>

int64_t keel__clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t keel__monotonic_ns(void)
{
    return keel__clock_ns(CLOCK_MONOTONIC);
}

int64_t keel__monotonic_coarse_ns(void)
{
    return keel__clock_ns(CLOCK_MONOTONIC_COARSE);
}

int64_t keel__now_ms(void)
{
    return keel__monotonic_ns() / 1000000;
}

struct timespec keel__timespec_after(clockid_t clock, int64_t ms)
{
    struct timespec t;
    clock_gettime(clock, &t);
    t.tv_sec += (time_t)(ms / 1000);
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}
