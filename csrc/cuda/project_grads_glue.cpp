// ATen glue of project_grads_ on CUDA (kernels: project_grads.cu; helpers: glue.h): layers
// grouped by dtype, one pair of grouped launches per dtype (and batch of layers).
#include "glue.h"

#include <torch/library.h>

#include <map>
#include <vector>

namespace unsc::cuda {
namespace {

void project_grads_cuda(at::TensorList grads, at::TensorList bases,
                        const c10::List<bool>& subtract) {
  check_project_grads(grads, bases, subtract);
  if (grads.empty()) return;
  TORCH_CHECK(grads[0].is_cuda(),
              "unsc_fast::project_grads_ (CUDA): tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(grads[0].device());
  const cudaStream_t stream = current_stream();

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
    std::vector<UnscProjectGradsLayer> layers;
    layers.reserve(idx.size());
    int64_t offset = 0;
    for (int64_t i : idx) {
      const at::Tensor& G = grads[i];
      const at::Tensor& B = bases[i];
      UnscProjectGradsLayer L;
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
    check_launch(unsc_cuda_project_grads(layers.data(), static_cast<int>(layers.size()),
                                         type_code(dtype), stream),
                 "unsc_fast::project_grads_");
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(unsc_fast, CUDA, m) { m.impl("project_grads_", &project_grads_cuda); }

}  // namespace unsc::cuda
