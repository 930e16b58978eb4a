/* Float convolution kernels (forward, weight and input gradients, im2col, col2im); see fo_conv.h
 * for the formulas and the reproducibility rule. Three paths compute the same sums: AVX-512 and
 * AVX2 (fused multiply-add intrinsics in functions with their own target attribute, so the file is
 * compiled without -march and runs on any x86-64) and portable C, chosen at run time.
 */
#include "fo_conv.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FO_X86 1
#include <immintrin.h>
#else
#define FO_X86 0
#endif

#define FO_VB 16 /* rows of columns and of transposed dout are padded to a multiple of 16 floats */

static int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* The row stride of a sample's columns: L rounded up to 16 floats, plus 16 when that is a multiple
 * of 2 KiB, so that the rows a kernel reads together do not all fall in the same L1 cache sets
 * (with a 4 KiB stride, 16 rows share one set of a 12-way cache). */
static int64_t cols_ld(int64_t L)
{
    const int64_t ld = round_up(L, FO_VB);
    return ld % 512 == 0 ? ld + FO_VB : ld;
}

static void *fo_alloc(size_t bytes)
{
    if (bytes == 0)
        bytes = 64;
    bytes = (bytes + 63) / 64 * 64;
#if defined(_WIN32)
    return _aligned_malloc(bytes, 64);
#else
    void *p = NULL;
    return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
#endif
}

static void fo_free(void *p)
{
#if defined(_WIN32)
    _aligned_free(p);
#else
    free(p);
#endif
}

/* ---- CPU features and the path ------------------------------------------------------------- */

int fo_conv_path_supported(int path)
{
    if (path == FO_PATH_SCALAR)
        return 1;
#if FO_X86
    __builtin_cpu_init();
    if (path == FO_PATH_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (path == FO_PATH_AVX512)
        return __builtin_cpu_supports("avx512f") != 0;
#endif
    return 0;
}

static int forced_path = FO_PATH_AUTO;

int fo_conv_set_path(int path)
{
    int old = forced_path;
    forced_path = path;
    return old;
}

int fo_conv_path(void)
{
    if (forced_path != FO_PATH_AUTO)
        return forced_path;
    if (fo_conv_path_supported(FO_PATH_AVX512))
        return FO_PATH_AVX512;
    if (fo_conv_path_supported(FO_PATH_AVX2))
        return FO_PATH_AVX2;
    return FO_PATH_SCALAR;
}

/* ---- the broadcast GEMM: C[m, v] (+)= sum_p A[m sam + p sap] B[p ldb + v] ----------------------
 * m < M, v < 16 nv (C and B rows hold nv blocks of 16 floats), p < P in increasing order, one
 * accumulator per C element starting from 0; accum adds the sum to C's old value (C + sum). */

typedef void (*gemm_fn)(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, int64_t sap,
                        const float *B, int64_t ldb, float *C, int64_t ldc, int accum);

static void gemm_scalar(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, int64_t sap,
                        const float *B, int64_t ldb, float *C, int64_t ldc, int accum)
{
    float acc[FO_VB];
    for (int64_t m = 0; m < M; m++)
        for (int64_t v0 = 0; v0 < nv * FO_VB; v0 += FO_VB) {
            for (int v = 0; v < FO_VB; v++)
                acc[v] = 0.0f;
            for (int64_t p = 0; p < P; p++) {
                const float a = A[m * sam + p * sap];
                const float *b = B + p * ldb + v0;
                for (int v = 0; v < FO_VB; v++)
                    acc[v] += a * b[v];
            }
            float *c = C + m * ldc + v0;
            for (int v = 0; v < FO_VB; v++)
                c[v] = accum ? c[v] + acc[v] : acc[v];
        }
}

#if FO_X86

#define T512 __attribute__((target("avx512f")))
#define T256 __attribute__((target("avx2,fma")))
#define INL static inline __attribute__((always_inline))

/* AVX-512: MR rows x NR vectors of 16 (MR NR <= 24 accumulators, plus NR B vectors) */
T512 INL void mk512(const int MR, const int NR, int64_t P, const float *A, int64_t sam, int64_t sap,
                    const float *B, int64_t ldb, float *C, int64_t ldc, int accum)
{
    __m512 acc[24][4];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++)
            acc[r][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < P; p++) {
        __m512 b[4];
        const float *bp = B + p * ldb;
        const float *ap = A + p * sap;
        for (int j = 0; j < NR; j++)
            b[j] = _mm512_loadu_ps(bp + 16 * j);
        for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(ap[r * sam]);
            for (int j = 0; j < NR; j++)
                acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) {
            float *c = C + r * ldc + 16 * j;
            _mm512_storeu_ps(c, accum ? _mm512_add_ps(_mm512_loadu_ps(c), acc[r][j]) : acc[r][j]);
        }
}

/* The tile loop of the AVX-512 GEMM drivers (gemm_avx512, gemmt_avx512): blocks of up to 4 vectors of
 * columns (nr), row tiles of up to mrmax rows (the most mr x nr accumulators that fit the 32 registers),
 * each tile through CASE(mr, nr), a macro that reads v0 (the block's first column) and m0 (the tile's
 * first row). */
#define TILES_512(CASE) \
    for (int64_t j0 = 0; j0 < nv; j0 += 4) {                                          \
        const int nr = nv - j0 >= 4 ? 4 : (int)(nv - j0);                             \
        const int64_t v0 = 16 * j0;                                                   \
        const int mrmax = nr == 4 ? 6 : nr == 3 ? 8 : nr == 2 ? 12 : 16;              \
        for (int64_t m0 = 0; m0 < M; m0 += mrmax) {                                   \
            const int mr = M - m0 >= mrmax ? mrmax : (int)(M - m0);                   \
            switch (nr) {                                                             \
            case 4:                                                                   \
                switch (mr) { CASE(1, 4) CASE(2, 4) CASE(3, 4) CASE(4, 4) CASE(5, 4)  \
                              CASE(6, 4) }                                            \
                break;                                                                \
            case 3:                                                                   \
                switch (mr) { CASE(1, 3) CASE(2, 3) CASE(3, 3) CASE(4, 3) CASE(5, 3)  \
                              CASE(6, 3) CASE(7, 3) CASE(8, 3) }                      \
                break;                                                                \
            case 2:                                                                   \
                switch (mr) { CASE(1, 2) CASE(2, 2) CASE(3, 2) CASE(4, 2) CASE(5, 2)  \
                              CASE(6, 2) CASE(7, 2) CASE(8, 2) CASE(9, 2) CASE(10, 2) \
                              CASE(11, 2) CASE(12, 2) }                               \
                break;                                                                \
            default:                                                                  \
                switch (mr) { CASE(1, 1) CASE(2, 1) CASE(3, 1) CASE(4, 1) CASE(5, 1)  \
                              CASE(6, 1) CASE(7, 1) CASE(8, 1) CASE(9, 1) CASE(10, 1) \
                              CASE(11, 1) CASE(12, 1) CASE(13, 1) CASE(14, 1)         \
                              CASE(15, 1) CASE(16, 1) }                               \
                break;                                                                \
            }                                                                         \
        }                                                                             \
    }

