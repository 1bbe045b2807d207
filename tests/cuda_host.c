// cuda_host.c: the CUDA ops of lib/cuda/ops.cu (cuda/ops.h) and the GEMM of
// cuda/blas.h run on the host, for tests only, not part of libmoe. Each function
// does what its .cu wrapper does: the same kernel bodies (lib/cuda/kernels/*.h)
// in the same sequence of launches, each launch a loop over its thread indices
// (in increasing order, or decreasing: FOR_THREADS below), with the same early
// returns, memsets, scratch layouts and error returns. Device memory is host
// memory. Where a launch takes the device's expf or tanhf, this takes the
// function the CPU library uses at that place (SLEEF's, core/vmath.h, for cross-entropy, the activations and
// attention's softmax; libm's expf where the library calls expf, in the
// router's softmax inside the bodies; libm's double exp and log); the GEMM is
// the library's moe_gemm. So what runs here gives the CPU library's bits
// wherever the device code follows its order: the GPU tests built with this
// file and -DMOE_TEST_CUDA_HOST (test_cuda_ops_host, test_cuda_layer_host)
// check exactly that on a machine without a GPU, and a device step run here
// can be required to match the CPU model bit for bit. Every function of ops.h
// is defined here, so a CUDA build's libmoe.a never pulls its ops.o in.
#include <execinfo.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "core/gemm.h"
#include "core/status.h"
#include "core/vmath.h"
#include "cuda/kernels/attention.h"
#include "cuda/kernels/aux.h"
#include "cuda/kernels/dispatch.h"
#include "cuda/kernels/distill.h"
#include "cuda/kernels/dropout.h"
#include "cuda/kernels/embed.h"
#include "cuda/kernels/experts.h"
#include "cuda/kernels/linear.h"
#include "cuda/kernels/loss.h"
#include "cuda/kernels/norm.h"
#include "cuda/kernels/optim.h"
#include "cuda/kernels/route.h"
#include "cuda/blas.h"
#include "cuda/ops.h"

// The order in which a launch's threads (or blocks) run here: increasing, or
// decreasing when MOE_CUDA_HOST_ORDER=reverse. On a GPU the threads of one launch
// run in no set order, so a kernel body that reads what another thread of the
// same launch writes (a race there) gives other bits here one way round than
// the other: for any two threads, one order runs each before the other. The
// host tests run both ways (tests/meson.build), and both must give the CPU
// library's bits. Loops inside one thread's work (a row's sum, a block's tile,
// the sort) keep their order; FOR_THREADS marks the index spaces of launches.
static size_t host_thread(size_t j, size_t n)
{
    static int reverse = -1;
    if (reverse < 0) {
        const char *o = getenv("MOE_CUDA_HOST_ORDER");
        reverse = o && strcmp(o, "reverse") == 0;
    }
    return reverse ? n - 1 - j : j;
}

#define FOR_THREADS(i, n)                                                                                          \
    for (size_t i##_n_ = (size_t)(n), i##_j_ = 0, i = 0; i##_j_ < i##_n_ && (i = host_thread(i##_j_, i##_n_), 1);   \
         i##_j_++)

// A launch whose grid is empty (a zero block count), as cudaGetLastError reports it.
static int empty_grid(const char *kernel, struct moe_err *err)
{
    return moe_error(err, MOE_EIO, "CUDA: %s failed: %s", kernel, "invalid configuration argument");
}

// Faults for the tests (tests/cuda_test.h): counted from when a test sets
// them, the Nth device allocation fails as cudaMalloc does on a full device,
// and the Nth launch of the optimizer's kernel fails as a faulting kernel does
// (0: never).
long cuda_host_fail_malloc, cuda_host_fail_optim;
// A kernel fault is sticky, as on a GPU (an illegal address spoils the
// context): from the faulting launch on, every runtime call and launch of the
// process fails with it, until a test clears cuda_host_sticky. So the fault
// tests see what a device does after the fault (no copy back, no further
// step), not a device that carries on.
int cuda_host_sticky;
// Called with every device allocation's size and name when set (the tests'
// checks of what a device model allocates).
void (*cuda_host_on_malloc)(size_t bytes, const char *what);

// ---------------------------------------------------------------- device memory

// Device memory is host memory here, so host code that reads or writes it
// through a device pointer (a loss read straight from a device scalar, a host
// loop over device weights) works here and faults on a GPU. Guard mode
// (MOE_CUDA_HOST_GUARD=1; the meson tests *_host_guard) catches that: device
// memory is one arena of pages that no one may touch (PROT_NONE) except while
// a function of this file runs, as a launch or a copy does on a GPU (STICKY
// opens each function's device scope, and the scope closes when it returns).
// Host code that touches device memory outside a scope faults, and the fault
// handler names the allocation. Outside guard mode device memory comes from
// aligned_alloc, where AddressSanitizer sees each allocation's bounds.
static struct {
    int on;          // guard mode
    char *base;      // the arena: reserved, PROT_NONE outside device scopes
    size_t size, top; // reserved bytes; bytes handed out so far (256-aligned)
    int depth;       // device scopes open (a function of this file calling another)
    struct hole {    // freed allocations, reused for the same rounded size
        char *p;
        size_t n;
    } *holes;
    size_t n_holes, cap_holes;
} arena;

// Every live device allocation, both modes: address, size and name, so that
// the copies, memsets and GEMMs can check that each device operand lies inside
// one live allocation (cudaMemcpy and cuBLAS read past an end silently on a
// GPU) and that each host operand does not (the direction of a copy).
static struct dev_alloc {
    const char *p;
    size_t bytes;
    char what[64];
} *dev;
static size_t n_dev, cap_dev;

// The live allocation that holds byte p, or NULL.
static const struct dev_alloc *dev_find(const void *p)
{
    for (size_t i = n_dev; i-- > 0;)
        if ((const char *)p >= dev[i].p && (const char *)p < dev[i].p + (dev[i].bytes ? dev[i].bytes : 1))
            return &dev[i];
    return NULL;
}

// MOE_EINVAL unless [p, p + bytes) lies inside one live device allocation
// (bytes 0: nothing to check). call and arg name the operand in the error.
static int dev_span(const void *p, size_t bytes, const char *call, const char *arg, struct moe_err *err)
{
    if (!bytes)
        return 0;
    const struct dev_alloc *a = dev_find(p);
    if (!a)
        return moe_error(err, MOE_EINVAL, "CUDA emulation: %s: %s (%p) is not device memory", call, arg, p);
    if (bytes > a->bytes - (size_t)((const char *)p - a->p))
        return moe_error(err, MOE_EINVAL,
                         "CUDA emulation: %s: %s runs %zu bytes past the end of the device allocation '%s' (%zu "
                         "bytes, from offset %zu)",
                         call, arg, bytes - (a->bytes - (size_t)((const char *)p - a->p)), a->what, a->bytes,
                         (size_t)((const char *)p - a->p));
    return 0;
}

// MOE_EINVAL if [p, p + bytes) meets device memory: a copy's host side.
static int host_span(const void *p, size_t bytes, const char *call, const char *arg, struct moe_err *err)
{
    for (size_t i = 0; bytes && i < n_dev; i++)
        if ((const char *)p < dev[i].p + dev[i].bytes && dev[i].p < (const char *)p + bytes)
            return moe_error(err, MOE_EINVAL, "CUDA emulation: %s: %s is device memory ('%s'), not host memory",
                             call, arg, dev[i].what);
    return 0;
}

// The device pointers an op's wrapper in ops.cu hands to its kernels (or to
// cub, or to cudaMemset as device memory): a host pointer there works here,
// where all memory is host memory, and is an illegal address on a GPU. Each
// DEV_ARGS entry is checked with dev_span over the bytes the launches touch;
// START entries, whose extent the arguments do not give (rows indexed through
// a plan, a table indexed by token id), by their first byte. An entry of no
// bytes (nothing launched, or a buffer the launches do not touch) and a NULL
// (an optional buffer left out) are not checked.
#define DEV_START SIZE_MAX
struct dev_arg {
    const char *name;
    const void *p;
    size_t bytes; // DEV_START: the first byte only
};
#define ARG(p, n) { #p, (p), (size_t)(n) * sizeof *(p) }
#define ARG_BYTES(p, bytes) { #p, (p), (bytes) }
#define START(p, used) { #p, (p), (used) != 0 ? DEV_START : 0 }

static int dev_args(const char *call, const struct dev_arg *a, size_t n, struct moe_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (!a[i].p || !a[i].bytes)
            continue;
        int rc = a[i].bytes != DEV_START ? dev_span(a[i].p, a[i].bytes, call, a[i].name, err)
               : !dev_find(a[i].p)
                   ? moe_error(err, MOE_EINVAL, "CUDA emulation: %s: %s (%p) is not device memory", call, a[i].name,
                               a[i].p)
                   : 0;
        if (rc)
            return rc;
    }
    return 0;
}

