/* fo_norm.c: batch norm in training mode and the element-wise ops of the training step (float32),
 * the compiled versions of refbnn/ops/batchnorm.py, refbnn/ops/activations.py (hardtanh, the
 * mask product of its backward), refbnn/conventions.py (clip_mask, the clipped straight-through
 * estimator of refbnn/quantizers/sign.py) and refbnn/checks.py (first_nonfinite).
 *
 * Determinism: a channel's sums are computed by one thread, in an order fixed by the shape alone
 * (16 double lanes, lane j takes the elements at positions i = j mod 16 of every H*W strip, the
 * lanes added pairwise at the end), so every result is bit-identical for any thread count and
 * any SIMD width (no -ffast-math: the compiler may not reassociate the written order).
 * Element-wise ops round each element exactly as NumPy's ufuncs do (-ffp-contract=off: no FMA).
 *
 * Accuracy: the per-channel sums are accumulated in double from float32 values (a product of
 * two float32 values is exact in double), with the batch variance in two passes (the mean first,
 * then the mean of squared deviations from it), and rounded to float32 once at the end.
 */
#include "fo_norm.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* one build for every x86-64: the hot loops are compiled for AVX-512F, AVX2 and the baseline and
 * picked at load time (glibc ifunc); the three clones compute the same bits (see above). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FON_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FON_CLONES
#endif

#define FON_L 16           /* double lanes of a per-channel sum */
#define FON_CB 64          /* channels per block of the (N, C) path */
#define FON_CHUNK 32768    /* elements per task of the element-wise ops */

