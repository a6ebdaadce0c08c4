// The schemas of every unsc_fast op, in one place. Implementations, one file per op per device:
//   accumulate_       cpu/accumulate.cpp       cuda/accumulate.cu       (+ cuda/accumulate_glue.cpp)
//   accumulate_conv_  cpu/accumulate_conv.cpp  cuda/accumulate_conv.cu  (+ cuda/accumulate_conv_glue.cpp)
//   project_grads_    cpu/project_grads.cpp    cuda/project_grads.cu    (+ cuda/project_grads_glue.cpp)
// Fake (meta) implementations for torch.compile live in Python: unsc_fast/kernels/cpp.py.
// The build's source list is csrc/sources.txt.
#include <torch/library.h>

TORCH_LIBRARY(unsc_fast, m) {
  // Tells torch where the Python fake implementations are registered, so tracing an op
  // before that module was imported gives a clear "import unsc_fast.kernels.cpp" error.
  m.set_python_module("unsc_fast.kernels.cpp");
  // S (d, d) fp32/fp64 += XᵀX for X (n, d); only the upper triangle of S is defined after.
  m.def("accumulate_(Tensor(a!) S, Tensor X) -> ()");
  // S (groups, d, d) += PᵀP over the receptive-field patches P of x (N, C, H, W), implicit
  // im2col with symmetric zero padding; patch order (C/groups, kh, kw). Upper triangles only.
  // output_size (OH, OW) is the caller's (unsc_fast.geometry.ConvGeometry.output_size); the
  // kernels only guard that it stays inside the padded input.
  m.def(
      "accumulate_conv_(Tensor(a!) S, Tensor x, int[2] kernel, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, int[2] output_size) -> ()");
  // In place for every layer i: G_i ← G_i − (G_i B_i)B_iᵀ if subtract[i] else (G_i B_i)B_iᵀ.
  m.def("project_grads_(Tensor(a!)[] grads, Tensor[] bases, bool[] subtract) -> ()");
}
