"""The NEON path (src_cython/bk_neon.c), cross-compiled for AArch64 and run under qemu-aarch64.

tests/neon/driver.c is built with ``aarch64-linux-gnu-gcc`` together with bk_common.c,
bk_scalar.c and bk_neon.c (no Python on the AArch64 side), with the extension's flags (-O3
-ffp-contract=off). It reads a batch of jobs from a binary file, sets each up as
src_cython/_bitpack.pyx does, runs it on one path (``neon``, then ``scalar``: the portable code
built for AArch64) and writes the raw outputs. Every output is compared bit for bit with the NumPy
reference (refbnn.kernels.reference: ``bgemm_bits``, ``bconv2d_bits``, ``pack_bits``,
``unpack_bits``), never with another path.

The inputs carry garbage in the tail bits past K (the kernels must mask them), the shapes stress
the tiles' edges (K not a multiple of 64, one row or column, partial 6-row tiles and 32-column
panels, K long enough for the NEON 16-bit accumulators to be folded several times at their
maximum), and the convolutions cover stride, dilation, zero and +-1 padding, groups, and every
output (int32 and float in NHWC and NCHW, bit-packed with thresholds and flips).

``pytest -m neon_qemu`` runs only these (the last test, on the host build's path list, needs no
qemu). Without ``aarch64-linux-gnu-gcc`` or ``qemu-aarch64``
they are skipped (Debian: ``apt-get install gcc-aarch64-linux-gnu qemu-user``).
``REFBNN_NEON_QEMU_CASES`` (default 120) sets how many random convolutions a run draws (and a
quarter as many random GEMMs), ``REFBNN_NEON_QEMU_SEED`` their seed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from refbnn.kernels import reference as ref
from refbnn.kernels.geometry import conv_output_size

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src_cython"
DRIVER = ROOT / "tests" / "neon" / "driver.c"
CC = "aarch64-linux-gnu-gcc"
QEMU = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static") or "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"         # Debian's AArch64 libc (qemu -L), for a dynamic driver
CFLAGS = ["-O3", "-ffp-contract=off", "-Wall"]   # as setup.py builds the extension
PATHS = ("neon", "scalar")
OP_GEMM, OP_CONV, OP_PACK, OP_MAXPOOL, OP_PEAK = 1, 2, 3, 4, 5
OUT_INT32, OUT_FLOAT, OUT_BITS = 0, 1, 2
NHDR = 32
I32_MIN, I32_MAX = -2 ** 31, 2 ** 31 - 1
N_RANDOM = int(os.environ.get("REFBNN_NEON_QEMU_CASES", "120"))
SEED = int(os.environ.get("REFBNN_NEON_QEMU_SEED", "1305"))

_missing = [tool for tool in (CC, QEMU) if shutil.which(tool) is None]      # QEMU: a full path when found
needs_qemu = pytest.mark.skipif(bool(_missing), reason=f"{' and '.join(_missing)} not found: the NEON path is "
                                "tested cross-compiled under qemu (Debian: apt-get install gcc-aarch64-linux-gnu "
                                "qemu-user)")


# ---- the driver --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver built for AArch64: static when the cross toolchain has a static libc, else dynamic
    (run with qemu -L SYSROOT). Skipped when the compiler has no AArch64 C library (a kernel-only
    cross compiler); a toolchain that builds C programs but not the driver is a failure."""
    tmp = tmp_path_factory.mktemp("neon")
    hello = tmp / "hello.c"
    hello.write_text("#include <stdio.h>\n#include <stdlib.h>\nint main(void) { puts(\"ok\"); return 0; }\n")
    res = subprocess.run([CC, str(hello), "-o", str(tmp / "hello")], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"{CC} cannot build a C program for AArch64 (no C library for it?): {res.stderr[-300:]} "
                    "(Debian: apt-get install gcc-aarch64-linux-gnu, which brings libc6-dev-arm64-cross)")
    exe = tmp / "driver"
    sources = [str(DRIVER)] + [str(SRC / f) for f in ("bk_common.c", "bk_scalar.c", "bk_neon.c")]
    base = [CC, *CFLAGS, f"-I{SRC}", *sources, "-o", str(exe)]
    res = subprocess.run(base[:1] + ["-static"] + base[1:], capture_output=True, text=True)
    if res.returncode != 0:
        res = subprocess.run(base, capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"{CC} could not build the NEON driver:\n{res.stderr}")
    return exe