// Returns the first failed check's error from the op that uses it.
#define DEV_ARGS(err, ...)                                                                                         \
    do {                                                                                                           \
        const struct dev_arg dev_args_[] = { __VA_ARGS__ };                                                        \
        int dev_rc_ = dev_args(__func__, dev_args_, sizeof dev_args_ / sizeof *dev_args_, err);                   \
        if (dev_rc_)                                                                                               \
            return dev_rc_;                                                                                        \
    } while (0)

static void guard_fault(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    char msg[256];
    const struct dev_alloc *a = dev_find(si->si_addr);
    int n = a ? snprintf(msg, sizeof msg,
                         "cuda_host: host code touched device memory: '%s' (%zu bytes) at offset %zu, outside any "
                         "launch or copy (MOE_CUDA_HOST_GUARD); a GPU faults here\n",
                         a->what, a->bytes, (size_t)((const char *)si->si_addr - a->p))
              : (char *)si->si_addr >= arena.base && (char *)si->si_addr < arena.base + arena.size
                  ? snprintf(msg, sizeof msg, "cuda_host: host code touched freed device memory at %p\n", si->si_addr)
                  : 0;
    if (n > 0)
        (void)!write(2, msg, (size_t)n);
    void *frames[32];
    backtrace_symbols_fd(frames, backtrace(frames, 32), 2);
    signal(sig, SIG_DFL); // returning runs the access again, now to the default action
}

static int guard_on(void)
{
    static int on = -1;
    if (on < 0) {
        const char *g = getenv("MOE_CUDA_HOST_GUARD");
        on = g && strcmp(g, "1") == 0;
    }
    return on;
}

// mprotect of the arena's bytes [from, to), widened to whole pages.
static int arena_protect(size_t from, size_t to, int prot)
{
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    from &= ~(page - 1);
    to = (to + page - 1) & ~(page - 1);
    return to > from ? mprotect(arena.base + from, to - from, prot) : 0;
}

// A device scope: open (the arena readable and writable) from the first
// STICKY of a call to this file until that call returns.
static int device_enter(void)
{
    if (arena.on && arena.depth++ == 0 && arena_protect(0, arena.top, PROT_READ | PROT_WRITE))
        abort();
    return 0;
}

static void device_leave(int *unused)
{
    (void)unused;
    if (arena.on && --arena.depth == 0 && arena_protect(0, arena.top, PROT_NONE))
        abort();
}

#define STICKY(err)                                                                                                \
    int device_scope_ __attribute__((cleanup(device_leave), unused)) = device_enter();                             \
    if (cuda_host_sticky)                                                                                          \
    return moe_error(err, MOE_EIO, "CUDA: %s failed: %s", __func__, "an illegal memory access was encountered")

// n bytes (256-aligned) from the arena: a hole of that size, or new pages at
// its top (readable and writable, as the call that asks for them is a scope).
static char *arena_alloc(size_t n)
{
    if (!arena.base) {
        arena.size = (size_t)1 << 36; // address space only (MAP_NORESERVE): pages come as they are touched
        void *b = mmap(NULL, arena.size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (b == MAP_FAILED)
            return NULL;
        arena.base = b;
        struct sigaction sa = { .sa_sigaction = guard_fault, .sa_flags = SA_SIGINFO };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, NULL);
    }
    for (size_t i = 0; i < arena.n_holes; i++)
        if (arena.holes[i].n == n) {
            char *p = arena.holes[i].p;
            arena.holes[i] = arena.holes[--arena.n_holes];
            return p;
        }
    if (n > arena.size - arena.top || arena_protect(arena.top, arena.top + n, PROT_READ | PROT_WRITE))
        return NULL;
    arena.top += n;
    return arena.base + arena.top - n;
}

static void arena_free(char *p, size_t n)
{
    if (n_dev == 0 && arena.depth == 0) { // nothing live: start the arena over, its pages given back
        madvise(arena.base, arena.top, MADV_DONTNEED);
        arena_protect(0, arena.top, PROT_NONE);
        arena.top = arena.n_holes = 0;
        return;
    }
    if (arena.n_holes == arena.cap_holes) {
        size_t cap = arena.cap_holes ? 2 * arena.cap_holes : 64;
        struct hole *h = realloc(arena.holes, cap * sizeof *h);
        if (!h)
            return; // the bytes stay unused
        arena.holes = h;
        arena.cap_holes = cap;
    }
    arena.holes[arena.n_holes++] = (struct hole){ p, n };
}

// cudaMalloc: at least one byte, 256-byte aligned, not initialised.
int moe_cuda_malloc(void **ret, size_t bytes, const char *what, struct moe_err *err)
{
    arena.on = guard_on();
    STICKY(err);
    *ret = NULL;
    if (cuda_host_fail_malloc > 0 && --cuda_host_fail_malloc == 0)
        return moe_error(err, MOE_ENOMEM, "CUDA: cudaMalloc of %zu bytes for %s failed: %s", bytes, what,
                         "out of memory");
    if (n_dev == cap_dev) {
        size_t cap = cap_dev ? 2 * cap_dev : 64;
        struct dev_alloc *d = realloc(dev, cap * sizeof *d);
        if (!d)
            return moe_error(err, MOE_ENOMEM, "out of memory for the emulation's allocation table");
        dev = d;
        cap_dev = cap;
    }
    size_t n = bytes ? bytes : 1;
    n = n <= SIZE_MAX - 255 ? (n + 255) & ~(size_t)255 : 0;
    *ret = !n ? NULL : arena.on ? arena_alloc(n) : aligned_alloc(256, n);
    if (!*ret)
        return moe_error(err, MOE_ENOMEM, "CUDA: cudaMalloc of %zu bytes for %s failed: %s", bytes, what,
                         "out of memory");
    if (cuda_host_on_malloc)
        cuda_host_on_malloc(bytes, what);
    int rc = moe_cuda_mem_note(*ret, bytes, err);
    if (rc) {
        arena.on ? arena_free(*ret, n) : free(*ret);
        *ret = NULL;
        return rc;
    }
    dev[n_dev].p = *ret;
    dev[n_dev].bytes = bytes;
    snprintf(dev[n_dev].what, sizeof dev[n_dev].what, "%s", what ? what : "?");
    n_dev++;
    return 0;
}

void moe_cuda_free(void *p)
{
    if (!p)
        return;
    moe_cuda_mem_forget(p);
    for (size_t i = n_dev; i-- > 0;)
        if (dev[i].p == p) {
            size_t n = ((dev[i].bytes ? dev[i].bytes : 1) + 255) & ~(size_t)255;
            dev[i] = dev[--n_dev];
            if (arena.on)
                arena_free(p, n);
            else
                free(p);
            return;
        }
    abort(); // not a live device allocation: cudaFree would fail, a double free here
}

// The copies between host and device so far (moe_cuda_to_device and
// moe_cuda_to_host, the ops' own results included): the tests' check that a
// step copies only its batch in and its metrics out.
struct cuda_host_copies { // as tests/cuda_test.h declares it
    size_t in_calls, in_bytes, out_calls, out_bytes;
} cuda_host_copies;

// cudaMemcpy, with its direction checked: the device side inside one live
// allocation, the host side outside all of them.
int moe_cuda_to_device(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    STICKY(err);
    int rc = dev_span(dst, bytes, "cudaMemcpy host to device", "the destination", err);
    if (!rc)
        rc = host_span(src, bytes, "cudaMemcpy host to device", "the source", err);
    if (!rc && bytes)
        memcpy(dst, src, bytes);
    if (!rc)
        cuda_host_copies.in_calls++, cuda_host_copies.in_bytes += bytes;
    return rc;
}

int moe_cuda_to_host(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    STICKY(err);
    int rc = dev_span(src, bytes, "cudaMemcpy device to host", "the source", err);
    if (!rc)
        rc = host_span(dst, bytes, "cudaMemcpy device to host", "the destination", err);
    if (!rc && bytes)
        memcpy(dst, src, bytes);
    if (!rc)
        cuda_host_copies.out_calls++, cuda_host_copies.out_bytes += bytes;
    return rc;
}

// ---------------------------------------------------------------- router

int moe_cuda_route_forward(const struct moe_cuda_route *a, float *p, float *lse, float *h, float *eps, int32_t *sel,
                           int32_t *idx, float *gate, float *prio, const float *z, const float *u, const float *bias,
                           struct moe_err *err)
{
    STICKY(err);
    const size_t T = a->T > 0 ? (size_t)a->T : 0, TE = T * (size_t)a->E, TK = T * (size_t)a->K;
    DEV_ARGS(err, ARG(p, TE), ARG(lse, T), ARG(h, a->noisy ? TE : 0), ARG(eps, a->noisy ? TE : 0), ARG(sel, TK),
             ARG(idx, TK), ARG(gate, TK), ARG(prio, TK), ARG(z, TE), ARG(u, a->noisy && a->train ? TE : 0),
             ARG(bias, T ? a->E : 0));
    if (a->T <= 0)
        return 0;
    FOR_THREADS (t, a->T) {
        size_t o = (size_t)t * a->E, os = (size_t)t * a->K;
        moe_k_softmax_row(p + o, lse + t, z + o, a->E);
        const float *v = z + o;
        if (a->noisy) {
            if (a->train) {
                moe_k_noisy_row(h + o, eps + o, z + o, u + o, a->E, a->seed, a->purpose, a->stream, a->base + o);
            } else {
                for (int e = 0; e < a->E; e++) {
                    eps[o + e] = 0.0f;
                    h[o + e] = z[o + e];
                }
            }
            v = h + o;
        }
        moe_k_topk_row(sel + os, a->noisy ? v : p + o, bias, a->E, a->K);
        moe_k_gates_row(idx + os, gate + os, prio + os, sel + os, v, p + o, a->K,
                        a->raw_gates ? MOE_K_GATE_RAW : MOE_K_GATE_RENORM);
        if (a->gshard_random && a->train)
            moe_k_gshard_second(idx + os, gate + os, a->seed, a->purpose, a->stream, a->base + (uint64_t)t);
    }
    return 0;
}

