// CPU implementations of the unsc_fast ops: ATen + OpenMP (at::parallel_for), BLAS on
// cache-sized blocks.
//
// Gram updates S += AᵀA touch only the blocks of S on or above the diagonal (kTile x kTile
// blocks; a diagonal block is computed whole, so a few entries just below the diagonal are
// written too: the lower triangle is unspecified). Conv patches are gathered chunk by chunk
// (implicit im2col) into one buffer of at most kChunkElems elements per thread.
#include "unsc_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace unsc {
namespace {

constexpr int64_t kTile = 256;               // S is updated in kTile x kTile blocks
constexpr int64_t kChunkElems = 1 << 20;     // patch buffer budget per thread (elements)
constexpr int64_t kProjTempElems = 1 << 20;  // cap of a projection tile's T (rows x m) and
                                             // of its fp32 staging copy (rows x d)
constexpr int64_t kProjMinRows = 32;         // rows of a projection tile, unless fewer exist
constexpr int64_t kItemsPerThread = 4;       // projection work items per thread (balance)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs work(i, ctx) for every i in [0, n) on the intra-op threads, first come first served
// (order the items most expensive first). Each thread builds one ctx = make_ctx(). ATen ops
// inside `work` see the caller's thread-local state (grad/inference mode, dispatch keys).
template <typename MakeCtx, typename Work>
void parallel_items(int64_t n, const MakeCtx& make_ctx, const Work& work) {
  if (n <= 0) return;
  const int64_t nt =
      at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), n);
  if (nt <= 1) {
    auto ctx = make_ctx();
    for (int64_t i = 0; i < n; ++i) work(i, ctx);
    return;
  }
  std::atomic<int64_t> next{0};
  const at::ThreadLocalState state;
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    at::ThreadLocalStateGuard guard(state);
    auto ctx = make_ctx();
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) work(i, ctx);
  });
}

struct NoCtx {};
inline NoCtx no_ctx() { return {}; }

// S (d, d) += At Atᵀ on the kTile blocks on or above the diagonal. At is (d, k) with strides
// BLAS can use directly (one of them 1). `parallel`: spread the blocks over the threads.
void syrk_upper(const at::Tensor& S, const at::Tensor& At, bool parallel) {
  const int64_t d = S.size(0);
  if (d == 0 || At.size(1) == 0) return;
  if (d <= kTile) {
    S.addmm_(At, At.t());  // one block: BLAS threads internally when not nested
    return;
  }
  const int64_t nb = ceil_div(d, kTile);
  std::vector<std::pair<int64_t, int64_t>> blocks;
  blocks.reserve(nb * (nb + 1) / 2);
  for (int64_t bi = 0; bi < nb; ++bi)
    for (int64_t bj = bi; bj < nb; ++bj) blocks.emplace_back(bi, bj);
  auto block = [&](int64_t t, NoCtx&) {
    const int64_t i0 = blocks[t].first * kTile, j0 = blocks[t].second * kTile;
    const int64_t ni = std::min(kTile, d - i0), nj = std::min(kTile, d - j0);
    S.narrow(0, i0, ni).narrow(1, j0, nj).addmm_(At.narrow(0, i0, ni), At.narrow(0, j0, nj).t());
  };
  if (parallel) {
    parallel_items(static_cast<int64_t>(blocks.size()), no_ctx, block);
  } else {
    NoCtx c;
    for (int64_t t = 0; t < static_cast<int64_t>(blocks.size()); ++t) block(t, c);
  }
}

// Rows per chunk of a Gram update with n rows of dimension d (per group; `groups` of them):
// big enough for efficient BLAS and few passes over S (each chunk reads and writes the upper
// blocks of S once), small enough that the buffer stays a small fraction (at most 1/4) of the
// whole patch matrix, which the reference materialises twice.
int64_t chunk_rows(int64_t d, int64_t n, int64_t groups = 1) {
  int64_t p = std::clamp<int64_t>(kChunkElems / std::max<int64_t>(d, 1), 256, 4096);
  p = std::min(p, std::max<int64_t>(64, ceil_div(n * groups, 4)));
  return std::max<int64_t>(1, std::min(p, n));
}

// ---------------------------------------------------------------------------------------------
// accumulate_
// ---------------------------------------------------------------------------------------------

void accumulate_cpu(const at::Tensor& S, const at::Tensor& X) {
  check_accumulate(S, X);
  TORCH_CHECK(S.device().is_cpu(), "unsc_fast::accumulate_ (CPU): tensors must be on the CPU");
  const int64_t n = X.size(0), d = S.size(0);
  if (n == 0 || d == 0) return;
  const bool blas_ready =
      X.scalar_type() == S.scalar_type() &&
      ((X.stride(1) == 1 && X.stride(0) >= d) || (X.stride(0) == 1 && X.stride(1) >= n));
  if (blas_ready) {  // S += XᵀX straight from X, no copy
    syrk_upper(S, X.t(), /*parallel=*/true);
    return;
  }
  // Convert / compact X chunk by chunk into a (rows, d) buffer of S's dtype.
  const int64_t p = chunk_rows(d, n);
  at::Tensor buf = at::empty({p, d}, S.options());
  for (int64_t r0 = 0; r0 < n; r0 += p) {
    const int64_t rows = std::min(p, n - r0);
    at::Tensor Xc = buf.narrow(0, 0, rows);
    Xc.copy_(X.narrow(0, r0, rows));
    syrk_upper(S, Xc.t(), /*parallel=*/true);
  }
}

