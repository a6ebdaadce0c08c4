// Python module object for the extension (unsc_fast._C). The ops themselves are registered
// with the dispatcher (torch.ops.unsc_fast.*) by TORCH_LIBRARY when the library is loaded.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "unsc_fast compiled kernels: see torch.ops.unsc_fast";
#ifdef UNSC_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