int moe_cuda_route_backward(const struct moe_cuda_route *a, float *dz, float *du, const float *dgate,
                            const int32_t *sel, const int32_t *idx, const float *p, const float *z, const float *h,
                            const float *eps, const float *u, struct moe_err *err)
{
    STICKY(err);
    const size_t T = a->T > 0 ? (size_t)a->T : 0, TE = T * (size_t)a->E, TK = T * (size_t)a->K;
    const size_t noisy = a->noisy ? TE : 0;
    DEV_ARGS(err, ARG(dz, TE), ARG(du, noisy), ARG(dgate, TK), ARG(sel, TK), ARG(idx, TK), ARG(p, TE),
             ARG(z, a->noisy ? 0 : TE), ARG(h, noisy), ARG(eps, noisy), ARG(u, noisy));
    if (a->T <= 0)
        return 0;
    FOR_THREADS (t, a->T) {
        size_t o = (size_t)t * a->E, os = (size_t)t * a->K;
        moe_k_route_backward_row(dz + o, a->noisy ? du + o : NULL, dgate + os, sel + os, idx + os, p + o,
                                 (a->noisy ? h : z) + o, a->noisy ? eps + o : NULL, a->noisy ? u + o : NULL, a->E,
                                 a->K, a->raw_gates ? MOE_K_GATE_RAW : MOE_K_GATE_RENORM);
    }
    return 0;
}

int moe_cuda_route_ec_forward(const struct moe_cuda_route_ec *a, float *p, float *lse, int32_t *sel, int32_t *idx,
                              float *gate, float *prio, const float *z, struct moe_err *err)
{
    STICKY(err);
    const size_t T = a->T > 0 ? (size_t)a->T : 0, TE = T * (size_t)a->E;
    DEV_ARGS(err, ARG(p, TE), ARG(lse, T), ARG(sel, TE), ARG(idx, TE), ARG(gate, TE), ARG(prio, TE), ARG(z, TE));
    if (a->T <= 0)
        return 0;
    FOR_THREADS (t, a->T)
        moe_k_softmax_row(p + (size_t)t * a->E, lse + t, z + (size_t)t * a->E, a->E);
    if (a->mode == MOE_K_EC_TOPK) {
        FOR_THREADS (t, a->T) {
            size_t o = (size_t)t * a->E;
            moe_k_ec_topk_row(sel + o, idx + o, gate + o, prio + o, p + o, a->E, a->ec_factor);
        }
        return 0;
    }
    if (a->mode == MOE_K_EC_FULL) { // route_ec_select_kernel: a block of 256 per expert
        if (a->E <= 0)
            return empty_grid("route_ec_select_kernel", err);
        uint32_t *cnt = malloc(MOE_K_SELECT_BINS * 256 * sizeof *cnt);
        if (!cnt)
            abort();
        FOR_THREADS (e, a->E)
            moe_k_ec_select_column(sel, idx, gate, prio, cnt, p, a->T, a->E, (int)e, a->ec_factor, 256);
        free(cnt);
        return 0;
    }
    size_t n = (size_t)a->T * a->E;
    if (n == 0) // E = 0: no blocks
        return empty_grid("route_ec_kernel", err);
    FOR_THREADS (i, n)
        moe_k_ec_slot(sel, idx, gate, prio, p, a->T, a->E, (int64_t)(i / a->E), (int)(i % a->E), a->ec_factor,
                      (enum moe_k_ec)a->mode, a->seq);
    return 0;
}

// The raw-gate backward with K = E, p standing in for z (as in ops.cu).
int moe_cuda_route_ec_backward(int T, int E, float *dz, const float *dgate, const int32_t *sel, const int32_t *idx,
                               const float *p, struct moe_err *err)
{
    STICKY(err);
    const size_t TE = T > 0 && E > 0 ? (size_t)T * (size_t)E : 0;
    DEV_ARGS(err, ARG(dz, TE), ARG(dgate, TE), ARG(sel, TE), ARG(idx, TE), ARG(p, TE));
    struct moe_cuda_route a;
    memset(&a, 0, sizeof a);
    a.T = T;
    a.E = E;
    a.K = E;
    a.raw_gates = 1;
    return moe_cuda_route_backward(&a, dz, NULL, dgate, sel, idx, p, p, NULL, NULL, NULL, err);
}

int moe_cuda_route_hash_forward(int T, int E, float *p, float *lse, int32_t *sel, int32_t *idx, float *gate,
                                float *prio, const int32_t *hash_expert, struct moe_err *err)
{
    STICKY(err);
    const size_t n = T > 0 ? (size_t)T : 0;
    DEV_ARGS(err, ARG(p, n * (size_t)(E > 0 ? E : 0)), ARG(lse, n), ARG(sel, n), ARG(idx, n), ARG(gate, n),
             ARG(prio, n), ARG(hash_expert, n));
    if (T <= 0)
        return 0;
    FOR_THREADS (t, T)
        moe_k_hash_row(p + (size_t)t * E, lse + t, sel + t, idx + t, gate + t, prio + t, hash_expert[t], E);
    return 0;
}

int moe_cuda_bias_update(float *bias, const int32_t *sel, size_t n, size_t E, double rate, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(bias, E), ARG(sel, E ? n : 0));
    if (E == 0)
        return 0;
    FOR_THREADS (e, E) { // bias_update_kernel: a block of 256 per expert, each thread a stride of the slots
        uint64_t total = 0, load = 0;
        FOR_THREADS (k, 256) {
            uint64_t tk = 0, lk = 0;
            moe_k_bias_count(&tk, &lk, sel, (int64_t)n, (int)e, (int64_t)k, 256);
            total += tk, load += lk;
        }
        moe_k_bias_apply(bias, (int)E, (int)e, total, load, rate);
    }
    return 0;
}

// ---------------------------------------------------------------- norms

// norm_kernel, row by row: the row's MOE_K_LANES lane sums (the mean's first
// for LayerNorm), joined; the statistics rounded to float, then the elements.
int moe_cuda_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *g, const float *b,
                          size_t T, size_t D, float eps, struct moe_err *err)
{
    STICKY(err);
    const size_t d = T ? D : 0;
    DEV_ARGS(err, ARG(y, T * D), ARG(mean, b ? T : 0), ARG(rstd, T), ARG(x, T * D), ARG(g, d), ARG(b, d));
    FOR_THREADS (t, T) {
        const float *xt = x + t * D;
        double lanes[MOE_K_LANES], m = 0.0;
        if (b) {
            FOR_THREADS (k, MOE_K_LANES)
                lanes[k] = moe_k_lane_sum(xt, D, k);
            m = moe_k_layernorm_mean(moe_k_lanes_join(lanes), D);
        }
        FOR_THREADS (k, MOE_K_LANES)
            lanes[k] = moe_k_lane_sq_dev(xt, m, D, k);
        double ss = moe_k_lanes_join(lanes);
        float mf = (float)m, rf = b ? moe_k_layernorm_rstd(ss, D, eps) : moe_k_rmsnorm_rstd(ss, D, eps);
        if (b)
            mean[t] = mf;
        rstd[t] = rf;
        FOR_THREADS (i, D)
            y[t * D + i] = b ? moe_k_layernorm_elem(xt[i], mf, rf, g[i], b[i]) : moe_k_rmsnorm_elem(xt[i], rf, g[i]);
    }
    return 0;
}

// norm_param_kernel by column, then norm_dx_kernel row by row: the lanes of
// both sums, joined and divided by D in double, rounded to float, then dx.
int moe_cuda_norm_backward(float *dx, float *dg, float *db, const float *dy, const float *x, const float *mean,
                           const float *rstd, const float *g, size_t T, size_t D, struct moe_err *err)
{
    STICKY(err);
    const size_t d = T ? D : 0;
    DEV_ARGS(err, ARG(dx, T * D), ARG(dg, d), ARG(db, d), ARG(dy, T * D), ARG(x, T * D), ARG(mean, db ? T : 0),
             ARG(rstd, T), ARG(g, dx ? d : 0));
    if (T == 0)
        return 0;
    FOR_THREADS (col, D)
        moe_k_norm_param_col(dg, db, dy, x, mean, rstd, T, D, col);
    if (!dx)
        return 0;
    const int layernorm = db != NULL;
    FOR_THREADS (t, T) {
        double l1[MOE_K_LANES], l2[MOE_K_LANES];
        float m = layernorm ? mean[t] : 0.0f, rs = rstd[t];
        FOR_THREADS (k, MOE_K_LANES)
            moe_k_norm_grad_lane(&l1[k], &l2[k], x + t * D, dy + t * D, g, m, rs, D, k);
        float a = (float)(moe_k_lanes_join(l1) / (double)D), c = (float)(moe_k_lanes_join(l2) / (double)D);
        FOR_THREADS (i, D) {
            size_t j = t * D + i;
            dx[j] = layernorm ? moe_k_layernorm_dx(dx[j], x[j], dy[j], g[i], m, rs, a, c)
                              : moe_k_rmsnorm_dx(dx[j], x[j], dy[j], g[i], rs, c);
        }
    }
    return 0;
}

