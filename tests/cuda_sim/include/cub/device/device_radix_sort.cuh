// cub/device/device_radix_sort.cuh of the CUDA simulator (tests/cuda_sim/README.md):
// cub::DeviceRadixSort::SortPairs as CUB documents it, on the CPU. A stable
// sort of (key, value) pairs by the key bits [begin_bit, end_bit), signed
// integer keys in numeric order (CUB flips their sign bit). The first call,
// with d_temp_storage NULL, only sets temp_storage_bytes; the second checks
// that the scratch it is given is that large and that every array is device
// memory, and fails with cudaErrorInvalidValue otherwise. Not NVIDIA's code.
#ifndef MOE_CUDA_SIM_CUB_RADIX_H
#define MOE_CUDA_SIM_CUB_RADIX_H

#include <cuda_runtime.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

namespace cub {

struct DeviceRadixSort {
    template <class K, class V>
    static cudaError_t SortPairs(void *d_temp_storage, size_t &temp_storage_bytes, const K *d_keys_in, K *d_keys_out,
                                 const V *d_values_in, V *d_values_out, int num_items, int begin_bit = 0,
                                 int end_bit = (int)sizeof(K) * 8, cudaStream_t stream = 0)
    {
        static_assert(std::is_integral<K>::value, "the simulator sorts integer keys");
        (void)stream;
        // what the simulated sort asks for: room for a copy of both arrays
        const size_t need = 256 + (num_items > 0 ? (size_t)num_items : 0) * (sizeof(K) + sizeof(V));
        if (!d_temp_storage) {
            temp_storage_bytes = need;
            return cudaSuccess;
        }
        if (moe_sim_sticky())
            return (cudaError_t)moe_sim_sticky();
        if (num_items < 0 || temp_storage_bytes < need || begin_bit < 0 || end_bit > (int)sizeof(K) * 8 ||
            begin_bit > end_bit)
            return cudaErrorInvalidValue;
        const size_t n = (size_t)num_items;
        if (!moe_sim_device_span(d_temp_storage, temp_storage_bytes) ||
            (n && (!moe_sim_device_span(d_keys_in, n * sizeof(K)) || !moe_sim_device_span(d_keys_out, n * sizeof(K)) ||
                   !moe_sim_device_span(d_values_in, n * sizeof(V)) ||
                   !moe_sim_device_span(d_values_out, n * sizeof(V)))))
            return cudaErrorInvalidValue;
        typedef typename std::make_unsigned<K>::type U;
        const int bits = (int)sizeof(K) * 8;
        const U flip = std::is_signed<K>::value ? (U)((U)1 << (bits - 1)) : (U)0;
        const U mask = end_bit - begin_bit >= bits ? (U)~(U)0 : (U)(((U)1 << (end_bit - begin_bit)) - 1);
        moe_sim_device_access(1);
        std::vector<U> digit(n);
        for (size_t i = 0; i < n; i++)
            digit[i] = (U)((((U)d_keys_in[i] ^ flip) >> begin_bit) & mask);
        std::vector<size_t> order(n);
        std::iota(order.begin(), order.end(), (size_t)0);
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return digit[a] < digit[b]; });
        std::vector<K> k(n);
        std::vector<V> v(n);
        for (size_t i = 0; i < n; i++)
            k[i] = d_keys_in[order[i]], v[i] = d_values_in[order[i]];
        std::copy(k.begin(), k.end(), d_keys_out);
        std::copy(v.begin(), v.end(), d_values_out);
        moe_sim_device_access(0);
        return cudaSuccess;
    }
};

} // namespace cub

#endif
