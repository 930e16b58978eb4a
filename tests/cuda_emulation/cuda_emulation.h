// CPU emulation of the subset of CUDA that refbnn's kernels (refbnn/kernels/cuda/*.cu) use.
// See README.md beside this file for the supported subset and how a launch runs.
#ifndef REFBNN_CUDA_EMULATION_H
#define REFBNN_CUDA_EMULATION_H

// Defined for the kernel sources: the few lines a GPU runs as inline PTX (bgemm_tc.cu's mma) call
// the harness's emulation of that instruction instead, under `#ifdef REFBNN_CUDA_EMULATION`.
#define REFBNN_CUDA_EMULATION 1

#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static   // one object per kernel function, shared by the block's threads
// __restrict__ is a GNU C++ keyword already

// ---- built-in variables ------------------------------------------------------------------------
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local uint3 threadIdx;   // this thread's index in its block
inline thread_local uint3 blockIdx;    // the block being run
inline dim3 blockDim, gridDim;         // set once per launch

// ---- __syncthreads: a reusable barrier over the block's threads ---------------------------------
namespace emu {
struct Barrier {
    std::mutex m;
    std::condition_variable cv;
    unsigned count = 0, arrived = 0, generation = 0;
    void wait() {
        std::unique_lock<std::mutex> lock(m);
        const unsigned gen = generation;
        if (++arrived == count) {
            arrived = 0;
            generation++;
            cv.notify_all();
        } else {
            cv.wait(lock, [&] { return generation != gen; });
        }
    }
};
inline Barrier block_barrier;
// __syncwarp: one barrier per warp of the block (warp w: linear thread ids 32w .. 32w + 31, as on a
// GPU); its count is the number of the block's threads in that warp (32, fewer in a last partial warp).
constexpr unsigned WARP_SIZE = 32, MAX_WARPS = 1024 / WARP_SIZE;
inline Barrier warp_barrier[MAX_WARPS];
inline std::mutex atomic_mutex;   // atomics: one lock for all, correct whatever the address

[[noreturn]] inline void fail(const char *what) {   // a kernel left the supported subset: stop loudly
    std::fprintf(stderr, "cuda_emulation: %s\n", what);
    std::abort();
}
// the thread's linear index in its block, as CUDA numbers threads into warps
inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
}  // namespace emu

inline void __syncthreads() { emu::block_barrier.wait(); }

// All lanes of the calling thread's warp only: the harness supports the full mask (every thread of
// the warp), the form the kernels use; another mask stops the process with a message.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu)
        emu::fail("__syncwarp: only the full mask 0xffffffff is supported");
    emu::warp_barrier[emu::linear_tid() / emu::WARP_SIZE].wait();
}