// ---------------------------------------------------------------- dispatch plan, gather, combine

// The memsets (kept 0, slot_row -1), the keep pass (MOE_DROP_PROB: by priority,
// a block per (slot, expert); else in token order, in chunks), the offsets and
// the rows per expert.
// The plan in chunks: the same launches as ops.cu's, chunk by chunk and expert by expert.
int moe_cuda_dispatch_plan(const struct moe_cuda_plan *p, const int32_t *idx, const float *prio, size_t T, size_t S,
                           size_t E, size_t cap, int prob, struct moe_err *err)
{
    STICKY(err);
    size_t *cnt = p->cnt;
    const size_t nc = (T * S + MOE_CUDA_PLAN_CHUNK - 1) / MOE_CUDA_PLAN_CHUNK, e = nc ? E : 0;
    DEV_ARGS(err, ARG(p->kept, T * S), ARG(p->slot_row, T * S), ARG(p->offset, E + 1),
             ARG(prio, prob ? T * S : 0), ARG(p->cnt, MOE_CUDA_PLAN_CNT(T, S, E)),
             ARG(idx, T * S), ARG(p->routed, e), ARG(p->n_kept, e), ARG(p->dropped, e));
    memset(p->kept, 0, T * S);
    memset(p->slot_row, 0xff, T * S * sizeof(int32_t));
    if (nc == 0) {
        memset(p->offset, 0, (E + 1) * sizeof(size_t));
        return 0;
    }
    if (prob) { // prob_keep_kernel: a block of 256 per (slot, expert)
        if (E == 0)
            return empty_grid("prob_keep_kernel", err);
        uint32_t *bins = malloc(MOE_K_SELECT_BINS * 256 * sizeof *bins);
        if (!bins)
            abort();
        FOR_THREADS (b, S * E)
            moe_k_prob_block(p->kept, p->routed, p->n_kept, p->dropped, bins, idx, prio, T, S, cap, b / E,
                             (int32_t)(b % E), 256);
        free(bins);
    } else {
        FOR_THREADS (c, nc)
            moe_k_chunk_count(cnt + c * E, idx, NULL, NULL, T, S, E, MOE_CUDA_PLAN_CHUNK, c, 0);
        if (E == 0) // ops.cu's scan over the experts: no blocks
            return empty_grid("chunk_scan_kernel (keep)", err);
        FOR_THREADS (e, E) {
            size_t routed = moe_k_chunk_scan(cnt, nc, E, e, 0), k = routed < cap ? routed : cap;
            p->routed[e] = routed;
            p->n_kept[e] = k;
            p->dropped[e] = routed - k;
        }
        FOR_THREADS (c, nc)
            moe_k_chunk_keep(cnt + c * E, p->kept, idx, NULL, T, S, cap, MOE_CUDA_PLAN_CHUNK, c);
    }
    moe_k_dispatch_offsets(p->offset, p->n_kept, E);
    // the rows' extent, offset[E] (at most T S: fewer with a capacity or expert choice), is known from here
    DEV_ARGS(err, ARG(p->row_tok, p->offset[E]), ARG(p->row_slot, p->offset[E]));
    FOR_THREADS (c, nc)
        moe_k_chunk_count(cnt + c * E, idx, NULL, p->kept, T, S, E, MOE_CUDA_PLAN_CHUNK, c, 1);
    FOR_THREADS (e, E)
        moe_k_chunk_scan(cnt, nc, E, e, p->offset[e]);
    FOR_THREADS (c, nc)
        moe_k_chunk_rows(cnt + c * E, idx, p->kept, T, S, MOE_CUDA_PLAN_CHUNK, c, p->row_tok, p->row_slot,
                         p->slot_row);
    return 0;
}

int moe_cuda_gather(float *xd, const float *x, const struct moe_cuda_plan *p, size_t E, size_t n_max, size_t D,
                    struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(p->offset, E + 1));
    size_t n = p->offset[E] < n_max ? p->offset[E] : n_max;
    DEV_ARGS(err, ARG(xd, n * D), START(x, n * D), ARG(p->row_tok, D ? n : 0));
    FOR_THREADS (i, n * D)
        moe_k_gather(xd, x, p->row_tok, D, i / D, i % D);
    return 0;
}

int moe_cuda_combine(float *out, const float *yd, const float *gate, const int32_t *slot_row, size_t T, size_t S,
                     size_t D, struct moe_err *err)
{
    STICKY(err);
    const size_t ts = D ? T * S : 0;
    DEV_ARGS(err, ARG(out, T * D), START(yd, ts), ARG(gate, ts), ARG(slot_row, ts));
    FOR_THREADS (i, T * D)
        moe_k_combine(out, yd, gate, slot_row, S, D, i / D, i % D);
    return 0;
}

int moe_cuda_combine_backward(float *dyd, float *dgate, const float *dout, const float *yd, const float *gate,
                              const struct moe_cuda_plan *p, size_t E, size_t n_max, size_t S, size_t D,
                              struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(p->offset, E + 1));
    size_t n = p->offset[E] < n_max ? p->offset[E] : n_max;
    DEV_ARGS(err, ARG(dyd, n * D), START(dgate, n), START(dout, n * D), ARG(yd, n * D), START(gate, n),
             ARG(p->row_tok, n), ARG(p->row_slot, n));
    // ops.cu's tiles: (row, column) elements of a chunk, then one thread per
    // row adds the chunk's products in column order
    static double prod[MOE_K_CB_ROWS][MOE_K_CB_COLS];
    for (size_t r0 = 0; r0 < n; r0 += MOE_K_CB_ROWS) {
        const size_t m = n - r0 < MOE_K_CB_ROWS ? n - r0 : MOE_K_CB_ROWS;
        double acc[MOE_K_CB_ROWS] = { 0 };
        for (size_t c0 = 0; c0 < D; c0 += MOE_K_CB_COLS) {
            const size_t w = D - c0 < MOE_K_CB_COLS ? D - c0 : MOE_K_CB_COLS;
            FOR_THREADS (i, m * w) {
                const size_t j = i / w, r = r0 + j, t = (size_t)p->row_tok[r];
                const float g = gate[t * S + (size_t)p->row_slot[r]];
                prod[j][i % w] = moe_k_combine_backward_elem(dyd, dout, yd, g, t, D, r, c0 + i % w);
            }
            if (dgate)
                FOR_THREADS (j, m)
                    moe_k_sum_tile(&acc[j], prod[j], w);
        }
        if (dgate)
            FOR_THREADS (j, m)
                dgate[(size_t)p->row_tok[r0 + j] * S + (size_t)p->row_slot[r0 + j]] += (float)acc[j];
    }
    return 0;
}

// ---------------------------------------------------------------- balancing and z losses

// ops.cu's block_sum_in_order: the block's threads compute tiles of
// MOE_K_AUX_TERMS terms, one thread adds each tile in order.
struct term_fn {
    double (*at)(const struct term_fn *f, size_t i);
    const int32_t *idx, *sel;
    const float *gate, *z, *u, *h, *p, *lse;
    size_t E, S, K, e;
};

static double block_sum_in_order(size_t n, const struct term_fn *f)
{
    double v[MOE_K_AUX_TERMS], sum = 0.0;
    for (size_t i0 = 0; i0 < n; i0 += MOE_K_AUX_TERMS) {
        const size_t m = n - i0 < MOE_K_AUX_TERMS ? n - i0 : MOE_K_AUX_TERMS;
        FOR_THREADS (i, m)
            v[i] = f->at(f, i0 + i);
        moe_k_sum_tile(&sum, v, m);
    }
    return sum;
}

static double fp_term(const struct term_fn *f, size_t t)
{
    return moe_k_aux_fp_term(f->p, f->E, t, f->e);
}

