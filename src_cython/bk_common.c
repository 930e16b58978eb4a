/* Portable parts of the bit-packed kernels: CPU feature detection, the GEMM/convolution driver,
 * packing (signs -> words, B -> panels), the zero-padding correction table, binary max pool and the
 * int32 output copy. The per-path tile kernels live in bk_scalar.c, bk_avx2.c, bk_avx512.c and
 * (AArch64) bk_neon.c.
 */
#include "bitkernels.h"

#include <string.h>

#define BK_MAXTAPS 1024   /* the Python side rejects larger kernels before any C runs */

/* ---- CPU features ----------------------------------------------------------------------- */

int bk_path_compiled(int path)
{
    if (path == BK_PATH_NEON)
        return BK_ARM64;
    if (path == BK_PATH_SCALAR)
        return 1;
    return BK_X86 && (path == BK_PATH_AVX2 || path == BK_PATH_AVX512);
}

int bk_path_supported(int path)
{
#if BK_X86
    /* __builtin_cpu_supports checks the OS state too (XCR0): AVX state for avx2, opmask/ZMM state
       for the avx512 features */
    __builtin_cpu_init();
    switch (path) {
    case BK_PATH_SCALAR:
        return 1;
    case BK_PATH_AVX2:
        return __builtin_cpu_supports("avx2") != 0;
    case BK_PATH_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
    default:
        return 0;
    }
#else
    return path == BK_PATH_SCALAR || (BK_ARM64 && path == BK_PATH_NEON);   /* NEON: baseline on AArch64 */
#endif
}

int bk_scalar_hw_popcount(void)
{
#if BK_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("popcnt") != 0;
#else
    return 0;
#endif
}

/* ---- the functions of each path ------------------------------------------------------------ */

typedef struct {
    bk_tile_fn tile;
    bk_epi_fn float_out, bits_out;
    double (*peak)(int64_t iters);
} bk_path_fns;

static bk_path_fns path_fns(int path)
{
#if BK_X86
    if (path == BK_PATH_AVX512)
        return (bk_path_fns){bk_tile_avx512, bk_float_avx512, bk_bits_avx512, bk_peak_avx512};
    if (path == BK_PATH_AVX2)
        return (bk_path_fns){bk_tile_avx2, bk_float_avx2, bk_bits_avx2, bk_peak_avx2};
#endif
#if BK_ARM64
    if (path == BK_PATH_NEON)
        return (bk_path_fns){bk_tile_neon, bk_float_neon, bk_bits_neon, bk_peak_neon};
#endif
    (void)path;
    return (bk_path_fns){bk_tile_scalar, bk_float_scalar, bk_bits_scalar, bk_peak_scalar};
}

double bk_peak(int path, int64_t iters)
{
    return path_fns(path).peak(iters);
}

double bk_peak_mix(int path, int nv, int ns, int64_t iters)
{
#if BK_X86
    if (path == BK_PATH_AVX512)
        return bk_peak_avx512_mix(nv, ns, iters);
    if (path == BK_PATH_AVX2)
        return bk_peak_avx2_mix(nv, ns, iters);
#endif
    (void)path, (void)nv, (void)ns, (void)iters;
    return -1;
}

int bk_peak_mix_list(int *nv, int *ns, int max)
{
    int n = 0;
#define BK_MIX_ITEM(V, S)                                                                               \
    if (n < max) {                                                                                      \
        nv[n] = (V);                                                                                    \
        ns[n] = (S);                                                                                    \
    }                                                                                                   \
    n++;
    BK_PEAK_MIXES(BK_MIX_ITEM)
#undef BK_MIX_ITEM
    return n < max ? n : max;
}

/* ---- the driver ------------------------------------------------------------------------ */

/* int32 tile -> output (partial panels, strided layouts) */
static void int32_out(const bk_job *job, const int32_t *tile, int mr, const int64_t *rowoff, int64_t p)
{
    int64_t c0 = p * BK_NC, nc = job->n - c0 < BK_NC ? job->n - c0 : BK_NC;
    int32_t *out = (int32_t *)job->out;
    for (int i = 0; i < mr; i++) {
        int32_t *o = out + rowoff[i] + c0 * job->out_col;
        for (int64_t c = 0; c < nc; c++)
            o[c * job->out_col] = tile[i * BK_NC + c];
    }
}

/* Whether every tap of output pixel (img, oh, ow) is inside the image; *base: the words of its
   first tap's position (taps at base + tapoff[t]). */
