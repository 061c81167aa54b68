/* sched_getaffinity() and CPU_COUNT() are GNU extensions. */
#define _GNU_SOURCE
#include "config.h"

#include "util/cpus.h"

#include <sched.h>
#include <unistd.h>

unsigned keel__cpus_allowed(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (unsigned)online : 1u;
}

unsigned keel__per_cpu(int configured)
{
    return configured > 0 ? (unsigned)configured : keel__cpus_allowed();
}
