// hd.h: code that compiles both as C11 for the CPU and as CUDA C++ for the
// device. MOE_HD marks a function callable from host and device code (empty
// in a C build); MOE_RESTRICT is C's restrict under every compiler.
// Functions marked MOE_HD are the GPU kernels' per-thread work (the launch
// wrappers in lib/cuda/*.cu call them for their thread's indices); the CPU
// tests call the same functions over the same index space and compare with the
// CPU library. Write them in the common subset of C11 and C++: no compound
// literals or designated initialisers, no VLAs, explicit casts from void *.
#ifndef MOE_HD_H
#define MOE_HD_H

#ifdef __CUDACC__
#define MOE_HD __host__ __device__
#define MOE_RESTRICT __restrict__
#elif defined(__cplusplus)
// host C++: the launch wrappers compiled by g++ for the tests' CUDA simulator
// (tests/cuda_sim/), where the kernels run on the CPU
#define MOE_HD
#define MOE_RESTRICT __restrict__
#else
#define MOE_HD
#define MOE_RESTRICT restrict
#endif

#endif
