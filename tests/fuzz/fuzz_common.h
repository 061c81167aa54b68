/* Shared set-up for keel's libFuzzer harnesses (tests/fuzz/README.md). */
#ifndef KEEL_TESTS_FUZZ_COMMON_H
#define KEEL_TESTS_FUZZ_COMMON_H

#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The code under test logs refusals; millions of lines would drown the
 * fuzzer's own output, so the log goes to /dev/null. */
static inline void fuzz_quiet_logs(void)
{
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd >= 0)
        keel__log_set_fd(fd);
    keel__log_set_level(KEEL_LOG_ERROR);
}

#endif