/* lanes added pairwise in a fixed order: (0+8)+(4+12)... */
static double fon_combine(double *s)
{
    for (int w = FON_L / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            s[j] += s[j + w];
    return s[0];
}

/* ---- per-channel passes over n strips of len floats, stride floats apart ------------------- */

/* sum of the values */
FON_CLONES static double fon_sum(const float *p, int64_t n, int64_t stride, int64_t len)
{
    double s[FON_L] = {0};
    for (int64_t k = 0; k < n; k++, p += stride) {
        int64_t i = 0;
        for (; i + FON_L <= len; i += FON_L)
            for (int j = 0; j < FON_L; j++)
                s[j] += (double)p[i + j];
        for (int j = 0; i < len; i++, j++)
            s[j] += (double)p[i];
    }
    return fon_combine(s);
}

/* sum of (p - mu)^2 */
FON_CLONES static double fon_sumsq_dev(const float *p, int64_t n, int64_t stride, int64_t len, double mu)
{
    double s[FON_L] = {0};
    for (int64_t k = 0; k < n; k++, p += stride) {
        int64_t i = 0;
        for (; i + FON_L <= len; i += FON_L)
            for (int j = 0; j < FON_L; j++) {
                const double d = (double)p[i + j] - mu;
                s[j] += d * d;
            }
        for (int j = 0; i < len; i++, j++) {
            const double d = (double)p[i] - mu;
            s[j] += d * d;
        }
    }
    return fon_combine(s);
}

/* sum of d and sum of d * x (exact products in double) */
FON_CLONES static void fon_sum_dot(const float *d, const float *x, int64_t n, int64_t stride, int64_t len,
                                   double *sum_d, double *sum_dx)
{
    double s[FON_L] = {0}, t[FON_L] = {0};
    for (int64_t k = 0; k < n; k++, d += stride, x += stride) {
        int64_t i = 0;
        for (; i + FON_L <= len; i += FON_L)
            for (int j = 0; j < FON_L; j++) {
                const double a = (double)d[i + j];
                s[j] += a;
                t[j] += a * (double)x[i + j];
            }
        for (int j = 0; i < len; i++, j++) {
            const double a = (double)d[i];
            s[j] += a;
            t[j] += a * (double)x[i];
        }
    }
    *sum_d = fon_combine(s);
    *sum_dx = fon_combine(t);
}

/* xhat = (x - mean) inv, y = xhat gamma + beta: refbnn.ops's float32 operations in its order */
FON_CLONES static void fon_fwd_out(const float *x, int64_t n, int64_t stride, int64_t len, float mean, float inv,
                                   float g, float b, float *xhat, float *y)
{
    for (int64_t k = 0; k < n; k++, x += stride, xhat += stride, y += stride)
        for (int64_t i = 0; i < len; i++) {
            const float h = (x[i] - mean) * inv;
            xhat[i] = h;
            y[i] = h * g + b;
        }
}

/* dx = (((dout gamma) - a) - xhat b) inv, refbnn.ops's float32 operations in its order */
FON_CLONES static void fon_bwd_out(const float *d, const float *xh, int64_t n, int64_t stride, int64_t len,
                                   float g, float a, float b, float inv, float *dx)
{
    for (int64_t k = 0; k < n; k++, d += stride, xh += stride, dx += stride)
        for (int64_t i = 0; i < len; i++) {
            float v = d[i] * g;
            v = v - a;
            v = v - xh[i] * b;
            dx[i] = v * inv;
        }
}

/* ---- the (N, C) path (H * W = 1): a block of channels, vectorized over the channels ------- */

FON_CLONES static void fon_fwd_block(const float *x, int64_t n, int64_t c, int64_t c0, int cw, const float *gamma,
                                     const float *beta, double eps, float *y, float *xhat, float *mean, float *var,
                                     float *inv_std)
{
    double s[FON_CB] = {0}, q[FON_CB] = {0}, mu[FON_CB];
    float mf[FON_CB], inv[FON_CB], g[FON_CB], b[FON_CB];
    for (int64_t k = 0; k < n; k++) {
        const float *r = x + k * c + c0;
        for (int j = 0; j < cw; j++)
            s[j] += (double)r[j];
    }
    for (int j = 0; j < cw; j++)
        mu[j] = s[j] / (double)n;
    for (int64_t k = 0; k < n; k++) {
        const float *r = x + k * c + c0;
        for (int j = 0; j < cw; j++) {
            const double d = (double)r[j] - mu[j];
            q[j] += d * d;
        }
    }
    for (int j = 0; j < cw; j++) {
        const double v = q[j] / (double)n;
        mf[j] = mean[c0 + j] = (float)mu[j];
        var[c0 + j] = (float)v;
        inv[j] = inv_std[c0 + j] = (float)(1.0 / sqrt(v + eps));
        g[j] = gamma[c0 + j];
        b[j] = beta[c0 + j];
    }
    for (int64_t k = 0; k < n; k++) {
        const int64_t o = k * c + c0;
        for (int j = 0; j < cw; j++) {
            const float h = (x[o + j] - mf[j]) * inv[j];
            xhat[o + j] = h;
            y[o + j] = h * g[j] + b[j];
        }
    }
}

FON_CLONES static void fon_bwd_block(const float *d, const float *xh, int64_t n, int64_t c, int64_t c0, int cw,
                                     const float *gamma, const float *inv_std, float *dx, float *dgamma,
                                     float *dbeta)
{
    double s[FON_CB] = {0}, t[FON_CB] = {0};
    float g[FON_CB], a[FON_CB], b[FON_CB], inv[FON_CB];
    for (int64_t k = 0; k < n; k++) {
        const int64_t o = k * c + c0;
        for (int j = 0; j < cw; j++) {
            const double v = (double)d[o + j];
            s[j] += v;
            t[j] += v * (double)xh[o + j];
        }
    }
    for (int j = 0; j < cw; j++) {
        g[j] = gamma[c0 + j];
        inv[j] = inv_std[c0 + j];
        dbeta[c0 + j] = (float)s[j];
        dgamma[c0 + j] = (float)t[j];
        a[j] = (float)((double)g[j] * s[j] / (double)n);
        b[j] = (float)((double)g[j] * t[j] / (double)n);
    }
    for (int64_t k = 0; k < n; k++) {
        const int64_t o = k * c + c0;
        for (int j = 0; j < cw; j++) {
            float v = d[o + j] * g[j];
            v = v - a[j];
            v = v - xh[o + j] * b[j];
            dx[o + j] = v * inv[j];
        }
    }
}

/* ---- batch norm ------------------------------------------------------------------------------ */

void fon_bn_train_forward(const float *x, int64_t n, int64_t c, int64_t hw, const float *gamma,
                          const float *beta, double eps, float *y, float *xhat, float *mean, float *var,
                          float *inv_std, int threads)
{
    const int64_t stride = c * hw;
    const double m = (double)n * (double)hw;
    if (hw == 1) {
        const int64_t nb = (c + FON_CB - 1) / FON_CB;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nb > 1)
        for (int64_t ib = 0; ib < nb; ib++) {
            const int64_t c0 = ib * FON_CB;
            const int cw = (int)(c - c0 < FON_CB ? c - c0 : FON_CB);
            fon_fwd_block(x, n, c, c0, cw, gamma, beta, eps, y, xhat, mean, var, inv_std);
        }
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && c > 1)
    for (int64_t ch = 0; ch < c; ch++) {
        const int64_t off = ch * hw;
        const double mu = fon_sum(x + off, n, stride, hw) / m;
        const double v = fon_sumsq_dev(x + off, n, stride, hw, mu) / m;
        const float inv = (float)(1.0 / sqrt(v + eps));
        mean[ch] = (float)mu;
        var[ch] = (float)v;
        inv_std[ch] = inv;
        fon_fwd_out(x + off, n, stride, hw, (float)mu, inv, gamma[ch], beta[ch], xhat + off, y + off);
    }
}