// fp_expert_kernel (one block per expert: the hits counted as integers by
// the block's threads, P_e by block_sum_in_order), fp_sum_kernel into value,
// the copy to *ret, and the gradient by (token, expert).
int moe_cuda_aux_fp(double *ret, float *dz, const int32_t *sel, const float *p, size_t T, size_t E, size_t S,
                    size_t n_slots, double scale, double *f, double *P, double *value, struct moe_err *err)
{
    STICKY(err);
    if (ret)
        *ret = 0.0;
    const size_t fwd = ret && T, TE = ret || dz ? T * E : 0;
    DEV_ARGS(err, ARG(dz, T * E), ARG(sel, fwd ? T * S : 0), ARG(p, TE), ARG(f, TE ? E : 0), ARG(P, fwd ? E : 0),
             ARG(value, fwd));
    if (T == 0)
        return 0;
    if (ret) {
        if (E == 0) // no blocks
            return empty_grid("fp_expert_kernel", err);
        FOR_THREADS (e, E) {
            unsigned long long hits = 0; // the block's threads' counts, added in any order
            FOR_THREADS (t, T)
                hits += moe_k_aux_fp_hits(sel, S, n_slots, t, e);
            const struct term_fn fn = { .at = fp_term, .p = p, .E = E, .e = e };
            f[e] = (double)hits / (double)T;
            P[e] = block_sum_in_order(T, &fn) / (double)T;
        }
        *value = moe_k_aux_fp_sum(f, P, E);
        int rc = moe_cuda_to_host(ret, value, sizeof *ret, err);
        if (rc)
            return rc;
    }
    if (!dz)
        return 0;
    FOR_THREADS (i, T * E)
        moe_k_aux_fp_grad(dz, p, f, E, scale, T, i / E, i % E);
    return 0;
}

static double importance_term(const struct term_fn *f, size_t i)
{
    return moe_k_importance_term(f->idx, f->gate, i, f->e);
}

static double load_term(const struct term_fn *f, size_t t)
{
    return moe_k_load_term(f->z, f->u, f->h, f->sel, f->E, f->S, f->K, t, f->e);
}

// importance_expert_kernel (one block per expert over the T S slots:
// block_sum_in_order), CV^2 (and its gradient g when dgate is given) into
// value and *ret, then the gradient by (token, slot).
int moe_cuda_aux_importance(double *ret, float *dgate, const int32_t *idx, const float *gate, size_t T, size_t E,
                            size_t S, float coef, double *x, double *g, double *value, struct moe_err *err)
{
    STICKY(err);
    *ret = 0.0;
    const size_t ts = E ? T * S : 0;
    DEV_ARGS(err, ARG(dgate, ts), ARG(idx, ts), ARG(gate, ts), ARG(x, E), ARG(g, dgate ? E : 0), ARG(value, E ? 1 : 0));
    if (E == 0) // no blocks
        return empty_grid("importance_expert_kernel", err);
    FOR_THREADS (e, E) {
        const struct term_fn f = { .at = importance_term, .idx = idx, .gate = gate, .e = e };
        x[e] = block_sum_in_order(T * S, &f);
    }
    *value = moe_k_cv2(dgate ? g : NULL, x, E);
    int rc = moe_cuda_to_host(ret, value, sizeof *ret, err);
    if (rc || !dgate || T == 0)
        return rc;
    FOR_THREADS (i, T * S)
        moe_k_importance_grad(dgate, idx, g, coef, i);
    return 0;
}

// load_expert_kernel (one block per expert over the T tokens:
// block_sum_in_order), CV^2 (and g when dz is given) into value and *ret, then
// the gradients token by token.
int moe_cuda_aux_load(double *ret, float *dz, float *du, const float *z, const float *u, const float *h,
                      const float *eps, const int32_t *sel, size_t T, size_t E, size_t S, size_t K, float coef,
                      double *x, double *g, double *value, struct moe_err *err)
{
    STICKY(err);
    *ret = 0.0;
    const size_t TE = E ? T * E : 0, grad = dz ? TE : 0;
    DEV_ARGS(err, ARG(dz, grad), ARG(du, grad), ARG(z, TE), ARG(u, TE), ARG(h, TE), ARG(eps, grad),
             ARG(sel, E ? T * S : 0), ARG(x, E), ARG(g, dz ? E : 0), ARG(value, E ? 1 : 0));
    if (E == 0) // no blocks
        return empty_grid("load_expert_kernel", err);
    FOR_THREADS (e, E) {
        const struct term_fn f = { .at = load_term, .z = z, .u = u, .h = h, .sel = sel, .E = E, .S = S, .K = K,
                                   .e = e };
        x[e] = block_sum_in_order(T, &f);
    }
    *value = moe_k_cv2(dz ? g : NULL, x, E);
    int rc = moe_cuda_to_host(ret, value, sizeof *ret, err);
    if (rc || !dz || T == 0)
        return rc;
    FOR_THREADS (t, T)
        moe_k_load_grad(dz, du, z, u, h, eps, sel, g, coef, E, S, K, t);
    return 0;
}

static double z_term(const struct term_fn *f, size_t t)
{
    return moe_k_z_term(f->lse, t);
}

// z_loss_kernel (one block: block_sum_in_order of lse_t^2) into value and
// *ret, then the gradient by (token, expert).
int moe_cuda_aux_z(double *ret, float *dz, const float *lse, const float *p, size_t T, size_t E, float coef,
                   double *value, struct moe_err *err)
{
    STICKY(err);
    if (ret)
        *ret = 0.0;
    const size_t grad = dz ? T * E : 0;
    DEV_ARGS(err, ARG(dz, grad), ARG(lse, ret || grad ? T : 0), ARG(p, grad), ARG(value, ret && T));
    if (T == 0)
        return 0;
    if (ret) {
        const struct term_fn fn = { .at = z_term, .lse = lse };
        const double sum = block_sum_in_order(T, &fn);
        *value = sum / (double)T;
        int rc = moe_cuda_to_host(ret, value, sizeof *ret, err);
        if (rc)
            return rc;
    }
    if (!dz)
        return 0;
    FOR_THREADS (i, T * E)
        moe_k_z_grad(dz, lse, p, E, coef, T, i / E, i % E);
    return 0;
}

// ---------------------------------------------------------------- embedding

int moe_cuda_embed_forward(float *out, const int32_t *tok, size_t ld, const float *wte, const float *wpe, size_t B,
                           size_t C, size_t D, struct moe_err *err)
{
    STICKY(err);
    size_t n = B * C;
    DEV_ARGS(err, ARG(out, n * D), ARG(tok, n ? (B - 1) * ld + C : 0), START(wte, n * D), ARG(wpe, n ? C * D : 0));
    FOR_THREADS (i, n * D)
        moe_k_embed_forward(out, tok, ld, wte, wpe, C, D, i / D, i % D);
    return 0;
}

int moe_cuda_lang_rows(float *radd, const float *le, const int32_t *lang, size_t B, size_t C, size_t D,
                       struct moe_err *err)
{
    STICKY(err);
    const size_t n = B * C * D;
    DEV_ARGS(err, ARG(radd, n), START(le, n), ARG(lang, n ? B : 0));
    FOR_THREADS (i, B * C * D)
        moe_k_lang_rows(radd, le, lang, C, D, i / D, i % D);
    return 0;
}

int moe_cuda_lang_grad(float *dle, const float *dradd, const int32_t *lang, size_t B, size_t C, size_t D, size_t G,
                       struct moe_err *err)
{
    STICKY(err);
    const size_t used = G * D != 0;
    DEV_ARGS(err, ARG(dle, G * D), ARG(dradd, used * B * C * D), ARG(lang, used * B));
    FOR_THREADS (i, G * D)
        moe_k_lang_grad(dle, dradd, lang, B, C, D, i / D, i % D);
    return 0;
}

// cub::DeviceRadixSort::SortPairs of n (key, value) pairs: four stable passes
// of 8 bits over the keys with their sign bit flipped (signed order), through
// the ping-pong buffers tk, tv; the inputs are left as they are.
static void sort_pairs(int32_t *keys_out, int32_t *vals_out, const int32_t *keys_in, const int32_t *vals_in,
                       int32_t *tk, int32_t *tv, size_t n)
{
    const int32_t *ki = keys_in, *vi = vals_in;
    for (unsigned pass = 0; pass < 4; pass++) {
        int32_t *ko = pass % 2 ? keys_out : tk, *vo = pass % 2 ? vals_out : tv;
        const unsigned shift = 8 * pass;
        size_t at[257] = { 0 };
        for (size_t i = 0; i < n; i++)
            at[((((uint32_t)ki[i] ^ 0x80000000u) >> shift) & 0xffu) + 1]++;
        for (size_t d = 0; d < 256; d++)
            at[d + 1] += at[d];
        for (size_t i = 0; i < n; i++) {
            size_t j = at[(((uint32_t)ki[i] ^ 0x80000000u) >> shift) & 0xffu]++;
            ko[j] = ki[i];
            vo[j] = vi[i];
        }
        ki = ko;
        vi = vo;
    }
}

// The sort's scratch: the keys and values of one pass.
int moe_cuda_embed_sort_bytes(size_t n, size_t *ret, struct moe_err *err)
{
    (void)err;
    *ret = 2 * n * sizeof(int32_t);
    return 0;
}

