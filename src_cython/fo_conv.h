/* Float convolution kernels of the training step: the C side of the conv functions of
 * refbnn.kernels._floatops (src_cython/fo_conv.pxi validates every argument before calling here).
 *
 * Layout and notation (as refbnn.ops.conv / refbnn.ops.im2col): x (N, C, H, W), weight
 * (O, C/g, kh, kw) seen as the matrix Wg (O/g, Kg) per group with Kg = C/g kh kw, dout and y
 * (N, O, Ho, Wo), L = Ho Wo. cols[n] is the im2col matrix (C kh kw, L) of one sample, row
 * (c, i, j), column (p, q): cols[(c, i, j), (p, q)] = xpad[c, p sh + i dh, q sw + j dw].
 *
 *   forward:  y[n, g]   = Wg cols[n, g]                      (O/g x Kg) (Kg x L)
 *   dW:       dWg       = sum_n dout[n, g] cols[n, g]^T      (O/g x L) (L x Kg)
 *   dx:       dcols     = Wg^T dout[n, g],  dx[n] = col2im(dcols)
 *
 * Every product is one "broadcast" GEMM kernel, C[m, v] (+)= sum_p A[m, p] B[p, v]: the kernel keeps
 * a register tile of MR rows x NR vectors of C, broadcasts one A value per row and loads NR
 * vectors of a B row per step p, so it vectorizes along v and never sums across a vector's lanes.
 * dW is computed transposed, dWg^T (Kg x O/g) = cols doutT with doutT (L x O/g) the transposed
 * dout of the sample, vectorized along the output channels. Everything is per sample, in
 * per-thread buffers (they fit in L2 for ResNet-sized layers), never for the whole batch.
 *
 * Implicit columns (strides 1 and Wo == W, e.g. every "same" 3x3 convolution): then the flattened
 * index l = p Wo + q of row (c, i, j) of cols is x's flattened index shifted by a constant,
 * (i dh - top) W + j dw - left, except where q + j dw - left falls outside [0, W) (the read wraps
 * to the neighbouring row) or the row outside [0, H). A copy of x[n, c] per j, bordered with
 * pad_value and with the columns only a wrapped read reaches set to pad_value, makes every row of
 * cols a window of a copy: the forward (B = windows, table-driven kernel) and, on the AVX-512
 * path, dW (A = windows, row-offset table) read the windows directly. The input gradient is the
 * same construction on dout (zero borders): dx[n, c] = sum over (o, i, j) of W[o, c, i, j] times the
 * window of dout copy (o, j) at (top - i dh) Wo + left - j dw, one GEMM per sample and group, no
 * dcols, no col2im. The other geometries use explicit columns and col2im.
 *
 * Reproducibility: a sample is handled by one thread from start to end (dx[n] is written by that
 * thread only) and the weight gradient is summed in fixed parts of consecutive samples (N / 4 of
 * them, at least 2 and at most FO_DW_PARTS: the split depends on N only), each part in sample order, then the parts in order: the result is
 * bit-identical for any thread count (it does depend on the SIMD path: the AVX-512 and AVX2 kernels
 * use fused multiply-adds, the scalar one separate roundings).
 */
#ifndef REFBNN_FO_CONV_H
#define REFBNN_FO_CONV_H

#include <stdint.h>

enum { FO_PATH_AUTO = -1, FO_PATH_SCALAR = 0, FO_PATH_AVX2 = 1, FO_PATH_AVX512 = 2 };
enum { FO_OK = 0, FO_ENOMEM = 1 };
#define FO_DW_PARTS 16

typedef struct {
    int64_t n, c, h, w;          /* input x */
    int64_t o, kh, kw;           /* weight (o, c / groups, kh, kw); o is unused by im2col/col2im */
    int64_t ho, wo;              /* output size (checked >= 1 by the caller) */
    int64_t sh, sw;              /* stride */
    int64_t pt, pb, pl, pr;      /* padding: top, bottom, left, right */
    int64_t dh, dw;              /* dilation */
    int64_t groups;
    float pad_value;
} fo_geom;

int fo_conv_path_supported(int path);
/* The SIMD path the conv kernels use: FO_PATH_AUTO (the best supported) or a forced one (tests). */
int fo_conv_set_path(int path);
int fo_conv_path(void);

int fo_im2col(const fo_geom *g, const float *x, float *cols, int threads);
int fo_col2im(const fo_geom *g, const float *cols, float *x, int threads);
int fo_conv_forward(const fo_geom *g, const float *x, const float *w, float *y, int threads);
/* dx may be NULL (no input gradient) */
int fo_conv_backward(const fo_geom *g, const float *dout, const float *x, const float *w, float *dx, float *dw,
                     int threads);

#endif
