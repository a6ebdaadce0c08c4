// S += XᵀX (dense) and S[g] += P_gᵀP_g (conv patches, implicit im2col) on CUDA, torch-free.
//
// Grid: x = column tile, y = row tile of S (64 x 64), z = group * splits + split. Blocks below
// the diagonal return at once (only the upper triangle is computed); each split reduces a
// contiguous range of rows and adds its partial tile to S with atomicAdd, so any number of
// splits is correct. Only entries with i <= j are written.
#include "tile_gemm.cuh"
#include "unsc_cuda.h"

#include <algorithm>

namespace unsc_cuda {
namespace {

// X (n, d), element (r, c) at X[r * sn + c * sd]; load(col, row) for the tile product.
template <typename in_t, typename acc_t>
struct DenseLoader {
  const in_t* X;
  int64_t sn, sd;
  __device__ __forceinline__ acc_t operator()(int64_t col, int64_t row) const {
    return to_acc<acc_t>(X[row * sn + col * sd]);
  }
};

// Patch matrix of group g: row r = (n, oh, ow), column c = (ci, ki, kj).
template <typename in_t, typename acc_t>
struct ConvLoader {
  const in_t* x;
  UnscConvGeom g;
  int64_t group;
  __device__ __forceinline__ acc_t operator()(int64_t col, int64_t row) const {
    const int64_t L = g.OH * g.OW;
    const int64_t n = row / L, rem = row - n * L;
    const int64_t oh = rem / g.OW, ow = rem - oh * g.OW;
    const int64_t kk = g.kh * g.kw;
    const int64_t ci = col / kk, r = col - ci * kk;
    const int64_t ki = r / g.kw, kj = r - ki * g.kw;
    const int64_t ih = oh * g.sh - g.ph + ki * g.dh;
    const int64_t iw = ow * g.sw - g.pw + kj * g.dw;
    if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return acc_t(0);
    return to_acc<acc_t>(x[n * g.sN + (group * g.Cg + ci) * g.sC + ih * g.sH + iw * g.sW]);
  }
};

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

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
gram_dense_kernel(acc_t* S, const in_t* X, int64_t n, int64_t d, int64_t sn, int64_t sd,
                  int64_t chunk) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  if (bi > bj) return;  // strictly below the diagonal
  int64_t k_begin, k_end;
  split_range(n, chunk, blockIdx.z, &k_begin, &k_end);
  if (k_begin >= k_end) return;
  const int64_t i0 = bi * kTileMN, j0 = bj * kTileMN;
  acc_t acc[kMicro][kMicro] = {};
  const DenseLoader<in_t, acc_t> load{X, sn, sd};
  // A(i, k) = X[k, i], B(k, j) = X[k, j]: k is the row index of X. Row-major X has unit
  // stride along the column (outer) index, so threads walk the outer index unless sd != 1.
  if (sd == 1) {
    tile_product<false, false, acc_t>(load, load, d, d, i0, j0, k_begin, k_end, acc);
  } else {
    tile_product<true, true, acc_t>(load, load, d, d, i0, j0, k_begin, k_end, acc);
  }
  add_upper(S, d, i0, j0, acc);
}

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
gram_conv_kernel(acc_t* S, const in_t* x, UnscConvGeom g, int64_t n, int64_t d, int splits,
                 int64_t chunk) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  if (bi > bj) return;
  const int64_t group = blockIdx.z / splits;
  int64_t k_begin, k_end;
  split_range(n, chunk, blockIdx.z % splits, &k_begin, &k_end);
  if (k_begin >= k_end) return;
  const int64_t i0 = bi * kTileMN, j0 = bj * kTileMN;
  acc_t acc[kMicro][kMicro] = {};
  const ConvLoader<in_t, acc_t> load{x, g, group};
  // Consecutive rows are neighbouring output positions: walk k (rows) across threads.
  tile_product<true, true, acc_t>(load, load, d, d, i0, j0, k_begin, k_end, acc);
  add_upper(S + group * d * d, d, i0, j0, acc);
}

// Number of row splits: enough blocks to fill the GPU (about 4 per SM), at least 256 rows
// per split, and grid.z within its limit.
int choose_splits(int64_t n, int64_t d, int64_t groups) {
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

template <typename in_t, typename acc_t>
cudaError_t launch_dense(void* S, const void* X, int64_t n, int64_t d, int64_t sn, int64_t sd,
                         cudaStream_t stream) {
  const int splits = choose_splits(n, d, 1);
  const int64_t chunk = ceil_div(ceil_div(n, splits), kTileK) * kTileK;
  const unsigned nb = static_cast<unsigned>(ceil_div(d, kTileMN));
  const dim3 grid(nb, nb, static_cast<unsigned>(ceil_div(n, chunk)));
  const dim3 block(16, 16);
  gram_dense_kernel<in_t, acc_t><<<grid, block, 0, stream>>>(
      static_cast<acc_t*>(S), static_cast<const in_t*>(X), n, d, sn, sd, chunk);
  return cudaGetLastError();
}

template <typename in_t, typename acc_t>
cudaError_t launch_conv(void* S, const void* x, const UnscConvGeom& g, cudaStream_t stream) {
  const int64_t n = g.N * g.OH * g.OW, d = g.Cg * g.kh * g.kw;
  int splits = choose_splits(n, d, g.groups);
  const int64_t chunk = ceil_div(ceil_div(n, splits), kTileK) * kTileK;
  splits = static_cast<int>(ceil_div(n, chunk));
  const unsigned nb = static_cast<unsigned>(ceil_div(d, kTileMN));
  const dim3 grid(nb, nb, static_cast<unsigned>(g.groups * splits));
  const dim3 block(16, 16);
  gram_conv_kernel<in_t, acc_t><<<grid, block, 0, stream>>>(
      static_cast<acc_t*>(S), static_cast<const in_t*>(x), g, n, d, splits, chunk);
  return cudaGetLastError();
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

struct DenseCall {
  void* S; const void* X; int64_t n, d, sn, sd; cudaStream_t stream;
  template <typename in_t, typename acc_t> cudaError_t run() const {
    return launch_dense<in_t, acc_t>(S, X, n, d, sn, sd, stream);
  }
};

struct ConvCall {
  void* S; const void* x; UnscConvGeom g; cudaStream_t stream;
  template <typename in_t, typename acc_t> cudaError_t run() const {
    return launch_conv<in_t, acc_t>(S, x, g, stream);
  }
};

}  // namespace
}  // namespace unsc_cuda

extern "C" cudaError_t unsc_cuda_gram_dense(void* S, int s_dtype, const void* X, int x_dtype,
                                            int64_t n, int64_t d, int64_t stride_n,
                                            int64_t stride_d, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  return unsc_cuda::dispatch_types(
      s_dtype, x_dtype, unsc_cuda::DenseCall{S, X, n, d, stride_n, stride_d, stream});
}

extern "C" cudaError_t unsc_cuda_gram_conv(void* S, int s_dtype, const void* x, int x_dtype,
                                           const UnscConvGeom* geom, cudaStream_t stream) {
  if (geom->N * geom->OH * geom->OW <= 0 || geom->Cg * geom->kh * geom->kw <= 0) {
    return cudaSuccess;
  }
  return unsc_cuda::dispatch_types(s_dtype, x_dtype,
                                   unsc_cuda::ConvCall{S, x, *geom, stream});
}
