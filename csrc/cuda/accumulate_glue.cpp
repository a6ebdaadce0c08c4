// ATen glue of accumulate_ on CUDA (kernel: accumulate.cu; helpers: glue.h).
#include "glue.h"

#include <torch/library.h>

namespace unsc::cuda {
namespace {

void accumulate_cuda(const at::Tensor& S, const at::Tensor& X) {
  check_accumulate(S, X);
  TORCH_CHECK(S.is_cuda(), "unsc_fast::accumulate_ (CUDA): tensors must be on a CUDA device");
  const int64_t n = X.size(0), d = S.size(0);
  if (n == 0 || d == 0) return;  // safety only: unsc_fast.ops handles empty inputs first
  const c10::cuda::CUDAGuard guard(S.device());
  check_launch(unsc_cuda_accumulate(S.data_ptr(), type_code(S.scalar_type()), X.const_data_ptr(),
                                    type_code(X.scalar_type()), n, d, X.stride(0), X.stride(1),
                                    current_stream()),
               "unsc_fast::accumulate_");
}

}  // namespace

TORCH_LIBRARY_IMPL(unsc_fast, CUDA, m) { m.impl("accumulate_", &accumulate_cuda); }

}  // namespace unsc::cuda
