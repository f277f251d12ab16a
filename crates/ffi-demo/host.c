/*
 * A C host for the restartable-ffi-demo cdylib.
 *
 *   host LIB.so            the full check (exit 0 only if everything held):
 *     1. dlopen LIB.so and resolve every rs_* symbol;
 *     2. 4 threads use one counter, one stack and one buffer; every total is checked exactly
 *        (each add counted once; each pushed id popped, drained or handed back exactly once);
 *     3. time rs_counter_add_n (a loop inside the library) and print ns per add;
 *     4. free everything and dlclose the library while the 4 threads are still alive, each
 *        asleep in the kernel right after a critical section (so its rseq_cs still points at a
 *        descriptor in the library);
 *     5. release them and run for 1 second under preemption (more busy threads than CPUs,
 *        sched_yield) and a signal storm (SIGALRM from setitimer every 100 us, SIGUSR1 to each
 *        thread with pthread_kill): a thread whose rseq_cs pointed at unmapped memory would be
 *        killed with SIGSEGV on its next return from the kernel.
 *   host LIB.so bench TIMES ROUNDS
 *     dlopen, warm up, then ROUNDS lines "ns_per_add X" (rs_counter_add_n of TIMES adds each).
 *
 * Output lines are "key value..." so a test can parse them; the last line is "host: ok" or
 * "host: FAILED".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4
#define SPINNERS 2
#define OPS 20000u
#define TOTAL ((uint64_t)THREADS * OPS)
#define LAST_ADDS 1000u
#define BUFFER_CAP 32u

struct api {
    int (*mode_is_fast)(void);
    int (*registration)(void);
    void *(*counter_new)(void);
    void (*counter_add)(void *, uint64_t);
    void (*counter_add_n)(void *, uint64_t, uint64_t);
    uint64_t (*counter_sum)(void *);
    uint64_t (*counter_take)(void *);
    void (*counter_free)(void *);
    void *(*stack_new)(void);
    int (*stack_push)(void *, uint64_t);
    int (*stack_pop)(void *, uint64_t *);
    size_t (*stack_drain)(void *, uint64_t *, size_t);
    void (*stack_free)(void *);
    void *(*buffer_new)(size_t);
    int (*buffer_push)(void *, uint64_t);
    int (*buffer_pop)(void *, uint64_t *);
    size_t (*buffer_drain)(void *, uint64_t *, size_t);
    void (*buffer_free)(void *);
};

static struct api api;
static atomic_int failures;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "host: FAILED: " __VA_ARGS__);                                             \
        fputc('\n', stderr);                                                                       \
        failures++;                                                                                \
    } while (0)

static void *resolve(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        fprintf(stderr, "host: FAILED: dlsym %s: %s\n", name, dlerror());
        exit(1);
    }
    return p;
}

/* Assigning a void * from dlsym to a function pointer: POSIX guarantees it works. */
#define RESOLVE(field, name) (*(void **)&api.field = resolve(lib, name))

static void *open_library(const char *path) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "host: FAILED: dlopen %s: %s\n", path, dlerror());
        exit(1);
    }
    RESOLVE(mode_is_fast, "rs_mode_is_fast");
    RESOLVE(registration, "rs_registration");
    RESOLVE(counter_new, "rs_counter_new");
    RESOLVE(counter_add, "rs_counter_add");
    RESOLVE(counter_add_n, "rs_counter_add_n");
    RESOLVE(counter_sum, "rs_counter_sum");
    RESOLVE(counter_take, "rs_counter_take");
    RESOLVE(counter_free, "rs_counter_free");
    RESOLVE(stack_new, "rs_stack_new");
    RESOLVE(stack_push, "rs_stack_push");
    RESOLVE(stack_pop, "rs_stack_pop");
    RESOLVE(stack_drain, "rs_stack_drain");
    RESOLVE(stack_free, "rs_stack_free");
    RESOLVE(buffer_new, "rs_buffer_new");
    RESOLVE(buffer_push, "rs_buffer_push");
    RESOLVE(buffer_pop, "rs_buffer_pop");
    RESOLVE(buffer_drain, "rs_buffer_drain");
    RESOLVE(buffer_free, "rs_buffer_free");
    return lib;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ns per add of one rs_counter_add_n(c, 1, times) call. */
static double time_add_n(void *c, uint64_t times) {
    double t0 = now();
    api.counter_add_n(c, 1, times);
    return (now() - t0) * 1e9 / (double)times;
}

static const char *owner(int r) { return r == 1 ? "glibc" : r == 2 ? "own" : "unavailable"; }

/* ---------------------------------------------------------------------------------------- */

static void *counter, *stack, *buffer;
static pthread_barrier_t used, closed;
static atomic_int stop, ready;
static atomic_ulong signals, yields;