// ---------------------------------------------------------------------------------------------
// accumulate_conv_: implicit im2col
// ---------------------------------------------------------------------------------------------

// Per-row scratch of a patch chunk: where each output position's window starts.
struct RowIndex {
  std::vector<int64_t> ih0, iw0, base;
  void build(const ConvGeom& g, int64_t r0, int64_t rows) {
    ih0.resize(rows);
    iw0.resize(rows);
    base.resize(rows);
    const int64_t L = g.OH * g.OW;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t q = r0 + r;
      const int64_t n = q / L, rem = q % L;
      const int64_t oh = rem / g.OW, ow = rem % g.OW;
      ih0[r] = oh * g.sh - g.ph;
      iw0[r] = ow * g.sw - g.pw;
      base[r] = n * g.sN + ih0[r] * g.sH + iw0[r] * g.sW;  // may point before x: only used
    }                                                    // with an in-bounds offset added
  }
};

// buf (d, rows), row-major: buf[col][r] = patch value of output position r0 + r, column
// col = (c, ki, kj) of group `group`, zero where the window leaves the input.
template <typename in_t, typename acc_t>
void im2col_chunk(const in_t* x, const ConvGeom& g, int64_t group, const RowIndex& ri,
                  int64_t rows, acc_t* buf, bool parallel) {
  const int64_t kk = g.kh * g.kw;
  auto fill = [&](int64_t c0, int64_t c1) {
    for (int64_t col = c0; col < c1; ++col) {
      const int64_t c = col / kk, ki = (col / g.kw) % g.kh, kj = col % g.kw;
      const int64_t dih = ki * g.dh, diw = kj * g.dw;
      const int64_t off = (group * g.Cg + c) * g.sC + dih * g.sH + diw * g.sW;
      acc_t* out = buf + col * rows;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t ih = ri.ih0[r] + dih, iw = ri.iw0[r] + diw;
        const bool inside = static_cast<uint64_t>(ih) < static_cast<uint64_t>(g.H) &&
                            static_cast<uint64_t>(iw) < static_cast<uint64_t>(g.W);
        out[r] = inside ? static_cast<acc_t>(x[ri.base[r] + off]) : acc_t(0);
      }
    }
  };
  if (parallel) {
    at::parallel_for(0, g.d, std::max<int64_t>(1, 16384 / std::max<int64_t>(rows, 1)), fill);
  } else {
    fill(0, g.d);
  }
}

template <typename in_t, typename acc_t>
void accumulate_conv_impl(const at::Tensor& S, const at::Tensor& x, const ConvGeom& g) {
  const int64_t n = g.rows(), d = g.d;
  const int64_t p = chunk_rows(d, n, g.groups);
  const in_t* xp = x.const_data_ptr<in_t>();
  auto one_group = [&](int64_t group, at::Tensor& buf, RowIndex& ri, bool parallel) {
    at::Tensor Sg = S.select(0, group);
    acc_t* bp = buf.mutable_data_ptr<acc_t>();
    for (int64_t r0 = 0; r0 < n; r0 += p) {
      const int64_t rows = std::min(p, n - r0);
      ri.build(g, r0, rows);
      im2col_chunk<in_t, acc_t>(xp, g, group, ri, rows, bp, parallel);
      syrk_upper(Sg, buf.narrow(0, 0, d * rows).view({d, rows}), parallel);
    }
  };
  const int64_t nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (g.groups > 1 && g.groups >= nt) {
    // Many groups (e.g. depthwise): one group per thread at a time, serial inside.
    struct Ctx { at::Tensor buf; RowIndex ri; };
    parallel_items(
        g.groups, [&] { return Ctx{at::empty({d * p}, S.options()), RowIndex{}}; },
        [&](int64_t group, Ctx& c) { one_group(group, c.buf, c.ri, false); });
  } else {
    at::Tensor buf = at::empty({d * p}, S.options());
    RowIndex ri;
    for (int64_t group = 0; group < g.groups; ++group) one_group(group, buf, ri, true);
  }
}

