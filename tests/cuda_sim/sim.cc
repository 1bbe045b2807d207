// sim.cc: the CUDA simulator's runtime (tests/cuda_sim/README.md): device
// memory, errors, events, the device's properties, and the launch of a
// kernel over its grid with every block's threads as coroutines, so that
// __syncthreads works as on a GPU. For the tests only; not part of libmoe.
//
// Launches. The blocks of a grid run one after another; the threads of a
// block run as coroutines on one host thread (their own stacks, switched by
// moe_sim_switch below; as plain calls when the block has no barrier:
// run_block), each to its next
// __syncthreads or its end, in increasing thread order (decreasing with
// MOE_CUDA_SIM_ORDER=reverse, which also runs the blocks last to first). When
// every thread waits at the barrier, all go on. A block of which some threads
// have returned while the others wait at a barrier stops the program, the
// kernel named: CUDA allows a barrier in conditional code only where the
// condition is the block's, and what a GPU does otherwise depends on the
// GPU. A kernel whose threads read
// what another thread of the block writes between two barriers (a race on a
// GPU) gives other results in one order than in the other; the tests run
// both. A grid or block the CUDA runtime would refuse (a zero or too large
// dimension, more than 1024 threads) is refused the same way: the launch
// runs nothing and its error is the runtime's last error
// (cudaErrorInvalidConfiguration).
//
// Device memory. Each cudaMalloc is a mapping of its own, the allocation at
// the end of its pages and an inaccessible page after it, so a kernel that
// reads or writes past an allocation (beyond cudaMalloc's 256-byte rounding)
// dies with SIGSEGV, which this file reports with the kernel's name. New
// memory is filled with 0xff bytes (NaN floats, -1 integers), as stale
// device memory would hold garbage. With MOE_CUDA_SIM_GUARD=1 device memory
// is also inaccessible outside launches, copies and the simulated libraries,
// so host code that touches it directly (a wrapper reading a device pointer)
// dies the same way. MOE_CUDA_SIM_MEMORY=<bytes> sets the device's size
// (default 80 GiB, as an H100's); an allocation beyond it fails with
// cudaErrorMemoryAllocation, as on a full device. MOE_CUDA_SIM_DEVICES=<n>
// sets the number of devices (default 1; 0: cudaGetDeviceCount fails with
// cudaErrorNoDevice).
//
// Faults. MOE_CUDA_SIM_FAULT=<kernel>:<n> makes the n-th launch of that
// kernel fault as a kernel that reads an illegal address does: the launch
// itself succeeds, the kernel does not run, and from then on the error
// (cudaErrorIllegalAddress) is sticky, as a spoilt CUDA context's: the next
// synchronisation returns it, cudaGetLastError returns it without clearing
// it, and every later allocation, copy, launch and cuBLAS call fails with it.
#include <cuda_runtime.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIM_ASAN 1
#endif
#endif
#ifdef SIM_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

static cudaError_t last_error = cudaSuccess;
static cudaError_t sticky = cudaSuccess; // a faulted kernel's

static cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}

extern "C" int moe_sim_sticky(void) { return (int)sticky; }

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < 0) {
        fprintf(stderr, "cuda_sim: %s=%s is not a count\n", name, v);
        exit(2);
    }
    return x;
}

// ---------------------------------------------------------------- device memory

namespace {
struct alloc {
    char *map;       // the mapping: pages, then the guard page
    size_t map_size; // with the guard page
    size_t bytes;    // asked for
};
} // namespace

static std::map<uintptr_t, alloc> allocs; // by the allocation's first byte
static size_t used;
static int guard;       // MOE_CUDA_SIM_GUARD=1 (set by sim_init)
static int opened = 0;  // device memory accessible now (guard mode)
static const char *in_kernel; // the kernel running now, for the SIGSEGV report
static size_t page;

static size_t device_memory(void)
{
    static long m = -2;
    if (m == -2)
        m = env_long("MOE_CUDA_SIM_MEMORY", 80L << 30);
    return (size_t)m;
}

static void set_access(const alloc &a, int prot)
{
    if (mprotect(a.map, a.map_size - page, prot) != 0) {
        perror("cuda_sim: mprotect");
        abort();
    }
}

