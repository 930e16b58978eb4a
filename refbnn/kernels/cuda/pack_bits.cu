// pack_bits: signs of a float array along one axis -> uint64 words (refbnn's bit layout).
//
// The axis of length `len` is packed into ceil(len / 64) words: element i goes to bit i % 64 of
// word i / 64, least significant bit first; the tail bits past len are 0 (docs/kernels.md).
// polarity 0 = "lce" (Larq Compute Engine: bit 1 = x < 0, so 0.0 packs as +1), 1 = "dabnn"
// (bit 1 = x > 0), 2 = "bitorch" (bit 1 = x >= 0) -- the same as refbnn.kernels.reference.pack_bits
// and the CPU kernels (src_cython/_bitpack.pyx, pack_bits).
//
// The input is addressed as x[o * s_outer + i * s_len + j * s_inner] (element strides, any sign)
// for o < outer, i < len, j < inner; the output is contiguous (outer, inner, words). One thread
// writes one word (grid-stride loop). Flags, OR-ed into *bad: 2 = a value is NaN or Inf, 1 = with
// `binary` set, a value is not exactly -1 or +1 (the binary products' contract).
//
// Written in the subset of CUDA that tests/cuda_emulation/ runs on the CPU.

template <typename T>
__device__ __forceinline__ void pack_words(const T *__restrict__ x, long long outer, long long len, long long inner,
                                           long long s_outer, long long s_len, long long s_inner, int polarity,
                                           int binary, unsigned long long *__restrict__ out, int *bad)
{
    const long long words = (len + 63) / 64;
    const long long total = outer * inner * words;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const long long wi = t % words;
        const long long row = t / words;           // o * inner + j
        const T *p = x + (row / inner) * s_outer + (row % inner) * s_inner + wi * 64 * s_len;
        const long long left = len - wi * 64;
        const int nbits = left < 64 ? (int)left : 64;
        unsigned long long word = 0;
        int flags = 0;
        for (int b = 0; b < nbits; b++) {
            const T v = p[b * s_len];
            const bool bit = polarity == 0 ? v < (T)0 : polarity == 1 ? v > (T)0 : v >= (T)0;
            word |= (unsigned long long)bit << b;
            if (!(v - v == (T)0))                  // NaN - NaN and Inf - Inf are NaN
                flags |= 2;
            else if (binary && v != (T)1 && v != (T)-1)
                flags |= 1;
        }
        out[t] = word;
        if (flags)
            atomicOr(bad, flags);
    }
}

extern "C" __global__ void pack_f32(const float *x, long long outer, long long len, long long inner,
                                    long long s_outer, long long s_len, long long s_inner, int polarity, int binary,
                                    unsigned long long *out, int *bad)
{
    pack_words<float>(x, outer, len, inner, s_outer, s_len, s_inner, polarity, binary, out, bad);
}

extern "C" __global__ void pack_f64(const double *x, long long outer, long long len, long long inner,
                                    long long s_outer, long long s_len, long long s_inner, int polarity, int binary,
                                    unsigned long long *out, int *bad)
{
    pack_words<double>(x, outer, len, inner, s_outer, s_len, s_inner, polarity, binary, out, bad);
}