def run_driver(exe, path, cases, tmp_path):
    """Run ``cases`` (a list of (header, payload bytes)) on ``path``; returns their outputs (bytes)."""
    src, dst = tmp_path / f"in-{path}.bin", tmp_path / f"out-{path}.bin"
    with open(src, "wb") as f:
        f.write(b"RBNNDRV1" + np.int64(len(cases)).tobytes())
        for hdr, payload in cases:
            h = np.zeros(NHDR, np.int64)
            h[:len(hdr)] = hdr
            f.write(h.tobytes() + payload)
    res = subprocess.run([QEMU, "-L", SYSROOT, str(exe), path, str(src), str(dst)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"driver on {path} exited with {res.returncode}: {res.stderr}"
    data, outs, pos = dst.read_bytes(), [], 0
    for _ in cases:
        n = int(np.frombuffer(data, np.int64, 1, pos)[0])
        outs.append(data[pos + 8:pos + 8 + n])
        pos += 8 + n
    assert pos == len(data), f"the driver wrote {len(data) - pos} bytes past the outputs of the {len(cases)} cases"
    return outs


def payload(*arrays):
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)


# ---- inputs ------------------------------------------------------------------------------------

def signs(rng, *shape, p_minus=0.5):
    return np.where(rng.random(shape) < p_minus, -1.0, 1.0).astype(np.float32)


def dirty(rng, words, bits):
    """``words`` with random bits past ``bits`` in the last word of the last axis (which the kernels
    must ignore)."""
    out = words.copy()
    if bits % 64:
        junk = rng.integers(0, 2 ** 63, out.shape[:-1], dtype=np.uint64) << np.uint64(1)
        out[..., -1] |= junk & ~np.uint64((1 << (bits % 64)) - 1)
    return out


def dirty_groups(rng, words, bits, groups):
    """``dirty`` for each group's words (the last axis holds ``groups`` runs of ceil(bits/64))."""
    wg = words.shape[-1] // groups
    return np.concatenate([dirty(rng, words[..., g * wg:(g + 1) * wg], bits) for g in range(groups)], axis=-1)


# ---- bgemm ---------------------------------------------------------------------------------------

def gemm_case(rng, m, n, k, mode=0, chunk=6, pad_a=0, pad_b=0, p_a=0.5, p_b=0.5):
    """(case, expected int32 (m, n)): A (m, k) and B (n, k) signs; rows of A and B stored with
    ``pad_a``/``pad_b`` extra words (strided rows); mode 0: rows in chunks of ``chunk`` (as threads
    split tall GEMMs), 1: ``chunk`` column groups through bk_gemm_columns."""
    a, b = signs(rng, m, k, p_minus=p_a), signs(rng, n, k, p_minus=p_b)
    aw, bw = ref.pack_bits(a), ref.pack_bits(b)
    expected = ref.bgemm_bits(aw, bw, k).astype(np.int32)
    kw = aw.shape[1]
    sa = rng.integers(0, 2 ** 63, (m, kw + pad_a), dtype=np.uint64)
    sa[:, :kw] = dirty(rng, aw, k)
    sb = rng.integers(0, 2 ** 63, (n, kw + pad_b), dtype=np.uint64)
    sb[:, :kw] = dirty(rng, bw, k)
    return ([OP_GEMM, m, n, k, kw + pad_a, kw + pad_b, mode, chunk], payload(sa, sb)), expected


def gemm_cases():
    rng = np.random.default_rng(SEED + 8)
    cases = [gemm_case(rng, 1, 1, 1), gemm_case(rng, 1, 32, 64), gemm_case(rng, 6, 1, 65),
             gemm_case(rng, 7, 33, 63), gemm_case(rng, 13, 65, 130, pad_a=2, pad_b=1),
             gemm_case(rng, 20, 70, 200, mode=1, chunk=2), gemm_case(rng, 12, 96, 129, mode=1, chunk=3),
             gemm_case(rng, 25, 31, 1000, chunk=12),
             # every bit differs (popcount = K) and none does: the byte counts at their maximum, and
             # K long enough (> 2 * 4095 words) that the 16-bit accumulators are folded twice at their limit
             gemm_case(rng, 3, 34, 64 * 8300 - 5, p_a=1.0, p_b=0.0),
             gemm_case(rng, 2, 33, 64 * 4096 + 64, p_a=1.0, p_b=1.0),
             gemm_case(rng, 3, 5, 64 * 4095 + 1)]
    for _ in range(max(1, N_RANDOM // 4)):
        m, n, k = int(rng.integers(1, 40)), int(rng.integers(1, 100)), int(rng.integers(1, 700))
        cases.append(gemm_case(rng, m, n, k, mode=int(rng.integers(0, 2)), chunk=int(rng.integers(1, 4)) * 6,
                               pad_a=int(rng.integers(0, 3)), pad_b=int(rng.integers(0, 3))))
    return cases


# ---- bconv2d -------------------------------------------------------------------------------------

def conv_case(rng, nimg, h, w, c, o, k, stride=1, padding=0, dilation=1, groups=1, pad_value=0.0,
              output="int32", layout="nhwc", chunk=6):
    """(case, expected bytes) of one bconv2d: the reference ``bconv2d_bits`` dot products, then the
    output transform in NumPy (float32 arithmetic, as the NumPy layers; or the threshold bits)."""
    kh, kw = k if isinstance(k, tuple) else (k, k)
    sh, sw = stride if isinstance(stride, tuple) else (stride, stride)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    dh, dw = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    assert c % groups == 0 and o % groups == 0, "channels and output channels must divide into the groups"
    cg = c // groups
    x = signs(rng, nimg, h, w, c)
    wt = signs(rng, o, kh, kw, cg)
    xw = np.concatenate([ref.pack_bits(x[..., g * cg:(g + 1) * cg]) for g in range(groups)], axis=-1)
    ww = ref.pack_bits(wt)
    dot = ref.bconv2d_bits(xw, ww, c, (sh, sw), (ph, pw), (dh, dw), groups, pad_value)   # (N, Ho, Wo, O)
    kbits = kh * kw * cg
    lo, hi, extra, has_mul, has_bias = I32_MIN, I32_MAX, b"", 0, 0
    if output == "int32":
        expected = dot.astype(np.int32)
    elif output == "float":
        if rng.random() < 0.7:
            lo, hi = sorted(int(v) for v in rng.integers(-kbits - 2, kbits + 3, 2))
        y = np.clip(dot, lo, hi).astype(np.float32)
        has_mul, has_bias = int(rng.random() < 0.8), int(rng.random() < 0.8)
        mul = (rng.standard_normal(o) * 0.37).astype(np.float32)
        bias = (rng.standard_normal(o) * 3.1).astype(np.float32)
        if has_mul:
            y = y * mul                     # float32 * float32: rounded once here ...
            extra += mul.tobytes()
        if has_bias:
            y = y + bias                    # ... and once here (no fused multiply-add)
            extra += bias.tobytes()
        expected = y
    else:
        thr = rng.integers(-kbits - 2, kbits + 3, o).astype(np.int64)
        thr[rng.random(o) < 0.1] = I32_MIN
        thr[rng.random(o) < 0.1] = I32_MAX
        flip = rng.random(o) < 0.5
        bits = (dot < thr) ^ flip                                           # (N, Ho, Wo, O)
        expected = ref.pack_bits(np.where(bits, -1.0, 1.0))                 # bit o of word o // 64
        extra = thr.astype(np.int32).tobytes() + flip.astype(np.uint8).tobytes()
    if output != "bits" and layout == "nchw":
        expected = expected.transpose(0, 3, 1, 2)
    xd = dirty_groups(rng, xw, cg, groups)
    wd = dirty(rng, ww, cg)
    mode = {"int32": OUT_INT32, "float": OUT_FLOAT, "bits": OUT_BITS}[output]
    hdr = [OP_CONV, nimg, h, w, c, o, kh, kw, sh, sw, ph, pw, dh, dw, groups, int(pad_value), mode,
           int(layout == "nchw"), has_mul, has_bias, lo, hi, chunk]
    return (hdr, payload(xd, wd) + extra), np.ascontiguousarray(expected)


def conv_cases():
    rng = np.random.default_rng(SEED)
    cases = [
        conv_case(rng, 1, 1, 1, 1, 1, 1),                                   # one pixel, one channel
        conv_case(rng, 2, 5, 6, 70, 33, 3, padding=1),                       # zero padding correction
        conv_case(rng, 1, 6, 5, 64, 32, 3, padding=1, pad_value=-1.0, layout="nchw"),
        conv_case(rng, 1, 7, 7, 65, 40, 3, stride=2, padding=2, pad_value=1.0),
        conv_case(rng, 2, 8, 9, 96, 66, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=3,
                  output="float"),
        conv_case(rng, 1, 6, 6, 130, 65, 3, padding=1, output="bits"),      # two output words
        conv_case(rng, 1, 5, 5, 128, 256, 3, padding=1, groups=2, output="bits"),   # 128 channels per group
        conv_case(rng, 1, 4, 5, 20, 70, 1, output="float", layout="nchw", chunk=12),
        conv_case(rng, 1, 9, 9, 200, 16, 5, stride=3, padding=2, dilation=2, groups=4, pad_value=-1.0),
    ]
    for _ in range(N_RANDOM):
        groups = int(rng.choice([1, 1, 2, 3]))
        output = str(rng.choice(["int32", "float", "bits"]))
        o = groups * (64 * int(rng.integers(1, 3)) if output == "bits" and groups > 1 else int(rng.integers(1, 50)))
        c = groups * int(rng.integers(1, 150))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        ph, pw = int(rng.integers(0, kh + 1)), int(rng.integers(0, kw + 1))
        h = int(rng.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 10))
        w = int(rng.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 10))
        assert conv_output_size(h, kh, 1, ph, dh) >= 1 and conv_output_size(w, kw, 1, pw, dw) >= 1
        cases.append(conv_case(rng, int(rng.integers(1, 3)), h, w, c, o, (kh, kw),
                               stride=(int(rng.integers(1, 4)), int(rng.integers(1, 3))), padding=(ph, pw),
                               dilation=(dh, dw), groups=groups, pad_value=float(rng.choice([0.0, 1.0, -1.0])),
                               output=output, layout=str(rng.choice(["nhwc", "nchw"])),
                               chunk=6 * int(rng.integers(1, 4))))
    return cases


# ---- packing and max pool (portable C, built for AArch64) ---------------------------------------

def pack_case(rng, outer, length, inner, dtype, polarity, channel_first):
    """x viewed as (outer, length, inner): the reference packs along ``length``. ``channel_first``:
    stored (outer, length, inner) (inner > 1 reads across the packed axis), else (outer, inner,
    length) (unit stride along the packed axis)."""
    vals = np.array([-1.0, 1.0, 0.0, -0.0, 2.5, -3.0, 1e-30], dtype)
    x = rng.choice(vals, (outer, length, inner), p=[0.4, 0.4, 0.05, 0.05, 0.04, 0.04, 0.02]).astype(dtype)
    store = x if channel_first else np.ascontiguousarray(x.transpose(0, 2, 1))
    s_outer, s_len, s_inner = (length * inner, inner, 1) if channel_first else (length * inner, 1, length)
    expected = ref.pack_bits(x, axis=1, polarity=polarity)                 # (outer, inner, words)
    other = int(np.count_nonzero((x != 1) & (x != -1)))
    pol = {"lce": 0, "dabnn": 1, "bitorch": 2}[polarity]
    hdr = [OP_PACK, np.dtype(dtype).itemsize, outer, length, inner, s_outer, s_len, s_inner, pol, x.size]
    return (hdr, store.tobytes()), np.int64(other).tobytes() + expected.tobytes()


def maxpool_case(rng, nimg, h, w, cw, k, stride, padding):
    """The reference: unpack to +-1, the float max over each window's taps inside the image, pack."""
    xw = rng.integers(0, 2 ** 63, (nimg, h, w, cw), dtype=np.uint64) | (
        rng.integers(0, 2, (nimg, h, w, cw), dtype=np.uint64) << np.uint64(63))
    x = ref.unpack_bits(xw, 64 * cw)                                        # (N, H, W, C) +-1
    ho, wo = conv_output_size(h, k, stride, padding, 1), conv_output_size(w, k, stride, padding, 1)
    xp = np.full((nimg, h + 2 * padding, w + 2 * padding, 64 * cw), -np.inf, np.float32)
    xp[:, padding:padding + h, padding:padding + w] = x
    y = np.full((nimg, ho, wo, 64 * cw), -np.inf, np.float32)
    for i in range(k):
        for j in range(k):
            y = np.maximum(y, xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride])
    return ([OP_MAXPOOL, nimg, h, w, cw, k, k, stride, stride, padding, padding], xw.tobytes()), \
        ref.pack_bits(y).tobytes()


