// accumulate_ on CUDA, torch-free: S (d, d) upper triangle += XᵀX for X (n, d) of any
// element type and strides (grid, splits and write-back: accumulate_upper.cuh).
#include "accumulate_upper.cuh"

namespace unsc_cuda {
namespace {

// X (n, d), element (r, c) at X[r * sn + c * sd]; load(col, row) for the tile product.
template <typename in_t, typename acc_t>
struct RowsLoader {
  const in_t* X;
  int64_t sn, sd;
  __device__ __forceinline__ acc_t operator()(int64_t col, int64_t row) const {
    return to_acc<acc_t>(X[row * sn + col * sd]);
  }
};

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
accumulate_kernel(acc_t* S, const in_t* X, int64_t n, int64_t d, int64_t sn, int64_t sd,
                  int64_t chunk) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x;
  if (bi > bj) return;  // strictly below the diagonal
  int64_t k_begin, k_end;
  split_range(n, chunk, blockIdx.z, &k_begin, &k_end);
  if (k_begin >= k_end) return;
  const int64_t i0 = bi * kTileMN, j0 = bj * kTileMN;
  acc_t acc[kMicro][kMicro] = {};
  const RowsLoader<in_t, acc_t> load{X, sn, sd};
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
cudaError_t launch_accumulate(void* S, const void* X, int64_t n, int64_t d, int64_t sn,
                              int64_t sd, cudaStream_t stream) {
  const int splits = choose_splits(n, d, 1);
  const int64_t chunk = ceil_div(ceil_div(n, splits), kTileK) * kTileK;
  const unsigned nb = static_cast<unsigned>(ceil_div(d, kTileMN));
  const dim3 grid(nb, nb, static_cast<unsigned>(ceil_div(n, chunk)));
  const dim3 block(16, 16);
  accumulate_kernel<in_t, acc_t><<<grid, block, 0, stream>>>(
      static_cast<acc_t*>(S), static_cast<const in_t*>(X), n, d, sn, sd, chunk);
  return cudaGetLastError();
}

struct AccumulateCall {
  void* S; const void* X; int64_t n, d, sn, sd; cudaStream_t stream;
  template <typename in_t, typename acc_t> cudaError_t run() const {
    return launch_accumulate<in_t, acc_t>(S, X, n, d, sn, sd, stream);
  }
};

}  // namespace
}  // namespace unsc_cuda

extern "C" cudaError_t unsc_cuda_accumulate(void* S, int s_dtype, const void* X, int x_dtype,
                                            int64_t n, int64_t d, int64_t stride_n,
                                            int64_t stride_d, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;  // safety only: the Python contract handles n = 0
  return unsc_cuda::dispatch_types(
      s_dtype, x_dtype, unsc_cuda::AccumulateCall{S, X, n, d, stride_n, stride_d, stream});
}
