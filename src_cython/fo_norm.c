/* fo_norm.c: batch norm in training mode and the element-wise ops of the training step (float32),
 * the compiled versions of refbnn/ops/batchnorm.py, refbnn/ops/activations.py (hardtanh, the
 * mask product of its backward), refbnn/conventions.py (clip_mask, the clipped straight-through
 * estimator of refbnn/quantizers/sign.py) and refbnn/checks.py (first_nonfinite).
 *
 * Memory order: x is (N, C, H*W); a channel's values are N strips of H*W floats, C*H*W apart,
 * each on its own pages for ResNet sizes. Reading a channel at a time (strip after strip) defeats
 * the hardware prefetchers and costs about twice a streaming pass, so each thread takes a range
 * of channels and walks it in memory order (for n: for c in its range: the strip (n, c)), keeping
 * per-channel partial sums, then writes the outputs in the same order.
 *
 * Determinism: a channel's sums are computed by one thread, in an order fixed by the shape alone
 * (double lanes, added in a fixed order: see the two batch norm functions), so every result is
 * bit-identical for any thread count and any SIMD width (no -ffast-math: the compiler may not
 * reassociate the written order). Element-wise ops round each element exactly as NumPy's ufuncs
 * do (-ffp-contract=off: no FMA).
 *
 * Accuracy: the per-channel sums are accumulated in double from float32 values (a product of
 * two float32 values is exact in double), the batch variance from squared deviations (never
 * E[x^2] - E[x]^2), and rounded to float32 once at the end.
 */
#include "fo_norm.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#elif defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunknown-pragmas"   /* a build without OpenMP: one thread */
#endif

/* one build for every x86-64: the hot loops are compiled for AVX-512F, AVX2 and the baseline and
 * picked at load time (glibc ifunc); the three clones compute the same bits (see above; a build
 * with -DFON_NO_CLONES has the baseline only). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && !defined(FON_NO_CLONES)
#define FON_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FON_CLONES
#endif

#if defined(__GNUC__)
#define FON_INLINE static inline __attribute__((always_inline))   /* into each clone, with its target */
#else
#define FON_INLINE static inline
#endif

#define FON_L 16           /* double lanes of a per-channel sum (backward; a strip's sums: FON_LS) */
#define FON_CB 64          /* channels per block of the (N, C) path */
#define FON_CHUNK 32768    /* elements per task of the element-wise ops */

