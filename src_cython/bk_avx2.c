/* The AVX2 path (x86-64 with AVX2, no AVX-512 VPOPCNTDQ): AVX2 has no vector popcount, so each
 * byte is counted with two 16-entry table lookups (vpshufb on the low and high nibbles, Mula's
 * method). Byte counts accumulate for up to 31 words (31 * 8 < 256), then vpsadbw sums each
 * 64-bit lane, which is one output column: still no horizontal sums.
 */
#include "bk_epilogue.h"

#if BK_X86
#include <immintrin.h>

#define T2 __attribute__((target("avx2")))

T2 static inline __m256i popcount_bytes(__m256i x, __m256i lut, __m256i low)
{
    const __m256i lo = _mm256_and_si256(x, low), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

#define BK_LUT _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, \
                                0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4)

/* one row at a time against the panel's 32 columns: 8 vectors of 4 columns */
T2 void bk_tile_avx2(int mr, int ntaps, int cw, uint64_t tailmask, const uint64_t *const *ap, const int64_t *tapoff,
                     const uint64_t *bp, int32_t kbits, int32_t *dst, int64_t ldd)
{
    const __m256i lut = BK_LUT, low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);   /* low halves of the 64-bit lanes */
    for (int i = 0; i < mr; i++) {
        __m256i c8[8], c64[8];
        for (int j = 0; j < 8; j++)
            c8[j] = c64[j] = zero;
        int since = 0;
        const uint64_t *b = bp;
        for (int t = 0; t < ntaps; t++) {
            const uint64_t *a = bk_arow(ap, tapoff, t, i);
            for (int k = 0; k < cw; k++, b += BK_NC) {
                const __m256i av = _mm256_set1_epi64x((long long)(a[k] & (k == cw - 1 ? tailmask : ~(uint64_t)0)));
                for (int j = 0; j < 8; j++) {
                    const __m256i x = _mm256_xor_si256(av, _mm256_load_si256((const __m256i *)(b + 4 * j)));
                    c8[j] = _mm256_add_epi8(c8[j], popcount_bytes(x, lut, low));
                }
                if (++since == 31) {
                    for (int j = 0; j < 8; j++) {
                        c64[j] = _mm256_add_epi64(c64[j], _mm256_sad_epu8(c8[j], zero));
                        c8[j] = zero;
                    }
                    since = 0;
                }
            }
        }
        const __m256i kv = _mm256_set1_epi64x(kbits);
        for (int j = 0; j < 8; j++) {
            c64[j] = _mm256_add_epi64(c64[j], _mm256_sad_epu8(c8[j], zero));
            const __m256i d = _mm256_sub_epi64(kv, _mm256_slli_epi64(c64[j], 1));
            _mm_storeu_si128((__m128i *)(dst + i * ldd + 4 * j),
                             _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(d, pick)));
        }
    }
}

/* The mixed path (AVX2 and POPCNT): one row at a time, the panel's first 4 * NV columns through the
   nibble-lookup popcount above (the vector ports) and the last BK_NC - 4 * NV columns through the
   scalar popcnt instruction on 64-bit words in general registers (the integer ports), in the same
   loop over k, so that both port groups work at once. Each (row, column) is still the sum over its
   words of popcount(a XOR b), only the unit that counts differs: the same integers as every path. */
