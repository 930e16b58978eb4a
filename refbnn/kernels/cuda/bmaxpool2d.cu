// bmaxpool2d: binary max pool of packed NHWC activations, LCE polarity (bit 1 = -1).
//
// The max of +-1 values is -1 only where every value is -1, so the pooled word is the AND of the
// window's words (src_cython/_bitpack.pyx, bmaxpool2d). Taps outside the image are skipped
// (PyTorch's max pool pads with -inf; padding is at most half the kernel, so every window has a
// tap inside). x is addressed x[img * x_img + y * x_row + x * x_pix + word]; out is contiguous
// (N, Ho, Wo, cw). One thread writes one word (grid-stride loop).
//
// Written in the subset of CUDA that tests/cuda_emulation/ runs on the CPU.

extern "C" __global__ void bmaxpool2d(const unsigned long long *__restrict__ x, long long x_img, long long x_row,
                                      long long x_pix, int nimg, int h, int w, int cw, int kh, int kw, int sh,
                                      int sw, int ph, int pw, int ho, int wo, unsigned long long *__restrict__ out)
{
    const long long total = (long long)nimg * ho * wo * cw;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const int c = (int)(t % cw);
        const long long pix = t / cw;
        const int ox = (int)(pix % wo), oy = (int)(pix / wo % ho);
        const long long img = pix / ((long long)wo * ho);
        unsigned long long acc = ~0ULL;
        for (int i = 0; i < kh; i++) {
            const int iy = oy * sh - ph + i;
            if (iy < 0 || iy >= h)
                continue;
            for (int j = 0; j < kw; j++) {
                const int ix = ox * sw - pw + j;
                if (ix >= 0 && ix < w)
                    acc &= x[img * x_img + iy * x_row + ix * x_pix + c];
            }
        }
        out[t] = acc;
    }
}
