/* Portable epilogues (int32 dot tile -> float or bit-packed output), written once and inlined into
 * each path's target-attributed functions, where the compiler vectorizes them for that ISA.
 * Compiled with -ffp-contract=off: y = float(clamp(dot)) * mul + bias rounds twice, as NumPy does.
 */
#ifndef REFBNN_BK_EPILOGUE_H
#define REFBNN_BK_EPILOGUE_H

#include "bitkernels.h"

#if defined(__GNUC__) || defined(__clang__)
#define BK_INLINE static inline __attribute__((always_inline))
#else
#define BK_INLINE static inline
#endif

BK_INLINE void bk_float_generic(const bk_job *job, const int32_t *tile, int mr, int64_t r, int64_t p)
{
    const int64_t c0 = p * BK_NC;
    const int nc = job->n - c0 < BK_NC ? (int)(job->n - c0) : BK_NC;
    const float *mul = job->mul ? job->mul + c0 : NULL, *bias = job->bias ? job->bias + c0 : NULL;
    const int32_t lo = job->lo, hi = job->hi;
    float *out = (float *)job->out;
    for (int i = 0; i < mr; i++) {
        const int32_t *d = tile + i * BK_NC;
        float y[BK_NC];
        for (int c = 0; c < BK_NC; c++) {
            int32_t v = d[c] < lo ? lo : d[c];
            y[c] = (float)(v > hi ? hi : v);
        }
        if (mul)
            for (int c = 0; c < BK_NC; c++)
                y[c] = y[c] * mul[c];
        if (bias)
            for (int c = 0; c < BK_NC; c++)
                y[c] = y[c] + bias[c];
        float *o = out + bk_out_offset(job, r + i, c0);
        if (job->out_col == 1) {
            for (int c = 0; c < nc; c++)
                o[c] = y[c];
        } else {
            for (int c = 0; c < nc; c++)
                o[c * job->out_col] = y[c];
        }
    }
}

/* bits of one panel's columns for row i of the tile: bit c = (dot < thr[c]) XOR flip bit c */
BK_INLINE void bk_store_bits(const bk_job *job, int64_t row, int64_t p, uint32_t bits)
{
    const int64_t c0 = p * BK_NC;
    uint64_t *w = (uint64_t *)job->out + bk_out_offset(job, row, c0 / 64);
    bits ^= job->flip[p];
    if (c0 % 64 == 0)
        *w = bits;                        /* the first panel of a word writes it ... */
    else
        *w |= (uint64_t)bits << (c0 % 64);  /* ... the second one fills its upper half */
}

BK_INLINE void bk_bits_generic(const bk_job *job, const int32_t *tile, int mr, int64_t r, int64_t p)
{
    const int32_t *thr = job->thr + p * BK_NC;
    for (int i = 0; i < mr; i++) {
        const int32_t *d = tile + i * BK_NC;
        uint32_t bits = 0;
        for (int c = 0; c < BK_NC; c++)
            bits |= (uint32_t)(d[c] < thr[c]) << c;
        bk_store_bits(job, r + i, p, bits);
    }
}

#endif
