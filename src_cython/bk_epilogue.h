/* Portable epilogues (int32 dot tile -> float or bit-packed output), written once and inlined into
 * each path's target-attributed functions, where the compiler vectorizes them for that ISA.
 * Compiled with -ffp-contract=off: y = float(clamp(dot)) * mul + bias rounds twice, as NumPy does.
 */
#ifndef REFBNN_BK_EPILOGUE_H
#define REFBNN_BK_EPILOGUE_H

#include "bitkernels.h"

#if defined(__GNUC__) || defined(__clang__)
#define BK_INLINE static inline __attribute__((always_inline))
#define BK_RESTRICT __restrict__
#else
#define BK_INLINE static inline
#define BK_RESTRICT
#endif

/* the transform of one tile row: y[c] = float(clamp(d[c])) * mul[c] + bias[c] */
BK_INLINE void bk_float_row(const bk_job *job, const int32_t *d, const float *mul, const float *bias, float *y)
{
    const int32_t lo = job->lo, hi = job->hi;
    for (int c = 0; c < BK_NC; c++) {
        const int32_t v = d[c] < lo ? lo : d[c] > hi ? hi : d[c];
        y[c] = (float)v;
    }
    if (mul)
        for (int c = 0; c < BK_NC; c++)
            y[c] = y[c] * mul[c];
    if (bias)
        for (int c = 0; c < BK_NC; c++)
            y[c] = y[c] + bias[c];
}

/* rows of transformed values -> output: contiguous rows (NHWC), or channel-major (NCHW: per
   channel, the tile's rows are consecutive pixels of one plane) */
BK_INLINE void bk_float_store(const bk_job *job, const float *y /* [mr][BK_NC] */, int mr, const int64_t *rowoff,
                              int64_t p)
{
    const int64_t c0 = p * BK_NC, oc = job->out_col;
    const int nc = job->n - c0 < BK_NC ? (int)(job->n - c0) : BK_NC;
    float *out = (float *)job->out + c0 * oc;
    if (oc == 1) {
        for (int i = 0; i < mr; i++) {
            float *BK_RESTRICT o = out + rowoff[i];
            const float *BK_RESTRICT yi = y + i * BK_NC;
            for (int c = 0; c < nc; c++)
                o[c] = yi[c];
        }
    } else if (rowoff[mr - 1] - rowoff[0] == mr - 1) {   /* NCHW, the rows are consecutive pixels */
        for (int c = 0; c < nc; c++) {
            float *BK_RESTRICT o = out + rowoff[0] + c * oc;
            for (int i = 0; i < mr; i++)
                o[i] = y[i * BK_NC + c];
        }
    } else {
        for (int c = 0; c < nc; c++)
            for (int i = 0; i < mr; i++)
                out[rowoff[i] + c * oc] = y[i * BK_NC + c];
    }
}

BK_INLINE void bk_float_generic(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    float y[BK_MR * BK_NC];
    const float *mul = job->mul ? job->mul + p * BK_NC : NULL, *bias = job->bias ? job->bias + p * BK_NC : NULL;
    for (int i = 0; i < mr; i++)
        bk_float_row(job, tile + i * BK_NC, mul, bias, y + i * BK_NC);
    bk_float_store(job, y, mr, rowoff, p);
}

/* bits of one panel's columns for row i of the tile: bit c = (dot < thr[c]) XOR flip bit c */
BK_INLINE void bk_store_bits(const bk_job *job, int64_t rowoff, int64_t p, uint32_t bits)
{
    const int64_t c0 = p * BK_NC;
    uint64_t *w = (uint64_t *)job->out + rowoff + c0 / 64;
    bits ^= job->flip[p];
    if (c0 % 64 == 0)
        *w = bits;                        /* the first panel of a word writes it ... */
    else
        *w |= (uint64_t)bits << (c0 % 64);  /* ... the second one fills its upper half */
}

BK_INLINE void bk_bits_generic(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    const int32_t *thr = job->thr + p * BK_NC;
    for (int i = 0; i < mr; i++) {
        const int32_t *d = tile + i * BK_NC;
        uint32_t bits = 0;
        for (int c = 0; c < BK_NC; c++)
            bits |= (uint32_t)(d[c] < thr[c]) << c;
        bk_store_bits(job, rowoff[i], p, bits);
    }
}

#endif
