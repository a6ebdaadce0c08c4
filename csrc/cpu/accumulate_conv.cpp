// accumulate_conv_ on the CPU: S[g] += P_gᵀP_g over the receptive-field patches of x, by
// implicit im2col (patch rows built chunk by chunk straight from x's strides: NCHW,
// channels_last or any) into the accumulate engine (accumulate_upper.h). The output size comes
// from the caller (unsc_fast.geometry.ConvGeometry.output_size); nothing here recomputes it.
#include "../unsc_checks.h"
#include "accumulate_upper.h"
#include "parallel.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

namespace unsc::cpu {
namespace {

// Where the window of each output position of a chunk starts.
struct RowIndex {
  std::vector<int64_t> ih0, iw0, base;
};

// Per-thread scratch: the chunk buffer and the chunk's row index.
struct ConvScratch : ChunkBuffer {
  RowIndex ri;
};

// Where the window of each output position r0 + r (r < rows) starts.
void build_rows(RowIndex& ri, const ConvGeom& g, int64_t r0, int64_t rows) {
  ri.ih0.resize(rows);
  ri.iw0.resize(rows);
  ri.base.resize(rows);
  const int64_t L = g.OH * g.OW;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t q = r0 + r;
    const int64_t n = q / L, rem = q % L;
    const int64_t oh = rem / g.OW, ow = rem % g.OW;
    ri.ih0[r] = oh * g.sh - g.ph;
    ri.iw0[r] = ow * g.sw - g.pw;
    // May point before x: only ever used with an in-bounds offset added.
    ri.base[r] = n * g.sN + ri.ih0[r] * g.sH + ri.iw0[r] * g.sW;
  }
}

// buf (ncols, rows), row-major: buf[col - c0][r] = patch value of output position r0 + r at
// column col = (c, ki, kj) of group `group`, zero where the window leaves the input.
template <typename in_t, typename acc_t>
void im2col_cols(const in_t* x, const ConvGeom& g, int64_t group, const RowIndex& ri,
                 int64_t rows, int64_t c0, int64_t ncols, acc_t* buf) {
  const int64_t kk = g.kh * g.kw;
  for (int64_t col = c0; col < c0 + ncols; ++col) {
    const int64_t c = col / kk, ki = (col / g.kw) % g.kh, kj = col % g.kw;
    const int64_t dih = ki * g.dh, diw = kj * g.dw;
    const int64_t off = (group * g.Cg + c) * g.sC + dih * g.sH + diw * g.sW;
    acc_t* out = buf + (col - c0) * rows;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t ih = ri.ih0[r] + dih, iw = ri.iw0[r] + diw;
      const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(g.H) &&
                          static_cast<uint64_t>(iw) < static_cast<uint64_t>(g.W);
      out[r] = inside ? static_cast<acc_t>(x[ri.base[r] + off]) : acc_t(0);
    }
  }
}

template <typename in_t, typename acc_t>
void accumulate_conv_impl(const at::Tensor& S, const at::Tensor& x, const ConvGeom& g) {
  const int64_t n = g.rows();
  const in_t* xp = x.const_data_ptr<in_t>();
  const auto opts = S.options();
  auto one_group = [&](int64_t group, bool parallel) {
    auto source = [&](ConvScratch& s, int64_t c0, int64_t nc, int64_t r0, int64_t rows) {
      at::Tensor& buf = s.get(rows * nc, opts);
      build_rows(s.ri, g, r0, rows);
      im2col_cols<in_t, acc_t>(xp, g, group, s.ri, rows, c0, nc, buf.mutable_data_ptr<acc_t>());
      return buf.narrow(0, 0, rows * nc).view({nc, rows});
    };
    accumulate_upper<ConvScratch>(S.select(0, group), n, n * g.groups, source, parallel);
  };
  const int64_t nt = available_threads();
  if (g.groups > 1 && g.groups >= nt) {
    // Many groups (e.g. depthwise): one group per thread at a time, serial inside.
    parallel_items(g.groups, no_ctx, [&](int64_t group, NoCtx&) { one_group(group, false); });
  } else {
    for (int64_t group = 0; group < g.groups; ++group) one_group(group, true);
  }
}

void accumulate_conv_cpu(const at::Tensor& S, const at::Tensor& x, at::IntArrayRef kernel,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups, at::IntArrayRef output_size) {
  const ConvGeom g =
      check_accumulate_conv(S, x, kernel, stride, padding, dilation, groups, output_size);
  TORCH_CHECK(S.device().is_cpu(),
              "unsc_fast::accumulate_conv_ (CPU): tensors must be on the CPU");
  if (g.rows() == 0 || g.d == 0) return;  // safety only: unsc_fast.ops handles empty inputs
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "unsc_fast::accumulate_conv_", [&] {
    if (S.scalar_type() == at::kDouble) {
      accumulate_conv_impl<scalar_t, double>(S, x, g);
    } else {
      accumulate_conv_impl<scalar_t, float>(S, x, g);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(unsc_fast, CPU, m) { m.impl("accumulate_conv_", &accumulate_conv_cpu); }

}  // namespace unsc::cpu