static int conv_row_inside(const bk_job *job, int64_t img, int64_t oh, int64_t ow, const uint64_t **base)
{
    const int64_t ih0 = oh * job->sh - job->ph, iw0 = ow * job->sw - job->pw;
    const int inside = ih0 >= 0 && iw0 >= 0 && ih0 + (int64_t)(job->kh - 1) * job->dh < job->in_h
                       && iw0 + (int64_t)(job->kw - 1) * job->dw < job->in_w;
    if (inside)
        *base = job->x + img * job->x_img + ih0 * job->x_row + iw0 * job->x_pix;
    return inside;
}

/* A pointer per tap of pixel (img, oh, ow) (ap[t * BK_MR]): its words, or padbuf for taps
   outside the image; returns whether some tap is outside. */
static int conv_row_pointers(const bk_job *job, int64_t img, int64_t oh, int64_t ow, const uint64_t **ap)
{
    const int64_t ih0 = oh * job->sh - job->ph, iw0 = ow * job->sw - job->pw;
    const uint64_t *base = job->x + img * job->x_img;
    int outside = 0;
    for (int i = 0, t = 0; i < job->kh; i++) {
        const int64_t ih = ih0 + (int64_t)i * job->dh;
        for (int j = 0; j < job->kw; j++, t++) {
            const int64_t iw = iw0 + (int64_t)j * job->dw;
            if (ih >= 0 && ih < job->in_h && iw >= 0 && iw < job->in_w) {
                ap[t * BK_MR] = base + ih * job->x_row + iw * job->x_pix;
            } else {
                ap[t * BK_MR] = job->padbuf;
                outside = 1;
            }
        }
    }
    return outside;
}

void bk_run(const bk_job *job, int64_t r0, int64_t r1, int64_t p0, int64_t p1)
{
    const bk_path_fns fns = path_fns(job->path);
    const bk_tile_fn tile = fns.tile;
    const bk_epi_fn epi = job->out_mode == BK_OUT_FLOAT ? fns.float_out
                        : job->out_mode == BK_OUT_BITS ? fns.bits_out : int32_out;
    const int ntaps = job->ntaps, cw = job->cw;
    const int64_t panel_words = (int64_t)ntaps * cw * BK_NC;
    /* panel blocks of about 256 KiB: B stays in L2 while the rows of A stream past it */
    int64_t pblock = (256 * 1024 / 8) / panel_words;
    if (pblock < 1)
        pblock = 1;
    const uint64_t *ap[BK_MAXTAPS * BK_MR];
    int64_t tapoff[BK_MAXTAPS];
    int outside[BK_MR];
    int64_t rowoff[BK_MR];
    int32_t tmp[BK_MR * BK_NC] __attribute__((aligned(64)));

    if (job->conv)
        for (int i = 0, t = 0; i < job->kh; i++)
            for (int j = 0; j < job->kw; j++, t++)
                tapoff[t] = (int64_t)i * job->dh * job->x_row + (int64_t)j * job->dw * job->x_pix;

    for (int64_t pb = p0; pb < p1; pb += pblock) {
        const int64_t pe = pb + pblock < p1 ? pb + pblock : p1;
        /* where the rows are: output (image, row in image), input pixel (image, oh, ow); counted
           up from r0 (no division per row) */
        const int64_t rpi = job->rows_per_img;
        int64_t oimg = r0 / rpi, orr = r0 - oimg * rpi;
        int64_t img = 0, oh = 0, ow = 0;
        if (job->conv) {
            const int64_t hw = job->out_h * job->out_w;
            img = r0 / hw;
            oh = (r0 - img * hw) / job->out_w;
            ow = r0 - img * hw - oh * job->out_w;
        }
        for (int64_t r = r0; r < r1; r += BK_MR) {
            const int mr = r1 - r < BK_MR ? (int)(r1 - r) : BK_MR;
            const int one_image = orr + mr <= rpi;
            int any_outside = 0, all_inside = 1;
            int64_t pix[BK_MR][3];        /* (img, oh, ow) of each row of a convolution */
            for (int i = 0; i < mr; i++) {
                rowoff[i] = oimg * job->out_img + orr * job->out_row;
                if (++orr == rpi) {
                    orr = 0;
                    oimg++;
                }
                if (job->conv) {
                    pix[i][0] = img, pix[i][1] = oh, pix[i][2] = ow;
                    all_inside &= conv_row_inside(job, img, oh, ow, ap + i);
                    if (++ow == job->out_w) {
                        ow = 0;
                        if (++oh == job->out_h) {
                            oh = 0;
                            img++;
                        }
                    }
                } else {
                    ap[i] = job->a + (r + i) * job->lda;
                }
            }
            const int64_t *toff = NULL;
            if (job->conv && all_inside) {
                toff = tapoff;              /* ap[i]: row bases; taps at fixed offsets */
            } else if (job->conv) {         /* a pointer per tap and row, padbuf outside the image */
                for (int i = 0; i < mr; i++) {
                    outside[i] = conv_row_pointers(job, pix[i][0], pix[i][1], pix[i][2], ap + i);
                    any_outside |= outside[i];
                }
            }
            for (int64_t p = pb; p < pe; p++) {
                const uint64_t *bp = job->bpanels + p * panel_words;
                int32_t *dst = tmp;
                int64_t ldd = BK_NC;
                if (job->out_mode == BK_OUT_INT32 && job->out_col == 1 && (p + 1) * BK_NC <= job->n && one_image) {
                    dst = (int32_t *)job->out + rowoff[0] + p * BK_NC;
                    ldd = job->out_row;
                }
                tile(mr, ntaps, cw, job->tailmask, ap, toff, bp, job->kbits, dst, ldd);
                if (job->corr && any_outside) {
                    /* zero padding: the tile counted +1 for every tap outside the image; take the
                       weights of those taps back out */
                    for (int i = 0; i < mr; i++) {
                        if (!outside[i])
                            continue;
                        for (int t = 0; t < ntaps; t++) {
                            if (ap[t * BK_MR + i] != job->padbuf)
                                continue;
                            const int32_t *cs = job->corr + (p * ntaps + t) * BK_NC;
                            int32_t *d = dst + i * ldd;
                            for (int c = 0; c < BK_NC; c++)
                                d[c] -= cs[c];
                        }
                    }
                }
                if (dst == tmp)
                    epi(job, tmp, mr, rowoff, p);
            }
        }
    }
}

