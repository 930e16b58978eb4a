/* Bit-packed binary kernels: the C side of refbnn.kernels._bitpack.
 *
 * Bit layout (Larq Compute Engine's polarity): a row of K signs is stored in ceil(K/64) uint64
 * words, element i in bit i % 64 of word i / 64 (least significant bit first); bit 1 = -1,
 * bit 0 = +1. Bits past K in the last word are ignored by every kernel (they are masked).
 *
 *   dot(a, b) = K - 2 * popcount(a XOR b)            (summed over the words)
 *
 * One GEMM driver serves bgemm and bconv2d. The output matrix has a row per A row (a GEMM row, or
 * an output pixel of a convolution) and a column per B row (an output channel). B is repacked
 * into column panels of BK_NC columns, [panel][k word][BK_NC], so that a tile kernel loads BK_NC
 * consecutive words for one k, broadcasts one A word per row, and keeps a register tile of
 * accumulators: it vectorizes along the output columns, never along K (no horizontal sums).
 * A convolution is the same GEMM with K = taps x words per tap, the A "row" of a pixel being the
 * words of its taps, found through a pointer per (tap, row) (no im2col copy).
 *
 * Three tile kernels compute the same integers: AVX-512 VPOPCNTDQ, AVX2 (nibble-table popcount)
 * and portable scalar C. They are compiled with per-function target attributes from one set of
 * compiler flags and chosen at run time (bk_path_supported); see bk_avx512.c, bk_avx2.c,
 * bk_scalar.c. On AArch64 the NEON path (bk_neon.c, byte popcount CNT) takes the place of the x86
 * ones; NEON is part of the base architecture there, so it needs no run-time check.
 */
#ifndef REFBNN_BITKERNELS_H
#define REFBNN_BITKERNELS_H

#include <stddef.h>
#include <stdint.h>

#if defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define BK_ARM64 1
#else
#define BK_ARM64 0
#endif
enum { BK_PATH_NEON = 4 };   /* AArch64 only: an id of its own, past those of the x86 paths */

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define BK_X86 1
#else
#define BK_X86 0
#endif

enum { BK_PATH_SCALAR = 0, BK_PATH_AVX2 = 1, BK_PATH_AVX512 = 2, BK_NPATHS = 3 };
enum { BK_OUT_INT32 = 0, BK_OUT_FLOAT = 1, BK_OUT_BITS = 2 };

#define BK_NC 32        /* columns of a B panel */
#define BK_MR 6         /* rows of an output tile */

/* which SIMD paths this build contains, and which this CPU (and OS) can run */
int bk_path_compiled(int path);
int bk_path_supported(int path);
/* 1 when the scalar path uses the CPU's popcnt instruction */
int bk_scalar_hw_popcount(void);

typedef struct {
    int path;
    int64_t m;              /* output rows */
    int64_t n;              /* valid output columns */
    int ntaps;              /* taps per row (1 for a GEMM) */
    int cw;                 /* 64-bit words per tap */
    int32_t kbits;          /* valid bits per row = ntaps * bits per tap */
    uint64_t tailmask;      /* valid bits of each tap's last word (all ones: the word is full) */

    /* A of a GEMM (conv == 0): row r is a + r * lda */
    const uint64_t *a;
    int64_t lda;

    /* A of a convolution (conv != 0): packed NHWC input, row r = output pixel (img, oh, ow) */
    int conv;
    const uint64_t *x;      /* the group's first word of pixel (0, 0, 0) */
    int64_t in_h, in_w, out_h, out_w;
    int64_t x_img, x_row, x_pix;   /* word strides of image, input row, pixel */
    int kh, kw, sh, sw, ph, pw, dh, dw;
    const uint64_t *padbuf; /* cw words read for taps outside the image (+1 or -1 padding) */
    const int32_t *corr;    /* zero padding: [npanels][ntaps][BK_NC] sum of each tap's weights, else NULL */

    /* B panels */
    const uint64_t *bpanels;       /* [npanels][ntaps * cw][BK_NC] */
    int64_t npanels;

    /* output element (row r, column c) at out + img * out_img + rr * out_row + c * out_col, where
       img = r / rows_per_img, rr = r % rows_per_img (a GEMM: rows_per_img = m) */
    int out_mode;
    void *out;
    int64_t rows_per_img, out_img, out_row, out_col;
    const float *mul, *bias;       /* BK_OUT_FLOAT: [npanels * BK_NC] (padded), or NULL */
    int32_t lo, hi;                /* BK_OUT_FLOAT: clamp of the dot product before mul/bias */
    const int32_t *thr;            /* BK_OUT_BITS: [npanels * BK_NC]; bit = (dot < thr) XOR flip */
    const uint32_t *flip;          /* BK_OUT_BITS: [npanels] flip bits of each panel's columns */
} bk_job;