#define T2P __attribute__((target("avx2,popcnt")))
T2P static inline __attribute__((always_inline)) void tile_mix(const int NV, int mr, int ntaps, int cw,
                                                               uint64_t tailmask, const uint64_t *const *ap,
                                                               const int64_t *tapoff, const uint64_t *bp,
                                                               int32_t kbits, int32_t *dst, int64_t ldd)
{
    const int NS = BK_NC - 4 * NV;
    const __m256i lut = BK_LUT, low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const __m256i pick = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const int kfull = tailmask == ~(uint64_t)0 ? cw : cw - 1;
    for (int i = 0; i < mr; i++) {
        __m256i c8[8], c64[8];
        uint64_t s[BK_NC];
        for (int j = 0; j < NV; j++)
            c8[j] = c64[j] = zero;
        for (int j = 0; j < NS; j++)
            s[j] = 0;
        int since = 0;               /* words in the byte counters c8 (at most 31: 31 * 8 < 256) */
        const uint64_t *b = bp;
#define BK_MIX_STEP(AW)                                                                                 \
        do {                                                                                            \
            const uint64_t aw = (AW);                                                                   \
            const __m256i av = _mm256_set1_epi64x((long long)aw);                                       \
            for (int j = 0; j < NV; j++) {                                                              \
                const __m256i x = _mm256_xor_si256(av, _mm256_load_si256((const __m256i *)(b + 4 * j))); \
                c8[j] = _mm256_add_epi8(c8[j], popcount_bytes(x, lut, low));                            \
            }                                                                                           \
            for (int j = 0; j < NS; j++) {                                                              \
                /* the empty asm keeps the word in a general register: the compiler must not move       \
                   this half onto the vector ports the other half is using */                           \
                uint64_t x = aw ^ b[4 * NV + j];                                                        \
                __asm__("" : "+r"(x));                                                                  \
                s[j] += (uint64_t)__builtin_popcountll(x);                                              \
            }                                                                                           \
            b += BK_NC;                                                                                 \
        } while (0)
#define BK_MIX_FLUSH                                                                                    \
        do {                                                                                            \
            for (int j = 0; j < NV; j++) {                                                              \
                c64[j] = _mm256_add_epi64(c64[j], _mm256_sad_epu8(c8[j], zero));                        \
                c8[j] = zero;                                                                           \
            }                                                                                           \
            since = 0;                                                                                  \
        } while (0)
        if (cw == 1) {               /* one word per tap (up to 64 channels): the taps are the loop */
            for (int t = 0; t < ntaps; t++) {
                BK_MIX_STEP(*bk_arow(ap, tapoff, t, i) & tailmask);
                if (++since == 31)
                    BK_MIX_FLUSH;
            }
        } else for (int t = 0; t < ntaps; t++) {
            const uint64_t *a = bk_arow(ap, tapoff, t, i);
            for (int k = 0; k < kfull;) {
                const int n = kfull - k < 31 - since ? kfull - k : 31 - since;
                for (const uint64_t *ak = a + k, *ae = a + k + n; ak < ae; ak++)
                    BK_MIX_STEP(*ak);
                k += n;
                since += n;
                if (since == 31)
                    BK_MIX_FLUSH;
            }
            if (kfull < cw) {
                BK_MIX_STEP(a[kfull] & tailmask);
                if (++since == 31)
                    BK_MIX_FLUSH;
            }
        }
#undef BK_MIX_STEP
#undef BK_MIX_FLUSH
        const __m256i kv = _mm256_set1_epi64x(kbits);
        for (int j = 0; j < NV; j++) {
            c64[j] = _mm256_add_epi64(c64[j], _mm256_sad_epu8(c8[j], zero));
            const __m256i d = _mm256_sub_epi64(kv, _mm256_slli_epi64(c64[j], 1));
            _mm_storeu_si128((__m128i *)(dst + i * ldd + 4 * j),
                             _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(d, pick)));
        }
        for (int j = 0; j < NS; j++)
            dst[i * ldd + 4 * NV + j] = kbits - 2 * (int32_t)s[j];
    }
}

/* one function per split, each with the loops over the columns unrolled */
#define BK_MIX_FN(NS)                                                                                   \
    T2P static void tile_mix_##NS(int mr, int ntaps, int cw, uint64_t tailmask, const uint64_t *const *ap, \
                                  const int64_t *tapoff, const uint64_t *bp, int32_t kbits, int32_t *dst,  \
                                  int64_t ldd)                                                          \
    {                                                                                                   \
        tile_mix((BK_NC - (NS)) / 4, mr, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd);         \
    }
BK_MIX_SPLITS(BK_MIX_FN)
#undef BK_MIX_FN

bk_tile_fn bk_tile_avx2mix(int scalar_columns)
{
#define BK_MIX_PICK(NS)                                                                                 \
    if (scalar_columns == (NS))                                                                         \
        return tile_mix_##NS;
    BK_MIX_SPLITS(BK_MIX_PICK)
#undef BK_MIX_PICK
    return NULL;
}

