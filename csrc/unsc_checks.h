// Argument validation shared by the CPU and CUDA implementations of the unsc_fast ops.
//
// Every check runs before any output is written, so a bad call leaves S / the gradients
// untouched. Python's unsc_fast.ops validates the same things first; these checks protect
// direct callers of torch.ops.unsc_fast.* (and torch.compile'd graphs).
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <string>

namespace unsc {

inline bool is_acc_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble;
}

inline bool is_in_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// accumulate_(S, X): S (d, d) fp32/fp64 contiguous, X (n, d) fp16/bf16/fp32/fp64, any strides.
inline void check_accumulate(const at::Tensor& S, const at::Tensor& X) {
  TORCH_CHECK(S.defined() && X.defined(), "unsc_fast::accumulate_: S and X must be defined");
  TORCH_CHECK(is_acc_dtype(S.scalar_type()),
              "unsc_fast::accumulate_: S must be float32 or float64, got ", S.scalar_type());
  TORCH_CHECK(is_in_dtype(X.scalar_type()),
              "unsc_fast::accumulate_: X must be float16, bfloat16, float32 or float64, got ",
              X.scalar_type());
  TORCH_CHECK(S.dim() == 2 && S.size(0) == S.size(1),
              "unsc_fast::accumulate_: S must be a square (d, d) matrix, got shape ", S.sizes());
  TORCH_CHECK(X.dim() == 2 && X.size(1) == S.size(0),
              "unsc_fast::accumulate_: X must be (n, ", S.size(0), ") to match S, got shape ",
              X.sizes());
  TORCH_CHECK(S.is_contiguous(), "unsc_fast::accumulate_: S must be contiguous (written in place)");
  TORCH_CHECK(S.device() == X.device(), "unsc_fast::accumulate_: S is on ", S.device(),
              " but X is on ", X.device());
}

// Geometry of accumulate_conv_ after validation; sizes and element strides of x.
struct ConvGeom {
  int64_t N, C, H, W;        // input sizes
  int64_t groups, Cg;        // groups and channels per group
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t OH, OW;            // output spatial sizes (given by the caller)
  int64_t d;                 // patch dimension Cg * kh * kw
  int64_t sN, sC, sH, sW;    // element strides of x (any memory format)
  int64_t rows() const { return N * OH * OW; }
};

// The output size (OH, OW) is the caller's (unsc_fast.geometry.ConvGeometry.output_size, the
// one home of the formula); it is not recomputed here. It is only guarded, for memory safety:
// the last window must lie inside the padded input.
inline ConvGeom check_accumulate_conv(const at::Tensor& S, const at::Tensor& x,
                                      at::IntArrayRef kernel, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups, at::IntArrayRef output_size) {
  const char* op = "unsc_fast::accumulate_conv_: ";
  TORCH_CHECK(S.defined() && x.defined(), op, "S and x must be defined");
  TORCH_CHECK(is_acc_dtype(S.scalar_type()), op, "S must be float32 or float64, got ",
              S.scalar_type());
  TORCH_CHECK(is_in_dtype(x.scalar_type()), op,
              "x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4, op, "x must be (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2 && output_size.size() == 2,
              op, "kernel, stride, padding, dilation and output_size must each have 2 entries");
  TORCH_CHECK(kernel[0] > 0 && kernel[1] > 0, op, "kernel must be positive, got ", kernel);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, op, "stride must be positive, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, op, "dilation must be positive, got ",
              dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, op, "padding must be >= 0, got ", padding);
  TORCH_CHECK(groups > 0, op, "groups must be positive, got ", groups);
  ConvGeom g;
  g.N = x.size(0); g.C = x.size(1); g.H = x.size(2); g.W = x.size(3);
  TORCH_CHECK(g.C % groups == 0, op, g.C, " input channels do not split into ", groups,
              " groups");
  g.groups = groups; g.Cg = g.C / groups;
  g.kh = kernel[0]; g.kw = kernel[1];
  g.sh = stride[0]; g.sw = stride[1];
  g.ph = padding[0]; g.pw = padding[1];
  g.dh = dilation[0]; g.dw = dilation[1];
  g.d = g.Cg * g.kh * g.kw;
  const int64_t span_h = g.dh * (g.kh - 1) + 1, span_w = g.dw * (g.kw - 1) + 1;
  const int64_t ext_h = g.H + 2 * g.ph, ext_w = g.W + 2 * g.pw;
  TORCH_CHECK(ext_h >= span_h && ext_w >= span_w, op, "the (padded) input ", ext_h, "x",
              ext_w, " is smaller than the dilated kernel ", span_h, "x", span_w);
  g.OH = output_size[0];
  g.OW = output_size[1];
  TORCH_CHECK(g.OH > 0 && g.OW > 0, op, "output_size must be positive, got ", output_size);
  // Safety guard only (not the output-size formula): no window may read past the padded input.
  TORCH_CHECK((g.OH - 1) * g.sh + span_h <= ext_h && (g.OW - 1) * g.sw + span_w <= ext_w, op,
              "output_size ", output_size, " reads past the padded input ", ext_h, "x", ext_w,
              " with this kernel, stride and dilation");
  TORCH_CHECK(S.dim() == 3 && S.size(0) == groups && S.size(1) == g.d && S.size(2) == g.d, op,
              "S must be (groups, d, d) = (", groups, ", ", g.d, ", ", g.d,
              ") for this input and geometry, got shape ", S.sizes());
  TORCH_CHECK(S.is_contiguous(), op, "S must be contiguous (written in place)");
  TORCH_CHECK(S.device() == x.device(), op, "S is on ", S.device(), " but x is on ", x.device());
  g.sN = x.stride(0); g.sC = x.stride(1); g.sH = x.stride(2); g.sW = x.stride(3);
  return g;
}

// project_grads_(grads, bases, subtract): per layer G (rows, d) strided, B (d, m), same dtype.
inline void check_project_grads(at::TensorList grads, at::TensorList bases,
                          const c10::List<bool>& subtract) {
  const char* op = "unsc_fast::project_grads_: ";
  TORCH_CHECK(grads.size() == bases.size() && grads.size() == subtract.size(), op,
              "grads, bases and subtract differ in length: ", grads.size(), ", ",
              bases.size(), ", ", subtract.size());
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& G = grads[i];
    const at::Tensor& B = bases[i];
    TORCH_CHECK(G.defined() && B.defined(), op, "grads[", i, "] and bases[", i,
                "] must be defined");
    TORCH_CHECK(is_in_dtype(G.scalar_type()), op, "grads[", i, "] has unsupported dtype ",
                G.scalar_type());
    TORCH_CHECK(G.scalar_type() == B.scalar_type(), op, "grads[", i, "] is ", G.scalar_type(),
                " but bases[", i, "] is ", B.scalar_type(), "; convert the bases with .to(dtype)");
    TORCH_CHECK(G.dim() == 2 && B.dim() == 2 && B.size(0) == G.size(1), op, "grads[", i, "] ",
                G.sizes(), " and bases[", i, "] ", B.sizes(), " must be (rows, d) and (d, m)");
    TORCH_CHECK(G.device() == B.device() && G.device() == grads[0].device(), op, "grads[", i,
                "] is on ", G.device(), ", bases[", i, "] on ", B.device(),
                ", grads[0] on ", grads[0].device(), "; all must be on one device");
    TORCH_CHECK(at::has_internal_overlap(G) != at::MemOverlap::Yes, op, "grads[", i,
                "] has internally overlapping memory (e.g. an expanded tensor); it cannot be"
                " written in place");
  }
}

}  // namespace unsc