/* Compute rows [r0, r1) of panels [p0, p1). BK_OUT_BITS needs all panels of a row in one call. */
void bk_run(const bk_job *job, int64_t r0, int64_t r1, int64_t p0, int64_t p1);

/* A GEMM (ntaps == 1) by columns: pack panels [p0, p1) of B into job->bpanels, then compute them. */
void bk_gemm_columns(const bk_job *job, const uint64_t *b, int64_t s_row, int64_t p0, int64_t p1);

/* B (n rows of ntaps x cw words; word (j, t, w) at b[j*s_row + t*s_tap + w]) -> zero-padded
   panels, each tap's last word masked with tailmask. */
void bk_pack_panels(const uint64_t *b, int64_t n, int ntaps, int cw, int64_t s_row, int64_t s_tap,
                    uint64_t tailmask, uint64_t *panels);
/* corr[(p * ntaps + t) * BK_NC + c] = sum of the +-1 weights of tap t of column c (bits_per_tap valid) */
void bk_tap_sums(const uint64_t *panels, int64_t npanels, int ntaps, int cw, int32_t bits_per_tap,
                 int32_t *corr);

/* Signs -> words. x viewed as (outer, L, inner) with element strides; out (outer, inner, ceil(L/64)).
   polarity 0: bit = x < 0 (LCE), 1: bit = x > 0 (daBNN), 2: bit = x >= 0 (bitorch).
   Returns the number of values that are not exactly +-1. ``path``: BK_PATH_AVX512 packs unit-stride
   data with AVX-512 compares; the other paths (and other strides) use the portable loop. */
int64_t bk_pack_f32(const float *x, int64_t outer, int64_t len, int64_t inner, int64_t s_outer, int64_t s_len,
                    int64_t s_inner, int polarity, int path, uint64_t *out);
int64_t bk_pack_f64(const double *x, int64_t outer, int64_t len, int64_t inner, int64_t s_outer, int64_t s_len,
                    int64_t s_inner, int polarity, int path, uint64_t *out);

/* Binary max pool (AND of the bits, LCE polarity) over packed NHWC words; output rows
   [q0, q1) of the (n * out_h) output rows. Taps outside the image are skipped. */
void bk_maxpool(const uint64_t *x, int64_t in_h, int64_t in_w, int64_t cw, int64_t x_img, int64_t x_row,
                int64_t x_pix, int kh, int kw, int sh, int sw, int ph, int pw, int64_t out_h, int64_t out_w,
                uint64_t *out, int64_t q0, int64_t q1);

/* Peak microbenchmark: `iters` rounds of independent xor + popcount + add on 12 accumulators of the
   path's widest vector; returns the binary operations done (2 per bit: one xor-popcount, one add). */
double bk_peak(int path, int64_t iters);

/* The instruction mixes of the machine-peak microbenchmark, X(vectors, scalars): in one loop, that
   many independent xor + popcount + add accumulators on a path's vectors (AVX2 nibble lookup or
   AVX-512 VPOPCNTDQ, the vector ports) and on 64-bit words with the scalar popcnt instruction (the
   integer ports), so that both port groups work at once. */
#define BK_PEAK_MIXES(X) X(4, 2) X(4, 4) X(4, 8) X(6, 6) X(8, 4) X(8, 8) X(12, 4)
/* `iters` rounds of the mix (path BK_PATH_AVX2 or BK_PATH_AVX512, nv vectors, ns scalars); returns
   the binary operations done (2 per bit), or -1 when (path, nv, ns) is not compiled (not in
   BK_PEAK_MIXES, or not x86-64). The caller checks that the CPU supports the path and popcnt. */
double bk_peak_mix(int path, int nv, int ns, int64_t iters);
/* The (vectors, scalars) pairs of BK_PEAK_MIXES: up to `max` of them into nv, ns; returns how many. */
int bk_peak_mix_list(int *nv, int *ns, int max);

/* ---- internal: per-path tile kernels and epilogues ---------------------------------------- */

/* The words of tap t of tile row r (mr <= BK_MR rows): ap[r] + tapoff[t] when every tap of the
   rows is inside the image (tapoff: the taps' word offsets), else a pointer per tap,
   ap[t * BK_MR + r] (NULL tapoff; GEMMs use this with one tap). */
