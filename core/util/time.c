#include "config.h"

#include "util/time.h"

#include <time.h>

int64_t keel__monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t keel__now_ms(void)
{
    return keel__monotonic_ns() / 1000000;
}