#define MK512(MRV, NRV) mk512(MRV, NRV, P, A + m0 * sam, sam, sap, B + v0, ldb, C + m0 * ldc + v0, ldc, accum)
#define CASE512(MRV, NRV) case MRV: MK512(MRV, NRV); break;

T512 static void gemm_avx512(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, int64_t sap,
                             const float *B, int64_t ldb, float *C, int64_t ldc, int accum)
{
    TILES_512(CASE512)
}

/* AVX2: MR rows x one block of 16 floats (2 vectors of 8): 12 accumulators of the 16 registers */
T256 INL void mk256(const int MR, int64_t P, const float *A, int64_t sam, int64_t sap, const float *B,
                    float *C, int64_t ldb, int64_t ldc, int accum)
{
    __m256 acc[6][2];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 2; j++)
            acc[r][j] = _mm256_setzero_ps();
    for (int64_t p = 0; p < P; p++) {
        const float *bp = B + p * ldb;
        const float *ap = A + p * sap;
        const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        for (int r = 0; r < MR; r++) {
            const __m256 a = _mm256_broadcast_ss(ap + r * sam);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 2; j++) {
            float *c = C + r * ldc + 8 * j;
            _mm256_storeu_ps(c, accum ? _mm256_add_ps(_mm256_loadu_ps(c), acc[r][j]) : acc[r][j]);
        }
}

#define CASE256(MRV) case MRV: mk256(MRV, P, A + m0 * sam, sam, sap, B + v0, C + m0 * ldc + v0, ldb, ldc, accum); break;

T256 static void gemm_avx2(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, int64_t sap,
                           const float *B, int64_t ldb, float *C, int64_t ldc, int accum)
{
    for (int64_t j0 = 0; j0 < nv; j0++) {
        const int64_t v0 = 16 * j0;
        for (int64_t m0 = 0; m0 < M; m0 += 6) {
            const int mr = M - m0 >= 6 ? 6 : (int)(M - m0);
            switch (mr) { CASE256(1) CASE256(2) CASE256(3) CASE256(4) CASE256(5) CASE256(6) }
        }
    }
}

/* The row-table variant for the implicit weight gradient: C[m, v] += sum_p A[moff[m] + p] B[p ldb + v]
 * (the sum over p from 0 in increasing order, then added to C): A's rows are arbitrary windows of a
 * buffer (the shifted copies of x). */
T512 INL void mk512r(const int MR, const int NR, int64_t P, const float *A, const int64_t *moff, const float *B,
                     int64_t ldb, float *C, int64_t ldc)
{
    __m512 acc[8][4];
    const float *ar[8];
    for (int r = 0; r < MR; r++) {
        ar[r] = A + moff[r];
        for (int j = 0; j < NR; j++)
            acc[r][j] = _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < P; p++) {
        __m512 b[4];
        const float *bp = B + p * ldb;
        for (int j = 0; j < NR; j++)
            b[j] = _mm512_loadu_ps(bp + 16 * j);
        for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(ar[r][p]);
            for (int j = 0; j < NR; j++)
                acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++) {
            float *c = C + r * ldc + 16 * j;
            _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), acc[r][j]));
        }
}

#define MK512R(MRV, NRV) mk512r(MRV, NRV, P, A, moff + m0, B + v0, ldb, C + m0 * ldc + v0, ldc)
#define CASE512R(MRV, NRV) case MRV: MK512R(MRV, NRV); break;

T512 static void gemmr_avx512(int64_t M, int64_t nv, int64_t P, const float *A, const int64_t *moff, const float *B,
                              int64_t ldb, float *C, int64_t ldc)
{
    for (int64_t j0 = 0; j0 < nv; j0 += 4) {
        const int nr = nv - j0 >= 4 ? 4 : (int)(nv - j0);
        const int64_t v0 = 16 * j0;
        /* at most 8 rows when a row of B is one or two vectors: each row is a pointer of its own, and more
           than about 12 pointers do not fit in the general-purpose registers */
        const int mrmax = nr == 4 ? 6 : 8;
        for (int64_t m0 = 0; m0 < M; m0 += mrmax) {
            const int mr = M - m0 >= mrmax ? mrmax : (int)(M - m0);
            switch (nr) {
            case 4:
                switch (mr) { CASE512R(1, 4) CASE512R(2, 4) CASE512R(3, 4) CASE512R(4, 4) CASE512R(5, 4)
                              CASE512R(6, 4) }
                break;
            case 3:
                switch (mr) { CASE512R(1, 3) CASE512R(2, 3) CASE512R(3, 3) CASE512R(4, 3) CASE512R(5, 3)
                              CASE512R(6, 3) CASE512R(7, 3) CASE512R(8, 3) }
                break;
            case 2:
                switch (mr) { CASE512R(1, 2) CASE512R(2, 2) CASE512R(3, 2) CASE512R(4, 2) CASE512R(5, 2)
                              CASE512R(6, 2) CASE512R(7, 2) CASE512R(8, 2) }
                break;
            default:
                switch (mr) { CASE512R(1, 1) CASE512R(2, 1) CASE512R(3, 1) CASE512R(4, 1) CASE512R(5, 1)
                              CASE512R(6, 1) CASE512R(7, 1) CASE512R(8, 1) }
                break;
            }
        }
    }
}

/* The table-driven variant: C[m, v] = sum_p A[m sam + aoff[p]] B[boff[p] + v] (p in increasing
 * order, from 0): B's rows are arbitrary windows of a buffer (the shifted copies of dout of the
 * implicit input gradient). */
T512 INL void mk512t(const int MR, const int NR, int64_t P, const float *A, int64_t sam, const int64_t *aoff,
                     const float *B, const int64_t *boff, float *C, int64_t ldc)
{
    __m512 acc[24][4];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++)
            acc[r][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < P; p++) {
        __m512 b[4];
        const float *bp = B + boff[p];
        const float *ap = A + aoff[p];
        for (int j = 0; j < NR; j++)
            b[j] = _mm512_loadu_ps(bp + 16 * j);
        for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(ap[r * sam]);
            for (int j = 0; j < NR; j++)
                acc[r][j] = _mm512_fmadd_ps(a, b[j], acc[r][j]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < NR; j++)
            _mm512_storeu_ps(C + r * ldc + 16 * j, acc[r][j]);
}

