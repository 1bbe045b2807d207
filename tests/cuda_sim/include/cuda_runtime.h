// cuda_runtime.h of the CUDA simulator (tests/cuda_sim/README.md): the part of
// the CUDA runtime API and of CUDA C++ that lib/cuda/*.cu use, for g++, so that
// those files, their launch wrappers and their block-cooperative kernels
// (__shared__ memory, __syncthreads) run on the CPU in the tests. Not NVIDIA's
// header: the names and meanings follow the CUDA Runtime API reference; the
// implementation is tests/cuda_sim/sim.cc. The functions have C++ linkage, so
// they never meet libcudart's in a CUDA build.
#ifndef MOE_CUDA_SIM_RUNTIME_H
#define MOE_CUDA_SIM_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include <functional>
#include <tuple>
#include <utility>

// ---- CUDA C++: qualifiers and built-in variables
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One block runs at a time (sim.cc), so a function-local static is the
// block's shared memory. As on a GPU, a kernel must write its shared memory
// before it reads it: the statics live in one section, moe_sim_shared, which
// sim.cc fills with 0xff bytes (NaN, -1) before each block, so a read before
// the block's write gives garbage as it would on a GPU, not the last block's
// values. AddressSanitizer does not guard variables in a named section, so
// under it they stay plain statics (guarded, not filled).
#if defined(__SANITIZE_ADDRESS__) // gcc
#define MOE_SIM_SHARED_PLAIN 1
#elif defined(__has_feature) // clang
#if __has_feature(address_sanitizer)
#define MOE_SIM_SHARED_PLAIN 1
#endif
#endif
#ifdef MOE_SIM_SHARED_PLAIN
#define __shared__ static
#else
#define __shared__ static __attribute__((section("moe_sim_shared")))
#endif

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
// The simulated thread's indices, set by the scheduler before it runs a thread.
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
void __syncthreads(void);

// ---- the runtime API
enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

typedef struct moe_sim_stream *cudaStream_t;
typedef struct moe_sim_event *cudaEvent_t;

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor;
    int multiProcessorCount;
    int maxThreadsPerBlock;
    size_t sharedMemPerBlock;
};

cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemset(void *ptr, int value, size_t bytes);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaDeviceSynchronize(void);
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaRuntimeGetVersion(int *version);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);

// ---- kernel launches. tests/cuda_sim/chevrons.py rewrites
//     kernel<<<grid, block[, shared[, stream]]>>>(args...)
// as
//     moe_sim_launch("kernel", moe_sim_config(grid, block[, ...]), kernel, moe_sim_bind(kernel)(args...))
struct moe_sim_cfg {
    dim3 grid, block;
    size_t shared;
};
inline moe_sim_cfg moe_sim_config(dim3 grid, dim3 block, size_t shared = 0, cudaStream_t stream = 0)
{
    (void)stream; // one stream: launches run in order
    moe_sim_cfg c = { grid, block, shared };
    return c;
}
// Runs every thread of the grid (sim.cc); a bad configuration is the
// runtime's last error, as a failed launch is.
void moe_sim_run(const char *kernel, const moe_sim_cfg &cfg, const std::function<void()> &thread);

// The arguments become the kernel's parameters once, at the launch, as in
// CUDA: moe_sim_bind(kernel) is called with them as the kernel would be (so
// NULL and other conversions happen at the call site) and keeps them; each
// thread gets its own copy (a kernel may change its by-value parameters).
template <class... P> struct moe_sim_binder {
    std::tuple<P...> operator()(P... p) const { return std::tuple<P...>(p...); }
};
template <class... P> moe_sim_binder<P...> moe_sim_bind(void (*)(P...)) { return moe_sim_binder<P...>(); }

template <class... P>
void moe_sim_launch(const char *kernel, const moe_sim_cfg &cfg, void (*fn)(P...), const std::tuple<P...> &params)
{
    moe_sim_run(kernel, cfg, [&]() {
        std::tuple<P...> mine = params;
        std::apply(fn, mine);
    });
}

// Whether [p, p + bytes) lies in one live device allocation (sim.cc); for
// the simulated libraries (cub, cuBLAS), which read device memory only.
extern "C" int moe_sim_device_span(const void *p, size_t bytes);
// Opens device memory to the host code of a simulated library for the span of
// its call (open 1, then 0), where MOE_CUDA_SIM_GUARD=1 closes it otherwise.
extern "C" void moe_sim_device_access(int open);
// The sticky error of a faulted kernel (MOE_CUDA_SIM_FAULT, sim.cc), else cudaSuccess.
extern "C" int moe_sim_sticky(void);

#endif
