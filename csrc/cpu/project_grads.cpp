// project_grads_ on the CPU: for every layer i in one call, in place,
//   G_i <- G_i - (G_i B_i)B_iᵀ  if subtract[i],  else  G_i <- (G_i B_i)B_iᵀ.
// Every layer is split into row tiles sized by its share of the FLOPs; per tile
// T = G_tile B; G_tile -= T Bᵀ (BLAS, at::addmm_), tiles first come first served on the
// intra-op threads (parallel.h). fp16/bf16 or strided G goes through an fp32 staging tile.
#include "../unsc_checks.h"
#include "parallel.h"

#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace unsc::cpu {
namespace {

constexpr int64_t kProjTempElems = 1 << 20;  // cap of a projection tile's T (rows x m) and
                                             // of its fp32 staging copy (rows x d)
constexpr int64_t kProjMinRows = 32;         // rows of a projection tile, unless fewer exist
constexpr int64_t kItemsPerThread = 4;       // projection work items per thread (balance)

void project_grads_cpu(at::TensorList grads, at::TensorList bases,
                       const c10::List<bool>& subtract) {
  check_project_grads(grads, bases, subtract);
  const int64_t L = static_cast<int64_t>(grads.size());
  if (L == 0) return;
  TORCH_CHECK(grads[0].device().is_cpu(),
              "unsc_fast::project_grads_ (CPU): tensors must be on the CPU");

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
  const int64_t nt = available_threads();
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

TORCH_LIBRARY_IMPL(unsc_fast, CPU, m) { m.impl("project_grads_", &project_grads_cpu); }

}  // namespace unsc::cpu
