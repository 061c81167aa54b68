/*
 * How many CPUs keeld may run on: what "one per CPU" defaults count.
 */
#ifndef KEEL_CORE_UTIL_CPUS_H
#define KEEL_CORE_UTIL_CPUS_H

/* The CPUs in this process's affinity mask (taskset, cpusets, systemd's
 * CPUAffinity=), not the machine's online count: a keeld confined to one
 * CPU of sixteen sizes itself for one.  Never less than 1. */
unsigned keel__cpus_allowed(void);
/* A setting whose 0 means "one per CPU" (server.workers, server.threads):
 * configured when above 0, else keel__cpus_allowed(). */
unsigned keel__per_cpu(int configured);

#endif