// ids and rows, their stable sort by id into sorted_ids and order (in the
// caller's scratch, as cub's temporary storage), then the token rows by (id,
// column) and the position rows by (position, column).
int moe_cuda_embed_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tok, size_t ld, size_t B,
                            size_t C, size_t D, size_t V, int32_t *ids, int32_t *sorted_ids, int32_t *rows,
                            int32_t *order, void *sort, size_t sort_bytes, struct moe_err *err)
{
    STICKY(err);
    size_t n = B * C;
    DEV_ARGS(err, ARG(dwte, n ? V * D : 0), ARG(dwpe, n ? C * D : 0), ARG(dout, n * D),
             ARG(tok, n ? (B - 1) * ld + C : 0), ARG(ids, n), ARG(sorted_ids, n), ARG(rows, n), ARG(order, n),
             ARG_BYTES(sort, n ? sort_bytes : 0));
    if (n == 0)
        return 0;
    size_t need;
    moe_cuda_embed_sort_bytes(n, &need, err);
    if (need > sort_bytes)
        return moe_error(err, MOE_EINVAL, "CUDA: the embedding backward's sort needs %zu bytes of scratch, given %zu",
                         need, sort_bytes);
    FOR_THREADS (r, n) {
        ids[r] = tok[(r / C) * ld + r % C];
        rows[r] = (int32_t)r;
    }
    sort_pairs(sorted_ids, order, ids, rows, (int32_t *)sort, (int32_t *)sort + n, n);
    FOR_THREADS (i, V * D) {
        int32_t id = (int32_t)(i / D);
        size_t start = moe_k_lower_bound(sorted_ids, n, id), end = moe_k_lower_bound(sorted_ids, n, id + 1);
        if (start < end)
            moe_k_embed_backward_tok(dwte, dout, order, start, end, D, (size_t)id, i % D);
    }
    FOR_THREADS (i, C * D)
        moe_k_embed_backward_pos(dwpe, dout, B, C, D, i / D, i % D);
    return 0;
}

// ---------------------------------------------------------------- optimizer, gradient norm

int moe_cuda_optim_update(const struct moe_k_optim *o, float *w, float *g, float *m, float *v, size_t n,
                          struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(w, n), ARG(g, n), ARG(m, o->type != MOE_K_GD ? n : 0), ARG(v, o->type == MOE_K_ADAMW ? n : 0));
    if (cuda_host_fail_optim > 0 && --cuda_host_fail_optim == 0) {
        cuda_host_sticky = 1;
        return moe_error(err, MOE_EIO, "CUDA: %s failed: %s", "optim_kernel", "an illegal memory access was encountered");
    }
    FOR_THREADS (i, n)
        moe_k_optim_elem(o, i, w, g, m, v);
    return 0;
}

// Scratch: the (block, lane) sums, then the blocks' sums, then the total.
int moe_cuda_fold(float *a, const float *g, float *out, size_t n, float w, size_t k, int last, struct moe_err *err)
{
    STICKY(err);
    const size_t m = k == 0 && last ? 0 : n;
    DEV_ARGS(err, ARG(a, m), ARG(g, m), ARG(out, k && last ? n : 0));
    if (n == 0 || (k == 0 && last))
        return 0;
    FOR_THREADS (i, n)
        moe_k_fold(a, g, out, i, w, k, last);
    return 0;
}

int moe_cuda_lora_merge(float *w, const float *w0, const float *delta, size_t n, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(w, n), ARG(w0, n), ARG(delta, n));
    FOR_THREADS (i, n)
        moe_k_lora_merge(w, w0, delta, i);
    return 0;
}

// sumsq_lane_kernel, then sumsq_block_kernel: its block's part sums (shared
// memory there), then its thread 0 adding them to *acc.
int moe_cuda_sum_sq(double *acc, const float *g, size_t n, double *scratch, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(acc, 1), ARG(g, n), ARG(scratch, MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES));
    double *lanes = scratch, part[MOE_K_SQ_BLOCKS];
    FOR_THREADS (i, (size_t)MOE_K_SQ_BLOCKS * MOE_K_SQ_LANES)
        moe_k_sumsq_lane(lanes, g, n, i / MOE_K_SQ_LANES, i % MOE_K_SQ_LANES);
    FOR_THREADS (b, MOE_K_SQ_BLOCKS)
        moe_k_sumsq_block(part, lanes, b);
    moe_k_sumsq_total(acc, part);
    return 0;
}

// ---------------------------------------------------------------- cross-entropy

// ce_row_kernel (lse kept), ce_grad_kernel, ce_block_kernel into part, then
// the blocks copied back and added in order.
int moe_cuda_ce_rows(double *sum, float *dy, float *row_loss, int32_t *row_argmax, const float *y,
                     const int32_t *label, size_t T, size_t O, float scale, double *part, double *lse,
                     struct moe_err *err)
{
    STICKY(err);
    *sum = 0.0;
    DEV_ARGS(err, ARG(dy, T * O), ARG(row_loss, T), ARG(row_argmax, T), ARG(y, T * O), ARG(label, T),
             ARG(part, T ? MOE_K_CE_BLOCKS : 0), ARG(lse, T));
    if (T == 0)
        return 0;
    FOR_THREADS (t, T) {
        const float *yt = y + t * O;
        int32_t am;
        float m = moe_k_ce_max(yt, O, &am);
        double s = 0.0;
        for (size_t o = 0; o < O; o++)
            s += moe_expf1(moe_k_ce_shift(yt[o], m));
        double l = moe_k_ce_lse(m, s);
        lse[t] = l;
        double loss = moe_k_ce_loss(l, yt, label[t]);
        if (row_loss)
            row_loss[t] = (float)loss;
        if (row_argmax)
            row_argmax[t] = am;
    }
    if (dy)
        FOR_THREADS (j, T * O) {
            size_t t = j / O, o = j % O;
            moe_k_ce_grad_elem(&dy[j], moe_expf1(moe_k_ce_grad_arg(y[j], lse[t])), scale);
            if ((int32_t)o == label[t])
                moe_k_ce_grad_label(&dy[j], scale);
        }
    FOR_THREADS (b, MOE_K_CE_BLOCKS) {
        size_t lo, hi;
        moe_k_ce_block(T, b, &lo, &hi);
        double acc = 0.0;
        for (size_t t = lo; t < hi; t++)
            acc += moe_k_ce_loss(lse[t], y + t * O, label[t]);
        part[b] = acc;
    }
    double h[MOE_K_CE_BLOCKS];
    int rc = moe_cuda_to_host(h, part, sizeof h, err);
    if (rc)
        return rc;
    for (size_t b = 0; b < MOE_K_CE_BLOCKS; b++)
        *sum += h[b];
    return 0;
}

// ---------------------------------------------------------------- distillation losses, squared error

// distill_row_kernel, distill_grad_kernel (dy given), then ordered_sum_kernel
// into the scratch's last double and its copy to *sum. Scratch: lse_s, lse_z,
// row, qp (T each), total.
static int distill(int sym, double *sum, float *dy, const float *s, const float *z, size_t T, size_t O, double tau,
                   float scale, double *scratch, struct moe_err *err)
{
    if (sum)
        *sum = 0.0;
    if (T == 0 || O == 0)
        return 0;
    double *lse_s = scratch, *lse_z = scratch + T, *row = scratch + 2 * T, *qp = scratch + 3 * T,
           *total = scratch + 4 * T;
    FOR_THREADS (t, T) {
        const float *st = s + t * O, *zt = z + t * O;
        double ls = moe_k_lse_tau(st, O, tau), lz = moe_k_lse_tau(zt, O, tau);
        lse_s[t] = ls, lse_z[t] = lz;
        if (sym) {
            double pq, q;
            moe_k_symkl_row(&pq, &q, st, zt, O, ls, lz);
            qp[t] = q;
            row[t] = pq + q;
        } else {
            row[t] = moe_k_kd_row(st, zt, O, tau, ls, lz);
        }
    }
    if (dy)
        FOR_THREADS (j, T * O) {
            size_t t = j / O;
            if (sym)
                moe_k_symkl_grad(&dy[j], s[j], z[j], lse_s[t], lse_z[t], qp[t], scale);
            else
                moe_k_kd_grad(&dy[j], s[j], z[j], tau, lse_s[t], lse_z[t], scale);
        }
    if (!sum)
        return 0;
    double acc = 0.0;
    for (size_t i = 0; i < T; i++)
        acc += row[i];
    *total = acc;
    return moe_cuda_to_host(sum, total, sizeof *sum, err);
}

int moe_cuda_kd(double *sum, float *dy, const float *s, const float *z, size_t T, size_t O, float tau, float scale,
                double *scratch, struct moe_err *err)
{
    STICKY(err);
    const size_t to = T && O ? T * O : 0; // distill's scratch: lse_s, lse_z, row, qp (T each), and total for sum
    DEV_ARGS(err, ARG(dy, to), ARG(s, to), ARG(z, to), ARG(scratch, to ? 4 * T + (sum != NULL) : 0));
    return distill(0, sum, dy, s, z, T, O, (double)tau, scale, scratch, err);
}

