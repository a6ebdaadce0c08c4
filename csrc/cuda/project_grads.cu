// project_grads_ on CUDA, torch-free: the grouped projection of many layers in one call,
//   pass 1: T = G B              (every layer's (rows x m) tiles in one launch)
//   pass 2: G = G - T Bᵀ or T Bᵀ (every layer's (rows x d) tiles in one launch)
// Stream order puts all of pass 1 before pass 2, so pass 2 may overwrite G freely: each
// element of G is read and written by exactly one thread there. Layers are passed by value
// in batches of kMaxLayers (kernel parameter space), located by binary search on block id.
#include "tile_gemm.cuh"
#include "unsc_cuda.h"

namespace unsc_cuda {
namespace {

constexpr int kMaxLayers = 24;  // 24 * 104 bytes of layer descriptors per launch

struct Batch {
  UnscProjectGradsLayer layer[kMaxLayers];
  int64_t first_tile[kMaxLayers + 1];  // prefix sums of the layers' tile counts
  int n;
};

__device__ __forceinline__ int find_layer(const Batch& b, int64_t tile) {
  int lo = 0, hi = b.n - 1;  // last layer whose first_tile <= tile
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (b.first_tile[mid] <= tile) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// G(i, k) of a layer, in the compute type.
template <typename T, typename acc_t>
struct GLoader {
  const T* G; int64_t s0, s1;
  __device__ __forceinline__ acc_t operator()(int64_t i, int64_t k) const {
    return to_acc<acc_t>(G[i * s0 + k * s1]);
  }
};
// B(k, j) for pass 1 (outer index j = column of B).
template <typename T, typename acc_t>
struct BLoader {
  const T* B; int64_t s0, s1;
  __device__ __forceinline__ acc_t operator()(int64_t j, int64_t k) const {
    return to_acc<acc_t>(B[k * s0 + j * s1]);
  }
};
// Bᵀ(k, j) = B(j, k) for pass 2 (outer index j = row of B, k = column of B).
template <typename T, typename acc_t>
struct BtLoader {
  const T* B; int64_t s0, s1;
  __device__ __forceinline__ acc_t operator()(int64_t j, int64_t k) const {
    return to_acc<acc_t>(B[j * s0 + k * s1]);
  }
};
// T(i, k), contiguous (rows, m).
template <typename acc_t>
struct TLoader {
  const acc_t* T; int64_t m;
  __device__ __forceinline__ acc_t operator()(int64_t i, int64_t k) const { return T[i * m + k]; }
};

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) project_grads_pass1(const __grid_constant__ Batch b) {
  const int64_t tile = blockIdx.x;
  const int l = find_layer(b, tile);
  const UnscProjectGradsLayer L = b.layer[l];
  const int64_t local = tile - b.first_tile[l];
  const int64_t tn = ceil_div(L.m, kTileMN);
  const int64_t i0 = (local / tn) * kTileMN, j0 = (local % tn) * kTileMN;
  acc_t acc[kMicro][kMicro] = {};
  const GLoader<T, acc_t> la{static_cast<const T*>(L.G), L.g_s0, L.g_s1};
  const BLoader<T, acc_t> lb{static_cast<const T*>(L.B), L.b_s0, L.b_s1};
  // Unit strides: G along k when row-major; B along j when row-major.
  if (L.g_s1 == 1 && L.b_s1 == 1) {
    tile_product<true, false, acc_t>(la, lb, L.rows, L.m, i0, j0, 0, L.d, acc);
  } else {
    tile_product<false, true, acc_t>(la, lb, L.rows, L.m, i0, j0, 0, L.d, acc);
  }
  acc_t* Tout = static_cast<acc_t*>(L.T);
#pragma unroll
  for (int p = 0; p < kMicro; ++p) {
    const int64_t i = i0 + threadIdx.y + 16 * p;
#pragma unroll
    for (int q = 0; q < kMicro; ++q) {
      const int64_t j = j0 + threadIdx.x + 16 * q;
      if (i < L.rows && j < L.m) Tout[i * L.m + j] = acc[p][q];
    }
  }
}

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) project_grads_pass2(const __grid_constant__ Batch b) {
  const int64_t tile = blockIdx.x;
  const int l = find_layer(b, tile);
  const UnscProjectGradsLayer L = b.layer[l];
  const int64_t local = tile - b.first_tile[l];
  const int64_t tn = ceil_div(L.d, kTileMN);
  const int64_t i0 = (local / tn) * kTileMN, j0 = (local % tn) * kTileMN;
  acc_t acc[kMicro][kMicro] = {};
  const TLoader<acc_t> la{static_cast<const acc_t*>(L.T), L.m};
  const BtLoader<T, acc_t> lb{static_cast<const T*>(L.B), L.b_s0, L.b_s1};
  if (L.b_s1 == 1) {
    tile_product<true, true, acc_t>(la, lb, L.rows, L.d, i0, j0, 0, L.m, acc);
  } else {
    tile_product<true, false, acc_t>(la, lb, L.rows, L.d, i0, j0, 0, L.m, acc);
  }
  T* G = static_cast<T*>(L.G);
#pragma unroll
  for (int p = 0; p < kMicro; ++p) {
    const int64_t i = i0 + threadIdx.y + 16 * p;
#pragma unroll
    for (int q = 0; q < kMicro; ++q) {
      const int64_t j = j0 + threadIdx.x + 16 * q;
      if (i < L.rows && j < L.d) {
        T* g = G + i * L.g_s0 + j * L.g_s1;
        const acc_t v = L.subtract ? to_acc<acc_t>(*g) - acc[p][q] : acc[p][q];
        *g = Store<T>::of(v);
      }
    }
  }
}

template <typename T, typename acc_t>
cudaError_t launch_batch(const UnscProjectGradsLayer* layers, int n, cudaStream_t stream) {
  Batch b1{}, b2{};
  b1.n = b2.n = n;
  b1.first_tile[0] = b2.first_tile[0] = 0;
  for (int l = 0; l < n; ++l) {
    b1.layer[l] = b2.layer[l] = layers[l];
    const int64_t tm = ceil_div(layers[l].rows, kTileMN);
    b1.first_tile[l + 1] = b1.first_tile[l] + tm * ceil_div(layers[l].m, kTileMN);
    b2.first_tile[l + 1] = b2.first_tile[l] + tm * ceil_div(layers[l].d, kTileMN);
  }
  const dim3 block(16, 16);
  if (b1.first_tile[n] > 0) {
    project_grads_pass1<T, acc_t><<<static_cast<unsigned>(b1.first_tile[n]), block, 0, stream>>>(b1);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (b2.first_tile[n] > 0) {
    project_grads_pass2<T, acc_t><<<static_cast<unsigned>(b2.first_tile[n]), block, 0, stream>>>(b2);
  }
  return cudaGetLastError();
}

template <typename T, typename acc_t>
cudaError_t launch_all(const UnscProjectGradsLayer* layers, int n_layers, cudaStream_t stream) {
  for (int start = 0; start < n_layers; start += kMaxLayers) {
    const int n = n_layers - start < kMaxLayers ? n_layers - start : kMaxLayers;
    const cudaError_t e = launch_batch<T, acc_t>(layers + start, n, stream);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace
}  // namespace unsc_cuda

extern "C" cudaError_t unsc_cuda_project_grads(const UnscProjectGradsLayer* layers,
                                               int n_layers, int dtype, cudaStream_t stream) {
  using namespace unsc_cuda;
  if (n_layers <= 0) return cudaSuccess;
  for (int l = 0; l < n_layers; ++l) {
    if (layers[l].m < 1 || layers[l].rows < 0 || layers[l].d < 0) return cudaErrorInvalidValue;
  }
  switch (dtype) {
    case UNSC_F32: return launch_all<float, float>(layers, n_layers, stream);
    case UNSC_F64: return launch_all<double, double>(layers, n_layers, stream);
    case UNSC_F16: return launch_all<__half, float>(layers, n_layers, stream);
    case UNSC_BF16: return launch_all<__nv_bfloat16, float>(layers, n_layers, stream);
    default: return cudaErrorInvalidValue;
  }
}
