// ATen glue of accumulate_conv_ on CUDA (kernel: accumulate_conv.cu; helpers: glue.h). The
// output size is the caller's; check_accumulate_conv only guards it.
#include "glue.h"

#include <torch/library.h>

namespace unsc::cuda {
namespace {

void accumulate_conv_cuda(const at::Tensor& S, const at::Tensor& x, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, int64_t groups,
                          at::IntArrayRef output_size) {
  const ConvGeom g =
      check_accumulate_conv(S, x, kernel, stride, padding, dilation, groups, output_size);
  TORCH_CHECK(S.is_cuda(), "unsc_fast::accumulate_conv_ (CUDA): tensors must be on a CUDA device");
  if (g.rows() == 0 || g.d == 0) return;  // safety only: unsc_fast.ops handles empty inputs
  // The groups lie on grid.z, which holds at most 65535 blocks; the Python contract
  // (unsc_fast.accumulate_conv_) slices more groups than that into several calls.
  TORCH_CHECK(g.groups <= 65535, "unsc_fast::accumulate_conv_ (CUDA): ", g.groups,
              " groups exceed the grid limit 65535; call unsc_fast.accumulate_conv_, which"
              " slices them");
  const c10::cuda::CUDAGuard guard(S.device());
  UnscConvGeom cg;
  cg.N = g.N; cg.C = g.C; cg.H = g.H; cg.W = g.W;
  cg.groups = g.groups; cg.Cg = g.Cg;
  cg.kh = g.kh; cg.kw = g.kw; cg.sh = g.sh; cg.sw = g.sw;
  cg.ph = g.ph; cg.pw = g.pw; cg.dh = g.dh; cg.dw = g.dw;
  cg.OH = g.OH; cg.OW = g.OW;
  cg.sN = g.sN; cg.sC = g.sC; cg.sH = g.sH; cg.sW = g.sW;
  check_launch(unsc_cuda_accumulate_conv(S.data_ptr(), type_code(S.scalar_type()),
                                         x.const_data_ptr(), type_code(x.scalar_type()), &cg,
                                         current_stream()),
               "unsc_fast::accumulate_conv_");
}

}  // namespace

TORCH_LIBRARY_IMPL(unsc_fast, CUDA, m) { m.impl("accumulate_conv_", &accumulate_conv_cuda); }

}  // namespace unsc::cuda
