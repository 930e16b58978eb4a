// bgemm_tc: bgemm (bgemm.cu) on the 1-bit tensor cores: out[r, c] = k - 2 * popcount(A[r] XOR B[c])
// over the packed words, bits past k masked out (tailmask), the same int32 results bit for bit.
//
// The instruction: mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc (PTX ISA, "Warp-level
// matrix multiply-accumulate instructions: mma", and "Matrix Fragments for mma.m16n8k256",
// section 9.7.14.5.13 of the online PTX ISA,
// https://docs.nvidia.com/cuda/parallel-thread-execution/#warp-level-matrix-fragment-mma-168256).
// A warp computes D = C + sum over k of popc(A[m, k] XOR B[k, n]) for a 16 x 8 tile of int32 and
// k = 256 bits: A 16 x 256 bits (.row), B 256 x 8 bits (.col, i.e. each column of B is a row of our
// B matrix, 256 consecutive bits), C and D 16 x 8. The m16n8k256 shape needs sm_80 or later (NVRTC
// refuses it for sm_75). The fragments each lane holds (groupID = lane >> 2, tig = lane % 4; bit j
// of a .b32 register is the register's element j, so 32 consecutive k of one row):
//   A, four registers: a[0] = row groupID,     k = 32 * tig + 0..31
//                      a[1] = row groupID + 8, k = 32 * tig + 0..31
//                      a[2] = row groupID,     k = 128 + 32 * tig + 0..31
//                      a[3] = row groupID + 8, k = 128 + 32 * tig + 0..31
//   B, two registers:  b[0] = column groupID,  k = 32 * tig + 0..31
//                      b[1] = column groupID,  k = 128 + 32 * tig + 0..31
//   C, D, four int32:  c[i] = row groupID + 8 * (i >> 1), column 2 * tig + (i & 1).
// (The ISA text gives A's column for registers 0-1 as "(threadID_in_group * 32) + i for i < 64";
// its figure and the m16n8k128 layout say i & 0x1F, which is what the list above uses: the literal
// reading would give two lanes the same k and none the k = 0..31 of rows 8-15.)
// Our packed words keep element i in bit i % 64 of word i // 64, so 32-bit word j of a row (the low
// or the high half of 64-bit word j / 2) holds k = 32 j .. 32 j + 31 with k = 32 j + t in bit t:
// a register is one 32-bit word of the row. XOR then popcount summed over k does not depend on the
// order of k inside the 256 bits as long as A and B use the same order, which they do here.
// On sm_90, ptxas has no XOR form of the 1-bit MMA: it lowers .xor.popc to two .and.popc MMAs,
// popc(a & ~b) + popc(~a & b) (seen in the SASS NVRTC makes for sm_90), still exact.
//
// Tiling: a block of 4 warps (128 threads) computes a BM x BN = 64 x 32 tile of outputs (blockIdx.x:
// rows of A, blockIdx.y: rows of B); warp w computes the 32 x 16 sub-tile at rows 32 * (w >> 1),
// columns 16 * (w & 1), as 2 x 2 MMA tiles of 16 x 8 with int32 accumulators in registers. In
// steps of TC_KWORDS = 8 words (512 bits, two MMA k-steps), the block loads the step's words of
// its 64 rows of A and 32 rows of B into shared memory, masked: the last word of a row with
// tailmask, and 0 past the matrix or past the words (0 XOR 0 adds nothing, on both sides), then
// synchronizes and every warp runs its MMAs from shared memory. Outputs outside (M, N) are not
// written.
//
// Under the CPU emulation harness (tests/cuda_emulation/, which defines REFBNN_CUDA_EMULATION) the
// MMA is the harness's warp-cooperative emulation of the documented fragment layout; everything
// else is the code a GPU runs. mma_b1_probe runs one MMA on given fragments, so that a test can
// check the layout itself (on the emulation, and on a GPU against the hardware).

#define TC_BM 64
#define TC_BN 32
#define TC_KWORDS 8          // 64-bit words per row per shared-memory step: 2 MMA k-steps of 256 bits
#define TC_THREADS 128       // 4 warps

// D = C + popc(A XOR B) over one 16 x 8 x 256 tile; every lane of the warp calls it, converged.
__device__ __forceinline__ void mma_b1_m16n8k256_xor(int d[4], const unsigned a[4], const unsigned b[2],
                                                      const int c[4])
{
#ifdef REFBNN_CUDA_EMULATION
    emu::mma_m16n8k256_b1_xor_popc(d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]),
                   "r"(c[2]), "r"(c[3]));
