/* A command-line driver of the bit-packed kernels without Python, for the NEON path under
 * qemu-aarch64 (tests/test_kernels_neon.py builds it with aarch64-linux-gnu-gcc together with
 * bk_common.c, bk_scalar.c and bk_neon.c). It sets the kernels' jobs up the way
 * src_cython/_bitpack.pyx does (bgemm, bconv2d, pack_bits, bmaxpool2d) and writes the raw outputs;
 * the Python side compares them with the NumPy reference.
 *
 *   driver PATH IN OUT        PATH: neon, scalar (or, built natively on x86-64, avx2, avx512)
 *
 * IN:  "RBNNDRV1", int64 ncases, then per case int64 hdr[32] (hdr[0] the op) and its arrays.
 * OUT: per case int64 nbytes, then the case's output bytes. Little-endian, native layouts.
 * Exit status 0; 2 for a bad command line or file, 3 when PATH is not compiled or supported.
 */
#include "bitkernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OP_GEMM = 1, OP_CONV = 2, OP_PACK = 3, OP_MAXPOOL = 4, OP_PEAK = 5 };
#define NHDR 32

static FILE *fin, *fout;

static void die(const char *what)
{
    fprintf(stderr, "driver: %s\n", what);
    exit(2);
}

static void *xalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64 + 64);
    if (!p)
        die("out of memory");
    memset(p, 0xA5, (n + 63) / 64 * 64 + 64);   /* not zero: an element a kernel skips shows */
    return p;
}

static void *readn(size_t n)
{
    void *p = xalloc(n);
    if (n && fread(p, 1, n, fin) != n)
        die("input file too short");
    return p;
}

static void emit(const void *p, int64_t n)
{
    if (fwrite(&n, 8, 1, fout) != 1 || (n && fwrite(p, 1, (size_t)n, fout) != (size_t)n))
        die("cannot write the output file");
}

static uint64_t tailmask(int64_t bits)
{
    return bits % 64 ? ((uint64_t)1 << (bits % 64)) - 1 : ~(uint64_t)0;
}

static int64_t conv_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d)
{
    return (in + 2 * p - d * (k - 1) - 1) / s + 1;
}

static void job_defaults(bk_job *job, int path)
{
    memset(job, 0, sizeof *job);     /* every field the driver does not set is 0 or NULL */
    job->path = path;
    job->lo = INT32_MIN;
    job->hi = INT32_MAX;
}

/* hdr: m, n, k, lda, s_row, mode (0: pack every panel, then rows in chunks of `chunk`, as
   _bitpack._run's threads; 1: panels in `chunk` column groups through bk_gemm_columns) */
static void op_gemm(int path, const int64_t *h)
{
    const int64_t m = h[1], n = h[2], k = h[3], lda = h[4], s_row = h[5], mode = h[6], chunk = h[7];
    const int cw = (int)((k + 63) / 64);
    uint64_t *a = readn((size_t)(m * lda) * 8), *b = readn((size_t)(n * s_row) * 8);
    const int64_t npanels = (n + BK_NC - 1) / BK_NC;
    uint64_t *panels = xalloc((size_t)(npanels * cw * BK_NC) * 8);
    int32_t *out = xalloc((size_t)(m * n) * 4);
    bk_job job;
    job_defaults(&job, path);
    job.m = m, job.n = n, job.ntaps = 1, job.cw = cw, job.kbits = (int32_t)k, job.tailmask = tailmask(k);
    job.a = a, job.lda = lda;
    job.bpanels = panels, job.npanels = npanels;
    job.out_mode = BK_OUT_INT32, job.out = out;
    job.rows_per_img = m, job.out_img = 0, job.out_row = n, job.out_col = 1;
    if (mode == 1) {
        for (int64_t c = 0; c < chunk; c++)
            bk_gemm_columns(&job, b, s_row, c * npanels / chunk, (c + 1) * npanels / chunk);
    } else {
        bk_pack_panels(b, n, 1, cw, s_row, 0, job.tailmask, panels);
        for (int64_t r = 0; r < m; r += chunk)
            bk_run(&job, r, r + chunk < m ? r + chunk : m, 0, npanels);
    }
    emit(out, m * n * 4);
    free(a), free(b), free(panels), free(out);
}

/* hdr: nimg, h, w, c, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, pad (-1, 0, 1), out_mode
   (BK_OUT_*), layout (0 NHWC, 1 NCHW), has_mul, has_bias, lo, hi, row_chunk; arrays: x (NHWC
   words), w (OHWI words), mul (float32 [o]), bias (float32 [o]), thr (int32 [o]), flip (uint8 [o]) */