/* A GEMM's panels [p0, p1): pack them from B (rows j at b + j * s_row), then compute them for
   every row. Threads that split a GEMM by columns each pack only the panels they use. */
void bk_gemm_columns(const bk_job *job, const uint64_t *b, int64_t s_row, int64_t p0, int64_t p1)
{
    const int64_t first = p0 * BK_NC, count = job->n - first < (p1 - p0) * BK_NC ? job->n - first : (p1 - p0) * BK_NC;
    bk_pack_panels(b + first * s_row, count, 1, job->cw, s_row, 0, job->tailmask,
                   (uint64_t *)job->bpanels + p0 * job->cw * BK_NC);
    bk_run(job, 0, job->m, p0, p1);
}

/* ---- packing ------------------------------------------------------------------------------ */

void bk_pack_panels(const uint64_t *b, int64_t n, int ntaps, int cw, int64_t s_row, int64_t s_tap,
                    uint64_t tailmask, uint64_t *panels)
{
    /* 8 columns at a time: 8 B rows are read front to back side by side, and each of their words
       lands in one 64-byte line of the panel */
    const int64_t npanels = (n + BK_NC - 1) / BK_NC;
    for (int64_t j0 = 0; j0 < npanels * BK_NC; j0 += 8) {
        uint64_t *dst = panels + (j0 / BK_NC) * ntaps * cw * BK_NC + j0 % BK_NC;
        const uint64_t *src[8];
        for (int c = 0; c < 8; c++)
            src[c] = j0 + c < n ? b + (j0 + c) * s_row : NULL;
        for (int t = 0; t < ntaps; t++)
            for (int w = 0; w < cw; w++, dst += BK_NC) {
                const uint64_t mask = w == cw - 1 ? tailmask : ~(uint64_t)0;
                for (int c = 0; c < 8; c++)
                    dst[c] = src[c] ? src[c][t * s_tap + w] & mask : 0;
            }
    }
}

static inline int popcount64(uint64_t v)
{
    /* the portable SWAR popcount; only used off the hot paths */
    v = v - ((v >> 1) & 0x5555555555555555ull);
    v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
    v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (int)((v * 0x0101010101010101ull) >> 56);
}

void bk_tap_sums(const uint64_t *panels, int64_t npanels, int ntaps, int cw, int32_t bits_per_tap, int32_t *corr)
{
    for (int64_t p = 0; p < npanels; p++)
        for (int t = 0; t < ntaps; t++)
            for (int c = 0; c < BK_NC; c++) {
                int32_t ones = 0;
                for (int w = 0; w < cw; w++)
                    ones += popcount64(panels[((p * ntaps + t) * cw + w) * BK_NC + c]);
                corr[(p * ntaps + t) * BK_NC + c] = bits_per_tap - 2 * ones;
            }
}

/* x viewed as (outer, len, inner); out (outer, inner, words). The loop over len is outermost
   inside an outer slice so that the reads follow the innermost stride when inner > 1 (packing
   the channel axis of NCHW data) and the words are built in registers when inner == 1.
   Returns how many values are not exactly +-1 (the binary kernels' callers may reject them). */
