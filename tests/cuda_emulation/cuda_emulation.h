// CPU emulation of the subset of CUDA that refbnn's kernels (refbnn/kernels/cuda/*.cu) use.
// See README.md beside this file for the supported subset and how a launch runs.
#ifndef REFBNN_CUDA_EMULATION_H
#define REFBNN_CUDA_EMULATION_H

#include <condition_variable>
#include <cstddef>
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
inline std::mutex atomic_mutex;   // atomics: one lock for all, correct whatever the address
}  // namespace emu

inline void __syncthreads() { emu::block_barrier.wait(); }

// ---- intrinsics ---------------------------------------------------------------------------------
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline float __fmul_rn(float a, float b) { return a * b; }   // built with -ffp-contract=off: one rounding each
inline float __fadd_rn(float a, float b) { return a + b; }
template <typename T> inline T atomicAdd(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicOr(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old | v; return old; }
template <typename T> inline T atomicAnd(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old & v; return old; }
template <typename T> inline T atomicMax(T *p, T v) { std::lock_guard<std::mutex> g(emu::atomic_mutex); T old = *p; *p = old < v ? v : old; return old; }

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