int moe_cuda_symkl(double *sum, float *dy, const float *s, const float *z, size_t T, size_t O, float scale,
                   double *scratch, struct moe_err *err)
{
    STICKY(err);
    const size_t to = T && O ? T * O : 0; // distill's scratch: lse_s, lse_z, row, qp (T each), and total for sum
    DEV_ARGS(err, ARG(dy, to), ARG(s, to), ARG(z, to), ARG(scratch, to ? 4 * T + (sum != NULL) : 0));
    return distill(1, sum, dy, s, z, T, O, 1.0, scale, scratch, err);
}

// mse_grad_kernel (dy given), then mse_sum_kernel into scratch and its copy to *sum.
int moe_cuda_mse(double *sum, float *dy, const float *y, const float *d, size_t n, float scale, double *scratch,
                 struct moe_err *err)
{
    STICKY(err);
    if (sum)
        *sum = 0.0;
    const size_t used = dy || sum ? n : 0;
    DEV_ARGS(err, ARG(dy, n), ARG(y, used), ARG(d, used), ARG(scratch, sum && n));
    if (n == 0)
        return 0;
    if (dy)
        FOR_THREADS (i, n)
            moe_k_mse_grad(&dy[i], y[i], d[i], scale);
    if (!sum)
        return 0;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++)
        acc += moe_k_sq_term(y[i], d[i]);
    *scratch = acc;
    return moe_cuda_to_host(sum, scratch, sizeof *sum, err);
}

// ---------------------------------------------------------------- activations

int moe_cuda_act_forward(enum moe_cuda_act a, float *y, const float *x, size_t n, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(y, n), ARG(x, n));
    FOR_THREADS (i, n) {
        float v = x[i];
        y[i] = a == MOE_CUDA_RELU ? moe_k_relu(v)
             : a == MOE_CUDA_GELU ? moe_k_gelu(v, moe_tanhf1(moe_k_gelu_inner(v)))
                                  : moe_k_silu(v, moe_expf1(-v));
    }
    return 0;
}

int moe_cuda_act_backward(enum moe_cuda_act a, float *dx, const float *dy, const float *x, size_t n,
                          struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(dx, n), ARG(dy, n), ARG(x, n));
    FOR_THREADS (i, n) {
        float v = x[i];
        dx[i] = a == MOE_CUDA_RELU ? moe_k_relu_dx(dy[i], v)
              : a == MOE_CUDA_GELU ? moe_k_gelu_dx(dy[i], v, moe_tanhf1(moe_k_gelu_inner(v)))
                                   : moe_k_silu_dx(dy[i], v, moe_expf1(-v));
    }
    return 0;
}

// ---------------------------------------------------------------- causal self-attention

static int attn_shape(size_t D, size_t H, struct moe_err *err)
{
    if (H == 0 || D % H != 0)
        return moe_error(err, MOE_EINVAL, "CUDA attention: n_embd %zu is not a multiple of the heads %zu", D, H);
    return 0;
}

static int drop_on(const struct moe_cuda_drop *d) { return d && d->p > 0.0f; }

static struct moe_k_drop drop_make(const struct moe_cuda_drop *d)
{
    return moe_k_drop_make(d->p, d->seed, d->step, d->site);
}

// Scores by element, the softmax by row (shift, the library's exp, normalise),
// with d on the dropout by element, then out by element.
int moe_cuda_attention_forward_drop(float *out, float *att, float *attp, const float *qkv, size_t B, size_t C,
                                    size_t D, size_t H, const struct moe_cuda_drop *d, struct moe_err *err)
{
    STICKY(err);
    int rc = attn_shape(D, H, err);
    if (rc)
        return rc;
    const size_t na = B * H * C * C;
    DEV_ARGS(err, ARG(out, B * C * D), ARG(att, na), ARG(attp, drop_on(d) ? na : 0), ARG(qkv, B * C * 3 * D));
    if (B * C == 0)
        return 0;
    const size_t rows = B * H * C, no = B * C * D;
    FOR_THREADS (i, na)
        moe_k_attn_score(att, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    FOR_THREADS (r, rows) {
        size_t n = moe_k_attn_shift_row(att, C, r);
        for (size_t s = 0; s < n; s++)
            att[r * C + s] = moe_expf1(att[r * C + s]);
        moe_k_attn_normalise_row(att, C, r);
    }
    if (drop_on(d)) {
        const struct moe_k_drop k = drop_make(d);
        FOR_THREADS (i, na)
            moe_k_attn_drop(att, attp, &k, C, i);
    }
    FOR_THREADS (i, no)
        moe_k_attn_out(out, att, qkv, C, D, H, i / (C * D), i / D % C, i % D);
    return 0;
}

int moe_cuda_attention_forward(float *out, float *att, const float *qkv, size_t B, size_t C, size_t D, size_t H,
                               struct moe_err *err)
{
    STICKY(err);
    int rc = attn_shape(D, H, err); // its error first, as the call below gives it
    if (rc)
        return rc;
    DEV_ARGS(err, ARG(out, B * C * D), ARG(att, B * H * C * C), ARG(qkv, B * C * 3 * D));
    return moe_cuda_attention_forward_drop(out, att, NULL, qkv, B, C, D, H, NULL, err);
}

// dP by element, with d on dP' to dP by element, dS by row (from attp with d
// on, else att), then dqkv by element.
int moe_cuda_attention_backward_drop(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                     const float *attp, size_t B, size_t C, size_t D, size_t H,
                                     const struct moe_cuda_drop *d, struct moe_err *err)
{
    STICKY(err);
    int rc = attn_shape(D, H, err);
    if (rc)
        return rc;
    const int on = drop_on(d);
    const size_t na = B * H * C * C, rows = B * H * C, nq = B * C * 3 * D;
    DEV_ARGS(err, ARG(dqkv, nq), ARG(datt, na), ARG(dout, B * C * D), ARG(qkv, nq), ARG(att, na),
             ARG(attp, on ? na : 0));
    if (B * C == 0)
        return 0;
    FOR_THREADS (i, na)
        moe_k_attn_dp(datt, dout, qkv, C, D, H, i / (C * C), i / C % C, i % C);
    if (on) {
        const struct moe_k_drop k = drop_make(d);
        FOR_THREADS (i, na)
            moe_k_attn_drop_grad(datt, &k, C, i);
    }
    FOR_THREADS (r, rows)
        moe_k_attn_dsoftmax_row(datt, on ? attp : att, C, r);
    FOR_THREADS (i, nq)
        moe_k_attn_dqkv(dqkv, datt, att, dout, qkv, C, D, H, i / (C * 3 * D), i / (3 * D) % C, i % (3 * D));
    return 0;
}

int moe_cuda_attention_backward(float *dqkv, float *datt, const float *dout, const float *qkv, const float *att,
                                size_t B, size_t C, size_t D, size_t H, struct moe_err *err)
{
    STICKY(err);
    int rc = attn_shape(D, H, err); // its error first, as the call below gives it
    if (rc)
        return rc;
    const size_t na = B * H * C * C, nq = B * C * 3 * D;
    DEV_ARGS(err, ARG(dqkv, nq), ARG(datt, na), ARG(dout, B * C * D), ARG(qkv, nq), ARG(att, na));
    return moe_cuda_attention_backward_drop(dqkv, datt, dout, qkv, att, NULL, B, C, D, H, NULL, err);
}

// ---------------------------------------------------------------- dropout

int moe_cuda_dropout(float *x, size_t n, uint64_t first, const struct moe_cuda_drop *d, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(x, drop_on(d) ? n : 0));
    if (!drop_on(d) || n == 0)
        return 0;
    const struct moe_k_drop k = drop_make(d);
    FOR_THREADS (j, n)
        moe_k_dropout(x, &k, first, j);
    return 0;
}

// By element (r, column): row r's mask key from its token and slot, or r.
int moe_cuda_dropout_rows(float *x, size_t N, size_t F, const int32_t *row_tok, const int32_t *row_slot, size_t S,
                          const struct moe_cuda_drop *d, struct moe_err *err)
{
    STICKY(err);
    const size_t used = drop_on(d) && F ? N : 0;
    DEV_ARGS(err, ARG(x, used * F), ARG(row_tok, used), ARG(row_slot, row_tok ? used : 0));
    if (!drop_on(d) || N * F == 0)
        return 0;
    const struct moe_k_drop k = drop_make(d);
    FOR_THREADS (i, N * F) {
        size_t r = i / F;
        uint64_t key = row_tok ? (uint64_t)row_tok[r] * S + (uint64_t)row_slot[r] : r;
        moe_k_dropout(x + r * F, &k, key * F, i % F);
    }
    return 0;
}

// ---------------------------------------------------------------- linear bias, residual add

int moe_cuda_bias_rows(float *y, size_t ldy, const float *b, size_t T, size_t O, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(y, T && O ? (T - 1) * ldy + O : 0), ARG(b, T ? O : 0));
    FOR_THREADS (i, T * O)
        moe_k_bias_rows(y, ldy, b, i / O, i % O);
    return 0;
}

int moe_cuda_bias_grad(float *db, const float *dy, size_t lddy, size_t T, size_t O, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(db, T ? O : 0), ARG(dy, T && O ? (T - 1) * lddy + O : 0));
    if (T * O == 0)
        return 0;
    FOR_THREADS (o, O)
        moe_k_bias_grad(db, dy, lddy, T, o);
    return 0;
}

