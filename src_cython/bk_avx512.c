/* The AVX-512 VPOPCNTDQ path: a register tile of BK_MR rows x 32 columns (4 zmm of 8 columns per
 * row, 64-bit accumulators). Each k step loads the panel's 32 words once, broadcasts one A word per
 * row and does xor + vpopcntq + add per accumulator: the xor-popcount-add triple the peak counts.
 */
#include "bk_epilogue.h"
#include <string.h>

#if BK_X86
#include <immintrin.h>

#define T512 __attribute__((target("avx512f,avx512vpopcntdq,popcnt")))

#define BK_TRIPLES(MR, AV)                                                                      \
    do {                                                                                        \
        const __m512i b0 = _mm512_load_si512((const void *)bp);                                 \
        const __m512i b1 = _mm512_load_si512((const void *)(bp + 8));                           \
        const __m512i b2 = _mm512_load_si512((const void *)(bp + 16));                          \
        const __m512i b3 = _mm512_load_si512((const void *)(bp + 24));                          \
        for (int r = 0; r < MR; r++) {                                                          \
            const __m512i av = _mm512_set1_epi64((long long)(AV));                              \
            acc[r][0] = _mm512_add_epi64(acc[r][0], _mm512_popcnt_epi64(_mm512_xor_si512(av, b0))); \
            acc[r][1] = _mm512_add_epi64(acc[r][1], _mm512_popcnt_epi64(_mm512_xor_si512(av, b1))); \
            acc[r][2] = _mm512_add_epi64(acc[r][2], _mm512_popcnt_epi64(_mm512_xor_si512(av, b2))); \
            acc[r][3] = _mm512_add_epi64(acc[r][3], _mm512_popcnt_epi64(_mm512_xor_si512(av, b3))); \
        }                                                                                       \
        bp += BK_NC;                                                                            \
    } while (0)

T512 static inline __attribute__((always_inline)) void tile512(const int MR, int ntaps, int cw, uint64_t tailmask,
                                                               const uint64_t *const *ap, const int64_t *tapoff,
                                                               const uint64_t *bp, int32_t kbits, int32_t *dst,
                                                               int64_t ldd)
{
    __m512i acc[BK_MR][4];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 4; j++)
            acc[r][j] = _mm512_setzero_si512();
    const int kfull = tailmask == ~(uint64_t)0 ? cw : cw - 1;
    for (int t = 0; t < ntaps; t++) {
        const uint64_t *a[BK_MR];
        for (int r = 0; r < MR; r++)
            a[r] = bk_arow(ap, tapoff, t, r);
        for (int k = 0; k < kfull; k++)
            BK_TRIPLES(MR, a[r][k]);
        if (kfull < cw)
            BK_TRIPLES(MR, a[r][kfull] & tailmask);
    }
    /* dot = K - 2 popcount: the low 32-bit halves of two accumulators (16 columns) in one register */
    const __m512i kv = _mm512_set1_epi32(kbits);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 4; j += 2) {
            const __m512i pop = _mm512_permutex2var_epi32(acc[r][j], even, acc[r][j + 1]);
            _mm512_storeu_si512((void *)(dst + r * ldd + 8 * j), _mm512_sub_epi32(kv, _mm512_slli_epi32(pop, 1)));
        }
}

T512 void bk_tile_avx512(int mr, int ntaps, int cw, uint64_t tailmask, const uint64_t *const *ap,
                         const int64_t *tapoff, const uint64_t *bp, int32_t kbits, int32_t *dst, int64_t ldd)
{
    switch (mr) {
    case 6: tile512(6, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd); break;
    case 5: tile512(5, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd); break;
    case 4: tile512(4, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd); break;
    case 3: tile512(3, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd); break;
    case 2: tile512(2, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd); break;
    default: tile512(1, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd); break;
    }
}