# ---- the tests ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results(driver, tmp_path_factory):
    """Every case run once per path (one qemu process per path): {path: [outputs]}, with the
    expected outputs."""
    cases = gemm_cases() + conv_cases()
    tmp = tmp_path_factory.mktemp("neon-io")
    return {p: run_driver(driver, p, [c for c, _ in cases], tmp) for p in PATHS}, cases


def _check(got, expected, what):
    """``got`` (the driver's bytes) equals ``expected`` bit for bit (floats compared by their bits)."""
    exp = np.ascontiguousarray(expected)
    assert len(got) == exp.nbytes, f"{what}: {len(got)} bytes, expected {exp.nbytes}"
    if got != exp.tobytes():
        a = np.frombuffer(got, np.uint8).reshape(-1, exp.itemsize)
        b = exp.reshape(-1).view(np.uint8).reshape(-1, exp.itemsize)
        bad = np.flatnonzero((a != b).any(axis=1))
        first = np.unravel_index(bad[0], exp.shape)
        pytest.fail(f"{what}: {bad.size} of {exp.size} elements differ from the reference; the first at "
                    f"{tuple(int(i) for i in first)}: {np.frombuffer(got, exp.dtype)[bad[0]]!r}, "
                    f"expected {exp.reshape(-1)[bad[0]]!r}")


