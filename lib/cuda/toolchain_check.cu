// toolchain_check.cu: not part of the library. `meson setup` compiles this
// once (meson.build) to see that nvcc and its C++ host compiler work together
// before it turns the CUDA backend on; with -Dcuda=auto a failure turns it off
// and `meson summary` says why.
#include <cuda_runtime.h>

__global__ void moe_toolchain_check(float *x) { x[threadIdx.x] *= 2.0f; }

extern "C" int moe_toolchain_check_count(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : -1;
}