static void op_conv(int path, const int64_t *hd)
{
    const int64_t nimg = hd[1], h = hd[2], wd = hd[3], c = hd[4], o = hd[5];
    const int kh = (int)hd[6], kw = (int)hd[7], sh = (int)hd[8], sw = (int)hd[9], ph = (int)hd[10],
              pw = (int)hd[11], dh = (int)hd[12], dw = (int)hd[13];
    const int64_t g = hd[14], pad = hd[15], out_mode = hd[16], layout = hd[17], has_mul = hd[18],
                  has_bias = hd[19], chunk = hd[22];
    const int64_t og = o / g, cg = c / g, cwg = (cg + 63) / 64, xw = g * cwg, ntaps = kh * kw;
    const int64_t ho = conv_out(h, kh, sh, ph, dh), wo = conv_out(wd, kw, sw, pw, dw), m = nimg * ho * wo;
    const int64_t npg = (og + BK_NC - 1) / BK_NC, pwords = npg * ntaps * cwg * BK_NC, ow_words = (o + 63) / 64;
    const uint64_t tail = tailmask(cg);

    uint64_t *x = readn((size_t)(nimg * h * wd * xw) * 8), *w = readn((size_t)(o * ntaps * cwg) * 8);
    float *mul = has_mul ? readn((size_t)o * 4) : NULL, *bias = has_bias ? readn((size_t)o * 4) : NULL;
    int32_t *thr = NULL;
    uint8_t *flip = NULL;
    if (out_mode == BK_OUT_BITS) {
        thr = readn((size_t)o * 4);
        flip = readn((size_t)o);
    }

    uint64_t *panels = xalloc((size_t)(g * pwords) * 8);
    for (int64_t gi = 0; gi < g; gi++)
        bk_pack_panels(w + gi * og * ntaps * cwg, og, (int)ntaps, (int)cwg, ntaps * cwg, cwg, tail,
                       panels + gi * pwords);
    uint64_t *padbuf = xalloc((size_t)cwg * 8);
    for (int64_t i = 0; i < cwg; i++)
        padbuf[i] = pad == -1 ? (i == cwg - 1 ? tail : ~(uint64_t)0) : 0;
    int32_t *corr = NULL;
    if (pad == 0 && (ph || pw)) {
        corr = xalloc((size_t)(g * npg * ntaps * BK_NC) * 4);
        bk_tap_sums(panels, g * npg, (int)ntaps, (int)cwg, (int32_t)cg, corr);
    }
    /* per-channel values padded to whole panels, per group (as _bitpack._pad_panels) */
    float *mulp = NULL, *biasp = NULL;
    int32_t *thrp = NULL;
    uint32_t *flipw = NULL;
    if (mul || bias) {
        mulp = xalloc((size_t)(g * npg * BK_NC) * 4);
        biasp = xalloc((size_t)(g * npg * BK_NC) * 4);
        for (int64_t gi = 0; gi < g; gi++)
            for (int64_t j = 0; j < npg * BK_NC; j++) {
                mulp[gi * npg * BK_NC + j] = mul && j < og ? mul[gi * og + j] : 1.0f;
                biasp[gi * npg * BK_NC + j] = bias && j < og ? bias[gi * og + j] : 0.0f;
            }
    }
    if (out_mode == BK_OUT_BITS) {
        thrp = xalloc((size_t)(g * npg * BK_NC) * 4);
        flipw = xalloc((size_t)(g * npg) * 4);
        for (int64_t gi = 0; gi < g; gi++)
            for (int64_t p = 0; p < npg; p++) {
                uint32_t bits = 0;
                for (int j = 0; j < BK_NC; j++) {
                    const int64_t col = p * BK_NC + j;
                    thrp[(gi * npg + p) * BK_NC + j] = col < og ? thr[gi * og + col] : INT32_MIN;
                    bits |= (uint32_t)(col < og && flip[gi * og + col]) << j;
                }
                flipw[gi * npg + p] = bits;
            }
    }

    const size_t item = out_mode == BK_OUT_BITS ? 8 : 4;
    const int64_t nout = out_mode == BK_OUT_BITS ? m * ow_words : m * o;
    char *out = xalloc((size_t)nout * item);
    for (int64_t gi = 0; gi < g; gi++) {
        bk_job job;
        job_defaults(&job, path);
        job.m = m, job.n = og, job.ntaps = (int)ntaps, job.cw = (int)cwg, job.kbits = (int32_t)(ntaps * cg);
        job.tailmask = tail;
        job.conv = 1;
        job.x = x + gi * cwg;
        job.in_h = h, job.in_w = wd, job.out_h = ho, job.out_w = wo;
        job.x_img = h * wd * xw, job.x_row = wd * xw, job.x_pix = xw;
        job.kh = kh, job.kw = kw, job.sh = sh, job.sw = sw, job.ph = ph, job.pw = pw, job.dh = dh, job.dw = dw;
        job.padbuf = padbuf;
        job.corr = corr ? corr + gi * npg * ntaps * BK_NC : NULL;
        job.bpanels = panels + gi * pwords, job.npanels = npg;
        if (out_mode == BK_OUT_BITS) {
            job.out_mode = BK_OUT_BITS;
            job.out = (uint64_t *)out + gi * (og / 64);
            job.rows_per_img = m, job.out_img = 0, job.out_row = ow_words, job.out_col = 1;
            job.thr = thrp + gi * npg * BK_NC;
            job.flip = flipw + gi * npg;
        } else {
            job.out_mode = (int)out_mode;
            if (layout == 0) {
                job.out = out + (size_t)(gi * og) * item;
                job.rows_per_img = m, job.out_img = 0, job.out_row = o, job.out_col = 1;
            } else {
                job.out = out + (size_t)(gi * og * ho * wo) * item;
                job.rows_per_img = ho * wo, job.out_img = o * ho * wo, job.out_row = 1, job.out_col = ho * wo;
            }
            if (out_mode == BK_OUT_FLOAT) {
                job.lo = (int32_t)hd[20], job.hi = (int32_t)hd[21];
                job.mul = mul ? mulp + gi * npg * BK_NC : NULL;
                job.bias = bias ? biasp + gi * npg * BK_NC : NULL;
            }
        }
        for (int64_t r = 0; r < m; r += chunk)
            bk_run(&job, r, r + chunk < m ? r + chunk : m, 0, npg);
    }
    emit(out, nout * (int64_t)item);
    free(x), free(w), free(mul), free(bias), free(thr), free(flip), free(panels), free(padbuf), free(corr);
    free(mulp), free(biasp), free(thrp), free(flipw), free(out);
}