/* lanes added pairwise in a fixed order: s[j] += s[j + w] for w = 8, 4, 2, 1 */
FON_INLINE double fon_combine(double *s)
{
    for (int w = FON_L / 2; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            s[j] += s[j + w];
    return s[0];
}

/* ---- double lanes in vectors of 8 ---------------------------------------------------------------
 * GCC's vector extension (element-wise IEEE operations, lowered to whatever vectors the clone's
 * target has; the auto-vectorizer scalarized these loops); a plain struct elsewhere (and with
 * -DFON_NO_VECTOR_EXT; the bit-exact tests pass with either, and with -DFON_NO_CLONES). */
#if defined(__GNUC__) && !defined(FON_NO_VECTOR_EXT)
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"   /* 64-byte vectors by value, static inline only */
#endif
typedef double fon_d8 __attribute__((vector_size(64)));
typedef float fon_f8 __attribute__((vector_size(32)));
FON_INLINE fon_d8 fon_zero8(void) { return (fon_d8){0, 0, 0, 0, 0, 0, 0, 0}; }
FON_INLINE fon_d8 fon_set8(double v) { return (fon_d8){v, v, v, v, v, v, v, v}; }
FON_INLINE fon_d8 fon_load8(const float *p)
{
    fon_f8 f;
    memcpy(&f, p, sizeof f);
    return __builtin_convertvector(f, fon_d8);
}
FON_INLINE fon_d8 fon_add8(fon_d8 a, fon_d8 b) { return a + b; }
FON_INLINE fon_d8 fon_sub8(fon_d8 a, fon_d8 b) { return a - b; }
FON_INLINE fon_d8 fon_mul8(fon_d8 a, fon_d8 b) { return a * b; }
FON_INLINE void fon_store8(double *p, fon_d8 a) { memcpy(p, &a, sizeof a); }
FON_INLINE fon_d8 fon_fetch8(const double *p)
{
    fon_d8 a;
    memcpy(&a, p, sizeof a);
    return a;
}
#else
typedef struct { double v[8]; } fon_d8;
FON_INLINE fon_d8 fon_set8(double v) { fon_d8 r; for (int j = 0; j < 8; j++) r.v[j] = v; return r; }
FON_INLINE fon_d8 fon_zero8(void) { return fon_set8(0.0); }
FON_INLINE fon_d8 fon_load8(const float *p) { fon_d8 r; for (int j = 0; j < 8; j++) r.v[j] = (double)p[j]; return r; }
FON_INLINE fon_d8 fon_add8(fon_d8 a, fon_d8 b) { for (int j = 0; j < 8; j++) a.v[j] += b.v[j]; return a; }
FON_INLINE fon_d8 fon_sub8(fon_d8 a, fon_d8 b) { for (int j = 0; j < 8; j++) a.v[j] -= b.v[j]; return a; }
FON_INLINE fon_d8 fon_mul8(fon_d8 a, fon_d8 b) { for (int j = 0; j < 8; j++) a.v[j] *= b.v[j]; return a; }
FON_INLINE void fon_store8(double *p, fon_d8 a) { memcpy(p, &a, sizeof a); }
FON_INLINE fon_d8 fon_fetch8(const double *p) { fon_d8 a; memcpy(&a, p, sizeof a); return a; }
#endif

/* the 16 lanes lo (0..7), hi (8..15) added in fon_combine's order: lo + hi is its w = 8 step */
FON_INLINE double fon_combine8(fon_d8 lo, fon_d8 hi)
{
    double s[8];
    fon_store8(s, fon_add8(lo, hi));
    for (int w = 4; w > 0; w /= 2)
        for (int j = 0; j < w; j++)
            s[j] += s[j + w];
    return s[0];
}

/* 16 floats from p, the first r of them when r < 16, zero-padded */
FON_INLINE void fon_tail16(float *t, const float *p, int64_t r)
{
    memset(t, 0, sizeof(float) * FON_L);
    memcpy(t, p, sizeof(float) * (size_t)r);
}

/* ---- per-strip kernels (a strip: H * W contiguous floats of one channel and one sample) ------- */

/* A strip's sums use 32 lanes (4 vectors of 8: four independent add chains, the loop being
 * bound by the add latency otherwise); lane j adds the elements i = j mod 32 in turn, the tail
 * zero-padded (+ 0.0 leaves a lane as it is: lanes start at +0.0 and never become -0.0), and
 * the lanes are combined as s[j] += s[j + w] for w = 16, 8, 4, 2, 1. */
#define FON_LS 32

FON_INLINE double fon_combine32(fon_d8 v0, fon_d8 v1, fon_d8 v2, fon_d8 v3)
{
    return fon_combine8(fon_add8(v0, v2), fon_add8(v1, v3));   /* w = 16, then 8, 4, 2, 1 */
}

/* 32 floats from p, the first r of them (r < 32), zero-padded */
FON_INLINE void fon_tail32(float *t, const float *p, int64_t r)
{
    memset(t, 0, sizeof(float) * FON_LS);
    memcpy(t, p, sizeof(float) * (size_t)r);
}

/* sum of a strip */
FON_INLINE double fon_strip_sum(const float *p, int64_t len)
{
    fon_d8 v0 = fon_zero8(), v1 = fon_zero8(), v2 = fon_zero8(), v3 = fon_zero8();
    int64_t i = 0;
    for (; i + FON_LS <= len; i += FON_LS) {
        v0 = fon_add8(v0, fon_load8(p + i));
        v1 = fon_add8(v1, fon_load8(p + i + 8));
        v2 = fon_add8(v2, fon_load8(p + i + 16));
        v3 = fon_add8(v3, fon_load8(p + i + 24));
    }
    if (i < len) {
        float t[FON_LS];
        fon_tail32(t, p + i, len - i);
        v0 = fon_add8(v0, fon_load8(t));
        v1 = fon_add8(v1, fon_load8(t + 8));
        v2 = fon_add8(v2, fon_load8(t + 16));
        v3 = fon_add8(v3, fon_load8(t + 24));
    }
    return fon_combine32(v0, v1, v2, v3);
}

/* sum of (p - mu)^2 over a strip, the same lanes; the tail's padding multiplied by 0 */
FON_INLINE fon_d8 fon_sq_dev8(const float *p, fon_d8 m)
{
    const fon_d8 a = fon_sub8(fon_load8(p), m);
    return fon_mul8(a, a);
}

FON_INLINE fon_d8 fon_sq_dev8_masked(const float *p, fon_d8 m, const float *w)
{
    const fon_d8 a = fon_mul8(fon_sub8(fon_load8(p), m), fon_load8(w));
    return fon_mul8(a, a);
}

FON_INLINE double fon_strip_sumsq(const float *p, int64_t len, double mu)
{
    const fon_d8 m = fon_set8(mu);
    fon_d8 v0 = fon_zero8(), v1 = fon_zero8(), v2 = fon_zero8(), v3 = fon_zero8();
    int64_t i = 0;
    for (; i + FON_LS <= len; i += FON_LS) {
        v0 = fon_add8(v0, fon_sq_dev8(p + i, m));
        v1 = fon_add8(v1, fon_sq_dev8(p + i + 8, m));
        v2 = fon_add8(v2, fon_sq_dev8(p + i + 16, m));
        v3 = fon_add8(v3, fon_sq_dev8(p + i + 24, m));
    }
    if (i < len) {
        float t[FON_LS], w[FON_LS];
        fon_tail32(t, p + i, len - i);
        for (int j = 0; j < FON_LS; j++)
            w[j] = j < len - i ? 1.0f : 0.0f;
        v0 = fon_add8(v0, fon_sq_dev8_masked(t, m, w));
        v1 = fon_add8(v1, fon_sq_dev8_masked(t + 8, m, w + 8));
        v2 = fon_add8(v2, fon_sq_dev8_masked(t + 16, m, w + 16));
        v3 = fon_add8(v3, fon_sq_dev8_masked(t + 24, m, w + 24));
    }
    return fon_combine32(v0, v1, v2, v3);
}

/* forward statistics of channels [c0, c1), in memory order. Per strip k of channel ch: its sum
 * S_k and, from the strip's own mean m_k = S_k / hw (the strip is still in L1), the sum of
 * squared deviations Q_k; tot[ch] += S_k (k = 0, 1, ...); m_k and Q_k kept for the combination
 * in fon_bn_forward_strips. */
FON_CLONES static void fon_fwd_stats(const float *x, int64_t n, int64_t c, int64_t hw, int64_t c0, int64_t c1,
                                     double *tot, double *mk, double *qk)
{
    for (int64_t ch = c0; ch < c1; ch++)
        tot[ch - c0] = 0.0;
    for (int64_t k = 0; k < n; k++)
        for (int64_t ch = c0; ch < c1; ch++) {
            const float *p = x + (k * c + ch) * hw;
            const double sk = fon_strip_sum(p, hw), m = sk / (double)hw;
            tot[ch - c0] += sk;
            mk[(ch - c0) * n + k] = m;
            qk[(ch - c0) * n + k] = fon_strip_sumsq(p, hw, m);
        }
}

/* xhat = (x - mean) inv, y = xhat gamma + beta for channels [c0, c1): refbnn.ops's float32
 * operations in its order */
FON_CLONES static void fon_fwd_apply(const float *x, int64_t n, int64_t c, int64_t hw, int64_t c0, int64_t c1,
                                     const float *mean, const float *inv_std, const float *gamma,
                                     const float *beta, float *xhat, float *y)
{
    for (int64_t k = 0; k < n; k++)
        for (int64_t ch = c0; ch < c1; ch++) {
            const int64_t o = (k * c + ch) * hw;
            const float mu = mean[ch], inv = inv_std[ch], g = gamma[ch], b = beta[ch];
            for (int64_t i = 0; i < hw; i++) {
                const float h = (x[o + i] - mu) * inv;
                xhat[o + i] = h;
                y[o + i] = h * g + b;
            }
        }
}

/* backward sums of channels [c0, c1), in memory order: per channel 16 lanes of sum(dout) (ls)
 * and of sum(dout xhat) (lt), lane j taking the elements i = j mod 16 of every strip in turn
 * (k = 0, 1, ...; a strip's tail to lanes 0..r-1) */
FON_CLONES static void fon_bwd_sums(const float *d, const float *xh, int64_t n, int64_t c, int64_t hw, int64_t c0,
                                    int64_t c1, double *ls, double *lt)
{
    for (int64_t j = 0; j < (c1 - c0) * FON_L; j++)
        ls[j] = lt[j] = 0.0;
    for (int64_t k = 0; k < n; k++)
        for (int64_t ch = c0; ch < c1; ch++) {
            const float *pd = d + (k * c + ch) * hw, *px = xh + (k * c + ch) * hw;
            double *sl = ls + (ch - c0) * FON_L, *tl = lt + (ch - c0) * FON_L;
            fon_d8 s0 = fon_fetch8(sl), s1 = fon_fetch8(sl + 8), t0 = fon_fetch8(tl), t1 = fon_fetch8(tl + 8);
            int64_t i = 0;
            for (; i + FON_L <= hw; i += FON_L) {
                const fon_d8 a0 = fon_load8(pd + i), a1 = fon_load8(pd + i + 8);
                s0 = fon_add8(s0, a0);
                s1 = fon_add8(s1, a1);
                t0 = fon_add8(t0, fon_mul8(a0, fon_load8(px + i)));
                t1 = fon_add8(t1, fon_mul8(a1, fon_load8(px + i + 8)));
            }
            if (i < hw) {   /* the tail, zero-padded (see fon_strip_sum) */
                float td[FON_L], tx[FON_L];
                fon_tail16(td, pd + i, hw - i);
                fon_tail16(tx, px + i, hw - i);
                const fon_d8 a0 = fon_load8(td), a1 = fon_load8(td + 8);
                s0 = fon_add8(s0, a0);
                s1 = fon_add8(s1, a1);
                t0 = fon_add8(t0, fon_mul8(a0, fon_load8(tx)));
                t1 = fon_add8(t1, fon_mul8(a1, fon_load8(tx + 8)));
            }
            fon_store8(sl, s0);
            fon_store8(sl + 8, s1);
            fon_store8(tl, t0);
            fon_store8(tl + 8, t1);
        }
}

/* dx = (((dout gamma) - a) - xhat b) inv for channels [c0, c1): refbnn.ops's float32 operations
 * in its order */
FON_CLONES static void fon_bwd_apply(const float *d, const float *xh, int64_t n, int64_t c, int64_t hw, int64_t c0,
                                     int64_t c1, const float *gamma, const float *fa, const float *fb,
                                     const float *inv_std, float *dx)
{
    for (int64_t k = 0; k < n; k++)
        for (int64_t ch = c0; ch < c1; ch++) {
            const int64_t o = (k * c + ch) * hw;
            const float g = gamma[ch], a = fa[ch], b = fb[ch], inv = inv_std[ch];
            for (int64_t i = 0; i < hw; i++) {
                float v = d[o + i] * g;
                v = v - a;
                v = v - xh[o + i] * b;
                dx[o + i] = v * inv;
            }
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

#ifdef _OPENMP
#define FON_TEAM_SIZE() omp_get_num_threads()
#define FON_TEAM_RANK() omp_get_thread_num()
#else
#define FON_TEAM_SIZE() 1
#define FON_TEAM_RANK() 0
#endif

/* Forward, per channel (hw >= 2), with S_k, m_k, Q_k from fon_fwd_stats:
 *   mean = (sum_k S_k) / m                                  (k = 0, 1, ... in turn)
 *   var  = (sum_k [Q_k + hw (m_k - mean)^2]) / m            (k = 0, 1, ... in turn)
 * the exact decomposition of sum (x - mean)^2 into within- and between-strip parts (Chan, Golub
 * and LeVeque 1979, "Updating formulae and a pairwise algorithm for computing sample variances"):
 * every term >= 0, no cancellation. inv_std = 1 / sqrt(var + eps) from the double var. */
static int fon_bn_forward_strips(const float *x, int64_t n, int64_t c, int64_t hw, const float *gamma,
                                 const float *beta, double eps, float *y, float *xhat, float *mean, float *var,
                                 float *inv_std, int threads)
{
    double *scratch = (double *)malloc(sizeof(double) * (size_t)(c * (2 * n + 1)));
    if (!scratch)
        return -1;
    const double m = (double)n * (double)hw;
#pragma omp parallel num_threads(threads) if (threads > 1 && c > 1)
    {
        const int64_t team = FON_TEAM_SIZE(), rank = FON_TEAM_RANK();
        const int64_t c0 = c * rank / team, c1 = c * (rank + 1) / team;
        if (c0 < c1) {
            double *tot = scratch + c0, *mk = scratch + c + 2 * n * c0, *qk = mk + n * (c1 - c0);
            fon_fwd_stats(x, n, c, hw, c0, c1, tot, mk, qk);
            for (int64_t ch = c0; ch < c1; ch++) {
                const double mu = tot[ch - c0] / m;
                const double *mc = mk + (ch - c0) * n, *qc = qk + (ch - c0) * n;
                double acc = 0.0;
                for (int64_t k = 0; k < n; k++) {
                    const double dm = mc[k] - mu;
                    acc += qc[k] + (double)hw * (dm * dm);
                }
                const double v = acc / m;
                mean[ch] = (float)mu;
                var[ch] = (float)v;
                inv_std[ch] = (float)(1.0 / sqrt(v + eps));
            }
            fon_fwd_apply(x, n, c, hw, c0, c1, mean, inv_std, gamma, beta, xhat, y);
        }
    }
    free(scratch);
    return 0;
}

int fon_bn_train_forward(const float *x, int64_t n, int64_t c, int64_t hw, const float *gamma,
                         const float *beta, double eps, float *y, float *xhat, float *mean, float *var,
                         float *inv_std, int threads)
{
    if (hw == 1) {
        const int64_t nb = (c + FON_CB - 1) / FON_CB;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nb > 1)
        for (int64_t ib = 0; ib < nb; ib++) {
            const int64_t c0 = ib * FON_CB;
            const int cw = (int)(c - c0 < FON_CB ? c - c0 : FON_CB);
            fon_fwd_block(x, n, c, c0, cw, gamma, beta, eps, y, xhat, mean, var, inv_std);
        }
        return 0;
    }
    return fon_bn_forward_strips(x, n, c, hw, gamma, beta, eps, y, xhat, mean, var, inv_std, threads);
}

/* Backward, per channel (hw >= 2): sum(dout) and sum(dout xhat) from fon_bwd_sums' lanes
 * (combined pairwise), a = gamma sum(dout) / m, b = gamma sum(dout xhat) / m in double. */
int fon_bn_train_backward(const float *dout, const float *xhat, int64_t n, int64_t c, int64_t hw,
                          const float *gamma, const float *inv_std, float *dx, float *dgamma, float *dbeta,
                          int threads)
{
    if (hw == 1) {
        const int64_t nb = (c + FON_CB - 1) / FON_CB;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && nb > 1)
        for (int64_t ib = 0; ib < nb; ib++) {
            const int64_t c0 = ib * FON_CB;
            const int cw = (int)(c - c0 < FON_CB ? c - c0 : FON_CB);
            fon_bwd_block(dout, xhat, n, c, c0, cw, gamma, inv_std, dx, dgamma, dbeta);
        }
        return 0;
    }
    double *lanes = (double *)malloc(sizeof(double) * (size_t)(2 * FON_L * c));
    float *ab = (float *)malloc(sizeof(float) * (size_t)(2 * c));
    if (!lanes || !ab) {
        free(lanes);
        free(ab);
        return -1;
    }
    const double m = (double)n * (double)hw;
#pragma omp parallel num_threads(threads) if (threads > 1 && c > 1)
    {
        const int64_t team = FON_TEAM_SIZE(), rank = FON_TEAM_RANK();
        const int64_t c0 = c * rank / team, c1 = c * (rank + 1) / team;
        if (c0 < c1) {
            double *ls = lanes + FON_L * c0, *lt = lanes + FON_L * (c + c0);
            fon_bwd_sums(dout, xhat, n, c, hw, c0, c1, ls, lt);
            for (int64_t ch = c0; ch < c1; ch++) {
                const double sd = fon_combine(ls + (ch - c0) * FON_L), sdx = fon_combine(lt + (ch - c0) * FON_L);
                const double g = (double)gamma[ch];
                dbeta[ch] = (float)sd;
                dgamma[ch] = (float)sdx;
                ab[ch] = (float)(g * sd / m);
                ab[c + ch] = (float)(g * sdx / m);
            }
            fon_bwd_apply(dout, xhat, n, c, hw, c0, c1, gamma, ab, ab + c, inv_std, dx);
        }
    }
    free(lanes);
    free(ab);
    return 0;
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
FON_INLINE float fon_one_if(int t)
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
