// accumulate_conv_ on CUDA, torch-free: S[g] (d, d) upper triangle += P_gᵀP_g over the
// receptive-field patches of x (implicit im2col, symmetric zero padding, any strides of x);
// grid, splits and write-back: accumulate_upper.cuh. The output size (geom->OH, geom->OW) is
// the caller's (unsc_fast.geometry.ConvGeometry.output_size); the glue guards it.
#include "accumulate_upper.cuh"

namespace unsc_cuda {
namespace {

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

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
accumulate_conv_kernel(acc_t* S, const in_t* x, UnscConvGeom g, int64_t n, int64_t d,
                       int splits, int64_t chunk) {
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

template <typename in_t, typename acc_t>
cudaError_t launch_accumulate_conv(void* S, const void* x, const UnscConvGeom& g,
                                   cudaStream_t stream) {
  const int64_t n = g.N * g.OH * g.OW, d = g.Cg * g.kh * g.kw;
  int splits = choose_splits(n, d, g.groups);
  const int64_t chunk = ceil_div(ceil_div(n, splits), kTileK) * kTileK;
  splits = static_cast<int>(ceil_div(n, chunk));
  const unsigned nb = static_cast<unsigned>(ceil_div(d, kTileMN));
  const dim3 grid(nb, nb, static_cast<unsigned>(g.groups * splits));
  const dim3 block(16, 16);
  accumulate_conv_kernel<in_t, acc_t><<<grid, block, 0, stream>>>(
      static_cast<acc_t*>(S), static_cast<const in_t*>(x), g, n, d, splits, chunk);
  return cudaGetLastError();
}

struct AccumulateConvCall {
  void* S; const void* x; UnscConvGeom g; cudaStream_t stream;
  template <typename in_t, typename acc_t> cudaError_t run() const {
    return launch_accumulate_conv<in_t, acc_t>(S, x, g, stream);
  }
};

}  // namespace
}  // namespace unsc_cuda

extern "C" cudaError_t unsc_cuda_accumulate_conv(void* S, int s_dtype, const void* x,
                                                 int x_dtype, const UnscConvGeom* geom,
                                                 cudaStream_t stream) {
  // Safety only: the Python contract handles empty inputs.
  if (geom->N * geom->OH * geom->OW <= 0 || geom->Cg * geom->kh * geom->kw <= 0) {
    return cudaSuccess;
  }
  return unsc_cuda::dispatch_types(s_dtype, x_dtype,
                                   unsc_cuda::AccumulateConvCall{S, x, *geom, stream});
}