#define MK512T(MRV, NRV) mk512t(MRV, NRV, P, A + m0 * sam, sam, aoff, B + v0, boff, C + m0 * ldc + v0, ldc)
#define CASE512T(MRV, NRV) case MRV: MK512T(MRV, NRV); break;

T512 static void gemmt_avx512(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, const int64_t *aoff,
                              const float *B, const int64_t *boff, float *C, int64_t ldc)
{
    TILES_512(CASE512T)
}

T256 INL void mk256t(const int MR, int64_t P, const float *A, int64_t sam, const int64_t *aoff, const float *B,
                     const int64_t *boff, float *C, int64_t ldc)
{
    __m256 acc[6][2];
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 2; j++)
            acc[r][j] = _mm256_setzero_ps();
    for (int64_t p = 0; p < P; p++) {
        const float *bp = B + boff[p];
        const float *ap = A + aoff[p];
        const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        for (int r = 0; r < MR; r++) {
            const __m256 a = _mm256_broadcast_ss(ap + r * sam);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
    for (int r = 0; r < MR; r++)
        for (int j = 0; j < 2; j++)
            _mm256_storeu_ps(C + r * ldc + 8 * j, acc[r][j]);
}

#define CASE256T(MRV) case MRV: mk256t(MRV, P, A + m0 * sam, sam, aoff, B + v0, boff, C + m0 * ldc + v0, ldc); break;

T256 static void gemmt_avx2(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, const int64_t *aoff,
                            const float *B, const int64_t *boff, float *C, int64_t ldc)
{
    for (int64_t j0 = 0; j0 < nv; j0++) {
        const int64_t v0 = 16 * j0;
        for (int64_t m0 = 0; m0 < M; m0 += 6) {
            const int mr = M - m0 >= 6 ? 6 : (int)(M - m0);
            switch (mr) { CASE256T(1) CASE256T(2) CASE256T(3) CASE256T(4) CASE256T(5) CASE256T(6) }
        }
    }
}

#endif /* FO_X86 */

typedef void (*gemmt_fn)(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, const int64_t *aoff,
                         const float *B, const int64_t *boff, float *C, int64_t ldc);

static void gemmt_scalar(int64_t M, int64_t nv, int64_t P, const float *A, int64_t sam, const int64_t *aoff,
                         const float *B, const int64_t *boff, float *C, int64_t ldc)
{
    float acc[FO_VB];
    for (int64_t m = 0; m < M; m++)
        for (int64_t v0 = 0; v0 < nv * FO_VB; v0 += FO_VB) {
            for (int v = 0; v < FO_VB; v++)
                acc[v] = 0.0f;
            for (int64_t p = 0; p < P; p++) {
                const float a = A[m * sam + aoff[p]];
                const float *b = B + boff[p] + v0;
                for (int v = 0; v < FO_VB; v++)
                    acc[v] += a * b[v];
            }
            for (int v = 0; v < FO_VB; v++)
                C[m * ldc + v0 + v] = acc[v];
        }
}

static gemmt_fn gemmt_for(int path)
{
#if FO_X86
    if (path == FO_PATH_AVX512)
        return gemmt_avx512;
    if (path == FO_PATH_AVX2)
        return gemmt_avx2;
#endif
    (void)path;
    return gemmt_scalar;
}

static gemm_fn gemm_for(int path)
{
#if FO_X86
    if (path == FO_PATH_AVX512)
        return gemm_avx512;
    if (path == FO_PATH_AVX2)
        return gemm_avx2;
#endif
    (void)path;
    return gemm_scalar;
}

/* ---- im2col / col2im of one (sample, channel) plane ------------------------------------------ */

/* the output columns q whose input column q sw + j dw - left lies in [0, W): [*lo, *hi) */
static void valid_q(const fo_geom *g, int64_t j, int64_t *lo, int64_t *hi)
{
    const int64_t t = g->pl - j * g->dw;              /* q sw >= t */
    const int64_t u = g->w - 1 + g->pl - j * g->dw;   /* q sw <= u */
    int64_t a = t <= 0 ? 0 : (t + g->sw - 1) / g->sw;
    int64_t b = u < 0 ? 0 : u / g->sw + 1;
    if (a > g->wo)
        a = g->wo;
    if (b > g->wo)
        b = g->wo;
    if (b < a)
        b = a;
    *lo = a;
    *hi = b;
}

/* rows (i, j) of one channel's columns, row stride ld (the tail [L, ld) is zeroed) */
static void im2col_plane_c(const fo_geom *g, const float *xc, float *out, int64_t ld)
{
    const int64_t L = g->ho * g->wo;
    const float pv = g->pad_value;
    for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++) {
            float *row = out + (i * g->kw + j) * ld;
            int64_t qlo, qhi;
            valid_q(g, j, &qlo, &qhi);
            const int64_t w0 = j * g->dw - g->pl;
            for (int64_t p = 0; p < g->ho; p++) {
                const int64_t h = p * g->sh + i * g->dh - g->pt;
                float *dst = row + p * g->wo;
                if (h < 0 || h >= g->h) {
                    for (int64_t q = 0; q < g->wo; q++)
                        dst[q] = pv;
                    continue;
                }
                const float *src = xc + h * g->w + w0;
                for (int64_t q = 0; q < qlo; q++)
                    dst[q] = pv;
                if (g->sw == 1)
                    memcpy(dst + qlo, src + qlo, (size_t)(qhi - qlo) * sizeof(float));
                else
                    for (int64_t q = qlo; q < qhi; q++)
                        dst[q] = src[q * g->sw];
                for (int64_t q = qhi; q < g->wo; q++)
                    dst[q] = pv;
            }
            for (int64_t l = L; l < ld; l++)
                row[l] = 0.0f;
        }
}

/* dxc = the sum of one channel's column rows (row stride ld) at their input pixels, the taps added
 * in the order (i, j) to a zero-filled plane (the reference col2im's order: bit-identical) */
static void col2im_plane_c(const fo_geom *g, const float *src, int64_t ld, float *dxc)
{
    for (int64_t e = 0; e < g->h * g->w; e++)
        dxc[e] = 0.0f;
    for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++) {
            const float *row = src + (i * g->kw + j) * ld;
            int64_t qlo, qhi;
            valid_q(g, j, &qlo, &qhi);
            const int64_t w0 = j * g->dw - g->pl;
            for (int64_t p = 0; p < g->ho; p++) {
                const int64_t h = p * g->sh + i * g->dh - g->pt;
                if (h < 0 || h >= g->h)
                    continue;
                float *dst = dxc + h * g->w + w0;
                const float *s = row + p * g->wo;
                if (g->sw == 1)
                    for (int64_t q = qlo; q < qhi; q++)
                        dst[q] += s[q];
                else
                    for (int64_t q = qlo; q < qhi; q++)
                        dst[q * g->sw] += s[q];
            }
        }
}