static void sim_init(void);
extern "C" void moe_sim_device_access(int open);
// Device memory open for the span of a launch, copy or library call (guard
// mode); nested spans keep it open.
struct device_open {
    device_open() { moe_sim_device_access(1); }
    ~device_open() { moe_sim_device_access(0); }
};

// In guard mode device memory stays inaccessible; while it is open, the
// first touch of an allocation faults, and segv() makes that allocation
// accessible and lets the access go on (touched lists them); closing makes
// those inaccessible again. So a launch costs a fault per allocation it
// touches, not an mprotect per live allocation.
static std::vector<uintptr_t> touched;

extern "C" void moe_sim_device_access(int open)
{
    sim_init();
    if (!guard)
        return;
    if (open) {
        opened++;
        return;
    }
    if (--opened > 0)
        return;
    for (uintptr_t p : touched) {
        auto it = allocs.find(p);
        if (it != allocs.end()) // not freed meanwhile
            set_access(it->second, PROT_NONE);
    }
    touched.clear();
}

static void segv(int sig, siginfo_t *si, void *ctx)
{
    (void)ctx;
    char msg[512];
    uintptr_t a = (uintptr_t)si->si_addr;
    const alloc *hit = NULL;
    uintptr_t base = 0;
    // the allocation whose mapping (guard page included) holds the address:
    // each starts less than a page before its allocation's first byte, so it
    // is one of the two last allocations starting before a + page
    auto it = allocs.upper_bound(a + page);
    for (int back = 0; back < 2 && it != allocs.begin() && !hit; back++) {
        --it;
        if (a >= (uintptr_t)it->second.map && a < (uintptr_t)it->second.map + it->second.map_size)
            hit = &it->second, base = it->first;
    }
    if (hit && guard && opened > 0 && a < (uintptr_t)hit->map + hit->map_size - page) {
        // guard mode, device memory open: the allocation's first touch here
        set_access(*hit, PROT_READ | PROT_WRITE);
        touched.push_back(base);
        return;
    }
    int n;
    if (in_kernel)
        n = snprintf(msg, sizeof msg, "cuda_sim: kernel %s touched %p, %s\n", in_kernel, si->si_addr,
                     hit ? "past the end of a device allocation" : "outside device memory");
    else if (hit)
        n = snprintf(msg, sizeof msg,
                     "cuda_sim: host code touched device memory at %p (the allocation of %zu bytes at %p) outside "
                     "any launch or copy\n",
                     si->si_addr, hit->bytes, (void *)base);
    else
        n = snprintf(msg, sizeof msg, "cuda_sim: SIGSEGV at %p\n", si->si_addr);
    if (n > 0)
        (void)!write(2, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void sim_init(void)
{
    if (page)
        return;
    guard = env_long("MOE_CUDA_SIM_GUARD", 0) != 0;
    page = (size_t)sysconf(_SC_PAGESIZE);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
}

extern "C" int moe_sim_device_span(const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin())
        return 0;
    --it;
    return a >= it->first && a - it->first <= it->second.bytes && bytes <= it->second.bytes - (a - it->first);
}

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    sim_init();
    *ptr = NULL;
    if (sticky)
        return sticky;
    if (bytes == 0)
        return cudaSuccess; // CUDA: a NULL pointer, no error
    if (bytes > device_memory() - used)
        return fail(cudaErrorMemoryAllocation);
    size_t rounded = (bytes + 255) / 256 * 256;
    size_t pages = (rounded + page - 1) / page * page;
    size_t map_size = pages + page;
    char *m = (char *)mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return fail(cudaErrorMemoryAllocation);
    alloc a = { m, map_size, bytes };
    if (mprotect(m + pages, page, PROT_NONE) != 0) {
        munmap(m, map_size);
        return fail(cudaErrorMemoryAllocation);
    }
    char *p = m + pages - rounded; // 256-byte aligned, as cudaMalloc's, and at the guard page
    memset(p, 0xff, rounded);
    if (guard)
        set_access(a, PROT_NONE);
    allocs[(uintptr_t)p] = a;
    used += bytes;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr)
{
    if (sticky)
        return sticky; // the memory stays: the context is spoilt
    if (!ptr)
        return cudaSuccess;
    auto it = allocs.find((uintptr_t)ptr);
    if (it == allocs.end())
        return fail(cudaErrorInvalidValue); // not a pointer cudaMalloc returned
    used -= it->second.bytes;
    munmap(it->second.map, it->second.map_size);
    allocs.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    sim_init();
    if (sticky)
        return sticky;
    if (bytes == 0)
        return cudaSuccess;
    int dst_dev = moe_sim_device_span(dst, bytes), src_dev = moe_sim_device_span(src, bytes);
    int ok;
    switch (kind) {
    case cudaMemcpyHostToDevice:
        ok = dst_dev && !src_dev;
        break;
    case cudaMemcpyDeviceToHost:
        ok = src_dev && !dst_dev;
        break;
    case cudaMemcpyDeviceToDevice:
        ok = src_dev && dst_dev;
        break;
    case cudaMemcpyHostToHost:
        ok = !src_dev && !dst_dev;
        break;
    default:
        ok = 1;
    }
    if (!ok) // a host pointer where the kind says device, or the other way round
        return fail(cudaErrorInvalidValue);
    device_open o;
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *ptr, int value, size_t bytes)
{
    sim_init();
    if (sticky)
        return sticky;
    if (bytes == 0)
        return cudaSuccess;
    if (!moe_sim_device_span(ptr, bytes))
        return fail(cudaErrorInvalidValue);
    device_open o;
    memset(ptr, value, bytes);
    return cudaSuccess;
}