struct worker {
    pthread_t thread;
    unsigned id;
    int registration;
    /* Ids this thread popped from the stack / the buffer, and those the buffer handed back. */
    uint64_t *stack_popped, *buffer_popped, *rejected;
    size_t n_stack_popped, n_buffer_popped, n_rejected;
    unsigned long loops;
};

static void on_signal(int sig) {
    (void)sig;
    atomic_fetch_add_explicit(&signals, 1, memory_order_relaxed);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    w->registration = api.registration();
    for (uint64_t i = 0; i < OPS; i++) {
        uint64_t id = (uint64_t)w->id * OPS + i, v;
        api.counter_add(counter, id % 5 + 1);
        if (!api.stack_push(stack, id)) FAIL("stack push %llu", (unsigned long long)id);
        if (!api.buffer_push(buffer, id)) w->rejected[w->n_rejected++] = id;
        if (i % 2) {
            if (api.stack_pop(stack, &v)) w->stack_popped[w->n_stack_popped++] = v;
            if (api.buffer_pop(buffer, &v)) w->buffer_popped[w->n_buffer_popped++] = v;
        }
    }
    pthread_barrier_wait(&used);
    /* The last thing this thread does in the library is a critical section, after the wake-up
     * above (a return from the kernel after a sleep, which lets the kernel clear rseq_cs):
     * its rseq_cs now points at a descriptor inside the library, and the kernel clears it only
     * lazily, on the thread's next preemption, migration or signal. */
    api.counter_add_n(counter, 1, LAST_ADDS);
    atomic_fetch_add_explicit(&ready, 1, memory_order_release);
    /* Asleep in the kernel while the main thread dlcloses the library; the return to user
     * space after the wake-up makes the kernel read the descriptor rseq_cs names. */
    pthread_barrier_wait(&closed);
    unsigned long n = 0;
    volatile uint64_t x = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        x += n;
        if (++n % 256 == 0) {
            sched_yield();
            atomic_fetch_add_explicit(&yields, 1, memory_order_relaxed);
        }
    }
    w->loops = n;
    return NULL;
}

/* Busy threads with no yield: more runnable threads than CPUs, so the workers get preempted. */
static void *spinner_main(void *arg) {
    (void)arg;
    volatile uint64_t x = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) x++;
    return NULL;
}

/* Check that `ids` (n of them) hold each of 0..TOTAL exactly once. */
static void check_ids(const char *name, const uint64_t *ids, size_t n) {
    unsigned char *seen = calloc(TOTAL, 1);
    size_t dup = 0, bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= TOTAL) bad++;
        else if (seen[ids[i]]++) dup++;
    }
    printf("%s pushed %llu accounted %zu\n", name, (unsigned long long)TOTAL, n);
    if (n != TOTAL || dup || bad)
        FAIL("%s: %zu ids accounted for (%zu duplicates, %zu out of range), expected %llu", name, n,
             dup, bad, (unsigned long long)TOTAL);
    free(seen);
}

