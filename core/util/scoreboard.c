#include "config.h"

#include "util/scoreboard.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static struct keel__sb_worker *board;
static unsigned nslots;
static struct keel__sb_worker *self;

/* Slots of threads that have exited, handed out again (reload and init
 * threads come and go; the HTTP threads live as long as the worker). */
static pthread_mutex_t free_lock = PTHREAD_MUTEX_INITIALIZER;
static int *free_slots;
static size_t nfree;
static pthread_key_t slot_key;
static pthread_once_t slot_key_once = PTHREAD_ONCE_INIT;

static _Thread_local int my_index = -1;
/* This thread's entries, numbered from a base of its own (taken once per
 * thread from seq_bases, 2^32 apart): a slot's seq changes on every entry
 * and never repeats another thread's, without an atomic add per call. */
static _Thread_local unsigned long long my_seq;
static atomic_ullong seq_bases;

int keel__sb_create(unsigned n)
{
    size_t len = (size_t)n * sizeof *board;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return KEEL_ENOMEM;
    board = p;
    nslots = n;
    for (unsigned i = 0; i < n; i++)
        keel__sb_reset(i);
    return 0;
}

unsigned keel__sb_slots(void)
{
    return nslots;
}

struct keel__sb_worker *keel__sb_worker(unsigned i)
{
    return board != NULL && i < nslots ? &board[i] : NULL;
}

void keel__sb_reset(unsigned i)
{
    struct keel__sb_worker *w = keel__sb_worker(i);
    if (w == NULL)
        return;
    atomic_store(&w->pid, 0);
    atomic_store(&w->crash_thread, -1);
    atomic_store(&w->crash_signal, 0);
    atomic_store(&w->nthreads, 0);
    atomic_store(&w->requests, 0);
    atomic_store(&w->in_flight, 0);
    for (unsigned t = 0; t < KEEL__SB_THREADS; t++)
        atomic_store(&w->threads[t].seq, 0);
}

typedef void (*thread_hook)(void);
static _Atomic thread_hook on_claim, on_release;

void keel__sb_set_thread_hooks(void (*setup)(void), void (*teardown)(void))
{
    atomic_store(&on_claim, setup);
    atomic_store(&on_release, teardown);
}

static void run_hook(_Atomic thread_hook *hook)
{
    thread_hook fn = atomic_load(hook);
    if (fn != NULL)
        fn();
}

static void release_slot(void *arg)
{
    int idx = (int)(intptr_t)arg - 1;
    run_hook(&on_release);
    pthread_mutex_lock(&free_lock);
    int *grown = realloc(free_slots, (nfree + 1) * sizeof *grown);
    if (grown != NULL) {
        free_slots = grown;
        free_slots[nfree++] = idx;
    }
    pthread_mutex_unlock(&free_lock);
}

static void make_slot_key(void)
{
    pthread_key_create(&slot_key, release_slot);
}

void keel__sb_bind(unsigned i)
{
    self = keel__sb_worker(i);
    pthread_once(&slot_key_once, make_slot_key);
}

struct keel__sb_worker *keel__sb_self(void)
{
    return self;
}

int keel__sb_thread_index(void)
{
    return my_index;
}

static int claim_slot(void)
{
    int idx = -1;
    pthread_mutex_lock(&free_lock);
    if (nfree > 0)
        idx = free_slots[--nfree];
    pthread_mutex_unlock(&free_lock);
    if (idx < 0) {
        idx = atomic_fetch_add(&self->nthreads, 1);
        if (idx >= KEEL__SB_THREADS)
            return -1;
    }
    /* The key's destructor gives the slot back when the thread exits;
     * stored +1 because a NULL value runs no destructor. */
    pthread_setspecific(slot_key, (void *)(intptr_t)(idx + 1));
    run_hook(&on_claim);
    return idx;
}

/* a, a space and b into dst, cut to fit, its NUL padded with zeros to a
 * whole word (cap is a multiple of 8); either may be NULL.  Returns the
 * length. */
static size_t join_text(char *dst, size_t cap, const char *a, const char *b)
{
    size_t n = 0;
    if (a != NULL) {
        n = strnlen(a, cap - 1);
        memcpy(dst, a, n);
    }
    if (b != NULL && a != NULL && n + 1 < cap)
        dst[n++] = ' ';
    if (b != NULL) {
        size_t m = strnlen(b, cap - 1 - n);
        memcpy(dst + n, b, m);
        n += m;
    }
    memset(dst + n, 0, 8 * KEEL__SB_WORDS(n + 1) - n);
    return n;
}

