// bconv2d: binary convolution (cross-correlation) of packed activations with packed weights.
//
// Activations: NHWC words, each group's cg = C / groups channels in its own cwg = ceil(cg / 64)
// words, addressed x[img * x_img + g * x_grp + y * x_row + x * x_pix + word]. Weights: OHWI words,
// contiguous (O, kh, kw, cwg). LCE polarity (bit 1 = -1); bits past cg in a tap's last word are
// masked out (tailmask). The reference is refbnn.kernels.reference.bconv2d_bits; the CPU kernel
// src_cython/_bitpack.pyx, bconv2d, whose three outputs these kernels reproduce:
//
//   bconv2d_int32: the dot products;
//   bconv2d_float: float(clamp(dot, lo, hi)) * mul[o] + bias[o] (each optional), rounded twice as
//                  NumPy's float32 does: __fmul_rn / __fadd_rn keep the compiler from fusing them;
//   bconv2d_bits:  packed NHWC words (N, Ho, Wo, ceil(O / 64)), bit o = (dot < thr[o]) XOR flip[o],
//                  bits past O zero.
//
// Padding (pad_mode): +1 and -1 read a tap outside the image as a word of 0 bits / of cg 1 bits,
// so the tap is an ordinary +-1 tap. 0 is true zero padding: such a tap contributes exactly 0, so
// it is left out of both the popcount and K (the dot is cg * (taps inside) - 2 * popcount over the
// taps inside). This equals the reference's K - 2 * popcount with the tap read as +1 minus the
// zero-padding correction (the tap's filter sum cg - 2 * popcount(w)), term by term.
//
// One thread per output value (bits: per output word), grid-stride loops.
// Written in the subset of CUDA that tests/cuda_emulation/ runs on the CPU.

#define BCONV_ARGS                                                                                          \
    const unsigned long long *__restrict__ x, long long x_img, long long x_grp, long long x_row,            \
        long long x_pix, const unsigned long long *__restrict__ w, int nimg, int h, int wd, int cg, int cwg, \
        int o, int og, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, int ho, int wo,       \
        int pad_mode, unsigned long long tailmask
#define BCONV_PASS x, x_img, x_grp, x_row, x_pix, w, h, wd, cg, cwg, og, kh, kw, sh, sw, ph, pw, dh, dw, pad_mode, tailmask

__device__ __forceinline__ int bconv_dot(const unsigned long long *__restrict__ x, long long x_img, long long x_grp,
                                         long long x_row, long long x_pix, const unsigned long long *__restrict__ w,
                                         int h, int wd, int cg, int cwg, int og, int kh, int kw, int sh, int sw,
                                         int ph, int pw, int dh, int dw, int pad_mode, unsigned long long tailmask,
                                         long long img, int oy, int ox, int oc)
{
    const unsigned long long *xg = x + img * x_img + (long long)(oc / og) * x_grp;
    const unsigned long long *wf = w + (long long)oc * kh * kw * cwg;
    int differ = 0, taps = 0;
    for (int i = 0; i < kh; i++) {
        const int iy = oy * sh - ph + i * dh;
        for (int j = 0; j < kw; j++) {
            const int ix = ox * sw - pw + j * dw;
            const unsigned long long *wt = wf + (long long)(i * kw + j) * cwg;
            if (iy >= 0 && iy < h && ix >= 0 && ix < wd) {
                const unsigned long long *xt = xg + iy * x_row + ix * x_pix;
                for (int c = 0; c < cwg; c++)
                    differ += __popcll((xt[c] ^ wt[c]) & (c == cwg - 1 ? tailmask : ~0ULL));
                taps++;
            } else if (pad_mode == 1) {           // x bits 0 (+1): differ where w is -1
                for (int c = 0; c < cwg; c++)
                    differ += __popcll(wt[c] & (c == cwg - 1 ? tailmask : ~0ULL));
                taps++;
            } else if (pad_mode == -1) {          // x bits 1 (-1): differ where w is +1
                for (int c = 0; c < cwg; c++)
                    differ += __popcll(~wt[c] & (c == cwg - 1 ? tailmask : ~0ULL));
                taps++;
            }                                     // pad_mode 0: the tap is 0 and adds nothing
        }
    }
    return taps * cg - 2 * differ;
}

extern "C" __global__ void bconv2d_int32(BCONV_ARGS, int *__restrict__ out, long long s_img, long long s_pix,
                                         long long s_ch)
{
    const long long total = (long long)nimg * ho * wo * o;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const int oc = (int)(t % o);
        const long long pix = t / o;
        const int ox = (int)(pix % wo), oy = (int)(pix / wo % ho);
        const long long img = pix / ((long long)wo * ho);
        out[img * s_img + (long long)(oy * wo + ox) * s_pix + oc * s_ch] = bconv_dot(BCONV_PASS, img, oy, ox, oc);
    }
}

extern "C" __global__ void bconv2d_float(BCONV_ARGS, float *__restrict__ out, long long s_img, long long s_pix,
                                         long long s_ch, const float *__restrict__ mul, int has_mul,
                                         const float *__restrict__ bias, int has_bias, int lo, int hi)
{
    const long long total = (long long)nimg * ho * wo * o;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const int oc = (int)(t % o);
        const long long pix = t / o;
        const int ox = (int)(pix % wo), oy = (int)(pix / wo % ho);
        const long long img = pix / ((long long)wo * ho);
        int d = bconv_dot(BCONV_PASS, img, oy, ox, oc);
        d = d < lo ? lo : d > hi ? hi : d;
        float y = (float)d;
        if (has_mul)
            y = __fmul_rn(y, mul[oc]);
        if (has_bias)
            y = __fadd_rn(y, bias[oc]);
        out[img * s_img + (long long)(oy * wo + ox) * s_pix + oc * s_ch] = y;
    }
}

extern "C" __global__ void bconv2d_bits(BCONV_ARGS, unsigned long long *__restrict__ out,
                                        const int *__restrict__ thr, const int *__restrict__ flip)
{
    const int ow = (o + 63) / 64;
    const long long total = (long long)nimg * ho * wo * ow;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        const int word = (int)(t % ow);
        const long long pix = t / ow;
        const int ox = (int)(pix % wo), oy = (int)(pix / wo % ho);
        const long long img = pix / ((long long)wo * ho);
        unsigned long long bits = 0;
        for (int b = 0; b < 64 && word * 64 + b < o; b++) {
            const int oc = word * 64 + b;
            const int d = bconv_dot(BCONV_PASS, img, oy, ox, oc);
            bits |= (unsigned long long)((d < thr[oc]) != (flip[oc] != 0)) << b;
        }
        out[t] = bits;
    }
}