void accumulate_conv_cpu(const at::Tensor& S, const at::Tensor& x, at::IntArrayRef kernel,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  const ConvGeom g = check_accumulate_conv(S, x, kernel, stride, padding, dilation, groups);
  TORCH_CHECK(S.device().is_cpu(),
              "unsc_fast::accumulate_conv_ (CPU): tensors must be on the CPU");
  if (g.rows() == 0 || g.d == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "unsc_fast::accumulate_conv_", [&] {
    if (S.scalar_type() == at::kDouble) {
      accumulate_conv_impl<scalar_t, double>(S, x, g);
    } else {
      accumulate_conv_impl<scalar_t, float>(S, x, g);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// project_
// ---------------------------------------------------------------------------------------------

void project_cpu(at::TensorList grads, at::TensorList bases, const c10::List<bool>& subtract) {
  check_project(grads, bases, subtract);
  const int64_t L = static_cast<int64_t>(grads.size());
  if (L == 0) return;
  TORCH_CHECK(grads[0].device().is_cpu(), "unsc_fast::project_ (CPU): tensors must be on the CPU");

  std::vector<at::Tensor> B(L);    // basis in the compute dtype, contiguous
  std::vector<char> direct(L, 0);  // G is BLAS-ready in the compute dtype: no staging copy
  std::vector<int64_t> zero;       // layers with m = 0 projected onto span(B) = {0}
  std::vector<int64_t> active;     // layers with work
  double total_cost = 0;
  for (int64_t i = 0; i < L; ++i) {
    const at::Tensor& G = grads[i];
    const int64_t rows = G.size(0), d = G.size(1), m = bases[i].size(1);
    if (rows == 0 || d == 0) continue;
    if (m == 0) {
      if (!subtract.get(i)) zero.push_back(i);
      continue;
    }
    const auto acc = G.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    B[i] = bases[i].to(acc).contiguous();
    direct[i] = G.scalar_type() == acc && G.stride(1) == 1 && G.stride(0) >= d;
    active.push_back(i);
    total_cost += static_cast<double>(rows) * d * m;
  }

  // Work items (layer, row tile). Each layer is cut into about as many tiles as its share of
  // the FLOPs asks for (kItemsPerThread per thread in all, for balance), tiles of at least
  // kProjMinRows rows (BLAS efficiency: B is re-read once per tile), and T (rows x m) and the
  // fp32 staging copy (rows x d) capped at kProjTempElems elements.
  struct Item { int64_t layer, r0, rows; double cost; };
  std::vector<Item> items;
  const int64_t nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  const double per_item = total_cost / static_cast<double>(std::max<int64_t>(1, nt * kItemsPerThread));
  int64_t max_stage = 0;
  for (int64_t i : active) {
    const int64_t rows = grads[i].size(0), d = grads[i].size(1), m = B[i].size(1);
    const double cost = static_cast<double>(rows) * d * m;
    int64_t pieces = nt > 1 ? static_cast<int64_t>(std::ceil(cost / per_item)) : 1;
    pieces = std::clamp<int64_t>(pieces, 1, ceil_div(rows, kProjMinRows));
    int64_t rt = ceil_div(rows, pieces);
    int64_t cap = kProjTempElems / std::max<int64_t>(m, 1);
    if (!direct[i]) cap = std::min(cap, kProjTempElems / d);
    rt = std::min(rt, std::max<int64_t>(cap, std::min<int64_t>(rows, kProjMinRows)));
    rt = ceil_div(rows, ceil_div(rows, rt));  // even tiles
    if (!direct[i]) max_stage = std::max(max_stage, rt * d);
    for (int64_t r0 = 0; r0 < rows; r0 += rt) {
      const int64_t nr = std::min(rt, rows - r0);
      items.push_back({i, r0, nr, static_cast<double>(nr) * d * m});
    }
  }
  // All checks passed and the bases are prepared: from here on, write.
  for (int64_t i : zero) grads[i].zero_();
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.cost > b.cost; });

  struct Ctx { at::Tensor f32, f64; };  // per-thread staging tiles, made on first use
  auto make_ctx = [] { return Ctx{}; };
  auto work = [&](int64_t k, Ctx& ctx) {
    const Item& it = items[k];
    const at::Tensor& Bi = B[it.layer];
    const int64_t d = Bi.size(0);
    at::Tensor Gt = grads[it.layer].narrow(0, it.r0, it.rows);
    at::Tensor W;
    if (direct[it.layer]) {
      W = Gt;
    } else {
      at::Tensor& stage = Bi.scalar_type() == at::kDouble ? ctx.f64 : ctx.f32;
      if (!stage.defined()) stage = at::empty({max_stage}, Bi.options());
      W = stage.narrow(0, 0, it.rows * d).view({it.rows, d});
      W.copy_(Gt);
    }
    at::Tensor T = at::mm(W, Bi);  // (rows, m), at most kProjTempElems elements
    if (subtract.get(it.layer)) {
      W.addmm_(T, Bi.t(), /*beta=*/1, /*alpha=*/-1);
    } else {
      W.addmm_(T, Bi.t(), /*beta=*/0, /*alpha=*/1);
    }
    if (!direct[it.layer]) Gt.copy_(W);
  };
  parallel_items(static_cast<int64_t>(items.size()), make_ctx, work);
}

}  // namespace

TORCH_LIBRARY_IMPL(unsc_fast, CPU, m) {
  m.impl("accumulate_", &accumulate_cpu);
  m.impl("accumulate_conv_", &accumulate_conv_cpu);
  m.impl("project_", &project_cpu);
}

}  // namespace unsc