#endif
}

// 32-bit word j of a row of 64-bit words (element order kept: the low half first)
__device__ __forceinline__ unsigned word32(const unsigned long long *row, int j)
{
    return (unsigned)(row[j >> 1] >> (32 * (j & 1)));
}

extern "C" __global__ void bgemm_tc(const unsigned long long *__restrict__ a, long long lda,
                                    const unsigned long long *__restrict__ b, long long ldb, int m, int n, int words,
                                    int k, unsigned long long tailmask, int *__restrict__ out, long long ldo)
{
    __shared__ unsigned long long a_tile[TC_BM][TC_KWORDS + 1];   // +1 word: rows start in different banks
    __shared__ unsigned long long b_tile[TC_BN][TC_KWORDS + 1];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int group = lane >> 2, tig = lane & 3;
    const int wrow = 32 * (warp >> 1), wcol = 16 * (warp & 1);   // the warp's sub-tile in the block tile
    const long long row0 = (long long)blockIdx.x * TC_BM, col0 = (long long)blockIdx.y * TC_BN;
    int acc[2][2][4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            for (int e = 0; e < 4; e++)
                acc[i][j][e] = 0;
    for (int w0 = 0; w0 < words; w0 += TC_KWORDS) {
        for (int e = tid; e < TC_BM * TC_KWORDS; e += TC_THREADS) {
            const int r = e / TC_KWORDS, w = w0 + e % TC_KWORDS;
            const unsigned long long mask = w == words - 1 ? tailmask : ~0ULL;
            a_tile[r][e % TC_KWORDS] = (row0 + r < m && w < words) ? a[(row0 + r) * lda + w] & mask : 0ULL;
        }
        for (int e = tid; e < TC_BN * TC_KWORDS; e += TC_THREADS) {
            const int r = e / TC_KWORDS, w = w0 + e % TC_KWORDS;
            const unsigned long long mask = w == words - 1 ? tailmask : ~0ULL;
            b_tile[r][e % TC_KWORDS] = (col0 + r < n && w < words) ? b[(col0 + r) * ldb + w] & mask : 0ULL;
        }
        __syncthreads();
        for (int s = 0; s < TC_KWORDS / 4; s++) {     // 256 bits = 4 words = 8 32-bit words per k-step
            const int j0 = 8 * s + tig, j1 = 8 * s + 4 + tig;
            unsigned bf[2][2];
            for (int j = 0; j < 2; j++) {
                const unsigned long long *col = b_tile[wcol + 8 * j + group];
                bf[j][0] = word32(col, j0);
                bf[j][1] = word32(col, j1);
            }
            for (int i = 0; i < 2; i++) {
                const unsigned long long *lo = a_tile[wrow + 16 * i + group], *hi = a_tile[wrow + 16 * i + group + 8];
                const unsigned af[4] = {word32(lo, j0), word32(hi, j0), word32(lo, j1), word32(hi, j1)};
                for (int j = 0; j < 2; j++)
                    mma_b1_m16n8k256_xor(acc[i][j], af, bf[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            for (int e = 0; e < 4; e++) {
                const long long r = row0 + wrow + 16 * i + group + 8 * (e >> 1);
                const long long c = col0 + wcol + 8 * j + 2 * tig + (e & 1);
                if (r < m && c < n)
                    out[r * ldo + c] = k - 2 * acc[i][j][e];
            }
}

// One MMA on given fragments, for the layout tests: lane l's registers are a_frag[4 l .. 4 l + 3],
// b_frag[2 l .. 2 l + 1], c_frag[4 l .. 4 l + 3]; it writes D to d_frag[4 l .. 4 l + 3]. Launch one
// block of 32 threads.
extern "C" __global__ void mma_b1_probe(const unsigned *__restrict__ a_frag, const unsigned *__restrict__ b_frag,
                                        const int *__restrict__ c_frag, int *__restrict__ d_frag)
{
    const int lane = threadIdx.x & 31;
    const unsigned af[4] = {a_frag[4 * lane], a_frag[4 * lane + 1], a_frag[4 * lane + 2], a_frag[4 * lane + 3]};
    const unsigned bf[2] = {b_frag[2 * lane], b_frag[2 * lane + 1]};
    const int cf[4] = {c_frag[4 * lane], c_frag[4 * lane + 1], c_frag[4 * lane + 2], c_frag[4 * lane + 3]};
    int df[4];
    mma_b1_m16n8k256_xor(df, af, bf, cf);
    for (int e = 0; e < 4; e++)
        d_frag[4 * lane + e] = df[e];
}