/* The common case of "same" convolutions: strides 1 and Wo == W. Then a column row (c, i, j) over
 * its valid output rows p0 <= p < p1 is one contiguous copy of the input, at a constant offset,
 * except the q < qlo and q >= qhi entries of each row (the taps that fall in the horizontal
 * padding), which are fixed afterwards. */
static int span_case(const fo_geom *g) { return g->sh == 1 && g->sw == 1 && g->wo == g->w; }

/* the output rows p whose input row p + i dh - top lies in [0, H) (strides 1): [*lo, *hi) */
static void valid_p(const fo_geom *g, int64_t i, int64_t *lo, int64_t *hi)
{
    int64_t a = g->pt - i * g->dh, b = g->h + g->pt - i * g->dh;
    a = a < 0 ? 0 : a > g->ho ? g->ho : a;
    b = b < a ? a : b > g->ho ? g->ho : b;
    *lo = a;
    *hi = b;
}

static void im2col_plane_span(const fo_geom *g, const float *xc, float *out, int64_t ld)
{
    const int64_t L = g->ho * g->wo, wo = g->wo;
    const float pv = g->pad_value;
    for (int64_t i = 0; i < g->kh; i++) {
        int64_t p0, p1;
        valid_p(g, i, &p0, &p1);
        for (int64_t j = 0; j < g->kw; j++) {
            float *row = out + (i * g->kw + j) * ld;
            int64_t qlo, qhi;
            valid_q(g, j, &qlo, &qhi);
            for (int64_t l = 0; l < p0 * wo; l++)
                row[l] = pv;
            if (p1 > p0 && qhi > qlo) {
                const int64_t d0 = p0 * wo + qlo, d1 = (p1 - 1) * wo + qhi;
                const float *src = xc + (p0 + i * g->dh - g->pt) * g->w + j * g->dw - g->pl + qlo;
                memcpy(row + d0, src, (size_t)(d1 - d0) * sizeof(float));
                for (int64_t p = p0; p < p1; p++) {
                    for (int64_t q = 0; q < qlo; q++)
                        row[p * wo + q] = pv;
                    for (int64_t q = qhi; q < wo; q++)
                        row[p * wo + q] = pv;
                }
            } else {
                for (int64_t l = p0 * wo; l < p1 * wo; l++)
                    row[l] = pv;
            }
            for (int64_t l = p1 * wo; l < L; l++)
                row[l] = pv;
            for (int64_t l = L; l < ld; l++)
                row[l] = 0.0f;
        }
    }
}

/* dout[n, group] (og rows of L) -> doutT (L rows of op, the columns og..op zero) */
static void transpose_c(const float *src, int64_t og, int64_t L, float *dst, int64_t op)
{
    for (int64_t l0 = 0; l0 < L; l0 += 16)
        for (int64_t o = 0; o < op; o++) {
            const int64_t l1 = l0 + 16 < L ? l0 + 16 : L;
            for (int64_t l = l0; l < l1; l++)
                dst[l * op + o] = o < og ? src[o * L + l] : 0.0f;
        }
}

#if FO_X86

/* lanes a <= t < b of 16 (a, b clamped to [0, 16]) */
static inline __mmask16 lanes(int64_t a, int64_t b)
{
    a = a < 0 ? 0 : a > 16 ? 16 : a;
    b = b < 0 ? 0 : b > 16 ? 16 : b;
    return b <= a ? 0 : (__mmask16)(((1u << b) - 1u) & ~((1u << a) - 1u));
}

/* im2col of one plane for horizontal stride 1 (masked loads read only the valid input) */
T512 static void im2col_plane_512(const fo_geom *g, const float *xc, float *out, int64_t ld)
{
    const int64_t L = g->ho * g->wo, wo = g->wo;
    const __m512 pv = _mm512_set1_ps(g->pad_value);
    for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++) {
            float *row = out + (i * g->kw + j) * ld;
            int64_t qlo, qhi;
            valid_q(g, j, &qlo, &qhi);
            const int64_t w0 = j * g->dw - g->pl;
            for (int64_t p = 0; p < g->ho; p++) {
                const int64_t h = p * g->sh + i * g->dh - g->pt;
                float *dst = row + p * wo;
                const int inside = h >= 0 && h < g->h;
                const float *src = xc + (inside ? h : 0) * g->w + w0; /* + q sw: input column */
                for (int64_t q0 = 0; q0 < wo; q0 += 16) {
                    const __mmask16 ms = lanes(0, wo - q0);
                    __m512 v = pv;
                    if (inside) {
                        if (q0 >= qlo && q0 + 16 <= qhi)
                            v = _mm512_loadu_ps(src + q0);
                        else
                            v = _mm512_mask_loadu_ps(pv, lanes(qlo - q0, qhi - q0), src + q0);
                    }
                    if (q0 + 16 <= wo)
                        _mm512_storeu_ps(dst + q0, v);
                    else
                        _mm512_mask_storeu_ps(dst + q0, ms, v);
                }
            }
            for (int64_t l = L; l < ld; l++)
                row[l] = 0.0f;
        }
}

/* col2im of one plane, gathered: each output vector dx[h, w0 .. w0 + 15] is accumulated in a
 * register from +0, tap by tap in the order (i, j), then stored once: the same adds in the same
 * order as col2im_plane_c (bit-identical). The lanes of tap (i, j) are the w with
 * (w + left - j dw) divisible by sw and q = (w + left - j dw) / sw in [0, Wo): consecutive q, so
 * one masked load (sw = 1) or expanding load (sw > 1) reads them. Needs kw <= 64. */
