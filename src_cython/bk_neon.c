/* The NEON path (AArch64, where Advanced SIMD is part of the base architecture: no run-time check).
 *
 * NEON counts bits per byte only: CNT (vcntq_u8) gives the popcount of each of the 16 bytes of a
 * 128-bit register, 0..8. UADALP (vpadalq_u8) adds adjacent pairs of those byte counts into the
 * 8 16-bit lanes of an accumulator, 4 lanes per 64-bit word, and so per output column: a register
 * holds 2 columns of a panel, and the kernel vectorizes along the columns as the x86 paths do (no
 * horizontal sum inside the K loop). A 16-bit lane gains at most 16 per word, so the lanes are
 * folded into 64-bit column sums (UADDLP twice) every BK_NEON_FOLD words, before they can wrap.
 * The instructions (CNT, UADALP, UADDLP, ADDV) are described in the Arm Architecture Reference
 * Manual for A-profile; the intrinsics are those of arm_neon.h (Arm C Language Extensions).
 *
 * On other targets this file compiles to nothing and bk_path_compiled(BK_PATH_NEON) is 0.
 */
#include "bk_epilogue.h"

#if BK_ARM64
#include <arm_neon.h>

#define BK_NEON_FOLD 4095   /* words per 16-bit accumulation: 4095 * 16 = 65520 <= 65535 */

/* 16-bit lanes (4 per 64-bit column) -> the 2 columns' sums */
static inline uint64x2_t fold_columns(uint16x8_t v)
{
    return vpaddlq_u32(vpaddlq_u16(v));
}

/* columns c .. c+3 of one tile row: kbits - 2 * popcount, from the 64-bit sums of 2 registers */
static inline void store_dots(int32_t *d, uint64x2_t s01, uint64x2_t s23, int32_t kbits)
{
    /* the sums are at most kbits <= 2^30 (MAX_K), so the narrowing to 32 bits is exact */
    const int32x4_t pop = vreinterpretq_s32_u32(vcombine_u32(vmovn_u64(s01), vmovn_u64(s23)));
    vst1q_s32(d, vsubq_s32(vdupq_n_s32(kbits), vshlq_n_s32(pop, 1)));
}

/* Rows in pairs, the panel's 32 columns in two halves of 16 (8 registers of 2 columns): 16
   accumulators, 8 B registers and 2 broadcast A words, 26 of the 32 vector registers. */
void bk_tile_neon(int mr, int ntaps, int cw, uint64_t tailmask, const uint64_t *const *ap, const int64_t *tapoff,
                  const uint64_t *bp, int32_t kbits, int32_t *dst, int64_t ldd)
{
    for (int i = 0; i < mr; i += 2) {
        const int two = i + 1 < mr;
        for (int h = 0; h < BK_NC; h += 16) {
            uint16x8_t c0[8], c1[8];
            uint64x2_t s0[8], s1[8];
            for (int j = 0; j < 8; j++) {
                c0[j] = c1[j] = vdupq_n_u16(0);
                s0[j] = s1[j] = vdupq_n_u64(0);
            }
            int since = 0;
            const uint64_t *b = bp + h;
            for (int t = 0; t < ntaps; t++) {
                const uint64_t *a0 = bk_arow(ap, tapoff, t, i);
                const uint64_t *a1 = two ? bk_arow(ap, tapoff, t, i + 1) : a0;
                for (int k = 0; k < cw; k++, b += BK_NC) {
                    const uint64_t m = k == cw - 1 ? tailmask : ~(uint64_t)0;
                    const uint64x2_t x0 = vdupq_n_u64(a0[k] & m), x1 = vdupq_n_u64(a1[k] & m);
                    for (int j = 0; j < 8; j++) {
                        const uint64x2_t bj = vld1q_u64(b + 2 * j);
                        c0[j] = vpadalq_u8(c0[j], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x0, bj))));
                        c1[j] = vpadalq_u8(c1[j], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x1, bj))));
                    }
                    if (++since == BK_NEON_FOLD) {
                        for (int j = 0; j < 8; j++) {
                            s0[j] = vaddq_u64(s0[j], fold_columns(c0[j]));
                            s1[j] = vaddq_u64(s1[j], fold_columns(c1[j]));
                            c0[j] = c1[j] = vdupq_n_u16(0);
                        }
                        since = 0;
                    }
                }
            }
            for (int j = 0; j < 8; j++) {
                s0[j] = vaddq_u64(s0[j], fold_columns(c0[j]));
                s1[j] = vaddq_u64(s1[j], fold_columns(c1[j]));
            }
            int32_t *d0 = dst + i * ldd + h;
            for (int j = 0; j < 8; j += 2)
                store_dots(d0 + 2 * j, s0[j], s0[j + 1], kbits);
            if (two)
                for (int j = 0; j < 8; j += 2)
                    store_dots(d0 + ldd + 2 * j, s1[j], s1[j + 1], kbits);
        }
    }
}