@needs_qemu
@pytest.mark.neon_qemu
@pytest.mark.parametrize("path", PATHS)
def test_bgemm_matches_reference(results, path):
    outs, cases = results
    n = 0
    for i, ((hdr, _), exp) in enumerate(cases):
        if hdr[0] == OP_GEMM:
            _check(outs[path][i], exp, f"{path} bgemm case {i} (m, n, k = {hdr[1:4]}, mode {hdr[6]})")
            n += 1
    assert n == len(gemm_cases())


@needs_qemu
@pytest.mark.neon_qemu
@pytest.mark.parametrize("path", PATHS)
def test_bconv2d_matches_reference(results, path):
    outs, cases = results
    seen = set()
    for i, ((hdr, _), exp) in enumerate(cases):
        if hdr[0] != OP_CONV:
            continue
        seen.add((hdr[16], hdr[17], hdr[15]))
        _check(outs[path][i], exp, f"{path} bconv2d case {i} (header {hdr})")
    # every output mode, layout and padding value was drawn
    assert {(m, lay) for m, lay, _ in seen} >= {(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)}
    assert {pad for _, _, pad in seen} == {-1, 0, 1}


@needs_qemu
@pytest.mark.neon_qemu
@pytest.mark.parametrize("path", PATHS)
def test_pack_and_maxpool_match_reference(driver, tmp_path, path):
    rng = np.random.default_rng(77)
    cases = [pack_case(rng, outer, length, inner, dtype, pol, cf)
             for outer, length, inner in ((1, 1, 1), (3, 130, 1), (2, 64, 5), (2, 200, 3), (1, 63, 70))
             for dtype in (np.float32, np.float64) for pol in ("lce", "dabnn", "bitorch") for cf in (True, False)]
    cases += [maxpool_case(rng, 2, 5, 6, 2, 2, 2, 0), maxpool_case(rng, 1, 7, 7, 1, 3, 2, 1),
              maxpool_case(rng, 1, 1, 1, 3, 1, 1, 0), maxpool_case(rng, 2, 6, 5, 1, 3, 1, 1)]
    outs = run_driver(driver, path, [c for c, _ in cases], tmp_path)
    for i, ((hdr, _), exp) in enumerate(cases):
        assert outs[i] == exp, f"{path}: {'pack' if hdr[0] == OP_PACK else 'maxpool'} case {i} (header {hdr}) differs"