// ---------------------------------------------------------------- errors, devices, events

cudaError_t cudaGetLastError(void)
{
    if (sticky)
        return sticky;
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return sticky ? sticky : last_error; }

// Every launch has finished when it returns: only a fault is left to report.
cudaError_t cudaDeviceSynchronize(void) { return sticky; }

const char *cudaGetErrorName(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

// The runtime's own texts for these errors.
const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}

static long devices(void) { return env_long("MOE_CUDA_SIM_DEVICES", 1); }

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 0;
    if (devices() == 0)
        return fail(cudaErrorNoDevice);
    *count = (int)devices();
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device >= 0 && device < devices() ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
    if (device < 0 || device >= devices())
        return fail(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "CUDA simulator on the CPU (tests/cuda_sim)");
    prop->totalGlobalMem = device_memory();
    prop->major = 9, prop->minor = 0;
    prop->multiProcessorCount = 1;
    prop->maxThreadsPerBlock = 1024;
    prop->sharedMemPerBlock = 48 << 10;
    return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int *version)
{
    *version = 13000;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version)
{
    *version = 13000;
    return cudaSuccess;
}

struct moe_sim_event {
    double t;
    int recorded;
};

cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    *e = (cudaEvent_t)calloc(1, sizeof **e);
    return *e ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    free(e);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    (void)s;
    if (sticky)
        return sticky;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    e->t = ts.tv_sec + 1e-9 * ts.tv_nsec;
    e->recorded = 1;
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    (void)e;
    return sticky;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    if (!a->recorded || !b->recorded)
        return fail(cudaErrorInvalidResourceHandle);
    *ms = (float)(1e3 * (b->t - a->t));
    return cudaSuccess;
}

// ---------------------------------------------------------------- launches

// The switch between the scheduler and a simulated thread: on x86-64 a
// dozen instructions that keep the callee-saved registers on the stack being
// left and load the other stack pointer (the System V ABI's callee-saved set:
// rbx, rbp, r12-r15); elsewhere ucontext's swapcontext, whose signal-mask
// system calls make it about ten times slower.
#if defined(__x86_64__)
extern "C" void moe_sim_switch(void **save_sp, void *load_sp);
__asm__(".text\n"
        ".globl moe_sim_switch\n"
        ".type moe_sim_switch, @function\n"
        "moe_sim_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size moe_sim_switch, .-moe_sim_switch\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");
struct sim_ctx {
    void *sp;
};
#else
struct sim_ctx {
    ucontext_t uc;
};
#endif

namespace {
enum { RUNNING, AT_BARRIER, DONE };
struct sim_thread {
    sim_ctx ctx;
    int state;
    int made; // its coroutine exists
#ifdef SIM_ASAN
    void *fake_stack;
#endif
};
} // namespace

// per simulated thread (reserved, not committed), its lowest page
// inaccessible, so that an overflow faults
static const size_t STACK = 1 << 20;
static std::vector<sim_thread> threads;
static std::vector<char *> stacks;
static sim_ctx sched;
static const std::function<void()> *body;
static unsigned cur; // the thread running now
#ifdef SIM_ASAN
static const void *sched_bottom;
static size_t sched_size;
#endif