void fon_bn_train_backward(const float *dout, const float *xhat, int64_t n, int64_t c, int64_t hw,
                           const float *gamma, const float *inv_std, float *dx, float *dgamma, float *dbeta,
                           int threads)
{
    const int64_t stride = c * hw;
    const double m = (double)n * (double)hw;
    if (hw == 1) {
        const int64_t nb = (c + FON_CB - 1) / FON_CB;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nb > 1)
        for (int64_t ib = 0; ib < nb; ib++) {
            const int64_t c0 = ib * FON_CB;
            const int cw = (int)(c - c0 < FON_CB ? c - c0 : FON_CB);
            fon_bwd_block(dout, xhat, n, c, c0, cw, gamma, inv_std, dx, dgamma, dbeta);
        }
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && c > 1)
    for (int64_t ch = 0; ch < c; ch++) {
        const int64_t off = ch * hw;
        double sd, sdx;
        fon_sum_dot(dout + off, xhat + off, n, stride, hw, &sd, &sdx);
        const float g = gamma[ch];
        dbeta[ch] = (float)sd;
        dgamma[ch] = (float)sdx;
        const float a = (float)((double)g * sd / m), b = (float)((double)g * sdx / m);
        fon_bwd_out(dout + off, xhat + off, n, stride, hw, g, a, b, inv_std[ch], dx + off);
    }
}

/* ---- element-wise ops, bit-identical to NumPy's ------------------------------------------------ */

/* ndarray.clip(lo, hi) (NumPy 2: x < lo -> lo, then > hi -> hi; NaN and x == bound kept as they
 * are, so clip(-0.0, 0.0, 1.0) = -0.0) and the mask (x > lo) & (x < hi) */
FON_CLONES static void fon_hardtanh_part(const float *x, int64_t len, float lo, float hi, float *y, uint8_t *mask)
{
    for (int64_t i = 0; i < len; i++) {
        const float v = x[i];
        float t = v < lo ? lo : v;
        t = t > hi ? hi : t;
        y[i] = t;
        mask[i] = (uint8_t)((v > lo) & (v < hi));
    }
}

/* 1.0f when t is nonzero, else 0.0f, built from its bits: written as (float)t or t ? 1.0f : 0.0f,
 * GCC folds d * 1.0f to d (it assumes no signaling NaN), and NumPy's product quiets a signaling
 * NaN d; it also leaves that loop scalar and branchy. */
static inline float fon_one_if(int t)
{
    const uint32_t b = (uint32_t)(-(int32_t)(t != 0)) & 0x3f800000u;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* d * mask, the bool mask promoted to float32 0/1 as NumPy does (any nonzero byte is True) */
FON_CLONES static void fon_mask_part(const float *d, const uint8_t *mask, int64_t len, float *out)
{
    for (int64_t i = 0; i < len; i++)
        out[i] = d[i] * fon_one_if(mask[i] != 0);
}

/* d * float32(|x| <= clip) (inclusive) or d * float32(|x| < clip); with d == NULL the mask itself */
FON_CLONES static void fon_clip_part(const float *d, const float *x, int64_t len, float clip, int inclusive,
                                     float *out)
{
    if (d) {
        if (inclusive)
            for (int64_t i = 0; i < len; i++)
                out[i] = d[i] * fon_one_if(fabsf(x[i]) <= clip);
        else
            for (int64_t i = 0; i < len; i++)
                out[i] = d[i] * fon_one_if(fabsf(x[i]) < clip);
    } else {
        if (inclusive)
            for (int64_t i = 0; i < len; i++)
                out[i] = fabsf(x[i]) <= clip ? 1.0f : 0.0f;
        else
            for (int64_t i = 0; i < len; i++)
                out[i] = fabsf(x[i]) < clip ? 1.0f : 0.0f;
    }
}

#define FON_NCHUNKS(size) (((size) + FON_CHUNK - 1) / FON_CHUNK)
#define FON_CHUNK_LEN(size, k) ((size) - (k) * FON_CHUNK < FON_CHUNK ? (size) - (k) * FON_CHUNK : FON_CHUNK)

void fon_hardtanh_forward(const float *x, int64_t size, float lo, float hi, float *y, uint8_t *mask, int threads)
{
    const int64_t nc = FON_NCHUNKS(size);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nc > 1)
    for (int64_t k = 0; k < nc; k++) {
        const int64_t o = k * FON_CHUNK;
        fon_hardtanh_part(x + o, FON_CHUNK_LEN(size, k), lo, hi, y + o, mask + o);
    }
}

