/* Torch-free interface of the unsc_fast CUDA kernels (the .cu files beside this header).
 *
 * The kernels take raw pointers, element strides and a stream; they include no torch header,
 * so `nvcc -c` alone proves they compile (tests/test_cuda_compile.py). The ATen glue that
 * validates tensors and calls these launchers is csrc/cuda/<op>_glue.cpp, one file per op.
 *
 * Every launcher returns cudaGetLastError() after its launches (cudaSuccess when all went
 * well). Arguments are assumed valid: the glue checks them first.
 */
#ifndef UNSC_FAST_CUDA_H_
#define UNSC_FAST_CUDA_H_

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element types. */
enum { UNSC_F32 = 0, UNSC_F64 = 1, UNSC_F16 = 2, UNSC_BF16 = 3 };

/* S (d, d) row-major, F32 or F64: upper triangle (diagonal included) += XᵀX for X (n, d) of
 * any element type, element (r, c) at X[r * stride_n + c * stride_d]. Accumulates in S's type. */
cudaError_t unsc_cuda_accumulate(void* S, int s_dtype, const void* X, int x_dtype, int64_t n,
                                 int64_t d, int64_t stride_n, int64_t stride_d,
                                 cudaStream_t stream);

/* Geometry of a convolution input, sizes and element strides of x (any memory format). OH, OW
 * are the caller's output size (unsc_fast.geometry.ConvGeometry.output_size), not recomputed
 * here. */
typedef struct {
  int64_t N, C, H, W;
  int64_t groups, Cg;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t OH, OW;
  int64_t sN, sC, sH, sW;
} UnscConvGeom;

/* S (groups, d, d) row-major, d = Cg*kh*kw: S[g] upper += P_gᵀP_g over the receptive-field
 * patches of x with symmetric zero padding (ph, pw); patch order (c, ki, kj). */
cudaError_t unsc_cuda_accumulate_conv(void* S, int s_dtype, const void* x, int x_dtype,
                                      const UnscConvGeom* geom, cudaStream_t stream);

/* One layer of project_grads_ (the grouped projection): G (rows, d) and B (d, m) of the call's element type,
 * any element strides; T a workspace of rows*m elements of the compute type (double for
 * F64, float otherwise), contiguous. m >= 1 (the glue handles m = 0). In place:
 *   G <- G - (G B)Bᵀ  if subtract,  else  G <- (G B)Bᵀ. */
typedef struct {
  void* G;
  const void* B;
  void* T;
  int64_t rows, d, m;
  int64_t g_s0, g_s1, b_s0, b_s1;
  int32_t subtract;
  int32_t reserved;
} UnscProjectGradsLayer;

/* All layers (one element type, `dtype`) in two grouped launches per batch of layers:
 * T = G B for every layer, then the update of G from T. */
cudaError_t unsc_cuda_project_grads(const UnscProjectGradsLayer* layers, int n_layers,
                                    int dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* UNSC_FAST_CUDA_H_ */
