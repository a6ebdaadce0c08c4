// Schemas of the unsc_fast ops. Implementations: cpu_ops.cpp (CPU), cuda/cuda_ops.cpp (CUDA).
// Fake (meta) implementations for torch.compile live in Python: unsc_fast/kernels/cpp.py.
#include <torch/library.h>

TORCH_LIBRARY(unsc_fast, m) {
  // Tells torch where the Python fake implementations are registered, so tracing an op
  // before that module was imported gives a clear "import unsc_fast.kernels.cpp" error.
  m.set_python_module("unsc_fast.kernels.cpp");
  // S (d, d) fp32/fp64 += XᵀX for X (n, d); only the upper triangle of S is defined after.
  m.def("accumulate_(Tensor(a!) S, Tensor X) -> ()");
  // S (groups, d, d) += PᵀP over the receptive-field patches P of x (N, C, H, W), implicit
  // im2col with symmetric zero padding; patch order (C/groups, kh, kw). Upper triangles only.
  m.def(
      "accumulate_conv_(Tensor(a!) S, Tensor x, int[2] kernel, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups) -> ()");
  // In place for every layer: G ← G − (G B)Bᵀ if subtract else (G B)Bᵀ.
  m.def("project_(Tensor(a!)[] grads, Tensor[] bases, bool[] subtract) -> ()");
}
