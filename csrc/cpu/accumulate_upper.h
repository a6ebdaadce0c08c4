// The engine of the CPU accumulate ops (accumulate.cpp, accumulate_conv.cpp): the upper blocks
// of S (d x d) += AᵀA for an implicit A (n x d) produced chunk by chunk of rows, with BLAS
// (at::addmm_) on cache-sized blocks.
//
// Only kTile x kTile blocks on or above the diagonal of S are updated; a diagonal block is
// computed whole, so a few entries just below the diagonal are written too (the lower triangle
// is unspecified). A is produced into per-thread buffers of a bounded number of rows (conv
// patches by implicit im2col, half/strided X by conversion); each threaded call runs in a
// single parallel region without barriers (see parallel.h).
#pragma once

#include "parallel.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

namespace unsc::cpu {

constexpr int64_t kTile = 256;            // S is updated in kTile x kTile blocks
constexpr int64_t kChunkElems = 1 << 20;  // chunk buffer budget per thread (elements)

// S (d, d) += At Atᵀ on the kTile blocks on or above the diagonal, serially (the caller
// parallelises). At is (d, k) with strides BLAS can use directly (one of them 1).
inline void accumulate_upper_blocks(const at::Tensor& S, const at::Tensor& At) {
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

// Per-thread chunk buffer of a source (sources that need more scratch derive from it).
struct ChunkBuffer {
  at::Tensor buf;
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
inline int64_t chunk_rows(int64_t d, int64_t n, int64_t ref_rows, int64_t nt) {
  int64_t p = std::clamp<int64_t>(kChunkElems / std::max<int64_t>(d, 1), 256, 4096);
  p = std::min(p, std::max<int64_t>(64, ceil_div(ref_rows, 2 * nt + 2)));
  return std::max<int64_t>(1, std::min(p, n));
}

// source(scratch, c0, ncols, r0, rows) returns Aᵀ restricted to columns [c0, c0 + ncols) and
// rows [r0, r0 + rows): an (ncols x rows) tensor of S's dtype that BLAS can read directly,
// usually a view of the Scratch's buffer (Scratch: ChunkBuffer or a type derived from it, one
// per thread). `ref_rows` sizes the memory budget (see chunk_rows), unless `fixed_chunk` > 0
// sets the rows per chunk (sources that copy nothing).
//
// Threaded, it runs in ONE parallel region without barriers (robust on a busy machine):
// * small d, many chunks: the threads take chunks first come first served, each into a private
//   d x d accumulator added to S at the end (under a lock);
// * otherwise: each thread owns a range of rows of S (ranges of equal upper-triangle area),
//   produces only the columns its rows need (those right of its first row) and updates its
//   rows block-row by block-row, chunk after chunk.
template <typename Scratch, typename Source>
void accumulate_upper(const at::Tensor& S, int64_t n, int64_t ref_rows, const Source& source,
                      bool parallel, int64_t fixed_chunk = 0) {
  const int64_t d = S.size(0);
  if (n == 0 || d == 0) return;
  int64_t nt = parallel ? available_threads() : 1;
  if (static_cast<double>(n) * d * d < static_cast<double>(1 << 22)) nt = 1;  // tiny: serial
  const int64_t p = fixed_chunk > 0 ? std::min(fixed_chunk, n) : chunk_rows(d, n, ref_rows, nt);
  const int64_t nchunks = ceil_div(n, p);

  if (nt <= 1) {
    Scratch s;
    for (int64_t r0 = 0; r0 < n; r0 += p) {
      accumulate_upper_blocks(S, source(s, 0, d, r0, std::min(p, n - r0)));
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
        accumulate_upper_blocks(own, source(s, 0, d, r0, std::min(p, n - r0)));
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

}  // namespace unsc::cpu
