// accumulate_ on the CPU: S (d, d) += XᵀX, upper triangle (engine: accumulate_upper.h).
// Contiguous fp32/fp64 X is read in place; fp16/bf16 or strided X is converted chunk by chunk.
#include "../unsc_checks.h"
#include "accumulate_upper.h"

#include <torch/library.h>

namespace unsc::cpu {
namespace {

void accumulate_cpu(const at::Tensor& S, const at::Tensor& X) {
  check_accumulate(S, X);
  TORCH_CHECK(S.device().is_cpu(), "unsc_fast::accumulate_ (CPU): tensors must be on the CPU");
  const int64_t n = X.size(0), d = S.size(0);
  if (n == 0 || d == 0) return;  // safety only: unsc_fast.ops handles empty inputs first
  const bool blas_ready =
      X.scalar_type() == S.scalar_type() &&
      ((X.stride(1) == 1 && X.stride(0) >= d) || (X.stride(0) == 1 && X.stride(1) >= n));
  if (blas_ready) {  // S += XᵀX straight from X, no copy
    if (d <= kTile) {
      S.addmm_(X.t(), X);  // one block: BLAS threads it
      return;
    }
    auto direct = [&](ChunkBuffer&, int64_t c0, int64_t nc, int64_t r0, int64_t rows) {
      return X.narrow(0, r0, rows).narrow(1, c0, nc).t();
    };
    accumulate_upper<ChunkBuffer>(S, n, n, direct, /*parallel=*/true, /*fixed_chunk=*/n);
    return;
  }
  // Convert / compact X chunk by chunk into a (rows, ncols) buffer of S's dtype.
  const auto opts = S.options();
  auto source = [&](ChunkBuffer& s, int64_t c0, int64_t nc, int64_t r0, int64_t rows) {
    at::Tensor block = s.get(rows * nc, opts).narrow(0, 0, rows * nc).view({rows, nc});
    block.copy_(X.narrow(0, r0, rows).narrow(1, c0, nc));
    return block.t();
  };
  accumulate_upper<ChunkBuffer>(S, n, n, source, /*parallel=*/true);
}

}  // namespace

TORCH_LIBRARY_IMPL(unsc_fast, CPU, m) { m.impl("accumulate_", &accumulate_cpu); }

}  // namespace unsc::cpu