int moe_cuda_add(float *y, const float *x, size_t n, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(y, n), ARG(x, n));
    FOR_THREADS (i, n)
        moe_k_add(y, x, i);
    return 0;
}

// ---------------------------------------------------------------- GEMMs (blas.h)

int moe_cuda_blas_init(struct moe_err *err)
{
    STICKY(err);
    return 0;
}

// The bytes [lo, hi) a row-major rows x cols operand with leading dimension ld spans.
struct span {
    uintptr_t lo, hi;
};

static struct span span_of(const float *p, size_t rows, size_t cols, size_t ld)
{
    struct span s = { (uintptr_t)p, (uintptr_t)p };
    if (rows && cols)
        s.hi = (uintptr_t)(p + (rows - 1) * ld + cols);
    return s;
}

static int spans_meet(struct span a, struct span b) { return a.lo < b.hi && b.lo < a.hi; }

// Each operand of a product inside one live device allocation (cuBLAS reads
// and writes past an end silently on a GPU). A is M x K (K x M transposed), B
// K x N (N x K transposed); no K, no A or B read.
static int gemm_operands(int ta, int tb, size_t M, size_t N, size_t K, const float *A, size_t lda, const float *B,
                         size_t ldb, const float *C, size_t ldc, const char *what, struct moe_err *err)
{
    struct span a = ta ? span_of(A, K, M, lda) : span_of(A, M, K, lda);
    struct span b = tb ? span_of(B, N, K, ldb) : span_of(B, K, N, ldb);
    struct span c = span_of(C, M, N, ldc);
    int rc = dev_span(A, a.hi - a.lo, what, "A", err);
    if (!rc)
        rc = dev_span(B, b.hi - b.lo, what, "B", err);
    if (!rc)
        rc = dev_span(C, c.hi - c.lo, what, "C", err);
    return rc;
}

// cuBLAS's early returns, blas.cu's int sizes, then the CPU library's product.
int moe_cuda_gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A, size_t lda,
                  const float *B, size_t ldb, float beta, float *C, size_t ldc, const char *what,
                  struct moe_err *err)
{
    STICKY(err);
    if (M == 0 || N == 0 || (K == 0 && beta == 1.0f))
        return 0;
    int rc = moe_cuda_gemm_int_sizes(M, N, K, lda, ldb, ldc, what, err);
    if (!rc)
        rc = gemm_operands(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, what, err);
    if (rc)
        return rc;
    moe_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return 0;
}

// cublasGemmGroupedBatchedEx runs the groups concurrently: a group that
// writes what another reads or writes is a race there (blas.h). The emulation
// runs them one after another, so it checks instead: no group's C may meet
// another's A, B or C (their spans; only the groups that compute something).
static int groups_disjoint(int ta, int tb, size_t G, const struct moe_cuda_gemm_group *g, size_t lda, size_t ldb,
                           float beta, size_t ldc, const char *what, struct moe_err *err)
{
    for (size_t i = 0; i < G; i++) {
        if (g[i].M == 0 || g[i].N == 0 || (g[i].K == 0 && beta == 1.0f))
            continue;
        struct span c = span_of(g[i].C, g[i].M, g[i].N, ldc);
        for (size_t j = 0; j < G; j++) {
            if (j == i || g[j].M == 0 || g[j].N == 0 || (g[j].K == 0 && beta == 1.0f))
                continue;
            struct span a = ta ? span_of(g[j].A, g[j].K, g[j].M, lda) : span_of(g[j].A, g[j].M, g[j].K, lda);
            struct span b = tb ? span_of(g[j].B, g[j].N, g[j].K, ldb) : span_of(g[j].B, g[j].K, g[j].N, ldb);
            const char *met = spans_meet(c, span_of(g[j].C, g[j].M, g[j].N, ldc)) ? "writes"
                            : spans_meet(c, a) || spans_meet(c, b)                 ? "reads"
                                                                                    : NULL;
            if (met)
                return moe_error(err, MOE_EINVAL,
                                 "cuBLAS grouped GEMM (%s): group %zu writes what group %zu %s (the groups run "
                                 "concurrently)",
                                 what, i, j, met);
        }
    }
    return 0;
}

// blas.cu's fallback without cublasGemmGroupedBatchedEx: each group as
// moe_cuda_gemm, so the bits are a per-group loop's, after the check that the
// groups could run concurrently (groups_disjoint).
int moe_cuda_gemm_grouped(int ta, int tb, size_t G, const struct moe_cuda_gemm_group *g, float alpha, size_t lda,
                          size_t ldb, float beta, size_t ldc, const char *what, struct moe_err *err)
{
    STICKY(err);
    int rc = 0;
    for (size_t i = 0; i < G && !rc; i++) // blas.cu checks every group's sizes before any product
        if (!(g[i].M == 0 || g[i].N == 0 || (g[i].K == 0 && beta == 1.0f)))
            rc = moe_cuda_gemm_int_sizes(g[i].M, g[i].N, g[i].K, lda, ldb, ldc, what, err);
    if (!rc)
        rc = groups_disjoint(ta, tb, G, g, lda, ldb, beta, ldc, what, err);
    if (rc)
        return rc;
    FOR_THREADS (i, G)
        if ((rc = moe_cuda_gemm(ta, tb, g[i].M, g[i].N, g[i].K, alpha, g[i].A, lda, g[i].B, ldb, beta, g[i].C, ldc,
                                what, err)))
            return rc;
    return 0;
}

const char *moe_cuda_gemm_grouped_path(void) { return "per-group moe_gemm (host emulation)"; }

// ---------------------------------------------------------------- device, memset, events

int moe_cuda_use_device(int id, struct moe_err *err)
{
    STICKY(err);
    (void)id;
    return 0;
}

int moe_cuda_copy(void *dst, const void *src, size_t bytes, struct moe_err *err)
{
    STICKY(err);
    int rc = dev_span(dst, bytes, "cudaMemcpy device to device", "the destination", err);
    if (!rc)
        rc = dev_span(src, bytes, "cudaMemcpy device to device", "the source", err);
    if (!rc && bytes)
        memcpy(dst, src, bytes);
    return rc;
}

int moe_cuda_memset(void *p, int value, size_t bytes, const char *what, struct moe_err *err)
{
    STICKY(err);
    int rc = dev_span(p, bytes, "cudaMemset", what, err);
    if (!rc && bytes)
        memset(p, value, bytes);
    return rc;
}

// An event is the host's monotonic clock when it is recorded (everything
// before it has run: the emulated launches are synchronous).
struct moe_cuda_event {
    double t;
};

int moe_cuda_event_create(struct moe_cuda_event **ret, struct moe_err *err)
{
    STICKY(err);
    *ret = calloc(1, sizeof **ret);
    return *ret ? 0 : moe_error(err, MOE_ENOMEM, "out of memory");
}

void moe_cuda_event_free(struct moe_cuda_event *e) { free(e); }

int moe_cuda_event_record(struct moe_cuda_event *e, struct moe_err *err)
{
    STICKY(err);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    e->t = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    return 0;
}

int moe_cuda_event_elapsed(double *ret_seconds, struct moe_cuda_event *a, struct moe_cuda_event *b,
                           struct moe_err *err)
{
    STICKY(err);
    *ret_seconds = b->t - a->t;
    return 0;
}

// ---------------------------------------------------------------- the MoE layer's small steps

int moe_cuda_jitter(float *xr, float *jit, const float *x, size_t n, float eps, uint64_t seed, uint32_t purpose,
                    uint32_t stream, uint64_t base, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(xr, n), ARG(jit, n), ARG(x, n));
    FOR_THREADS (i, n)
        moe_k_jitter(xr, jit, x, eps, seed, purpose, stream, base, i);
    return 0;
}

int moe_cuda_jitter_back(float *dx, const float *dxr, const float *jit, size_t n, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(dx, n), ARG(dxr, n), ARG(jit, n));
    FOR_THREADS (i, n)
        moe_k_jitter_back(dx, dxr, jit, i);
    return 0;
}

int moe_cuda_mul(float *h, const float *b, size_t n, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(h, n), ARG(b, n));
    FOR_THREADS (i, n)
        moe_k_mul(h, b, i);
    return 0;
}

int moe_cuda_swiglu_back(float *db, float *dh, const float *b, size_t n, struct moe_err *err)
{
    STICKY(err);
    DEV_ARGS(err, ARG(db, n), ARG(dh, n), ARG(b, n));
    FOR_THREADS (i, n)
        moe_k_swiglu_back(db, dh, b, i);
    return 0;
}

int moe_cuda_scatter(float *dx, const float *dxd, const int32_t *slot_row, size_t T, size_t S, size_t D,
                     struct moe_err *err)
{
    STICKY(err);
    const size_t ts = D ? T * S : 0;
    DEV_ARGS(err, ARG(dx, T * D), START(dxd, ts), ARG(slot_row, ts));
    FOR_THREADS (i, T * D)
        moe_k_scatter(dx, dxd, slot_row, S, D, i / D, i % D);
    return 0;
}