static void ctx_switch(sim_ctx *from, sim_ctx *to)
{
#if defined(__x86_64__)
    moe_sim_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

static uint3 thread_index(unsigned i)
{
    uint3 t = { i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y) };
    return t;
}

// A thread's switch back to the scheduler, at a barrier or at its end.
static void to_scheduler(void)
{
#ifdef SIM_ASAN
    __sanitizer_start_switch_fiber(&threads[cur].fake_stack, sched_bottom, sched_size);
#endif
    ctx_switch(&threads[cur].ctx, &sched);
#ifdef SIM_ASAN
    __sanitizer_finish_switch_fiber(threads[cur].fake_stack, &sched_bottom, &sched_size);
#endif
}

// A thread slot's life: each time the scheduler resumes it after its end, it
// runs the body of the launch of the moment for the thread index of the
// moment. The slots' coroutines live as long as the process, so starting a
// simulated thread costs one switch (and AddressSanitizer keeps each slot's
// fake stack instead of making and unmapping one per thread).
static void thread_main(void)
{
#ifdef SIM_ASAN
    __sanitizer_finish_switch_fiber(NULL, &sched_bottom, &sched_size);
#endif
    for (;;) {
        (*body)();
        threads[cur].state = DONE;
        to_scheduler();
    }
}

// Thread slot i's coroutine, made on first use: it starts in thread_main on its own stack.
static void ctx_start(unsigned i)
{
    sim_thread &t = threads[i];
#if defined(__x86_64__)
    // the stack moe_sim_switch pops: six registers, then thread_main as the
    // return address, at a 16-byte boundary so that thread_main starts as if
    // called (rsp + 8 a multiple of 16), then a slot it never returns to
    void **top = (void **)((((uintptr_t)stacks[i] + STACK) & ~(uintptr_t)15) - 16);
    top[0] = (void *)&thread_main;
    top[1] = NULL;
    void **sp = top - 6;
    for (int r = 0; r < 6; r++)
        sp[r] = NULL;
    t.ctx.sp = sp;
#else
    getcontext(&t.ctx.uc);
    t.ctx.uc.uc_stack.ss_sp = stacks[i];
    t.ctx.uc.uc_stack.ss_size = STACK;
    t.ctx.uc.uc_link = NULL;
    makecontext(&t.ctx.uc, thread_main, 0);
#endif
#ifdef SIM_ASAN
    t.fake_stack = NULL;
#endif
    t.made = 1;
}

// Set while run_block runs a block's threads as plain calls (below): the
// thread that ran first returned without a barrier.
static int direct;
static unsigned direct_first;

void __syncthreads(void)
{
    if (direct) {
        fprintf(stderr,
                "cuda_sim: kernel %s, block (%u, %u, %u): thread %u reached a __syncthreads that thread %u returned "
                "without (a barrier in divergent code, undefined in CUDA)\n",
                in_kernel, blockIdx.x, blockIdx.y, blockIdx.z, cur, direct_first);
        abort();
    }
    threads[cur].state = AT_BARRIER;
    to_scheduler();
}

