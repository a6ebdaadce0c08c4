// CPU implementations of the unsc_fast ops: ATen + OpenMP (at::parallel_for), BLAS (at::addmm_)
// on cache-sized blocks.
//
// Gram updates S += AᵀA (gram_upper) touch only blocks on or above the diagonal of S; a
// diagonal block is computed whole, so a few entries just below the diagonal are written too
// (the lower triangle is unspecified). A is produced chunk by chunk of rows: conv patches by
// implicit im2col, half/strided X by conversion, into per-thread buffers of a bounded number
// of rows; each threaded op runs in a single parallel region without barriers, which keeps it
// fast when the machine is shared (a descheduled thread stalls only its own work).
// project_ splits every layer into row tiles sized by its share of the FLOPs and runs
// T = G_tile B; G_tile -= T Bᵀ per tile, tiles first come first served.
#include "unsc_checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
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

// S (d, d) += At Atᵀ on the kTile blocks on or above the diagonal, serially (the caller
// parallelises). At is (d, k) with strides BLAS can use directly (one of them 1).
void syrk_upper(const at::Tensor& S, const at::Tensor& At) {
  const int64_t d = S.size(0);
  if (d == 0 || At.size(1) == 0) return;
  for (int64_t i0 = 0; i0 < d; i0 += kTile) {
    const int64_t ni = std::min(kTile, d - i0);
    for (int64_t j0 = i0; j0 < d; j0 += kTile) {
      const int64_t nj = std::min(kTile, d - j0);
      S.narrow(0, i0, ni).narrow(1, j0, nj)
          .addmm_(At.narrow(0, i0, ni), At.narrow(0, j0, nj).t());
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gram engine: upper blocks of S (d x d) += AᵀA for an implicit A (n x d) produced in chunks
// ---------------------------------------------------------------------------------------------

// Per-thread scratch of a source: the chunk buffer and the conv row index.
struct RowIndex {
  std::vector<int64_t> ih0, iw0, base;
};
struct Scratch {
  at::Tensor buf;
  RowIndex ri;
  // A buffer of at least `elems` elements (the first chunk is the largest: allocated once).
  at::Tensor& get(int64_t elems, const at::TensorOptions& opts) {
    if (!buf.defined() || buf.numel() < elems) buf = at::empty({elems}, opts);
    return buf;
  }
};

// Rows per chunk: big enough for efficient BLAS and few passes over S (each chunk reads and
// writes the upper blocks of S once), small enough that the chunk buffers of all threads
// together stay well under 1/4 of the patch matrix (ref_rows x d), which the reference
// materialises twice.
int64_t chunk_rows(int64_t d, int64_t n, int64_t ref_rows, int64_t nt) {
  int64_t p = std::clamp<int64_t>(kChunkElems / std::max<int64_t>(d, 1), 256, 4096);
  p = std::min(p, std::max<int64_t>(64, ceil_div(ref_rows, 2 * nt + 2)));
  return std::max<int64_t>(1, std::min(p, n));
}

// source(scratch, c0, ncols, r0, rows) returns Aᵀ restricted to columns [c0, c0 + ncols) and
// rows [r0, r0 + rows): an (ncols x rows) tensor of S's dtype that BLAS can read directly,
// usually a view of scratch.buf. `ref_rows` sizes the memory budget (see chunk_rows), unless
// `fixed_chunk` > 0 sets the rows per chunk (sources that copy nothing).
//
// Threaded, it runs in ONE parallel region without barriers (robust on a busy machine):
// * small d, many chunks: the threads take chunks first come first served, each into a private
//   d x d accumulator added to S at the end (under a lock);
// * otherwise: each thread owns a range of rows of S (ranges of equal upper-triangle area),
//   produces only the columns its rows need (those right of its first row) and updates its
//   rows block-row by block-row, chunk after chunk.
template <typename Source>
void gram_upper(const at::Tensor& S, int64_t n, int64_t ref_rows, const Source& source,
                bool parallel, int64_t fixed_chunk = 0) {
  const int64_t d = S.size(0);
  if (n == 0 || d == 0) return;
  int64_t nt = parallel && !at::in_parallel_region() ? at::get_num_threads() : 1;
  if (static_cast<double>(n) * d * d < static_cast<double>(1 << 22)) nt = 1;  // tiny: serial
  const int64_t p = fixed_chunk > 0 ? std::min(fixed_chunk, n) : chunk_rows(d, n, ref_rows, nt);
  const int64_t nchunks = ceil_div(n, p);

  if (nt <= 1) {
    Scratch s;
    for (int64_t r0 = 0; r0 < n; r0 += p) {
      syrk_upper(S, source(s, 0, d, r0, std::min(p, n - r0)));
    }
    return;
  }
  const at::ThreadLocalState state;
  if (d <= 512 && nchunks >= 2 * nt && nt * d * 8 <= ref_rows) {
    std::atomic<int64_t> next{0};
    std::mutex lock;
    at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
      at::ThreadLocalStateGuard guard(state);
      Scratch s;
      at::Tensor own = at::zeros_like(S);
      for (int64_t c = next.fetch_add(1); c < nchunks; c = next.fetch_add(1)) {
        const int64_t r0 = c * p;
        syrk_upper(own, source(s, 0, d, r0, std::min(p, n - r0)));
      }
      const std::lock_guard<std::mutex> hold(lock);
      S.add_(own);
    });
    return;
  }
  // Row ranges [bound[t], bound[t+1]) of equal upper-triangle area, multiples of 16 rows.
  std::vector<int64_t> bound(nt + 1, d);
  bound[0] = 0;
  for (int64_t t = 1; t < nt; ++t) {
    const double r = d * (1.0 - std::sqrt(1.0 - static_cast<double>(t) / nt));
    bound[t] = std::clamp<int64_t>((static_cast<int64_t>(r) + 8) / 16 * 16, bound[t - 1], d);
  }
  const int64_t hb = d <= 2048 ? 128 : kTile;  // block-row height of the updates
  at::parallel_for(0, nt, 1, [&](int64_t t_begin, int64_t t_end) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t a = bound[t], z = bound[t + 1];
      if (a >= z) continue;
      Scratch s;
      for (int64_t r0 = 0; r0 < n; r0 += p) {
        const at::Tensor At = source(s, a, d - a, r0, std::min(p, n - r0));  // (d - a, rows)
        for (int64_t i0 = a; i0 < z; i0 += hb) {
          const int64_t h = std::min(hb, z - i0);
          S.narrow(0, i0, h).narrow(1, i0, d - i0)
              .addmm_(At.narrow(0, i0 - a, h), At.narrow(0, i0 - a, d - i0).t());
        }
      }
    }
  });
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
    if (d <= kTile) {
      S.addmm_(X.t(), X);  // one block: BLAS threads it
      return;
    }
    auto direct = [&](Scratch&, int64_t c0, int64_t nc, int64_t r0, int64_t rows) {
      return X.narrow(0, r0, rows).narrow(1, c0, nc).t();
    };
    gram_upper(S, n, n, direct, /*parallel=*/true, /*fixed_chunk=*/n);
    return;
  }
  // Convert / compact X chunk by chunk into a (rows, ncols) buffer of S's dtype.
  const auto opts = S.options();
  auto source = [&](Scratch& s, int64_t c0, int64_t nc, int64_t r0, int64_t rows) {
    at::Tensor block = s.get(rows * nc, opts).narrow(0, 0, rows * nc).view({rows, nc});
    block.copy_(X.narrow(0, r0, rows).narrow(1, c0, nc));
    return block.t();
  };
  gram_upper(S, n, n, source, /*parallel=*/true);
}

// ---------------------------------------------------------------------------------------------
// accumulate_conv_: implicit im2col
// ---------------------------------------------------------------------------------------------

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
    auto source = [&](Scratch& s, int64_t c0, int64_t nc, int64_t r0, int64_t rows) {
      at::Tensor& buf = s.get(rows * nc, opts);
      build_rows(s.ri, g, r0, rows);
      im2col_cols<in_t, acc_t>(xp, g, group, s.ri, rows, c0, nc, buf.mutable_data_ptr<acc_t>());
      return buf.narrow(0, 0, rows * nc).view({nc, rows});
    };
    gram_upper(S.select(0, group), n, n * g.groups, source, parallel);
  };
  const int64_t nt = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (g.groups > 1 && g.groups >= nt) {
    // Many groups (e.g. depthwise): one group per thread at a time, serial inside.
    parallel_items(g.groups, no_ctx, [&](int64_t group, NoCtx&) { one_group(group, false); });
  } else {
    for (int64_t group = 0; group < g.groups; ++group) one_group(group, true);
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
