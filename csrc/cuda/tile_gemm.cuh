// Shared device code of the unsc_fast CUDA kernels (torch-free): element conversions and a
// plain shared-memory tiled product of one 64 x 64 output tile.
//
// Deliberately simple (SIMT, no tensor cores): 256 threads as 16 x 16, each owning the 4 x 4
// outputs (ty + 16a, tx + 16b) of the tile; K is walked in steps of 16 through two shared
// tiles. Loaders return an operand element already converted to the accumulation type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace unsc_cuda {

constexpr int kTileMN = 64;   // output tile edge
constexpr int kTileK = 16;    // reduction step
constexpr int kThreads = 256; // 16 x 16
constexpr int kMicro = 4;     // outputs per thread per dimension

// ---- conversions (explicit intrinsics: torch builds with __CUDA_NO_HALF_CONVERSIONS__) ----
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(float v) { return static_cast<acc_t>(v); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(double v) { return static_cast<acc_t>(v); }
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__half v) {
  return static_cast<acc_t>(__half2float(v));
}
template <typename acc_t> __device__ __forceinline__ acc_t to_acc(__nv_bfloat16 v) {
  return static_cast<acc_t>(__bfloat162float(v));
}

template <typename T> struct Store;
template <> struct Store<float> {
  template <typename acc_t> __device__ static float of(acc_t v) { return static_cast<float>(v); }
};
template <> struct Store<double> {
  template <typename acc_t> __device__ static double of(acc_t v) { return static_cast<double>(v); }
};
template <> struct Store<__half> {
  template <typename acc_t> __device__ static __half of(acc_t v) {
    return __float2half_rn(static_cast<float>(v));
  }
};
template <> struct Store<__nv_bfloat16> {
  template <typename acc_t> __device__ static __nv_bfloat16 of(acc_t v) {
    return __float2bfloat16_rn(static_cast<float>(v));
  }
};

// Fill a kTileK x kTileMN shared tile: tile[kk][oo] = load(o0 + oo, k0 + kk), zero outside
// [0, outer_end) x [k0, k_end). KFast: consecutive threads walk k (use when k is the
// unit-stride index in memory), else they walk the outer index.
template <bool KFast, typename acc_t, typename Loader>
__device__ __forceinline__ void fill_tile(acc_t (*tile)[kTileMN + 1], const Loader& load,
                                          int64_t o0, int64_t outer_end, int64_t k0,
                                          int64_t k_end) {
  const int tid = threadIdx.y * 16 + threadIdx.x;
#pragma unroll
  for (int l = 0; l < (kTileK * kTileMN) / kThreads; ++l) {
    const int idx = tid + l * kThreads;
    const int kk = KFast ? idx % kTileK : idx / kTileMN;
    const int oo = KFast ? idx / kTileK : idx % kTileMN;
    const int64_t o = o0 + oo, k = k0 + kk;
    tile[kk][oo] = (o < outer_end && k < k_end) ? load(o, k) : acc_t(0);
  }
}

// acc[a][b] += Σ_{k in [k_begin, k_end)} A(i0 + ty + 16a, k) · B(k, j0 + tx + 16b), with
// A(i, k) = load_a(i, k) for i < M and B(k, j) = load_b(j, k) for j < N (zero elsewhere).
template <bool AKFast, bool BKFast, typename acc_t, typename LoadA, typename LoadB>
__device__ __forceinline__ void tile_product(const LoadA& load_a, const LoadB& load_b, int64_t M,
                                             int64_t N, int64_t i0, int64_t j0,
                                             int64_t k_begin, int64_t k_end,
                                             acc_t (&acc)[kMicro][kMicro]) {
  __shared__ acc_t As[kTileK][kTileMN + 1];
  __shared__ acc_t Bs[kTileK][kTileMN + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += kTileK) {
    fill_tile<AKFast>(As, load_a, i0, M, k0, k_end);
    fill_tile<BKFast>(Bs, load_b, j0, N, k0, k_end);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      acc_t a[kMicro], b[kMicro];
#pragma unroll
      for (int t = 0; t < kMicro; ++t) {
        a[t] = As[kk][ty + 16 * t];
        b[t] = Bs[kk][tx + 16 * t];
      }
#pragma unroll
      for (int p = 0; p < kMicro; ++p)
#pragma unroll
        for (int q = 0; q < kMicro; ++q) acc[p][q] += a[p] * b[q];
    }
    __syncthreads();
  }
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace unsc_cuda