T512 static void col2im_plane_512(const fo_geom *g, const float *src, int64_t ld, float *dxc)
{
    const int64_t W = g->w, wo = g->wo, kw = g->kw;
    __mmask16 mj[64];
    int64_t qj[64];
    for (int64_t w0 = 0; w0 < W; w0 += 16) {
        const __mmask16 mw = lanes(0, W - w0);
        for (int64_t j = 0; j < kw; j++) {
            unsigned m = 0;
            int64_t first = -1;
            for (int t = 0; t < 16 && w0 + t < W; t++) {
                const int64_t u = w0 + t + g->pl - j * g->dw;
                if (u >= 0 && u % g->sw == 0 && u / g->sw < wo) {
                    m |= 1u << t;
                    if (first < 0)
                        first = u / g->sw;
                }
            }
            mj[j] = (__mmask16)m;
            qj[j] = first;
        }
        /* four rows at a time: four independent chains of adds (a row outside the image, or whose
           tap row is padding, gets an empty mask: its lanes are neither loaded nor added) */
        for (int64_t h0 = 0; h0 < g->h; h0 += 4) {
            __m512 acc[4];
            for (int r = 0; r < 4; r++)
                acc[r] = _mm512_setzero_ps();
            for (int64_t i = 0; i < g->kh; i++) {
                const float *rp[4];
                __mmask16 rv[4];
                for (int r = 0; r < 4; r++) {
                    const int64_t t = h0 + r + g->pt - i * g->dh;
                    const int ok = h0 + r < g->h && t >= 0 && t % g->sh == 0 && t / g->sh < g->ho;
                    rv[r] = ok ? (__mmask16)0xffff : (__mmask16)0;
                    rp[r] = src + i * kw * ld + (ok ? (t / g->sh) * wo : 0);
                }
                for (int64_t j = 0; j < kw; j++) {
                    if (!mj[j])
                        continue;
                    if (g->sw == 1) {
                        const int64_t off = j * ld + qj[j] - (int64_t)__builtin_ctz(mj[j]);
                        for (int r = 0; r < 4; r++) {
                            const __mmask16 m = mj[j] & rv[r];
                            acc[r] = _mm512_mask_add_ps(acc[r], m, acc[r], _mm512_maskz_loadu_ps(m, rp[r] + off));
                        }
                    } else {
                        const int64_t off = j * ld + qj[j];
                        for (int r = 0; r < 4; r++) {
                            const __mmask16 m = mj[j] & rv[r];
                            acc[r] = _mm512_mask_add_ps(acc[r], m, acc[r], _mm512_maskz_expandloadu_ps(m, rp[r] + off));
                        }
                    }
                }
            }
            for (int r = 0; r < 4 && h0 + r < g->h; r++)
                _mm512_mask_storeu_ps(dxc + (h0 + r) * W + w0, mw, acc[r]);
        }
    }
}

/* 16 x 16 transposes (unpack, shuffle, 128-bit lane shuffles); rows past og and columns past L
 * read as zero, rows of the output past L are not written */
T512 static void transpose_512(const float *src, int64_t og, int64_t L, float *dst, int64_t op)
{
    for (int64_t o0 = 0; o0 < op; o0 += 16)
        for (int64_t l0 = 0; l0 < L; l0 += 16) {
            const __mmask16 ml = lanes(0, L - l0);
            __m512 r[16], t[16];
            for (int k = 0; k < 16; k++)
                r[k] = o0 + k < og ? _mm512_maskz_loadu_ps(ml, src + (o0 + k) * L + l0) : _mm512_setzero_ps();
            for (int k = 0; k < 16; k += 2) {
                t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
                t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
            }
            for (int k = 0; k < 16; k += 4) {
                r[k] = _mm512_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
                r[k + 1] = _mm512_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
                r[k + 2] = _mm512_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
                r[k + 3] = _mm512_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            for (int k = 0; k < 4; k++) {
                t[k] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0x88);
                t[k + 4] = _mm512_shuffle_f32x4(r[k], r[k + 4], 0xdd);
                t[k + 8] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0x88);
                t[k + 12] = _mm512_shuffle_f32x4(r[k + 8], r[k + 12], 0xdd);
            }
            for (int k = 0; k < 8; k++) {
                r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
                r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xdd);
            }
            const int64_t nl = L - l0 < 16 ? L - l0 : 16;
            for (int k = 0; k < nl; k++)
                _mm512_storeu_ps(dst + (l0 + k) * op + o0, r[k]);
        }
}

#endif /* FO_X86 */

#if FO_X86
/* im2col of one plane for horizontal stride 2: the even elements of 16 (or 8) outputs' 31 (15)
 * consecutive inputs gathered by one permute of two loads that stay inside the valid inputs
 * (the second load starts one element early, its odd positions hold the upper evens); the
 * outputs next to the padding, one at a time. */
T512 static void im2col_plane_s2_512(const fo_geom *g, const float *xc, float *out, int64_t ld)
{
    const int64_t L = g->ho * g->wo, wo = g->wo;
    const float pv = g->pad_value;
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i idx8 = _mm512_setr_epi32(0, 2, 4, 6, 17, 19, 21, 23, 0, 0, 0, 0, 0, 0, 0, 0);
    for (int64_t i = 0; i < g->kh; i++)
        for (int64_t j = 0; j < g->kw; j++) {
            float *row = out + (i * g->kw + j) * ld;
            int64_t qlo, qhi;
            valid_q(g, j, &qlo, &qhi);
            const int64_t w0 = j * g->dw - g->pl;
            for (int64_t p = 0; p < g->ho; p++) {
                const int64_t h = p * g->sh + i * g->dh - g->pt;
                float *dst = row + p * wo;
                if (h < 0 || h >= g->h) {
                    for (int64_t q = 0; q < wo; q++)
                        dst[q] = pv;
                    continue;
                }
                const float *src = xc + h * g->w + w0; /* output q reads src[2 q] */
                int64_t q = 0;
                for (; q < qlo && q < wo; q++)
                    dst[q] = pv;
                for (; q + 16 <= qhi; q += 16) {
                    const __m512 a = _mm512_loadu_ps(src + 2 * q), b = _mm512_loadu_ps(src + 2 * q + 15);
                    _mm512_storeu_ps(dst + q, _mm512_permutex2var_ps(a, idx, b));
                }
                for (; q + 8 <= qhi; q += 8) {
                    const __m512 a = _mm512_castps256_ps512(_mm256_loadu_ps(src + 2 * q));
                    const __m512 b = _mm512_castps256_ps512(_mm256_loadu_ps(src + 2 * q + 7));
                    _mm256_storeu_ps(dst + q, _mm512_castps512_ps256(_mm512_permutex2var_ps(a, idx8, b)));
                }
                for (; q < qhi; q++)
                    dst[q] = src[2 * q];
                for (; q < wo; q++)
                    dst[q] = pv;
            }
            for (int64_t l = L; l < ld; l++)
                row[l] = 0.0f;
        }
}
#endif