void fon_mask_multiply(const float *d, const uint8_t *mask, int64_t size, float *out, int threads)
{
    const int64_t nc = FON_NCHUNKS(size);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nc > 1)
    for (int64_t k = 0; k < nc; k++) {
        const int64_t o = k * FON_CHUNK;
        fon_mask_part(d + o, mask + o, FON_CHUNK_LEN(size, k), out + o);
    }
}

void fon_ste_clip_backward(const float *d, const float *x, int64_t size, float clip, int inclusive, float *out,
                           int threads)
{
    const int64_t nc = FON_NCHUNKS(size);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nc > 1)
    for (int64_t k = 0; k < nc; k++) {
        const int64_t o = k * FON_CHUNK;
        fon_clip_part(d + o, x + o, FON_CHUNK_LEN(size, k), clip, inclusive, out + o);
    }
}

void fon_clip_mask(const float *x, int64_t size, float clip, int inclusive, float *out, int threads)
{
    const int64_t nc = FON_NCHUNKS(size);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nc > 1)
    for (int64_t k = 0; k < nc; k++) {
        const int64_t o = k * FON_CHUNK;
        fon_clip_part(NULL, x + o, FON_CHUNK_LEN(size, k), clip, inclusive, out + o);
    }
}

/* ---- first non-finite element --------------------------------------------------------------------
 * A float is NaN or +-Inf exactly when its exponent bits are all ones, i.e. when its bits without
 * the sign are >= those of +Inf. Blocks of 1024 values are cleared by an integer max (vectorized,
 * no branch per element); a block whose max reaches +Inf's bits is searched for the first one. */

#define FON_SCAN_BLOCK 1024

FON_CLONES static int64_t fon_scan_f32(const uint32_t *u, int64_t lo, int64_t hi)
{
    for (int64_t b = lo; b < hi; b += FON_SCAN_BLOCK) {
        const int64_t e = hi - b < FON_SCAN_BLOCK ? hi : b + FON_SCAN_BLOCK;
        uint32_t mx = 0;
        for (int64_t i = b; i < e; i++) {
            const uint32_t v = u[i] & 0x7fffffffu;
            mx = v > mx ? v : mx;
        }
        if (mx >= 0x7f800000u)
            for (int64_t i = b; i < e; i++)
                if ((u[i] & 0x7fffffffu) >= 0x7f800000u)
                    return i;
    }
    return -1;
}

FON_CLONES static int64_t fon_scan_f64(const uint64_t *u, int64_t lo, int64_t hi)
{
    const uint64_t abs_mask = 0x7fffffffffffffffull, inf = 0x7ff0000000000000ull;
    for (int64_t b = lo; b < hi; b += FON_SCAN_BLOCK) {
        const int64_t e = hi - b < FON_SCAN_BLOCK ? hi : b + FON_SCAN_BLOCK;
        uint64_t mx = 0;
        for (int64_t i = b; i < e; i++) {
            const uint64_t v = u[i] & abs_mask;
            mx = v > mx ? v : mx;
        }
        if (mx >= inf)
            for (int64_t i = b; i < e; i++)
                if ((u[i] & abs_mask) >= inf)
                    return i;
    }
    return -1;
}

/* chunks of FON_CHUNK values; the smallest index found wins, chunks past it are skipped */
#define FON_FIRST_NONFINITE(scan)                                                                    \
    const int64_t nc = FON_NCHUNKS(size);                                                           \
    if (threads <= 1 || nc <= 1)                                                                    \
        return scan(x, 0, size);                                                                    \
    int64_t best = size;                                                                            \
    _Pragma("omp parallel for num_threads(threads) schedule(dynamic, 1)")                           \
    for (int64_t k = 0; k < nc; k++) {                                                              \
        int64_t cur;                                                                                \
        _Pragma("omp atomic read")                                                                  \
        cur = best;                                                                                 \
        if (k * FON_CHUNK >= cur)                                                                   \
            continue;                                                                               \
        const int64_t r = scan(x, k * FON_CHUNK, k * FON_CHUNK + FON_CHUNK_LEN(size, k));           \
        if (r >= 0) {                                                                               \
            _Pragma("omp critical(fon_first_nonfinite)")                                            \
            {                                                                                       \
                int64_t now;                                                                        \
                _Pragma("omp atomic read")                                                          \
                now = best;                                                                         \
                if (r < now) {                                                                      \
                    _Pragma("omp atomic write")                                                     \
                    best = r;                                                                       \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    return best < size ? best : -1;

int64_t fon_first_nonfinite_f32(const uint32_t *x, int64_t size, int threads)
{
    FON_FIRST_NONFINITE(fon_scan_f32)
}

int64_t fon_first_nonfinite_f64(const uint64_t *x, int64_t size, int threads)
{
    FON_FIRST_NONFINITE(fon_scan_f64)
}
