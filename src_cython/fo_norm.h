/* fo_norm.h: batch norm (training mode) and the element-wise ops of the training step, float32.
 * The Python wrappers (fo_norm.pxi) check every argument before calling these; the functions
 * here trust their arguments (sizes >= 0, pointers to that many elements, threads >= 1).
 * Layout: x is (n, c, hw) in C order (hw = H * W, 1 for (N, C) inputs), channels on axis 1.
 */
#pragma once
#include <stdint.h>

/* mean/var/inv_std: c floats each; y, xhat: n * c * hw floats. Both return 0, or -1 when their
 * scratch memory (about 16 (n + 2) c bytes) cannot be allocated (nothing is written then). */
int fon_bn_train_forward(const float *x, int64_t n, int64_t c, int64_t hw, const float *gamma,
                         const float *beta, double eps, float *y, float *xhat, float *mean, float *var,
                         float *inv_std, int threads);
int fon_bn_train_backward(const float *dout, const float *xhat, int64_t n, int64_t c, int64_t hw,
                          const float *gamma, const float *inv_std, float *dx, float *dgamma, float *dbeta,
                          int threads);

void fon_hardtanh_forward(const float *x, int64_t size, float lo, float hi, float *y, uint8_t *mask, int threads);
void fon_mask_multiply(const float *d, const uint8_t *mask, int64_t size, float *out, int threads);
void fon_ste_clip_backward(const float *d, const float *x, int64_t size, float clip, int inclusive, float *out,
                           int threads);
void fon_clip_mask(const float *x, int64_t size, float clip, int inclusive, float *out, int threads);

/* the bits of float32 (uint32) / float64 (uint64) values; -1 when all are finite */
int64_t fon_first_nonfinite_f32(const uint32_t *x, int64_t size, int threads);
int64_t fon_first_nonfinite_f64(const uint64_t *x, int64_t size, int threads);