static void im2col_plane(int path, const fo_geom *g, const float *xc, float *out, int64_t ld)
{
    if (span_case(g)) {
        im2col_plane_span(g, xc, out, ld);
        return;
    }
#if FO_X86
    if (path == FO_PATH_AVX512 && g->sw == 1) {
        im2col_plane_512(g, xc, out, ld);
        return;
    }
    if (path == FO_PATH_AVX512 && g->sw == 2) {
        im2col_plane_s2_512(g, xc, out, ld);
        return;
    }
#endif
    (void)path;
    im2col_plane_c(g, xc, out, ld);
}

static void col2im_plane(int path, const fo_geom *g, const float *src, int64_t ld, float *dxc)
{
#if FO_X86
    if (path == FO_PATH_AVX512 && g->kw <= 64) {
        col2im_plane_512(g, src, ld, dxc);
        return;
    }
#endif
    (void)path;
    col2im_plane_c(g, src, ld, dxc);
}

static void transpose(int path, const float *src, int64_t og, int64_t L, float *dst, int64_t op)
{
#if FO_X86
    if (path == FO_PATH_AVX512) {
        transpose_512(src, og, L, dst, op);
        return;
    }
#endif
    (void)path;
    transpose_c(src, og, L, dst, op);
}

static int team(int threads, int64_t jobs)
{
    if (threads < 1)
        threads = 1;
    if (jobs < threads)
        threads = jobs < 1 ? 1 : (int)jobs;
    return threads;
}

int fo_im2col(const fo_geom *g, const float *x, float *cols, int threads)
{
    const int64_t planes = g->n * g->c, L = g->ho * g->wo, kk = g->kh * g->kw;
    const int path = fo_conv_path();
    const int nt = team(threads, planes);
    (void)nt;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t e = 0; e < planes; e++)
        im2col_plane(path, g, x + e * g->h * g->w, cols + e * kk * L, L);
    return FO_OK;
}

int fo_col2im(const fo_geom *g, const float *cols, float *x, int threads)
{
    const int64_t planes = g->n * g->c, L = g->ho * g->wo, kk = g->kh * g->kw;
    const int path = fo_conv_path();
    const int nt = team(threads, planes);
    (void)nt;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t e = 0; e < planes; e++)
        col2im_plane(path, g, cols + e * kk * L, L, x + e * g->h * g->w);
    return FO_OK;
}

/* The shifted copies of x[n] for the implicit forward and weight gradient (strides 1, Wo == W):
 * copy (c, j) is pad_value for xfront elements, then x[n, c] (H W) with its columns outside
 * [j dw - left, Wo + j dw - left) set to pad_value (a read of the window of tap (i, j) reaches them
 * only by wrapping around a row), then pad_value up to xbs. Row (c, i, j) of the columns is the
 * window of copy (c, j) at xfront + (i dh - top) W + j dw - left. */
typedef struct {
    int64_t front, bs;
} fo_xcopies;

static fo_xcopies x_copies_geometry(const fo_geom *g, int64_t len)
{
    /* len: how far past a window's start the kernels read (L for dW, L rounded up to 16 for y) */
    fo_xcopies r;
    const int64_t hw = g->h * g->w;
    const int64_t shift_max = ((g->kh - 1) * g->dh - g->pt) * g->w + (g->kw - 1) * g->dw - g->pl;
    r.front = g->pt * g->w + g->pl > 0 ? g->pt * g->w + g->pl : 0;
    r.bs = round_up(r.front + (hw > len + shift_max ? hw : len + shift_max), FO_VB) + FO_VB;
    return r;
}

static void build_x_copies(const fo_geom *g, fo_xcopies xc, const float *xn, float *xsh)
{
    const float pv = g->pad_value;
    const int64_t hw = g->h * g->w;
    for (int64_t c = 0; c < g->c; c++)
        for (int64_t j = 0; j < g->kw; j++) {
            float *row = xsh + (c * g->kw + j) * xc.bs;
            const int64_t sj = j * g->dw - g->pl;
            const int64_t c0 = sj < 0 ? 0 : sj > g->w ? g->w : sj;
            const int64_t c1 = g->wo + sj < 0 ? 0 : g->wo + sj > g->w ? g->w : g->wo + sj;
            for (int64_t e = 0; e < xc.front; e++)
                row[e] = pv;
            memcpy(row + xc.front, xn + c * hw, (size_t)hw * sizeof(float));
            for (int64_t e = xc.front + hw; e < xc.bs; e++)
                row[e] = pv;
            if (c0 > 0 || c1 < g->w)
                for (int64_t r = 0; r < g->h; r++) {
                    float *d = row + xc.front + r * g->w;
                    for (int64_t q = 0; q < c0; q++)
                        d[q] = pv;
                    for (int64_t q = c1 < c0 ? c0 : c1; q < g->w; q++)
                        d[q] = pv;
                }
        }
}

static int64_t x_window(const fo_geom *g, fo_xcopies xc, int64_t c, int64_t i, int64_t j)
{
    return (c * g->kw + j) * xc.bs + xc.front + (i * g->dh - g->pt) * g->w + j * g->dw - g->pl;
}

/* ---- forward -------------------------------------------------------------------------------- */

