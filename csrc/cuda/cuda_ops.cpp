// ATen glue of the CUDA implementations: validate (the same checks as on the CPU, all before
// anything is written), then call the torch-free launchers of csrc/cuda/*.cu on the current
// stream. Compiled only into CUDA builds (setup.py / the JIT build with a CUDA torch).
#include "../unsc_checks.h"
#include "unsc_cuda.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <vector>

namespace unsc {
namespace {

int type_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return UNSC_F32;
    case at::kDouble: return UNSC_F64;
    case at::kHalf: return UNSC_F16;
    case at::kBFloat16: return UNSC_BF16;
    default: TORCH_CHECK(false, "unsc_fast (CUDA): unsupported dtype ", t);
  }
  return -1;
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA): kernel launch failed: ", cudaGetErrorString(err));
}

void accumulate_cuda(const at::Tensor& S, const at::Tensor& X) {
  check_accumulate(S, X);
  TORCH_CHECK(S.is_cuda(), "unsc_fast::accumulate_ (CUDA): tensors must be on a CUDA device");
  const int64_t n = X.size(0), d = S.size(0);
  if (n == 0 || d == 0) return;
  const c10::cuda::CUDAGuard guard(S.device());
  check_launch(unsc_cuda_gram_dense(S.data_ptr(), type_code(S.scalar_type()), X.const_data_ptr(),
                                    type_code(X.scalar_type()), n, d, X.stride(0), X.stride(1),
                                    c10::cuda::getCurrentCUDAStream().stream()),
               "unsc_fast::accumulate_");
}

void accumulate_conv_cuda(const at::Tensor& S, const at::Tensor& x, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups) {
  const ConvGeom g = check_accumulate_conv(S, x, kernel, stride, padding, dilation, groups);
  TORCH_CHECK(S.is_cuda(), "unsc_fast::accumulate_conv_ (CUDA): tensors must be on a CUDA device");
  if (g.rows() == 0 || g.d == 0) return;
  const c10::cuda::CUDAGuard guard(S.device());
  UnscConvGeom cg;
  cg.N = g.N; cg.C = g.C; cg.H = g.H; cg.W = g.W;
  cg.groups = g.groups; cg.Cg = g.Cg;
  cg.kh = g.kh; cg.kw = g.kw; cg.sh = g.sh; cg.sw = g.sw;
  cg.ph = g.ph; cg.pw = g.pw; cg.dh = g.dh; cg.dw = g.dw;
  cg.OH = g.OH; cg.OW = g.OW;
  cg.sN = g.sN; cg.sC = g.sC; cg.sH = g.sH; cg.sW = g.sW;
  check_launch(unsc_cuda_gram_conv(S.data_ptr(), type_code(S.scalar_type()), x.const_data_ptr(),
                                   type_code(x.scalar_type()), &cg,
                                   c10::cuda::getCurrentCUDAStream().stream()),
               "unsc_fast::accumulate_conv_");
}

void project_cuda(at::TensorList grads, at::TensorList bases, const c10::List<bool>& subtract) {
  check_project(grads, bases, subtract);
  if (grads.empty()) return;
  TORCH_CHECK(grads[0].is_cuda(), "unsc_fast::project_ (CUDA): tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  // Layers with work, grouped by dtype (one grouped launch pair per dtype).
  std::map<at::ScalarType, std::vector<int64_t>> by_dtype;
  std::vector<int64_t> zero;  // m = 0 projected onto span(B) = {0}
  for (size_t i = 0; i < grads.size(); ++i) {
    const int64_t rows = grads[i].size(0), d = grads[i].size(1), m = bases[i].size(1);
    if (rows == 0 || d == 0) continue;
    if (m == 0) {
      if (!subtract.get(i)) zero.push_back(static_cast<int64_t>(i));
      continue;
    }
    by_dtype[grads[i].scalar_type()].push_back(static_cast<int64_t>(i));
  }
  for (int64_t i : zero) grads[i].zero_();
  for (const auto& [dtype, idx] : by_dtype) {
    const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
    int64_t total = 0;
    for (int64_t i : idx) total += grads[i].size(0) * bases[i].size(1);
    // T = G B of every layer of this dtype (rows x m each, at most the size of G).
    at::Tensor work = at::empty({total}, grads[idx[0]].options().dtype(acc));
    std::vector<UnscProjectLayer> layers;
    layers.reserve(idx.size());
    int64_t offset = 0;
    for (int64_t i : idx) {
      const at::Tensor& G = grads[i];
      const at::Tensor& B = bases[i];
      UnscProjectLayer L;
      L.G = G.data_ptr();
      L.B = B.const_data_ptr();
      L.T = static_cast<char*>(work.data_ptr()) + offset * work.element_size();
      L.rows = G.size(0); L.d = G.size(1); L.m = B.size(1);
      L.g_s0 = G.stride(0); L.g_s1 = G.stride(1);
      L.b_s0 = B.stride(0); L.b_s1 = B.stride(1);
      L.subtract = subtract.get(i) ? 1 : 0;
      L.reserved = 0;
      layers.push_back(L);
      offset += L.rows * L.m;
    }
    check_launch(unsc_cuda_project(layers.data(), static_cast<int>(layers.size()),
                                   type_code(dtype), stream),
                 "unsc_fast::project_");
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(unsc_fast, CUDA, m) {
  m.impl("accumulate_", &accumulate_cuda);
  m.impl("accumulate_conv_", &accumulate_conv_cuda);
  m.impl("project_", &project_cuda);
}

}  // namespace unsc