static inline const uint64_t *bk_arow(const uint64_t *const *ap, const int64_t *tapoff, int t, int r)
{
    return tapoff ? ap[r] + tapoff[t] : ap[t * BK_MR + r];
}

/* Writes dst[r * ldd + c] = kbits - 2 * popcount for the BK_NC columns of the panel bp. */
typedef void (*bk_tile_fn)(int mr, int ntaps, int cw, uint64_t tailmask, const uint64_t *const *ap,
                           const int64_t *tapoff, const uint64_t *bp, int32_t kbits, int32_t *dst, int64_t ldd);
/* tile (mr x BK_NC int32, row stride BK_NC) -> job output of panel p; rowoff[i]: where row i's
   column 0 is in job->out (elements, or words for bit-packed output) */
typedef void (*bk_epi_fn)(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p);

void bk_tile_scalar(int, int, int, uint64_t, const uint64_t *const *, const int64_t *, const uint64_t *, int32_t,
                    int32_t *, int64_t);
void bk_float_scalar(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
void bk_bits_scalar(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
double bk_peak_scalar(int64_t iters);
#if BK_ARM64
void bk_tile_neon(int, int, int, uint64_t, const uint64_t *const *, const int64_t *, const uint64_t *, int32_t,
                  int32_t *, int64_t);
void bk_float_neon(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
void bk_bits_neon(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
double bk_peak_neon(int64_t iters);
#endif
#if BK_X86
void bk_tile_avx2(int, int, int, uint64_t, const uint64_t *const *, const int64_t *, const uint64_t *, int32_t,
                    int32_t *, int64_t);
void bk_float_avx2(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
void bk_bits_avx2(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
double bk_peak_avx2(int64_t iters);
double bk_peak_avx2_mix(int nv, int ns, int64_t iters);
void bk_tile_avx512(int, int, int, uint64_t, const uint64_t *const *, const int64_t *, const uint64_t *, int32_t,
                    int32_t *, int64_t);
void bk_float_avx512(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
void bk_bits_avx512(const bk_job *, const int32_t *, int, const int64_t *, int64_t);
double bk_peak_avx512(int64_t iters);
double bk_peak_avx512_mix(int nv, int ns, int64_t iters);

/* The scalar half of a peak mix (NS accumulators, NS <= 12): popcnt on 64-bit words in general
   registers. The empty asm pins each count to a general register, so that the compiler cannot
   vectorize this half into the vector instructions the other half is measuring. */
#define BK_PEAK_SCALAR_INIT                                                                          \
    uint64_t sa = 0x9E3779B97F4A7C15ull, sb[12], ss[12];                                             \
    for (int j = 0; j < 12; j++) {                                                                   \
        sb[j] = (uint64_t)(j + 1) * 0xD1B54A32D192ED03ull;                                           \
        ss[j] = 0;                                                                                   \
    }
#define BK_PEAK_SCALAR_STEP(NS)                                                                      \
    for (int j = 0; j < (NS); j++) {                                                                 \
        uint64_t cnt = (uint64_t)__builtin_popcountll(sa ^ sb[j]);                                   \
        __asm__("" : "+r"(cnt));                                                                     \
        ss[j] += cnt;                                                                                \
    }                                                                                                \
    __asm__ volatile("" : "+r"(sa))
#define BK_PEAK_SCALAR_END(NS)                                                                       \
    do {                                                                                             \
        uint64_t ssum = 0;                                                                           \
        for (int j = 0; j < (NS); j++)                                                               \
            ssum += ss[j];                                                                           \
        __asm__ volatile("" : : "r"(ssum));                                                          \
    } while (0)
/* packing with AVX-512 (the AVX512 path): a unit-stride row (inner == 1), or unit-stride positions
   of a channel-first slice of at most 64 channels (inner > 1, out: one word per position); both
   return the count of values that are not exactly +-1 */
int64_t bk_pack_row_float_avx512(const float *x, int64_t len, int polarity, uint64_t *out);
int64_t bk_pack_row_double_avx512(const double *x, int64_t len, int polarity, uint64_t *out);
int64_t bk_pack_inner_float_avx512(const float *x, int64_t len, int64_t inner, int64_t s_len, int polarity,
                                   uint64_t *out);
int64_t bk_pack_inner_double_avx512(const double *x, int64_t len, int64_t inner, int64_t s_len, int polarity,
                                    uint64_t *out);
#endif

#endif