static int full_check(const char *path) {
    void *lib = open_library(path);
    int fast = api.mode_is_fast(), reg = api.registration();
    printf("mode fast=%d registration=%s\n", fast, owner(reg));

    counter = api.counter_new();
    stack = api.stack_new();
    buffer = api.buffer_new(BUFFER_CAP);
    if (!counter || !stack || !buffer) {
        FAIL("could not create the collections");
        return 1;
    }
    pthread_barrier_init(&used, NULL, THREADS + 1);
    pthread_barrier_init(&closed, NULL, THREADS + 1);

    struct worker w[THREADS];
    for (unsigned t = 0; t < THREADS; t++) {
        memset(&w[t], 0, sizeof w[t]);
        w[t].id = t;
        w[t].stack_popped = calloc(OPS, sizeof(uint64_t));
        w[t].buffer_popped = calloc(OPS, sizeof(uint64_t));
        w[t].rejected = calloc(OPS, sizeof(uint64_t));
        if (pthread_create(&w[t].thread, NULL, worker_main, &w[t])) {
            FAIL("pthread_create");
            return 1;
        }
    }
    pthread_barrier_wait(&used);
    struct timespec ms = {0, 1000000};
    while (atomic_load_explicit(&ready, memory_order_acquire) < THREADS) nanosleep(&ms, NULL);

    /* Every worker is done with the library (or about to block). Check the totals exactly. */
    uint64_t expected = (uint64_t)THREADS * LAST_ADDS;
    for (uint64_t id = 0; id < TOTAL; id++) expected += id % 5 + 1;
    uint64_t sum = api.counter_sum(counter), taken = api.counter_take(counter),
             after = api.counter_sum(counter);
    printf("counter sum %llu take %llu after %llu expected %llu\n", (unsigned long long)sum,
           (unsigned long long)taken, (unsigned long long)after, (unsigned long long)expected);
    if (sum != expected || taken != expected || after != 0) FAIL("counter totals");

    uint64_t *ids = calloc(3 * TOTAL, sizeof(uint64_t));
    size_t n = api.stack_drain(stack, ids, 3 * TOTAL);
    for (unsigned t = 0; t < THREADS; t++) {
        memcpy(ids + n, w[t].stack_popped, w[t].n_stack_popped * sizeof(uint64_t));
        n += w[t].n_stack_popped;
    }
    check_ids("stack", ids, n);
    n = api.buffer_drain(buffer, ids, 3 * TOTAL);
    size_t rejected = 0;
    for (unsigned t = 0; t < THREADS; t++) {
        memcpy(ids + n, w[t].buffer_popped, w[t].n_buffer_popped * sizeof(uint64_t));
        n += w[t].n_buffer_popped;
        memcpy(ids + n, w[t].rejected, w[t].n_rejected * sizeof(uint64_t));
        n += w[t].n_rejected;
        rejected += w[t].n_rejected;
    }
    check_ids("buffer", ids, n);
    printf("buffer rejected %zu (full)\n", rejected);
    free(ids);

    printf("threads registration");
    for (unsigned t = 0; t < THREADS; t++) {
        printf(" %s", owner(w[t].registration));
        if (w[t].registration != reg) FAIL("thread %u's rseq area: %s, main's: %s", t, owner(w[t].registration), owner(reg));
    }
    printf("\n");

    /* The hot path inside the library, timed from here: warm up, then 3 rounds, the best. */
    api.counter_add_n(counter, 1, 1000000);
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        double ns = time_add_n(counter, 20000000);
        if (ns < best) best = ns;
    }
    printf("add_n ns_per_add %.3f\n", best);
    uint64_t timed = 1000000 + 3 * 20000000ull;
    if (api.counter_take(counter) != timed) FAIL("counter after the timing: expected %llu", (unsigned long long)timed);

    api.counter_free(counter);
    api.stack_free(stack);
    api.buffer_free(buffer);

    /* dlclose while every worker's last critical section may still be named by its rseq_cs. */
    if (dlclose(lib)) FAIL("dlclose: %s", dlerror());
    void *again = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    printf("dlclose done; library still mapped: %s\n", again ? "yes (pinned)" : "no");
    if (again) dlclose(again);

    /* 1 second of preemption and signals, none of it in the library any more. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    struct itimerval it = {{0, 100}, {0, 100}};
    setitimer(ITIMER_REAL, &it, NULL);
    pthread_t spinners[SPINNERS];
    for (int s = 0; s < SPINNERS; s++) pthread_create(&spinners[s], NULL, spinner_main, NULL);

    pthread_barrier_wait(&closed);
    double t0 = now();
    unsigned long kills = 0;
    struct timespec pause = {0, 50000};
    while (now() - t0 < 1.0) {
        for (unsigned t = 0; t < THREADS; t++)
            if (pthread_kill(w[t].thread, SIGUSR1) == 0) kills++;
        nanosleep(&pause, NULL);
    }
    atomic_store(&stop, 1);
    for (unsigned t = 0; t < THREADS; t++) pthread_join(w[t].thread, NULL);
    for (int s = 0; s < SPINNERS; s++) pthread_join(spinners[s], NULL);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);

    unsigned long loops = 0;
    for (unsigned t = 0; t < THREADS; t++) {
        loops += w[t].loops;
        if (!w[t].loops) FAIL("worker %u did not run after dlclose", t);
        free(w[t].stack_popped);
        free(w[t].buffer_popped);
        free(w[t].rejected);
    }
    printf("after dlclose: %.2f s, %lu signals handled (%lu pthread_kill), %lu yields, %lu loops\n",
           now() - t0, atomic_load(&signals), kills, atomic_load(&yields), loops);
    if (atomic_load(&signals) == 0 || atomic_load(&yields) == 0) FAIL("no signal or no yield after dlclose");

    printf("host: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}

static int bench(const char *path, uint64_t times, int rounds) {
    open_library(path);
    void *c = api.counter_new();
    if (!c) return 1;
    api.counter_add_n(c, 1, 1000000);
    for (int r = 0; r < rounds; r++) printf("ns_per_add %.4f\n", time_add_n(c, times));
    uint64_t want = 1000000 + times * (uint64_t)rounds;
    if (api.counter_sum(c) != want) {
        fprintf(stderr, "host: FAILED: bench counter\n");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2) return full_check(argv[1]);
    if (argc == 5 && !strcmp(argv[2], "bench")) return bench(argv[1], strtoull(argv[3], NULL, 10), atoi(argv[4]));
    fprintf(stderr, "usage: %s LIB.so | %s LIB.so bench TIMES ROUNDS\n", argv[0], argv[0]);
    return 2;
}