/* The first nwords words of text (at least one: the NUL) into a slot's
 * field. */
static void store_words(atomic_ullong *words, const char *text, size_t nwords)
{
    if (nwords == 0)
        nwords = 1;
    for (size_t i = 0; i < nwords; i++) {
        unsigned long long w;
        memcpy(&w, text + 8 * i, sizeof w);
        atomic_store_explicit(&words[i], w, memory_order_relaxed);
    }
}

void keel__sb_text_make(struct keel__sb_text *t, const char *plugin, const char *method,
                        const char *route)
{
    size_t n = join_text(t->plugin, sizeof t->plugin, plugin, NULL);
    t->plugin_words = (unsigned char)KEEL__SB_WORDS(n + 1);
    n = join_text(t->route, sizeof t->route, method, route);
    t->route_words = (unsigned char)KEEL__SB_WORDS(n + 1);
}

static void load_words(char *text, size_t cap, const atomic_ullong *words)
{
    for (size_t i = 0; i < cap / 8; i++) {
        unsigned long long w = atomic_load_explicit(&words[i], memory_order_relaxed);
        memcpy(text + 8 * i, &w, sizeof w);
    }
    text[cap - 1] = '\0';
}

void keel__plugin_call_enter(const char *plugin, uint64_t generation, int kind, const char *method,
                             const char *route, uint64_t request_id)
{
    if (self == NULL)
        return;
    struct keel__sb_text text;
    keel__sb_text_make(&text, plugin, method, route);
    keel__plugin_call_enter_text(&text, generation, kind, request_id);
}

void keel__plugin_call_enter_text(const struct keel__sb_text *text, uint64_t generation, int kind,
                                  uint64_t request_id)
{
    if (self == NULL)
        return;
    if (my_index < 0) {
        my_index = claim_slot();
        if (my_index < 0) {
            my_index = -2; /* no room: stay unrecorded, do not try again */
            return;
        }
        my_seq = atomic_fetch_add(&seq_bases, 1) << 32;
    }
    if (my_index < 0)
        return;
    struct keel__sb_thread *t = &self->threads[my_index];
    atomic_store_explicit(&t->since_ns, keel__monotonic_coarse_ns(), memory_order_relaxed);
    atomic_store_explicit(&t->kind, kind, memory_order_relaxed);
    atomic_store_explicit(&t->generation, generation, memory_order_relaxed);
    atomic_store_explicit(&t->request_id, request_id, memory_order_relaxed);
    store_words(t->plugin, text->plugin, text->plugin_words);
    store_words(t->route, text->route, text->route_words);
    atomic_store_explicit(&t->seq, ++my_seq, memory_order_release);
}

void keel__plugin_call_leave(void)
{
    if (self == NULL || my_index < 0)
        return;
    atomic_store_explicit(&self->threads[my_index].seq, 0, memory_order_release);
}

bool keel__sb_read_thread(const struct keel__sb_worker *w, unsigned t, struct keel__sb_call *out)
{
    if (w == NULL || t >= KEEL__SB_THREADS)
        return false;
    const struct keel__sb_thread *s = &w->threads[t];
    unsigned long long before = atomic_load_explicit(&s->seq, memory_order_acquire);
    if (before == 0)
        return false;
    out->since_ns = atomic_load_explicit(&s->since_ns, memory_order_relaxed);
    out->kind = atomic_load_explicit(&s->kind, memory_order_relaxed);
    out->generation = atomic_load_explicit(&s->generation, memory_order_relaxed);
    out->request_id = atomic_load_explicit(&s->request_id, memory_order_relaxed);
    load_words(out->plugin, sizeof out->plugin, s->plugin);
    load_words(out->route, sizeof out->route, s->route);
    atomic_thread_fence(memory_order_acquire);
    unsigned long long after = atomic_load_explicit(&s->seq, memory_order_relaxed);
    out->seq = before;
    return before == after;
}

int keel__sb_stuck_handlers(int64_t limit_ns)
{
    if (self == NULL)
        return 0;
    int n = 0;
    int64_t now = keel__monotonic_ns();
    int top = atomic_load(&self->nthreads);
    for (int i = 0; i < top && i < KEEL__SB_THREADS; i++) {
        struct keel__sb_call t;
        if (keel__sb_read_thread(self, (unsigned)i, &t) && t.kind == KEEL__CALL_HANDLER &&
            now - t.since_ns > limit_ns)
            n++;
    }
    return n;
}