static void resume(unsigned i)
{
    cur = i;
    threadIdx = thread_index(i);
#ifdef SIM_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, stacks[i], STACK);
#endif
    ctx_switch(&sched, &threads[i].ctx);
#ifdef SIM_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

static int order_reverse(void)
{
    static int r = -1;
    if (r < 0) {
        const char *o = getenv("MOE_CUDA_SIM_ORDER");
        r = o && strcmp(o, "reverse") == 0;
    }
    return r;
}

// A block's threads in the run order, each to its next barrier or its end,
// until all have ended. The first runs on its coroutine. If it returns
// without a barrier, no thread of the block may reach one (a barrier some
// threads returned before is the error below), so the others run as plain
// calls on this stack: most kernels have no barrier, and a switch to a
// coroutine and back per thread was most of the simulator's time under
// AddressSanitizer. One of them that reaches a barrier after all stops the
// program (__syncthreads).
static void run_block(unsigned n)
{
    const int rev = order_reverse();
    const unsigned first = rev ? n - 1 : 0;
    if (!threads[first].made)
        ctx_start(first);
    threads[first].state = RUNNING;
    resume(first);
    if (threads[first].state == DONE) {
        direct = 1, direct_first = first;
        for (unsigned j = 1; j < n; j++) {
            cur = rev ? n - 1 - j : j;
            threadIdx = thread_index(cur);
            (*body)();
        }
        direct = 0;
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        if (i == first)
            continue;
        if (!threads[i].made)
            ctx_start(i);
        threads[i].state = RUNNING;
    }
    for (;;) {
        for (unsigned j = 0; j < n; j++) {
            unsigned i = rev ? n - 1 - j : j;
            if (threads[i].state == RUNNING)
                resume(i);
        }
        unsigned waiting = 0, done = 0;
        for (unsigned i = 0; i < n; i++)
            if (threads[i].state == AT_BARRIER)
                threads[i].state = RUNNING, waiting++;
            else
                done++;
        if (!waiting)
            return;
        if (done) {
            // CUDA allows __syncthreads in conditional code only where the
            // condition is the same for the whole block; a thread that
            // returned before it is such a divergence, whatever a GPU does
            fprintf(stderr,
                    "cuda_sim: kernel %s, block (%u, %u, %u): %u of %u threads returned before a __syncthreads that "
                    "the other %u reached (a barrier in divergent code, undefined in CUDA)\n",
                    in_kernel, blockIdx.x, blockIdx.y, blockIdx.z, done, n, waiting);
            abort();
        }
    }
}

// Whether this launch of kernel is the one MOE_CUDA_SIM_FAULT names.
static int faults(const char *kernel)
{
    static int parsed;
    static std::string name;
    static long at, seen;
    if (!parsed) {
        parsed = 1;
        const char *f = getenv("MOE_CUDA_SIM_FAULT");
        const char *colon = f ? strrchr(f, ':') : NULL;
        if (f && *f) {
            char *end;
            at = colon ? strtol(colon + 1, &end, 10) : 0;
            if (!colon || colon == f || *end || at < 1) {
                fprintf(stderr, "cuda_sim: MOE_CUDA_SIM_FAULT=%s is not <kernel>:<n>\n", f);
                exit(2);
            }
            name.assign(f, (size_t)(colon - f));
        }
    }
    return at > 0 && name == kernel && ++seen == at;
}

// The kernels' shared memory (cuda_runtime.h's __shared__), from the linker;
// an empty section (none: the AddressSanitizer build) leaves both null.
extern "C" char __start_moe_sim_shared[] __attribute__((weak));
extern "C" char __stop_moe_sim_shared[] __attribute__((weak));

void moe_sim_run(const char *kernel, const moe_sim_cfg &cfg, const std::function<void()> &thread)
{
    sim_init();
    if (sticky) {
        last_error = sticky;
        return;
    }
    if (faults(kernel)) {
        sticky = cudaErrorIllegalAddress;
        return;
    }
    const dim3 g = cfg.grid, b = cfg.block;
    const unsigned long long nb = (unsigned long long)b.x * b.y * b.z;
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535 || b.x == 0 ||
        b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || nb > 1024 || cfg.shared > (48u << 10)) {
        fail(cudaErrorInvalidConfiguration);
        return;
    }
    while (stacks.size() < nb) {
        char *s = (char *)mmap(NULL, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                               0);
        if (s == MAP_FAILED) {
            perror("cuda_sim: mmap of a thread stack");
            abort();
        }
        if (mprotect(s, page, PROT_NONE) != 0) {
            perror("cuda_sim: mprotect of a thread stack's guard page");
            abort();
        }
        stacks.push_back(s);
    }
    if (threads.empty())
        threads.resize(1024); // once: a live coroutine's saved context must not move
    device_open o;
    gridDim = g, blockDim = b, body = &thread, in_kernel = kernel;
    const size_t shared = (size_t)(__stop_moe_sim_shared - __start_moe_sim_shared);
    const unsigned long long blocks = (unsigned long long)g.x * g.y * g.z;
    for (unsigned long long j = 0; j < blocks; j++) {
        unsigned long long k = order_reverse() ? blocks - 1 - j : j;
        blockIdx.x = (unsigned)(k % g.x), blockIdx.y = (unsigned)(k / g.x % g.y),
        blockIdx.z = (unsigned)(k / ((unsigned long long)g.x * g.y));
        if (shared) // shared memory's garbage (cuda_runtime.h)
            memset(__start_moe_sim_shared, 0xff, shared);
        run_block((unsigned)nb);
    }
    in_kernel = NULL;
}
