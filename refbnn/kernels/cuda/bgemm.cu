// bgemm: out[r, c] = k - 2 * popcount(A[r] XOR B[c]), the +-1 dot products of the rows of A and B
// given as packed words (refbnn.kernels.reference.bgemm_bits; the CPU kernel is
// src_cython/_bitpack.pyx, bgemm). Bits past k in the last word are masked out (tailmask), so
// words packed from a longer row give the same result as on the CPU.
//
// Shared-memory tiles: a block of BGEMM_TILE x BGEMM_TILE threads computes a tile of as many
// outputs (blockIdx.x: rows of A, blockIdx.y: rows of B). In steps of BGEMM_KWORDS words, each
// thread loads one word of A's tile rows and one of B's into shared memory (0 past the matrix or
// past the words: 0 XOR 0 adds nothing), the block synchronizes, and every thread accumulates its
// output's popcounts from shared memory. Partial tiles at the edges compute with zero words and
// write only the outputs inside (M, N).
//
// Written in the subset of CUDA that tests/cuda_emulation/ runs on the CPU.

#define BGEMM_TILE 16
#define BGEMM_KWORDS 16   // == BGEMM_TILE: each thread loads one word of A and one of B per step

extern "C" __global__ void bgemm(const unsigned long long *__restrict__ a, long long lda,
                                 const unsigned long long *__restrict__ b, long long ldb, int m, int n, int words,
                                 int k, unsigned long long tailmask, int *__restrict__ out, long long ldo)
{
    __shared__ unsigned long long a_tile[BGEMM_TILE][BGEMM_KWORDS + 1];   // +1: no bank conflicts on columns
    __shared__ unsigned long long b_tile[BGEMM_TILE][BGEMM_KWORDS + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const long long row0 = (long long)blockIdx.x * BGEMM_TILE, col0 = (long long)blockIdx.y * BGEMM_TILE;
    int differ = 0;
    for (int w0 = 0; w0 < words; w0 += BGEMM_KWORDS) {
        const int w = w0 + tx;
        const unsigned long long mask = w == words - 1 ? tailmask : ~0ULL;
        a_tile[ty][tx] = (row0 + ty < m && w < words) ? a[(row0 + ty) * lda + w] & mask : 0ULL;
        b_tile[ty][tx] = (col0 + ty < n && w < words) ? b[(col0 + ty) * ldb + w] & mask : 0ULL;
        __syncthreads();
        for (int i = 0; i < BGEMM_KWORDS; i++)
            differ += __popcll(a_tile[ty][i] ^ b_tile[tx][i]);
        __syncthreads();
    }
    if (row0 + ty < m && col0 + tx < n)
        out[(row0 + ty) * ldo + col0 + tx] = k - 2 * differ;
}
