// Shared device code of the CUDA accumulate kernels (accumulate.cu, accumulate_conv.cu),
// torch-free: the upper-triangle write-back of a 64 x 64 tile, the row splits, and the
// dispatch on the runtime element types.
//
// Grid of both kernels: x = column tile, y = row tile of S (64 x 64), z = (group *) splits +
// split. Blocks below the diagonal return at once (only the upper triangle is computed); each
// split reduces a contiguous range of rows and adds its partial tile to S with atomicAdd, so
// any number of splits is correct. Only entries with i <= j are written.
#pragma once

#include "tile_gemm.cuh"
#include "unsc_cuda.h"

#include <algorithm>

namespace unsc_cuda {

template <typename acc_t>
__device__ __forceinline__ void add_upper(acc_t* S, int64_t d, int64_t i0, int64_t j0,
                                          const acc_t (&acc)[kMicro][kMicro]) {
#pragma unroll
  for (int p = 0; p < kMicro; ++p) {
    const int64_t i = i0 + threadIdx.y + 16 * p;
#pragma unroll
    for (int q = 0; q < kMicro; ++q) {
      const int64_t j = j0 + threadIdx.x + 16 * q;
      if (i < d && j < d && i <= j) atomicAdd(S + i * d + j, acc[p][q]);
    }
  }
}

// Rows [k_begin, k_end) of this block's split.
__device__ __forceinline__ void split_range(int64_t n, int64_t chunk, int split,
                                            int64_t* k_begin, int64_t* k_end) {
  *k_begin = static_cast<int64_t>(split) * chunk;
  *k_end = *k_begin + chunk < n ? *k_begin + chunk : n;
}

// Number of row splits: enough blocks to fill the GPU (about 4 per SM), at least 256 rows
// per split, and grid.z within its limit.
inline int choose_splits(int64_t n, int64_t d, int64_t groups) {
  int device = 0, sms = 108;
  if (cudaGetDevice(&device) == cudaSuccess) {
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  const int64_t nb = ceil_div(d, kTileMN);
  const int64_t tiles = nb * (nb + 1) / 2 * groups;
  int64_t splits = ceil_div(4 * static_cast<int64_t>(sms), tiles);
  splits = std::min(splits, ceil_div(n, 256));
  splits = std::min<int64_t>(splits, 65535 / groups);
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

// Calls f.template operator()<in_t, acc_t>() for the runtime type codes.
template <typename F>
cudaError_t dispatch_types(int s_dtype, int x_dtype, const F& f) {
  if (s_dtype != UNSC_F32 && s_dtype != UNSC_F64) return cudaErrorInvalidValue;
  const bool dbl = s_dtype == UNSC_F64;
  switch (x_dtype) {
    case UNSC_F32: return dbl ? f.template run<float, double>() : f.template run<float, float>();
    case UNSC_F64: return dbl ? f.template run<double, double>() : f.template run<double, float>();
    case UNSC_F16: return dbl ? f.template run<__half, double>() : f.template run<__half, float>();
    case UNSC_BF16:
      return dbl ? f.template run<__nv_bfloat16, double>() : f.template run<__nv_bfloat16, float>();
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace unsc_cuda