// ---- intrinsics ---------------------------------------------------------------------------------
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline float __fmul_rn(float a, float b) { return a * b; }   // built with -ffp-contract=off: one rounding each
inline float __fadd_rn(float a, float b) { return a + b; }
template <typename T> inline T atomicAdd(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicOr(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old | v; return old; }
template <typename T> inline T atomicAnd(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old & v; return old; }
template <typename T> inline T atomicMax(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old < v ? v : old; return old; }

// ---- mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc --------------------------------
// The warp's 32 lanes together compute D = C + popcount(A XOR B) over k = 256 bits for a 16 x 8
// tile, A 16 x 256 bits (row-major), B 256 x 8 bits (column-major), C and D 16 x 8 int32. Each
// lane holds four .b32 registers of A, two of B, four int32 of C and D, laid out as the PTX ISA
// documents ("Matrix Fragments for mma.m16n8k256", section 9.7.14.5.13 of the online PTX ISA;
// https://docs.nvidia.com/cuda/parallel-thread-execution/#warp-level-matrix-fragment-mma-168256),
// with groupID = lane >> 2 and threadID_in_group = lane % 4, bit j of a register its element j:
//   A: a_i (register i / 32, bit i % 32): row = groupID (+ 8 for registers 1 and 3),
//      col = threadID_in_group * 32 + (i & 31) (+ 128 for registers 2 and 3);
//   B: b_i (register i / 32, bit i % 32): row (k) = threadID_in_group * 32 + (i & 31) (+ 128 for
//      register 1), col = groupID;
//   C, D: c_i: row = groupID (+ 8 for i >= 2), col = threadID_in_group * 2 + (i & 1).
// The ISA's text writes A's column for registers 0 and 1 as "(threadID_in_group * 32) + i for
// i < 64"; read literally, register 1 would repeat columns of the next lane and leave columns 0-31
// of rows 8-15 to nobody, so this follows its figure and the m16n8k128 layout: (i & 31).
//
// Emulation: every lane writes its registers into the warp's slots of a scratch matrix, the warp
// synchronizes, each lane computes its own four D elements from the whole gathered A, B and C,
// and the warp synchronizes again before the scratch can be reused. All 32 lanes must call it with
// the warp converged (as `.sync.aligned` requires); a partial warp stops the process.
namespace emu {
struct MmaB1Tile {
    unsigned a[16][8];   // A: 16 rows x 8 32-bit words (k = 0 .. 255)
    unsigned b[8][8];    // B, by column: 8 columns x 8 32-bit words
    int c[16][8];
};
inline MmaB1Tile mma_b1_scratch[MAX_WARPS];

inline void mma_m16n8k256_b1_xor_popc(int d[4], const unsigned a[4], const unsigned b[2], const int c[4]) {
    const unsigned tid = linear_tid(), warp = tid / WARP_SIZE, lane = tid % WARP_SIZE;
    if (warp_barrier[warp].count != WARP_SIZE)
        fail("mma.sync needs a full warp of 32 threads");
    const unsigned group = lane >> 2, in_group = lane & 3;
    MmaB1Tile &t = mma_b1_scratch[warp];
    for (int r = 0; r < 4; r++)                       // A: row group (+8 for r = 1, 3), word (+4 for r = 2, 3)
        t.a[group + 8 * (r & 1)][in_group + 4 * (r >> 1)] = a[r];
    for (int r = 0; r < 2; r++)                       // B: column group, word (+4 for r = 1)
        t.b[group][in_group + 4 * r] = b[r];
    for (int i = 0; i < 4; i++)
        t.c[group + 8 * (i >> 1)][in_group * 2 + (i & 1)] = c[i];
    __syncwarp();
    int out[4];
    for (int i = 0; i < 4; i++) {
        const unsigned row = group + 8 * (i >> 1), col = in_group * 2 + (i & 1);
        int acc = t.c[row][col];
        for (int w = 0; w < 8; w++)
            acc += __builtin_popcount(t.a[row][w] ^ t.b[col][w]);
        out[i] = acc;
    }
    __syncwarp();                                     // every lane has read the scratch
    for (int i = 0; i < 4; i++)
        d[i] = out[i];
}
}  // namespace emu

// ---- launch -------------------------------------------------------------------------------------
// A launch as cuLaunchKernel takes it: grid, block, and one pointer per kernel argument. Each of
// the block's threads is an OS thread; the blocks run one after another (every thread takes part
// in every block, with a barrier between blocks), so __shared__ objects and the barrier serve one
// block at a time. sizes[i] is the byte size of argument i as the caller passed it; a mismatch
// with the kernel's parameter is refused (returns -(i + 1)) before anything runs.
namespace emu {
template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void **args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A> *>(args[I])...);
}

template <typename... A>
int launch(void (*kernel)(A...), const unsigned *grid, const unsigned *block, void **args, const long long *sizes,
           int nargs) {
    constexpr std::size_t expected[] = {sizeof(A)..., 0};
    if (nargs != (int)sizeof...(A))
        return -1000 - nargs;
    for (int i = 0; i < nargs; i++)
        if ((long long)expected[i] != sizes[i])
            return -(i + 1);
    const unsigned nthreads = block[0] * block[1] * block[2];
    if (nthreads == 0 || nthreads > 1024 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0)
        return -2000;
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    block_barrier.count = nthreads;
    for (unsigned w = 0; w < MAX_WARPS; w++) {
        const unsigned first = w * WARP_SIZE;
        warp_barrier[w].count = first >= nthreads ? 0 : (nthreads - first < WARP_SIZE ? nthreads - first : WARP_SIZE);
    }
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned t = 0; t < nthreads; t++) {
        threads.emplace_back([=] {
            threadIdx = uint3{t % block[0], t / block[0] % block[1], t / (block[0] * block[1])};
            for (unsigned z = 0; z < grid[2]; z++)
                for (unsigned y = 0; y < grid[1]; y++)
                    for (unsigned x = 0; x < grid[0]; x++) {
                        blockIdx = uint3{x, y, z};
                        call(kernel, args, std::index_sequence_for<A...>{});
                        block_barrier.wait();   // the next block starts when this one is done
                    }
        });
    }
    for (auto &th : threads)
        th.join();
    return 0;
}
}  // namespace emu

// Exports `int emu_launch_NAME(grid[3], block[3], args, sizes, nargs)` for a kernel NAME.
#define EMU_EXPORT(name)                                                                                     \
    extern "C" int emu_launch_##name(const unsigned *grid, const unsigned *block, void **args,                 \
                                     const long long *sizes, int nargs) {                                     \
        return emu::launch(name, grid, block, args, sizes, nargs);                                            \
    }

#endif
