// Kernels that test the harness itself (tests/test_cuda_kernels.py), not refbnn kernels. Plain
// CUDA: the tests also compile this file with NVRTC.

// __syncwarp: warp w of the block runs w + 1 rounds; in round r each thread writes its value, the
// warp synchronizes, each thread adds the value of the next lane of its warp (wrapping inside the
// warp, which may be partial), and the warp synchronizes again before the next write. Warps run
// different numbers of rounds, so a barrier over more than one warp would deadlock or read stale
// values; out[t] = sum over rounds of the neighbour's value.
extern "C" __global__ void selftest_syncwarp(long long *__restrict__ out)
{
    __shared__ long long values[1024];
    const int t = threadIdx.x, warp = t >> 5, lane = t & 31;
    const int first = warp * 32, size = blockDim.x - first < 32 ? blockDim.x - first : 32;
    long long sum = 0;
    for (int r = 0; r <= warp; r++) {
        values[t] = 1000LL * t + r + 1000000LL * blockIdx.x;
        __syncwarp();
        sum += values[first + (lane + 1) % size];
        __syncwarp();
    }
    out[blockIdx.x * blockDim.x + t] = sum;
}