int fo_conv_forward(const fo_geom *g, const float *x, const float *w, float *y, int threads)
{
    const int64_t L = g->ho * g->wo, Lv = round_up(L, FO_VB), Lp = cols_ld(L), kk = g->kh * g->kw;
    const int64_t G = g->groups, cg = g->c / G, og = g->o / G, kg = cg * kk, K = g->c * kk;
    const int direct = L == Lv; /* y rows can take the kernel's full vectors */
    const int path = fo_conv_path();
    const gemm_fn gemm = gemm_for(path);
    const gemmt_fn gemmt = gemmt_for(path);
    /* implicit (strides 1, Wo == W): y[n, g] = sum over p = (c, i, j) of W[o, c, i, j] times the
     * window of x copy (c, j) for tap (i, j); no columns */
    const int implicit = span_case(g);
    const fo_xcopies xc = x_copies_geometry(g, Lv);
    const int nt = team(threads, g->n);
    int failed = 0;
    (void)nt;
    if (g->n == 0)
        return FO_OK;
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        float *cols = implicit ? NULL : (float *)fo_alloc((size_t)(K * Lp) * sizeof(float));
        float *xsh = implicit ? (float *)fo_alloc((size_t)(g->c * g->kw * xc.bs) * sizeof(float)) : NULL;
        int64_t *offs = implicit ? (int64_t *)fo_alloc((size_t)(2 * kg) * sizeof(int64_t)) : NULL;
        float *ybuf = direct ? NULL : (float *)fo_alloc((size_t)(og * Lv) * sizeof(float));
        const int ok = (implicit ? xsh != NULL && offs != NULL : cols != NULL) && (direct || ybuf != NULL);
        failed |= !ok;
        if (ok && implicit)
            for (int64_t c = 0; c < cg; c++)
                for (int64_t i = 0; i < g->kh; i++)
                    for (int64_t j = 0; j < g->kw; j++) {
                        const int64_t pp = (c * g->kh + i) * g->kw + j;
                        offs[pp] = pp;                          /* W[o, c, i, j] - W[o, 0, 0, 0] */
                        offs[kg + pp] = x_window(g, xc, c, i, j); /* per group: + the group's copies */
                    }
#pragma omp for schedule(dynamic, 1)
        for (int64_t n = 0; n < g->n; n++) {
            if (!ok)
                continue;
            if (implicit)
                build_x_copies(g, xc, x + n * g->c * g->h * g->w, xsh);
            else
                for (int64_t c = 0; c < g->c; c++)
                    im2col_plane(path, g, x + (n * g->c + c) * g->h * g->w, cols + c * kk * Lp, Lp);
            for (int64_t gi = 0; gi < G; gi++) {
                float *yg = y + (n * g->o + gi * og) * L;
                float *dst = direct ? yg : ybuf;
                const int64_t ldd = direct ? L : Lv;
                if (implicit)
                    gemmt(og, Lv / FO_VB, kg, w + gi * og * kg, kg, offs, xsh + gi * cg * g->kw * xc.bs, offs + kg, dst,
                          ldd);
                else
                    gemm(og, Lv / FO_VB, kg, w + gi * og * kg, kg, 1, cols + gi * kg * Lp, Lp, dst, ldd, 0);
                if (!direct)
                    for (int64_t o = 0; o < og; o++)
                        memcpy(yg + o * L, ybuf + o * Lv, (size_t)L * sizeof(float));
            }
        }
        fo_free(cols);
        fo_free(xsh);
        fo_free(offs);
        fo_free(ybuf);
    }
    return failed ? FO_ENOMEM : FO_OK;
}

/* ---- backward ------------------------------------------------------------------------------- */

