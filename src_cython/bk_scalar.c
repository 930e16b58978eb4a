/* The portable scalar path: plain C, one 64-bit word at a time. On x86-64 a copy compiled for the
 * popcnt instruction is used when the CPU has it (x86-64-v2 and later); elsewhere the compiler's
 * __builtin_popcountll (a single instruction on AArch64 and most other targets).
 */
#include "bk_epilogue.h"

/* rows in pairs, columns in groups of 4: 8 independent accumulators in general registers */
#define BK_SCALAR_TILE_BODY                                                                          \
    for (int i = 0; i < mr; i += 2) {                                                                \
        const int two = i + 1 < mr;                                                                  \
        for (int cg = 0; cg < BK_NC; cg += 4) {                                                      \
            uint64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;         \
            const uint64_t *b = bp + cg;                                                             \
            for (int t = 0; t < ntaps; t++) {                                                        \
                const uint64_t *a0 = bk_arow(ap, tapoff, t, i);                                       \
                const uint64_t *a1 = two ? bk_arow(ap, tapoff, t, i + 1) : a0;                       \
                for (int k = 0; k < cw; k++, b += BK_NC) {                                           \
                    const uint64_t m = k == cw - 1 ? tailmask : ~(uint64_t)0;                        \
                    const uint64_t x0 = a0[k] & m, x1 = a1[k] & m;                                   \
                    s00 += (uint64_t)__builtin_popcountll(x0 ^ b[0]);                                \
                    s01 += (uint64_t)__builtin_popcountll(x0 ^ b[1]);                                \
                    s02 += (uint64_t)__builtin_popcountll(x0 ^ b[2]);                                \
                    s03 += (uint64_t)__builtin_popcountll(x0 ^ b[3]);                                \
                    s10 += (uint64_t)__builtin_popcountll(x1 ^ b[0]);                                \
                    s11 += (uint64_t)__builtin_popcountll(x1 ^ b[1]);                                \
                    s12 += (uint64_t)__builtin_popcountll(x1 ^ b[2]);                                \
                    s13 += (uint64_t)__builtin_popcountll(x1 ^ b[3]);                                \
                }                                                                                    \
            }                                                                                        \
            int32_t *d0 = dst + i * ldd + cg;                                                        \
            d0[0] = kbits - 2 * (int32_t)s00;                                                        \
            d0[1] = kbits - 2 * (int32_t)s01;                                                        \
            d0[2] = kbits - 2 * (int32_t)s02;                                                        \
            d0[3] = kbits - 2 * (int32_t)s03;                                                        \
            if (two) {                                                                               \
                int32_t *d1 = d0 + ldd;                                                              \
                d1[0] = kbits - 2 * (int32_t)s10;                                                    \
                d1[1] = kbits - 2 * (int32_t)s11;                                                    \
                d1[2] = kbits - 2 * (int32_t)s12;                                                    \
                d1[3] = kbits - 2 * (int32_t)s13;                                                    \
            }                                                                                        \
        }                                                                                            \
    }

#define BK_SCALAR_PEAK_BODY                                                                          \
    uint64_t a = 0x9E3779B97F4A7C15ull, b[12], s[12];                                                \
    for (int j = 0; j < 12; j++) {                                                                   \
        b[j] = (uint64_t)(j + 1) * 0xD1B54A32D192ED03ull;                                            \
        s[j] = 0;                                                                                    \
    }                                                                                                \
    for (int64_t it = 0; it < iters; it++) {                                                         \
        for (int j = 0; j < 12; j++)                                                                 \
            s[j] += (uint64_t)__builtin_popcountll(a ^ b[j]);                                        \
        __asm__ volatile("" : "+r"(a));                                                              \
    }                                                                                                \
    uint64_t sum = 0;                                                                                \
    for (int j = 0; j < 12; j++)                                                                     \
        sum += s[j];                                                                                 \
    __asm__ volatile("" : : "r"(sum));                                                               \
    return (double)iters * 12 * 64 * 2;

static void tile_portable(int mr, int ntaps, int cw, uint64_t tailmask, const uint64_t *const *ap,
                          const int64_t *tapoff, const uint64_t *bp, int32_t kbits, int32_t *dst, int64_t ldd)
{
    BK_SCALAR_TILE_BODY
}

static double peak_portable(int64_t iters)
{
    BK_SCALAR_PEAK_BODY
}

#if BK_X86
__attribute__((target("popcnt"))) static void tile_popcnt(int mr, int ntaps, int cw, uint64_t tailmask,
                                                          const uint64_t *const *ap, const int64_t *tapoff,
                                                          const uint64_t *bp, int32_t kbits, int32_t *dst,
                                                          int64_t ldd)
{
    BK_SCALAR_TILE_BODY
}

__attribute__((target("popcnt"))) static double peak_popcnt(int64_t iters)
{
    BK_SCALAR_PEAK_BODY
}
#endif

static int hw_popcount = -1;   /* decided once; a benign race writes the same value */

void bk_tile_scalar(int mr, int ntaps, int cw, uint64_t tailmask, const uint64_t *const *ap, const int64_t *tapoff,
                    const uint64_t *bp, int32_t kbits, int32_t *dst, int64_t ldd)
{
#if BK_X86
    if (hw_popcount < 0)
        hw_popcount = bk_scalar_hw_popcount();
    if (hw_popcount) {
        tile_popcnt(mr, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd);
        return;
    }
#endif
    tile_portable(mr, ntaps, cw, tailmask, ap, tapoff, bp, kbits, dst, ldd);
}

double bk_peak_scalar(int64_t iters)
{
#if BK_X86
    if (bk_scalar_hw_popcount())
        return peak_popcnt(iters);
#endif
    return peak_portable(iters);
}

void bk_float_scalar(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    bk_float_generic(job, tile, mr, rowoff, p);
}

void bk_bits_scalar(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    bk_bits_generic(job, tile, mr, rowoff, p);
}
