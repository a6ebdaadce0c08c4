// Shared helpers of the ATen glue of the CUDA ops (csrc/cuda/<op>_glue.cpp): each glue file
// validates its op's arguments (the same checks as on the CPU, csrc/unsc_checks.h, all before
// anything is written), then calls its torch-free launcher (csrc/cuda/<op>.cu, declared in
// unsc_cuda.h) on the current stream. Compiled only into CUDA builds (csrc/build_rules.py).
#pragma once

#include "../unsc_checks.h"
#include "unsc_cuda.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace unsc::cuda {

// unsc_cuda.h's element type code of a dtype.
inline int type_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return UNSC_F32;
    case at::kDouble: return UNSC_F64;
    case at::kHalf: return UNSC_F16;
    case at::kBFloat16: return UNSC_BF16;
    default: TORCH_CHECK(false, "unsc_fast (CUDA): unsupported dtype ", t);
  }
  return -1;
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, " (CUDA): kernel launch failed: ", cudaGetErrorString(err));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace unsc::cuda