T2 void bk_float_avx2(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    float y[BK_MR * BK_NC] __attribute__((aligned(32)));
    const __m256i lo = _mm256_set1_epi32(job->lo), hi = _mm256_set1_epi32(job->hi);
    const float *mul = job->mul ? job->mul + p * BK_NC : NULL, *bias = job->bias ? job->bias + p * BK_NC : NULL;
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < BK_NC; j += 8) {
            const __m256i d = _mm256_loadu_si256((const __m256i *)(tile + i * BK_NC + j));
            __m256 v = _mm256_cvtepi32_ps(_mm256_min_epi32(_mm256_max_epi32(d, lo), hi));
            if (mul)
                v = _mm256_mul_ps(v, _mm256_loadu_ps(mul + j));
            if (bias)
                v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));   /* no FMA: rounds as NumPy */
            _mm256_store_ps(y + i * BK_NC + j, v);
        }
    bk_float_store(job, y, mr, rowoff, p);
}

T2 void bk_bits_avx2(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    const int32_t *thr = job->thr + p * BK_NC;
    for (int i = 0; i < mr; i++) {
        uint32_t bits = 0;
        for (int j = 0; j < 4; j++) {
            const __m256i d = _mm256_loadu_si256((const __m256i *)(tile + i * BK_NC + 8 * j));
            const __m256i t = _mm256_loadu_si256((const __m256i *)(thr + 8 * j));
            const __m256i lt = _mm256_cmpgt_epi32(t, d);
            bits |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(lt)) << (8 * j);
        }
        bk_store_bits(job, rowoff[i], p, bits);
    }
}

/* The peak loop: NV vectors of nibble-lookup popcounts (the tile kernel's instructions) and NS scalar
   popcnt words, independent accumulators; NS = 0 is the AVX2 path's own peak. Inlined with constant
   NV, NS, so the loops over j unroll. */
T2P static inline __attribute__((always_inline)) double peak_avx2(const int NV, const int NS, int64_t iters)
{
    const __m256i lut = BK_LUT, low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256i a = _mm256_set1_epi64x(0x9E3779B97F4A7C15ll), b[12], c8[12], c64[12];
    for (int j = 0; j < 12; j++) {
        b[j] = _mm256_set1_epi64x((long long)((uint64_t)(j + 1) * 0xD1B54A32D192ED03ull));
        c8[j] = c64[j] = zero;
    }
    BK_PEAK_SCALAR_INIT
    for (int64_t it = 0; it < iters; it++) {
        for (int j = 0; j < NV; j++)
            c8[j] = _mm256_add_epi8(c8[j], popcount_bytes(_mm256_xor_si256(a, b[j]), lut, low));
        BK_PEAK_SCALAR_STEP(NS);
        if (it % 31 == 30)
            for (int j = 0; j < NV; j++) {
                c64[j] = _mm256_add_epi64(c64[j], _mm256_sad_epu8(c8[j], zero));
                c8[j] = zero;
            }
        __asm__ volatile("" : "+x"(a));
    }
    __m256i sum = zero;
    for (int j = 0; j < NV; j++)
        sum = _mm256_add_epi64(sum, _mm256_add_epi64(c64[j], _mm256_sad_epu8(c8[j], zero)));
    __asm__ volatile("" : : "x"(sum));
    BK_PEAK_SCALAR_END(NS);
    return (double)iters * (NV * 256 + NS * 64) * 2;
}

T2P double bk_peak_avx2(int64_t iters)
{
    return peak_avx2(12, 0, iters);
}

T2P double bk_peak_avx2mix(int scalar_columns, int64_t iters)
{
    /* the tile's own mix: (BK_NC - scalar_columns) / 4 vectors and scalar_columns words per round */
#define BK_MIX_PEAK(NS)                                                                                     if (scalar_columns == (NS))                                                                                 return peak_avx2((BK_NC - (NS)) / 4, (NS), iters);
    BK_MIX_SPLITS(BK_MIX_PEAK)
#undef BK_MIX_PEAK
    return -1;
}

T2P double bk_peak_avx2_mix(int nv, int ns, int64_t iters)
{
#define BK_MIX_CASE(V, S)                                                                               \
    if (nv == (V) && ns == (S))                                                                         \
        return peak_avx2((V), (S), iters);
    BK_PEAK_MIXES(BK_MIX_CASE)
#undef BK_MIX_CASE
    return -1;
}
#endif