@needs_qemu
@pytest.mark.neon_qemu
def test_peak_loops_run(driver, tmp_path):
    """The peak microbenchmark's loops run under qemu and count what they do: 12 accumulators of
    128 bits (NEON) or 64 bits (scalar), 2 operations per bit, per round."""
    iters = 1000
    for path, width in (("neon", 128), ("scalar", 64)):
        (out,) = run_driver(driver, path, [([OP_PEAK, iters], b"")], tmp_path)
        assert np.frombuffer(out, np.float64)[0] == iters * 12 * width * 2


@needs_qemu
@pytest.mark.neon_qemu
def test_the_driver_refuses_a_path_not_built_for_aarch64(driver, tmp_path):
    src = tmp_path / "empty.bin"
    src.write_bytes(b"RBNNDRV1" + np.int64(0).tobytes())
    res = subprocess.run([QEMU, "-L", SYSROOT, str(driver), "avx2", str(src), str(tmp_path / "o.bin")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "not compiled" in res.stderr


# ---- the host build ------------------------------------------------------------------------------

def test_host_build_reports_the_neon_path():
    """On x86-64 the path is named but not compiled (a clear error); on AArch64 it is compiled and
    supported (NEON is baseline there)."""
    try:
        from refbnn.kernels import _bitpack as K  # noqa: PLC0415 - needs the compiled extension
    except ImportError as exc:
        pytest.skip(f"the kernels are not built ({exc})")
    if os.uname().machine in ("aarch64", "arm64"):
        assert "neon" in K.compiled_paths() and "neon" in K.supported_paths()
    else:
        assert "neon" not in K.compiled_paths()
        with pytest.raises(ValueError, match=r"'neon' is not compiled into this build \(AArch64 only\)"):
            K.resolve_path("neon")