/* y = float(clamp(dot)) * mul + bias, 4 columns a register. The empty asm after the multiply keeps
   the product a rounded float32 in a register, so that no compiler (whatever its -ffp-contract)
   fuses it with the add into one FMLA: two roundings, as NumPy's float32 arithmetic. */
void bk_float_neon(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    float y[BK_MR * BK_NC] __attribute__((aligned(16)));
    const int32x4_t lo = vdupq_n_s32(job->lo), hi = vdupq_n_s32(job->hi);
    const float *mul = job->mul ? job->mul + p * BK_NC : NULL, *bias = job->bias ? job->bias + p * BK_NC : NULL;
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < BK_NC; j += 4) {
            const int32x4_t d = vld1q_s32(tile + i * BK_NC + j);
            float32x4_t v = vcvtq_f32_s32(vminq_s32(vmaxq_s32(d, lo), hi));   /* round to nearest, as (float) */
            if (mul) {
                v = vmulq_f32(v, vld1q_f32(mul + j));
                __asm__("" : "+w"(v));
            }
            if (bias)
                v = vaddq_f32(v, vld1q_f32(bias + j));
            vst1q_f32(y + i * BK_NC + j, v);
        }
    bk_float_store(job, y, mr, rowoff, p);
}

/* bit c = dot[c] < thr[c]: a compare per 4 columns, the lanes' masks ANDed with 1, 2, 4, 8 and
   summed across the register (ADDV) into 4 bits */
void bk_bits_neon(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    static const uint32_t weights[4] = {1, 2, 4, 8};
    const uint32x4_t wv = vld1q_u32(weights);
    const int32_t *thr = job->thr + p * BK_NC;
    for (int i = 0; i < mr; i++) {
        uint32_t bits = 0;
        for (int j = 0; j < BK_NC / 4; j++) {
            const uint32x4_t lt = vcltq_s32(vld1q_s32(tile + i * BK_NC + 4 * j), vld1q_s32(thr + 4 * j));
            bits |= vaddvq_u32(vandq_u32(lt, wv)) << (4 * j);
        }
        bk_store_bits(job, rowoff[i], p, bits);
    }
}

/* The peak loop: 12 independent XOR + CNT + UADALP accumulators (the tile kernel's instructions).
   Its 16-bit lanes may wrap over a long run: the sums are thrown away, only the work counts. */
double bk_peak_neon(int64_t iters)
{
    uint8x16_t a = vreinterpretq_u8_u64(vdupq_n_u64(0x9E3779B97F4A7C15ull)), b[12];
    uint16x8_t c[12];
    for (int j = 0; j < 12; j++) {
        b[j] = vreinterpretq_u8_u64(vdupq_n_u64((uint64_t)(j + 1) * 0xD1B54A32D192ED03ull));
        c[j] = vdupq_n_u16(0);
    }
    for (int64_t it = 0; it < iters; it++) {
        for (int j = 0; j < 12; j++)
            c[j] = vpadalq_u8(c[j], vcntq_u8(veorq_u8(a, b[j])));
        __asm__ volatile("" : "+w"(a));
    }
    uint16x8_t sum = c[0];
    for (int j = 1; j < 12; j++)
        sum = vaddq_u16(sum, c[j]);
    __asm__ volatile("" : : "w"(sum));
    return (double)iters * 12 * 128 * 2;
}
#endif