/* hdr: itemsize (4 or 8), outer, len, inner, s_outer, s_len, s_inner, polarity, nelem;
   array: nelem values. Output: int64 count of values other than +-1, then the words. */
static void op_pack(int path, const int64_t *h)
{
    const int64_t item = h[1], outer = h[2], len = h[3], inner = h[4], nelem = h[9];
    const int64_t words = (len + 63) / 64, nwords = outer * inner * words;
    void *x = readn((size_t)(nelem * item));
    uint64_t *out = xalloc((size_t)(nwords + 1) * 8);
    int64_t other = item == 4 ? bk_pack_f32(x, outer, len, inner, h[5], h[6], h[7], (int)h[8], path, out + 1)
                              : bk_pack_f64(x, outer, len, inner, h[5], h[6], h[7], (int)h[8], path, out + 1);
    memcpy(out, &other, 8);
    emit(out, (nwords + 1) * 8);
    free(x), free(out);
}

/* hdr: nimg, h, w, cw, kh, kw, sh, sw, ph, pw; array: x (NHWC words) */
static void op_maxpool(const int64_t *hd)
{
    const int64_t nimg = hd[1], h = hd[2], wd = hd[3], cw = hd[4];
    const int kh = (int)hd[5], kw = (int)hd[6], sh = (int)hd[7], sw = (int)hd[8], ph = (int)hd[9], pw = (int)hd[10];
    const int64_t ho = conv_out(h, kh, sh, ph, 1), wo = conv_out(wd, kw, sw, pw, 1);
    uint64_t *x = readn((size_t)(nimg * h * wd * cw) * 8), *out = xalloc((size_t)(nimg * ho * wo * cw) * 8);
    bk_maxpool(x, h, wd, cw, h * wd * cw, wd * cw, cw, kh, kw, sh, sw, ph, pw, ho, wo, out, 0, nimg * ho);
    emit(out, nimg * ho * wo * cw * 8);
    free(x), free(out);
}

/* hdr: iters. Output: the binary operations the path's peak loop reports (a double). */
static void op_peak(int path, const int64_t *h)
{
    double ops = -1;
#if BK_ARM64
    if (path == BK_PATH_NEON)
        ops = bk_peak_neon(h[1]);
#endif
    if (path == BK_PATH_SCALAR)
        ops = bk_peak_scalar(h[1]);
    emit(&ops, 8);
}

int main(int argc, char **argv)
{
    static const struct { const char *name; int id; } names[] = {
        {"scalar", BK_PATH_SCALAR}, {"avx2", BK_PATH_AVX2}, {"avx512", BK_PATH_AVX512}, {"neon", BK_PATH_NEON}};
    if (argc != 4)
        die("usage: driver PATH IN OUT");
    int path = -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(argv[1], names[i].name))
            path = names[i].id;
    if (path < 0)
        die("unknown path");
    if (!bk_path_compiled(path) || !bk_path_supported(path)) {
        fprintf(stderr, "driver: path %s is not %s here\n", argv[1],
                bk_path_compiled(path) ? "supported" : "compiled");
        return 3;
    }
    fin = fopen(argv[2], "rb");
    fout = fopen(argv[3], "wb");
    if (!fin || !fout)
        die("cannot open the input or output file");
    char magic[8];
    int64_t ncases;
    if (fread(magic, 1, 8, fin) != 8 || memcmp(magic, "RBNNDRV1", 8) || fread(&ncases, 8, 1, fin) != 1)
        die("not a driver input file");
    for (int64_t i = 0; i < ncases; i++) {
        int64_t hdr[NHDR];
        if (fread(hdr, 8, NHDR, fin) != NHDR)
            die("input file too short");
        switch (hdr[0]) {
        case OP_GEMM: op_gemm(path, hdr); break;
        case OP_CONV: op_conv(path, hdr); break;
        case OP_PACK: op_pack(path, hdr); break;
        case OP_MAXPOOL: op_maxpool(hdr); break;
        case OP_PEAK: op_peak(path, hdr); break;
        default: die("unknown op");
        }
    }
    if (fclose(fout) != 0)
        die("cannot write the output file");
    fclose(fin);
    return 0;
}