T512 void bk_float_avx512(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    float y[BK_MR * BK_NC] __attribute__((aligned(64)));
    const __m512i lo = _mm512_set1_epi32(job->lo), hi = _mm512_set1_epi32(job->hi);
    const float *mul = job->mul ? job->mul + p * BK_NC : NULL, *bias = job->bias ? job->bias + p * BK_NC : NULL;
    const int64_t c0 = p * BK_NC;
    const int nc = job->n - c0 < BK_NC ? (int)(job->n - c0) : BK_NC;
    const uint32_t valid = nc == 32 ? 0xFFFFFFFFu : (1u << nc) - 1;
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < BK_NC; j += 16) {
            const __m512i d = _mm512_loadu_si512((const void *)(tile + i * BK_NC + j));
            __m512 v = _mm512_cvtepi32_ps(_mm512_min_epi32(_mm512_max_epi32(d, lo), hi));
            if (mul)
                v = _mm512_mul_ps(v, _mm512_loadu_ps(mul + j));
            if (bias)
                v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j));   /* no FMA: rounds as NumPy */
            if (job->out_col == 1)
                _mm512_mask_storeu_ps((float *)job->out + rowoff[i] + c0 + j, (__mmask16)(valid >> j), v);
            else
                _mm512_store_ps(y + i * BK_NC + j, v);
        }
    if (job->out_col != 1)
        bk_float_store(job, y, mr, rowoff, p);
}

T512 void bk_bits_avx512(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    const int32_t *thr = job->thr + p * BK_NC;
    const __m512i t0 = _mm512_loadu_si512((const void *)thr), t1 = _mm512_loadu_si512((const void *)(thr + 16));
    for (int i = 0; i < mr; i++) {
        const __m512i d0 = _mm512_loadu_si512((const void *)(tile + i * BK_NC));
        const __m512i d1 = _mm512_loadu_si512((const void *)(tile + i * BK_NC + 16));
        const uint32_t bits = (uint32_t)_mm512_cmplt_epi32_mask(d0, t0)
                            | (uint32_t)_mm512_cmplt_epi32_mask(d1, t1) << 16;
        bk_store_bits(job, rowoff[i], p, bits);
    }
}

/* The peak loop: NV zmm accumulators of xor + vpopcntq + add (the tile kernel's triple) and NS scalar
   popcnt words; NS = 0 is the AVX-512 path's own peak. Inlined with constant NV, NS. */
T512 static inline __attribute__((always_inline)) double peak_avx512(const int NV, const int NS, int64_t iters)
{
    __m512i a = _mm512_set1_epi64(0x9E3779B97F4A7C15ll), b[12], s[12];
    for (int j = 0; j < 12; j++) {
        b[j] = _mm512_set1_epi64((long long)((uint64_t)(j + 1) * 0xD1B54A32D192ED03ull));
        s[j] = _mm512_setzero_si512();
    }
    BK_PEAK_SCALAR_INIT
    for (int64_t it = 0; it < iters; it++) {
        for (int j = 0; j < NV; j++)
            s[j] = _mm512_add_epi64(s[j], _mm512_popcnt_epi64(_mm512_xor_si512(a, b[j])));
        BK_PEAK_SCALAR_STEP(NS);
        __asm__ volatile("" : "+v"(a));
    }
    __m512i sum = _mm512_setzero_si512();
    for (int j = 0; j < NV; j++)
        sum = _mm512_add_epi64(sum, s[j]);
    __asm__ volatile("" : : "v"(sum));
    BK_PEAK_SCALAR_END(NS);
    return (double)iters * (NV * 512 + NS * 64) * 2;
}

T512 double bk_peak_avx512(int64_t iters)
{
    return peak_avx512(12, 0, iters);
}

T512 double bk_peak_avx512_mix(int nv, int ns, int64_t iters)
{
#define BK_MIX_CASE(V, S)                                                                               \
    if (nv == (V) && ns == (S))                                                                         \
        return peak_avx512((V), (S), iters);
    BK_PEAK_MIXES(BK_MIX_CASE)
#undef BK_MIX_CASE
    return -1;
}
/* ---- B -> panels: 8 x 8 blocks of words transposed in registers ----------------------------- */