#define BK_PACK_BIT(v) (polarity == 0 ? (v) < 0 : polarity == 1 ? (v) > 0 : (v) >= 0)
#if BK_X86
#define BK_PACK_SIMD(T)                                                                                   \
        if (path == BK_PATH_AVX512 && inner == 1 && s_len == 1) {                                         \
            other += bk_pack_row_##T##_avx512(xo, len, polarity, oo);                                     \
            continue;                                                                                     \
        }                                                                                                 \
        if (path == BK_PATH_AVX512 && inner > 1 && s_inner == 1 && len <= 64) {                           \
            other += bk_pack_inner_##T##_avx512(xo, len, inner, s_len, polarity, oo);                     \
            continue;                                                                                     \
        }
#else
#define BK_PACK_SIMD(T)
#endif
#define BK_PACK_BODY(T)                                                                                   \
    const int64_t words = (len + 63) / 64;                                                                \
    int64_t other = 0;                                                                                    \
    for (int64_t o = 0; o < outer; o++) {                                                                 \
        const T *xo = x + o * s_outer;                                                                    \
        uint64_t *oo = out + o * inner * words;                                                           \
        BK_PACK_SIMD(T)                                                                                   \
        if (inner == 1) {                                                                                 \
            for (int64_t w = 0; w < words; w++) {                                                         \
                const int64_t n = len - w * 64 < 64 ? len - w * 64 : 64;                                  \
                const T *xw = xo + w * 64 * s_len;                                                        \
                uint64_t word = 0;                                                                        \
                for (int64_t j = 0; j < n; j++) {                                                         \
                    const T v = xw[j * s_len];                                                            \
                    word |= (uint64_t)BK_PACK_BIT(v) << j;                                                \
                    other += v != 1 && v != -1;                                                           \
                }                                                                                         \
                oo[w] = word;                                                                             \
            }                                                                                             \
            continue;                                                                                     \
        }                                                                                                 \
        memset(oo, 0, (size_t)(inner * words) * sizeof(uint64_t));                                        \
        for (int64_t l = 0; l < len; l++) {                                                               \
            const T *xl = xo + l * s_len;                                                                 \
            uint64_t *ow = oo + l / 64;                                                                   \
            const int sh = (int)(l % 64);                                                                 \
            for (int64_t i = 0; i < inner; i++) {                                                         \
                const T v = xl[i * s_inner];                                                              \
                ow[i * words] |= (uint64_t)BK_PACK_BIT(v) << sh;                                          \
                other += v != 1 && v != -1;                                                               \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    return other;

int64_t bk_pack_f32(const float *x, int64_t outer, int64_t len, int64_t inner, int64_t s_outer, int64_t s_len,
                    int64_t s_inner, int polarity, int path, uint64_t *out)
{
    BK_PACK_BODY(float)
}

int64_t bk_pack_f64(const double *x, int64_t outer, int64_t len, int64_t inner, int64_t s_outer, int64_t s_len,
                    int64_t s_inner, int polarity, int path, uint64_t *out)
{
    BK_PACK_BODY(double)
}

/* ---- binary max pool ---------------------------------------------------------------------- */

void bk_maxpool(const uint64_t *x, int64_t in_h, int64_t in_w, int64_t cw, int64_t x_img, int64_t x_row,
                int64_t x_pix, int kh, int kw, int sh, int sw, int ph, int pw, int64_t out_h, int64_t out_w,
                uint64_t *out, int64_t q0, int64_t q1)
{
    /* LCE polarity: bit 1 = -1, so max(+-1) is -1 only where every tap is -1: the AND of the bits */
    for (int64_t q = q0; q < q1; q++) {
        const int64_t img = q / out_h, oh = q % out_h;
        for (int64_t ow = 0; ow < out_w; ow++) {
            uint64_t *o = out + (q * out_w + ow) * cw;
            for (int64_t c = 0; c < cw; c++)
                o[c] = ~(uint64_t)0;
            for (int i = 0; i < kh; i++) {
                const int64_t ih = oh * sh - ph + i;
                if (ih < 0 || ih >= in_h)
                    continue;
                for (int j = 0; j < kw; j++) {
                    const int64_t iw = ow * sw - pw + j;
                    if (iw < 0 || iw >= in_w)
                        continue;
                    const uint64_t *xi = x + img * x_img + ih * x_row + iw * x_pix;
                    for (int64_t c = 0; c < cw; c++)
                        o[c] &= xi[c];
                }
            }
        }
    }
}