int fo_conv_backward(const fo_geom *g, const float *dout, const float *x, const float *w, float *dx, float *dw,
                     int threads)
{
    const int64_t L = g->ho * g->wo, Lv = round_up(L, FO_VB), Lp = cols_ld(L), kk = g->kh * g->kw;
    const int64_t G = g->groups, cg = g->c / G, og = g->o / G, kg = cg * kk, K = g->c * kk;
    const int64_t op = round_up(og, FO_VB);
    /* parts of at least 4 samples (2 parts from 2 samples), at most FO_DW_PARTS: a function of N only */
    const int64_t nparts = g->n < 2 ? g->n : g->n / 4 < 2 ? 2 : g->n / 4 > FO_DW_PARTS ? FO_DW_PARTS : g->n / 4;
    const int64_t part_size = G * kg * op; /* a part's dW^T: [group][k][o padded to op] */
    const int padded_dout = L != Lv;
    const int64_t cb_fit = (32768 / (int64_t)sizeof(float)) / (kk * Lp);
    const int64_t cb = cb_fit < 1 ? 1 : cb_fit > cg ? cg : cb_fit; /* channels of dcols per col2im chunk */
    const int path = fo_conv_path();
    const gemm_fn gemm = gemm_for(path);
    const gemmt_fn gemmt = gemmt_for(path);
    /* The implicit input gradient (strides 1, Wo == W): dx[n, c] (H W flattened) =
     * sum over p = (o, i, j) of W[o, c, i, j] times a window of the flattened dout[n, o] shifted by
     * (top - i dh) Wo + (left - j dw), read from a copy of dout[n, o] per j that has zeros before
     * and after it (the taps above and below the image) and zeros in the columns that only a
     * wrapped-around read reaches (the taps left and right of it): no columns, no col2im. */
    const int implicit_dx = dx != NULL && span_case(g);
    const int64_t hw = g->h * g->w, Lx = round_up(hw, FO_VB), P = og * kk;
    const int64_t shift_min = (g->pt - (g->kh - 1) * g->dh) * g->wo + g->pl - (g->kw - 1) * g->dw;
    const int64_t shift_max = g->pt * g->wo + g->pl;
    const int64_t front = shift_min < 0 ? -shift_min : 0;
    const int64_t bs = round_up(front + (L > Lx + shift_max ? L : Lx + shift_max), FO_VB) + FO_VB;
    /* The implicit weight gradient (AVX-512, strides 1, Wo == W): row (c, i, j) of the columns is the
     * window at (i dh - top) W + (j dw - left) of a copy of x[n, c] per j bordered with pad_value,
     * its columns that only a wrapped-around read reaches set to pad_value: the dW kernel reads
     * the rows through a table of offsets, no im2col. */
    const int implicit_dw = FO_X86 && path == FO_PATH_AVX512 && span_case(g);
    const fo_xcopies xc = x_copies_geometry(g, L);
    const int64_t xbs = xc.bs;
    const int nt = team(threads, nparts);
    int failed = 0;
    (void)nt;
    if (g->n == 0) {
        memset(dw, 0, (size_t)(g->o * kg) * sizeof(float));
        return FO_OK;
    }
    float *parts = (float *)fo_alloc((size_t)(nparts * part_size) * sizeof(float));
    if (parts == NULL)
        return FO_ENOMEM;
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        const int need_cols = !implicit_dw || (dx != NULL && !implicit_dx);
        float *cols = need_cols ? (float *)fo_alloc((size_t)(K * Lp) * sizeof(float)) : NULL;
        float *xsh = implicit_dw ? (float *)fo_alloc((size_t)(g->c * g->kw * xbs) * sizeof(float)) : NULL;
        int64_t *moff = implicit_dw ? (int64_t *)fo_alloc((size_t)kg * sizeof(int64_t)) : NULL;
        float *doutt = (float *)fo_alloc((size_t)(L * op) * sizeof(float));
        float *doutp = dx != NULL && !implicit_dx && padded_dout ? (float *)fo_alloc((size_t)(g->o * Lv) * sizeof(float))
                                                                 : NULL;
        float *dsh = implicit_dx ? (float *)fo_alloc((size_t)(og * g->kw * bs) * sizeof(float)) : NULL;
        float *dxbuf = implicit_dx && hw != Lx ? (float *)fo_alloc((size_t)(cg * Lx) * sizeof(float)) : NULL;
        int64_t *offs = implicit_dx ? (int64_t *)fo_alloc((size_t)(2 * P) * sizeof(int64_t)) : NULL;
        const int ok = (!need_cols || cols != NULL) && (!implicit_dw || (xsh != NULL && moff != NULL)) &&
                       doutt != NULL && (dx == NULL || implicit_dx || !padded_dout || doutp != NULL) &&
                       (!implicit_dx || (dsh != NULL && offs != NULL && (hw == Lx || dxbuf != NULL)));
        if (ok && implicit_dw)
            for (int64_t c = 0; c < cg; c++)
                for (int64_t i = 0; i < g->kh; i++)
                    for (int64_t j = 0; j < g->kw; j++)
                        moff[(c * g->kh + i) * g->kw + j] = x_window(g, xc, c, i, j);
        if (ok && implicit_dx)
            for (int64_t o = 0; o < og; o++)
                for (int64_t i = 0; i < g->kh; i++)
                    for (int64_t j = 0; j < g->kw; j++) {
                        const int64_t pp = (o * g->kh + i) * g->kw + j;
                        offs[pp] = o * kg + i * g->kw + j;
                        offs[P + pp] = (o * g->kw + j) * bs + front + (g->pt - i * g->dh) * g->wo + g->pl - j * g->dw;
                    }
        failed |= !ok;
#pragma omp for schedule(dynamic, 1)
        for (int64_t pi = 0; pi < nparts; pi++) {
            if (!ok)
                continue;
            float *part = parts + pi * part_size;
            memset(part, 0, (size_t)part_size * sizeof(float));
            const int64_t n0 = pi * g->n / nparts, n1 = (pi + 1) * g->n / nparts;
            for (int64_t n = n0; n < n1; n++) {
                const float *dn = dout + n * g->o * L;
                if (implicit_dw) {
                    build_x_copies(g, xc, x + n * g->c * hw, xsh);
                } else {
                    for (int64_t c = 0; c < g->c; c++)
                        im2col_plane(path, g, x + (n * g->c + c) * g->h * g->w, cols + c * kk * Lp, Lp);
                }
                /* dW^T part += cols doutT, group by group */
                for (int64_t gi = 0; gi < G; gi++) {
                    const float *dg = dn + gi * og * L;
                    transpose(path, dg, og, L, doutt, op);
#if FO_X86
                    if (implicit_dw) {
                        gemmr_avx512(kg, op / FO_VB, L, xsh + gi * cg * g->kw * xbs, moff, doutt, op, part + gi * kg * op,
                                     op);
                        continue;
                    }
#endif
                    gemm(kg, op / FO_VB, L, cols + gi * kg * Lp, Lp, 1, doutt, op, part + gi * kg * op, op, 1);
                }
                if (dx == NULL)
                    continue;
                if (implicit_dx) {
                    for (int64_t gi = 0; gi < G; gi++) {
                        for (int64_t o = 0; o < og; o++)
                            for (int64_t j = 0; j < g->kw; j++) {
                                float *row = dsh + (o * g->kw + j) * bs;
                                const int64_t sj = g->pl - j * g->dw; /* columns read without wrapping: [sj, W + sj) */
                                const int64_t c0 = sj < 0 ? 0 : sj > g->wo ? g->wo : sj;
                                const int64_t c1 = g->w + sj < 0 ? 0 : g->w + sj > g->wo ? g->wo : g->w + sj;
                                memset(row, 0, (size_t)front * sizeof(float));
                                memcpy(row + front, dn + (gi * og + o) * L, (size_t)L * sizeof(float));
                                memset(row + front + L, 0, (size_t)(bs - front - L) * sizeof(float));
                                if (c0 > 0 || c1 < g->wo)
                                    for (int64_t pr = 0; pr < g->ho; pr++) {
                                        float *d = row + front + pr * g->wo;
                                        for (int64_t q = 0; q < c0; q++)
                                            d[q] = 0.0f;
                                        for (int64_t q = c1 < c0 ? c0 : c1; q < g->wo; q++)
                                            d[q] = 0.0f;
                                    }
                            }
                        float *dxg = dx + (n * g->c + gi * cg) * hw;
                        gemmt(cg, Lx / FO_VB, P, w + gi * og * kg, kk, offs, dsh, offs + P, hw == Lx ? dxg : dxbuf,
                              hw == Lx ? hw : Lx);
                        if (hw != Lx)
                            for (int64_t c = 0; c < cg; c++)
                                memcpy(dxg + c * hw, dxbuf + c * Lx, (size_t)hw * sizeof(float));
                    }
                    continue;
                }
                /* dcols = Wg^T dout[n, g] (into the columns' buffer), then col2im channel by channel */
                const float *db = dn;
                int64_t ldb = L;
                if (padded_dout) {
                    for (int64_t o = 0; o < g->o; o++) {
                        memcpy(doutp + o * Lv, dn + o * L, (size_t)L * sizeof(float));
                        for (int64_t l = L; l < Lv; l++)
                            doutp[o * Lv + l] = 0.0f;
                    }
                    db = doutp;
                    ldb = Lv;
                }
                /* a few channels at a time (cb kk rows of dcols, about 32 KiB: they stay in L1 for col2im) */
                for (int64_t gi = 0; gi < G; gi++)
                    for (int64_t c0 = 0; c0 < cg; c0 += cb) {
                        const int64_t nc = cg - c0 < cb ? cg - c0 : cb;
                        gemm(nc * kk, Lv / FO_VB, og, w + gi * og * kg + c0 * kk, 1, kg, db + gi * og * ldb, ldb, cols,
                             Lp, 0);
                        for (int64_t c = 0; c < nc; c++) {
                            float *dxc = dx + (n * g->c + gi * cg + c0 + c) * g->h * g->w;
                            col2im_plane(path, g, cols + c * kk * Lp, Lp, dxc);
                        }
                    }
            }
        }
        fo_free(cols);
        fo_free(doutt);
        fo_free(doutp);
        fo_free(dsh);
        fo_free(xsh);
        fo_free(moff);
        fo_free(dxbuf);
        fo_free(offs);
    }
    if (!failed) {
        /* dW[o, k] = the parts' dW^T[k, o] added in part order */
        const int nt2 = team(threads, g->o);
        (void)nt2;
#pragma omp parallel for schedule(static) num_threads(nt2)
        for (int64_t o = 0; o < g->o; o++) {
            const int64_t gi = o / og, oo = o % og;
            float *dwo = dw + o * kg;
            for (int64_t k = 0; k < kg; k++)
                dwo[k] = parts[gi * kg * op + k * op + oo];
            for (int64_t pi = 1; pi < nparts; pi++) {
                const float *pt = parts + pi * part_size + gi * kg * op + oo;
                for (int64_t k = 0; k < kg; k++)
                    dwo[k] += pt[k * op];
            }
        }
    }
    fo_free(parts);
    return failed ? FO_ENOMEM : FO_OK;
}
