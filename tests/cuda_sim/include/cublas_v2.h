// cublas_v2.h of the CUDA simulator (tests/cuda_sim/README.md): the cuBLAS
// types and constants lib/cuda/blas.cu names, with cuBLAS's values. blas.cu
// loads the library by name (dlopen "libcublas.so.<CUBLAS_VER_MAJOR>"), so with
// CUBLAS_VER_MAJOR sim it loads the simulator's libcublas.so.sim
// (tests/cuda_sim/cublas.cc). Not NVIDIA's header.
#ifndef MOE_CUDA_SIM_CUBLAS_V2_H
#define MOE_CUDA_SIM_CUBLAS_V2_H

#include <cuda_runtime.h>

#define CUBLAS_VER_MAJOR sim

typedef struct moe_sim_cublas *cublasHandle_t;

typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;

typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 } cublasMath_t;
typedef enum { CUBLAS_ATOMICS_NOT_ALLOWED = 0, CUBLAS_ATOMICS_ALLOWED = 1 } cublasAtomicsMode_t;
typedef enum { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 } cublasPointerMode_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2 } cudaDataType_t;
typedef enum { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_FAST_TF32 = 77 } cublasComputeType_t;

#endif
