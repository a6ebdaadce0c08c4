// Threading helpers shared by the CPU ops (csrc/cpu/*.cpp): ATen's intra-op pool
// (at::parallel_for, OpenMP), work handed out first come first served inside ONE parallel
// region without barriers, which keeps an op fast when the machine is shared (a descheduled
// thread stalls only its own work).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace unsc::cpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads an op may use: 1 inside an outer parallel region, else torch's intra-op count.
inline int64_t available_threads() {
  return at::in_parallel_region() ? 1 : at::get_num_threads();
}

// Runs work(i, ctx) for every i in [0, n) on the intra-op threads, first come first served
// (order the items most expensive first). Each thread builds one ctx = make_ctx(). ATen ops
// inside `work` see the caller's thread-local state (grad/inference mode, dispatch keys).
template <typename MakeCtx, typename Work>
void parallel_items(int64_t n, const MakeCtx& make_ctx, const Work& work) {
  if (n <= 0) return;
  const int64_t nt = std::min<int64_t>(available_threads(), n);
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

}  // namespace unsc::cpu
