#include "config.h"

#include "util/crash.h"

#include <execinfo.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/scoreboard.h"

static int crash_fd = -1;
static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS};

bool keel__crash_is_fatal(int sig)
{
    for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
        if (fatal_signals[i] == sig)
            return true;
    return false;
}

static void write_all(const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(crash_fd, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void on_fatal(int sig, siginfo_t *si, void *uc)
{
    (void)si;
    (void)uc;
    struct keel__sb_worker *w = keel__sb_self();
    int expected = -1;
    /* The first thread to die is the one reported; another thread faulting
     * at the same time must not overwrite it. */
    if (w != NULL && atomic_compare_exchange_strong(
                         &w->crash_thread, &expected,
                         keel__sb_thread_index() >= 0 ? keel__sb_thread_index() : -2)) {
        atomic_store(&w->crash_signal, sig);
        if (crash_fd >= 0) {
            void *frames[48];
            int n = backtrace(frames, 48);
            backtrace_symbols_fd(frames, n, crash_fd);
            write_all("\n", 1);
        }
    }
    /* SA_RESETHAND restored the default action: re-raise so the worker
     * dies by this signal and the supervisor sees it in the wait status. */
    raise(sig);
}

void keel__crash_install(int fd)
{
    crash_fd = fd;
    /* Every thread that claims a scoreboard slot from now on gets its own
     * signal stack, so the handler runs even on a thread that overflowed. */
    keel__sb_set_thread_hooks(keel__crash_thread_setup, keel__crash_thread_teardown);
    /* backtrace() loads libgcc's unwinder on first use, which is not
     * async-signal-safe: do it now, outside any handler. */
    void *frames[2];
    (void)backtrace(frames, 2);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
        sigaction(fatal_signals[i], &sa, NULL);
    keel__crash_thread_setup();
}

static _Thread_local void *alt_stack;

void keel__crash_thread_setup(void)
{
    if (alt_stack != NULL)
        return;
    size_t size = 64 * 1024;
    stack_t ss = {.ss_sp = malloc(size), .ss_size = size, .ss_flags = 0};
    if (ss.ss_sp == NULL)
        return;
    if (sigaltstack(&ss, NULL) != 0) {
        free(ss.ss_sp);
        return;
    }
    alt_stack = ss.ss_sp;
}

void keel__crash_thread_teardown(void)
{
    if (alt_stack == NULL)
        return;
    stack_t ss = {.ss_flags = SS_DISABLE};
    if (sigaltstack(&ss, NULL) == 0)
        free(alt_stack);
    alt_stack = NULL;
}