/* rows r[0..7] (8 words each) -> columns: out[w] = (r[0][w], ..., r[7][w]) */
T512 static inline void transpose8(__m512i r[8])
{
    __m512i t[8], s[8];
    for (int i = 0; i < 4; i++) {           /* t[2i]: (r[2i][w], r[2i+1][w]) for even w, t[2i+1] odd w */
        t[2 * i] = _mm512_unpacklo_epi64(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi64(r[2 * i], r[2 * i + 1]);
    }
    /* 128-bit lanes: s[0] = rows 0-3 of words {0, 4} (lanes: r01 w0, r01 w4, r23 w0, r23 w4), ... */
    s[0] = _mm512_shuffle_i64x2(t[0], t[2], _MM_SHUFFLE(2, 0, 2, 0));   /* rows 0-3, words 0, 4 */
    s[1] = _mm512_shuffle_i64x2(t[4], t[6], _MM_SHUFFLE(2, 0, 2, 0));   /* rows 4-7, words 0, 4 */
    s[2] = _mm512_shuffle_i64x2(t[0], t[2], _MM_SHUFFLE(3, 1, 3, 1));   /* rows 0-3, words 2, 6 */
    s[3] = _mm512_shuffle_i64x2(t[4], t[6], _MM_SHUFFLE(3, 1, 3, 1));   /* rows 4-7, words 2, 6 */
    s[4] = _mm512_shuffle_i64x2(t[1], t[3], _MM_SHUFFLE(2, 0, 2, 0));   /* rows 0-3, words 1, 5 */
    s[5] = _mm512_shuffle_i64x2(t[5], t[7], _MM_SHUFFLE(2, 0, 2, 0));   /* rows 4-7, words 1, 5 */
    s[6] = _mm512_shuffle_i64x2(t[1], t[3], _MM_SHUFFLE(3, 1, 3, 1));   /* rows 0-3, words 3, 7 */
    s[7] = _mm512_shuffle_i64x2(t[5], t[7], _MM_SHUFFLE(3, 1, 3, 1));   /* rows 4-7, words 3, 7 */
    r[0] = _mm512_shuffle_i64x2(s[0], s[1], _MM_SHUFFLE(2, 0, 2, 0));
    r[4] = _mm512_shuffle_i64x2(s[0], s[1], _MM_SHUFFLE(3, 1, 3, 1));
    r[2] = _mm512_shuffle_i64x2(s[2], s[3], _MM_SHUFFLE(2, 0, 2, 0));
    r[6] = _mm512_shuffle_i64x2(s[2], s[3], _MM_SHUFFLE(3, 1, 3, 1));
    r[1] = _mm512_shuffle_i64x2(s[4], s[5], _MM_SHUFFLE(2, 0, 2, 0));
    r[5] = _mm512_shuffle_i64x2(s[4], s[5], _MM_SHUFFLE(3, 1, 3, 1));
    r[3] = _mm512_shuffle_i64x2(s[6], s[7], _MM_SHUFFLE(2, 0, 2, 0));
    r[7] = _mm512_shuffle_i64x2(s[6], s[7], _MM_SHUFFLE(3, 1, 3, 1));
}

T512 void bk_pack_group8_avx512(const uint64_t *const *src, int ntaps, int cw, int64_t s_tap, uint64_t tailmask,
                                uint64_t *dst)
{
    const __m512i tail = _mm512_set1_epi64((long long)tailmask);
    for (int t = 0; t < ntaps; t++) {
        const int64_t off = t * s_tap;
        int w = 0;
        for (; w + 8 <= cw; w += 8, dst += 8 * BK_NC) {
            __m512i r[8];
            for (int c = 0; c < 8; c++)
                r[c] = _mm512_loadu_si512((const void *)(src[c] + off + w));
            transpose8(r);
            if (w + 8 == cw)
                r[7] = _mm512_and_si512(r[7], tail);
            for (int i = 0; i < 8; i++)
                _mm512_store_si512((void *)(dst + i * BK_NC), r[i]);
        }
        for (; w < cw; w++, dst += BK_NC) {
            const uint64_t mask = w == cw - 1 ? tailmask : ~(uint64_t)0;
            for (int c = 0; c < 8; c++)
                dst[c] = src[c][off + w] & mask;
        }
    }
}

/* ---- packing: signs -> words, 16 floats (8 doubles) per compare ------------------------------ */

/* bits of one vector by polarity (0: x < 0, 1: x > 0, 2: x >= 0; NaN gives 0, as C's comparisons)
   and the lanes that are not exactly +-1 ("other", NaN included) */
#define BK_PACK512(T, V, M, LANES, LOAD, CMP, ABS, SET1)                                                 \
    T512 static inline M bits512_##T(V v, M valid, int polarity)                                        \
    {                                                                                                   \
        const V zero = SET1((T)0);                                                                      \
        return polarity == 0 ? CMP(valid, v, zero, _CMP_LT_OQ)                                          \
             : polarity == 1 ? CMP(valid, v, zero, _CMP_GT_OQ) : CMP(valid, v, zero, _CMP_GE_OQ);       \
    }                                                                                                   \
    /* inner == 1, unit stride: a row of len values -> ceil(len / 64) words */                          \
    T512 int64_t bk_pack_row_##T##_avx512(const T *x, int64_t len, int polarity, uint64_t *out)         \
    {                                                                                                   \
        const V one = SET1((T)1);                                                                       \
        int64_t other = 0;                                                                              \
        for (int64_t w = 0; w * 64 < len; w++) {                                                        \
            uint64_t word = 0;                                                                          \
            for (int q = 0; q < 64 / LANES && w * 64 + q * LANES < len; q++) {                          \
                const int64_t i = w * 64 + q * LANES, n = len - i < LANES ? len - i : LANES;             \
                const M valid = (M)(n == LANES ? ~0u : (1u << n) - 1);                                  \
                const V v = LOAD(valid, x + i);                                                         \
                word |= (uint64_t)bits512_##T(v, valid, polarity) << (q * LANES);                        \
                other += _mm_popcnt_u32((unsigned)CMP(valid, ABS(v), one, _CMP_NEQ_UQ));                \
            }                                                                                           \
            out[w] = word;                                                                              \
        }                                                                                               \
        return other;                                                                                   \
    }                                                                                                   \
    /* inner > 1 with len <= 64 (one word per position), unit inner stride: the channel axis of NCHW   \
       data. Channels outermost, positions streamed LANES at a time, each position's word ORed in      \
       place in out (inner words, small enough to stay in cache) */                                   \
    T512 int64_t bk_pack_inner_##T##_avx512(const T *x, int64_t len, int64_t inner, int64_t s_len,      \
                                             int polarity, uint64_t *out)                               \
    {                                                                                                   \
        const V one = SET1((T)1);                                                                       \
        int64_t other = 0;                                                                              \
        memset(out, 0, (size_t)inner * sizeof(uint64_t));                                               \
        for (int64_t c = 0; c < len; c++) {                                                             \
            const __m512i bit = _mm512_set1_epi64((long long)(1ull << c));                              \
            const T *xc = x + c * s_len;                                                                \
            for (int64_t p0 = 0; p0 < inner; p0 += LANES) {                                             \
                const int64_t np = inner - p0 < LANES ? inner - p0 : LANES;                             \
                const M valid = (M)(np == LANES ? ~0u : (1u << np) - 1);                                \
                const V v = LOAD(valid, xc + p0);                                                       \
                const unsigned bits = (unsigned)bits512_##T(v, valid, polarity);                        \
                const __mmask8 vlo = (__mmask8)valid, vhi = (__mmask8)((unsigned)valid >> 8);           \
                __m512i lo = _mm512_maskz_loadu_epi64(vlo, out + p0);                                   \
                _mm512_mask_storeu_epi64(out + p0, vlo, _mm512_mask_or_epi64(lo, (__mmask8)bits, lo, bit)); \
                if (LANES > 8) {                                                                        \
                    __m512i hi = _mm512_maskz_loadu_epi64(vhi, out + p0 + 8);                           \
                    _mm512_mask_storeu_epi64(out + p0 + 8, vhi,                                         \
                                             _mm512_mask_or_epi64(hi, (__mmask8)(bits >> 8), hi, bit)); \
                }                                                                                       \
                other += _mm_popcnt_u32((unsigned)CMP(valid, ABS(v), one, _CMP_NEQ_UQ));                \
            }                                                                                           \
        }                                                                                               \
        return other;                                                                                   \
    }

BK_PACK512(float, __m512, __mmask16, 16, _mm512_maskz_loadu_ps, _mm512_mask_cmp_ps_mask, _mm512_abs_ps,
           _mm512_set1_ps)
BK_PACK512(double, __m512d, __mmask8, 8, _mm512_maskz_loadu_pd, _mm512_mask_cmp_pd_mask, _mm512_abs_pd,
           _mm512_set1_pd)
#endif
