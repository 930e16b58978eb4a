"""The GPU kernels (refbnn/kernels/cuda/*.cu), checked without a GPU in two ways:

- ``nvrtc``: every source compiles through NVRTC (the compiler CuPy uses) for sm_80 and sm_90 and
  defines the kernels the launcher calls; NVRTC needs no GPU and no driver;
- ``gpu_emulated``: the same sources, compiled as C++ under tests/cuda_emulation/ and run on the
  CPU through the same launch code the CuPy backend uses (refbnn.kernels.cuda.Kernels), equal bit
  for bit to the NumPy reference (refbnn.kernels.reference).

Tests marked ``gpu`` run the CuPy backend on a real device and are skipped where there is none.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from refbnn.kernels import cuda
from refbnn.kernels import reference as ref
from refbnn.kernels.geometry import conv2d_geometry, conv_output_size

SOURCE_ITEMS = sorted(cuda.SOURCES.items())


# ---- 1. NVRTC ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415 - optional: the cupy-cuda13x wheel
    except ImportError as exc:
        pytest.skip(f"CuPy's NVRTC binding is not installed ({exc}): pip install cupy-cuda13x "
                    "'cuda-toolkit[nvrtc]==13.*'")
    try:
        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - the NVRTC library itself does not load
        pytest.skip(f"NVRTC does not load ({type(exc).__name__}: {exc}): pip install 'cuda-toolkit[nvrtc]==13.*'")
    return nvrtc


def nvrtc_compile(nvrtc, source, name, arch):
    """(ptx, cubin) of ``source`` for ``arch``; pytest.fail with NVRTC's log when it does not compile."""
    prog = nvrtc.createProgram(source, name, [], [])
    try:
        nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", *cuda.NVRTC_OPTIONS])
    except nvrtc.NVRTCError as exc:
        pytest.fail(f"NVRTC could not compile {name} for {arch} ({exc}):\n{nvrtc.getProgramLog(prog)}")
    return nvrtc.getPTX(prog), nvrtc.getCUBIN(prog)


@pytest.mark.nvrtc
@pytest.mark.parametrize("arch", cuda.ARCHS)
@pytest.mark.parametrize("name,kernels", SOURCE_ITEMS, ids=[n for n, _ in SOURCE_ITEMS])
def test_source_compiles_with_nvrtc(nvrtc, name, kernels, arch):
    ptx, cubin = nvrtc_compile(nvrtc, cuda.read_source(name), name, arch)
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.decode() if isinstance(ptx, bytes) else ptx))
    assert entries == set(kernels), f"{name} defines {sorted(entries)}, the launcher calls {sorted(kernels)}"
    assert len(cubin) > 0


@pytest.mark.nvrtc
@pytest.mark.parametrize("arch", cuda.ARCHS)
def test_float_output_is_not_fused_into_fma(nvrtc, arch):
    """bconv2d_float rounds the multiply and the add separately, as NumPy's float32 does (the CPU
    emulation cannot see a contraction NVRTC would make: its g++ build has -ffp-contract=off)."""
    ptx, _ = nvrtc_compile(nvrtc, cuda.read_source("bconv2d.cu"), "bconv2d.cu", arch)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx
    assert not re.search(r"\bfma\.", ptx)


@pytest.mark.nvrtc
def test_nvrtc_compile_error_fails_with_the_log(nvrtc):
    """The compile test's failure path: a broken kernel fails, and the message carries NVRTC's log."""
    broken = 'extern "C" __global__ void broken(int *out) { out[0] = undeclared_name; }'
    with pytest.raises(pytest.fail.Exception, match="undeclared_name"):
        nvrtc_compile(nvrtc, broken, "broken.cu", cuda.ARCHS[0])


MMA_B1_XOR = "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc"


@pytest.mark.nvrtc
@pytest.mark.parametrize("arch", cuda.ARCHS)
def test_bgemm_tc_compiles_the_1bit_mma(nvrtc, arch):
    """bgemm_tc.cu's PTX has the inline m16n8k256 .b1 XOR MMA (not the CPU emulation of it) in both
    kernels, and bgemm_tc keeps its accumulators in registers (no local memory)."""
    ptx, _ = nvrtc_compile(nvrtc, cuda.read_source("bgemm_tc.cu"), "bgemm_tc.cu", arch)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    bodies = dict(re.findall(r"\.entry\s+(\w+)(.*?)(?=\.entry|\Z)", ptx, re.S))
    assert set(bodies) == {"bgemm_tc", "mma_b1_probe"}
    assert all(MMA_B1_XOR in body for body in bodies.values())
    assert "emu" not in re.sub(r"//.*", "", ptx)
    assert ".local" not in bodies["bgemm_tc"]


@pytest.mark.nvrtc
def test_bgemm_tc_needs_sm_80(nvrtc):
    """The m16n8k256 shape does not exist before sm_80: NVRTC refuses it for sm_75, which is why the
    CuPy backend uses bgemm_tc only from compute capability 8.0 (cuda.TC_MIN_CC)."""
    assert cuda.TC_MIN_CC == (8, 0)
    prog = nvrtc.createProgram(cuda.read_source("bgemm_tc.cu"), "bgemm_tc.cu", [], [])
    with pytest.raises(nvrtc.NVRTCError):
        nvrtc.compileProgram(prog, ["--gpu-architecture=sm_75", *cuda.NVRTC_OPTIONS])
    assert "m16n8k256" in nvrtc.getProgramLog(prog) and "sm_80" in nvrtc.getProgramLog(prog)


@pytest.mark.nvrtc
@pytest.mark.parametrize("arch", cuda.ARCHS)
def test_harness_selftest_kernels_are_cuda(nvrtc, arch):
    """The harness's own test kernels (tests/cuda_emulation/selftest.cu) are CUDA NVRTC compiles."""
    from cuda_emulation import emulator  # noqa: PLC0415 - tests/cuda_emulation/

    for name, kernels in emulator.SELFTEST_SOURCES.items():
        ptx, _ = nvrtc_compile(nvrtc, (emulator.HERE / name).read_text(), name, arch)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == set(kernels)


# ---- 2. the emulation harness -----------------------------------------------------------------

@pytest.fixture(scope="session")
def emulated(cuda_emulation_library):
    """refbnn.kernels.cuda.Kernels on NumPy arrays, running the .cu sources on the CPU."""
    from cuda_emulation import emulator  # noqa: PLC0415 - tests/cuda_emulation/

    return cuda.Kernels(np, emulator.EmulatedLaunch(cuda_emulation_library))


def signs(rng, shape, dtype=np.float32):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)


@pytest.mark.gpu_emulated
def test_sources_define_exactly_the_listed_kernels():
    for name, kernels in SOURCE_ITEMS:
        found = re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)', cuda.read_source(name))
        assert sorted(found) == sorted(kernels), name


@pytest.mark.gpu_emulated
def test_harness_refuses_an_argument_of_the_wrong_size(emulated):
    """The harness checks each argument's C size against the kernel's parameter (a launch that
    would read garbage on the GPU fails here)."""
    x = np.ones((2, 3), np.float32)
    out = np.empty((2, 1), np.uint64)
    bad = np.zeros(1, np.int32)
    args = [x, np.int64(2), np.int64(3), np.int64(1), np.int64(3), np.int64(1), np.int64(1), np.int32(0),
            np.int32(0), out, bad]
    emulated._launch("pack_f32", (1, 1, 1), (32, 1, 1), tuple(args))
    assert out[:, 0].tolist() == [0, 0]
    args[1] = np.int32(2)
    with pytest.raises(RuntimeError, match="argument 1 has the wrong size"):
        emulated._launch("pack_f32", (1, 1, 1), (32, 1, 1), tuple(args))


@pytest.mark.gpu_emulated
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple) | st.sampled_from([(3, 130), (1, 64), (2, 65, 2)]),
       axis=st.integers(-3, 2), polarity=st.sampled_from(ref.POLARITIES), dtype=st.sampled_from([np.float32, np.float64]),
       transpose=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_pack_bits_equals_reference(emulated, shape, axis, polarity, dtype, transpose, seed):
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0], dtype), size=shape)
    if transpose:
        x = x.T                                      # non-contiguous strides
    if not -x.ndim <= axis < x.ndim:
        axis = -1
    expected = ref.pack_bits(x, axis, polarity)
    got = emulated.pack_bits(x, axis, polarity)
    assert got.dtype == np.uint64 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.gpu_emulated
def test_pack_bits_refuses_nan_and_non_binary_values(emulated):
    x = np.ones((2, 70), np.float32)
    x[1, 66] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        emulated.pack_bits(x)
    x[1, 66] = 0.5
    assert emulated.pack_bits(x).shape == (2, 2)
    with pytest.raises(ValueError, match=r"exactly \+-1"):
        emulated.pack_bits(x, binary=True)


@pytest.mark.gpu_emulated
@given(m=st.integers(0, 40), n=st.integers(0, 40), k=st.integers(1, 200), dirty_tail=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
@example(m=1, n=40, k=65, dirty_tail=True, seed=0)         # one row, a partial tile of columns
@example(m=33, n=1, k=64, dirty_tail=False, seed=1)        # one column, K a whole word
@example(m=0, n=5, k=3, dirty_tail=False, seed=2)          # no rows
def test_bgemm_equals_reference(emulated, m, n, k, dirty_tail, seed):
    """Partial 16x16 tiles, one row / column, empty operands, K not a multiple of 64 and more than
    one shared-memory step of words; tail bits past k are ignored as on the CPU."""
    rng = np.random.default_rng(seed)
    a, b = signs(rng, (m, k)), signs(rng, (n, k))
    aw, bw = ref.pack_bits(a, 1), ref.pack_bits(b, 1)
    expected = ref.bgemm_bits(aw, bw, k)
    if dirty_tail and k % 64:
        aw[:, -1] |= np.uint64(1) << np.uint64(63)
        bw[:, -1] |= ~np.uint64(cuda.tailmask(k)) & np.uint64(0xF0F0F0F0F0F0F0F0)
    got = emulated.bgemm(aw, bw, k)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, (a @ b.T).astype(np.int64))


@pytest.mark.gpu_emulated
def test_bgemm_many_words_and_row_strides(emulated):
    """K over several shared-memory steps (40 words), A a strided view of a wider array."""
    rng = np.random.default_rng(1)
    k = 40 * 64 - 5
    a, b = signs(rng, (17, k)), signs(rng, (33, k))
    wide = np.zeros((17, 50), np.uint64)
    wide[:, 3:43] = ref.pack_bits(a, 1)
    got = emulated.bgemm(wide[:, 3:43], ref.pack_bits(b, 1), k)
    np.testing.assert_array_equal(got, a @ b.T)


# ---- the harness's warp barrier and 1-bit MMA, and bgemm_tc --------------------------------------

@pytest.mark.gpu_emulated
@pytest.mark.parametrize("threads,blocks", [(32, 1), (80, 2), (128, 1)])
def test_harness_syncwarp_is_per_warp(emulated, threads, blocks):
    """__syncwarp synchronizes the warp only (warps running different numbers of rounds do not wait
    for each other) and orders each round's writes before the reads; a last partial warp (80
    threads: 32 + 32 + 16) synchronizes its own threads."""
    out = np.full(threads * blocks, -1, np.int64)
    emulated._launch("selftest_syncwarp", (blocks, 1, 1), (threads, 1, 1), (out,))
    expected = np.empty_like(out)
    for blk in range(blocks):
        for t in range(threads):
            warp, lane = divmod(t, 32)
            size = min(32, threads - 32 * warp)
            nb = 32 * warp + (lane + 1) % size
            expected[blk * threads + t] = sum(1000 * nb + r + 1000000 * blk for r in range(warp + 1))
    np.testing.assert_array_equal(out, expected)


HARNESS_MISUSE = r"""
extern "C" __global__ void partial_mask(int *out) { __syncwarp(0xffffu); out[0] = 1; }
extern "C" __global__ void partial_warp_mma(int *out) {
    const unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    const int c[4] = {0, 0, 0, 0};
    int d[4];
    emu::mma_m16n8k256_b1_xor_popc(d, a, b, c);
    out[threadIdx.x] = d[0];
}
int main(int argc, char **argv) {
    int out[64] = {0};
    void *args[] = {out};
    const long long sizes[] = {sizeof(int *)};
    int *p = out;
    args[0] = &p;
    const unsigned grid[3] = {1, 1, 1}, block[3] = {16, 1, 1};
    return argv[1][0] == 'm' ? emu::launch(partial_mask, grid, block, args, sizes, 1)
                             : emu::launch(partial_warp_mma, grid, block, args, sizes, 1);
}
"""


@pytest.mark.gpu_emulated
@pytest.mark.parametrize("case,message", [("mask", "only the full mask"), ("warp", "needs a full warp of 32")])
def test_harness_stops_on_unsupported_warp_use(tmp_path, case, message):
    """Outside the supported subset the harness stops with a message instead of computing something:
    __syncwarp with a mask other than the full one, the MMA in a warp of fewer than 32 threads."""
    import subprocess  # noqa: PLC0415

    from cuda_emulation import emulator  # noqa: PLC0415 - tests/cuda_emulation/

    if emulator.compiler() is None:
        pytest.skip("no g++ on this machine")
    src = tmp_path / "misuse.cpp"
    src.write_text(f'#include "{emulator.HEADER}"\n{HARNESS_MISUSE}')
    exe = tmp_path / "misuse"
    flags = [f for f in emulator.CXXFLAGS if f not in ("-shared", "-fPIC")]
    subprocess.run([emulator.compiler(), *flags, "-o", str(exe), str(src)], check=True, capture_output=True)
    run = subprocess.run([str(exe), case], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and message in run.stderr


def mma_b1_fragments(a_bits, b_bits, c, a_regs=(0, 1, 2, 3)):
    """Per-lane fragments of A (16 x 256 bits), B (256 x 8 bits, k x n), C (16 x 8 int32) for
    mma.m16n8k256 .b1, element by element from the formulas of the PTX ISA ("Matrix Fragments for
    mma.m16n8k256"; A's column read as (threadID_in_group * 32) + (i & 0x1F) (+ 128 for i >= 64));
    bit j of a register is element 32 * register + j. ``a_regs`` permutes A's registers (a wrong
    layout, for the negative control). Returns (a_frag, b_frag, c_frag, d_expected) by lane."""
    a_frag, b_frag = np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32)
    c_frag, d = np.zeros((32, 4), np.int32), np.zeros((32, 4), np.int32)
    for lane in range(32):
        group, tig = lane >> 2, lane % 4
        for i in range(128):
            row = group if i < 32 or 64 <= i < 96 else group + 8
            col = tig * 32 + (i & 0x1F) + (128 if i >= 64 else 0)
            a_frag[lane, a_regs[i // 32]] |= np.uint32(int(a_bits[row, col]) << (i % 32))
        for i in range(64):
            row = tig * 32 + (i & 0x1F) + (128 if i >= 32 else 0)
            b_frag[lane, i // 32] |= np.uint32(int(b_bits[row, group]) << (i % 32))
        for i in range(4):
            row, col = group + 8 * (i >> 1), tig * 2 + (i & 1)
            c_frag[lane, i] = c[row, col]
            d[lane, i] = c[row, col] + int(np.count_nonzero(a_bits[row] != b_bits[:, col]))
    return a_frag, b_frag, c_frag, d


@pytest.mark.gpu_emulated
@pytest.mark.parametrize("seed", range(4))
def test_emulated_mma_b1_follows_the_documented_layout(emulated, seed):
    """One MMA (bgemm_tc.cu, mma_b1_probe) on fragments built element by element from the PTX ISA's
    layout formulas gives D = C + popcount(A XOR B) for every lane's four elements; rows of A, columns
    of B and C/D in the wrong lanes or registers would not."""
    rng = np.random.default_rng(seed)
    density = [0.5, 0.1, 0.9, 0.5][seed]
    a_bits, b_bits = rng.random((16, 256)) < density, rng.random((256, 8)) < density
    c = rng.integers(-1000, 1000, (16, 8)).astype(np.int32)
    a_frag, b_frag, c_frag, d = mma_b1_fragments(a_bits, b_bits, c)
    np.testing.assert_array_equal(emulated.mma_b1_probe(a_frag, b_frag, c_frag), d)
    # negative control: A's registers 1 and 2 swapped (rows 8-15 and k 128-255 exchanged) is wrong
    wrong = mma_b1_fragments(a_bits, b_bits, c, a_regs=(0, 2, 1, 3))[0]
    assert not np.array_equal(emulated.mma_b1_probe(wrong, b_frag, c_frag), d)


def bgemm_case(rng, m, n, k, dirty_tail):
    """(packed A with dirty tail bits or not, packed B, the reference's int64 (M, N))."""
    a, b = signs(rng, (m, k)), signs(rng, (n, k))
    aw, bw = ref.pack_bits(a, 1), ref.pack_bits(b, 1)
    expected = ref.bgemm_bits(aw, bw, k)
    np.testing.assert_array_equal(expected, (a @ b.T).astype(np.int64))
    if dirty_tail and k % 64:
        aw[:, -1] |= np.uint64(1) << np.uint64(63)
        bw[:, -1] |= ~np.uint64(cuda.tailmask(k)) & np.uint64(0xF0F0F0F0F0F0F0F0)
    return aw, bw, expected


@pytest.mark.gpu_emulated
@pytest.mark.parametrize("m,n,k", [
    (1, 1, 1),            # M = N = 1, K = 1
    (1, 1, 256),          # one whole MMA k-step
    (16, 8, 63),          # one MMA tile, K < 64
    (65, 33, 300),        # partial block tiles in M and N, K not a multiple of 64 nor of 256
    (64, 32, 512),        # whole block tile, one whole shared-memory step
    (1, 70, 129),         # one row, three blocks of columns
    (70, 1, 700),         # one column, two blocks of rows, K over two steps
    (33, 17, 1100),       # K over three shared-memory steps (18 words), last step partial
    (5, 3, 5),            # K < 64, partial everything
])
@pytest.mark.parametrize("dirty_tail", [False, True])
def test_bgemm_tc_equals_reference(emulated, m, n, k, dirty_tail):
    """bgemm on the tensor-core kernel (bgemm_tc.cu) equals the NumPy reference and the plain kernel
    bit for bit; tail bits past k are ignored."""
    aw, bw, expected = bgemm_case(np.random.default_rng(m * 1000 + n + k), m, n, k, dirty_tail)
    got = emulated.bgemm(aw, bw, k, tensor_cores=True)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, emulated.bgemm(aw, bw, k, tensor_cores=False))
    assert emulated._launch.launches[-2][0] == "bgemm_tc" and emulated._launch.launches[-1][0] == "bgemm"


@pytest.mark.gpu_emulated
@given(m=st.integers(0, 70), n=st.integers(0, 70), k=st.integers(1, 1200), dirty_tail=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20, deadline=None)
def test_bgemm_tc_equals_reference_hypothesis(emulated, m, n, k, dirty_tail, seed):
    aw, bw, expected = bgemm_case(np.random.default_rng(seed), m, n, k, dirty_tail)
    got = emulated.bgemm(aw, bw, k, tensor_cores=True)
    assert got.dtype == np.int32 and got.shape == (m, n)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.gpu_emulated
def test_check_tensor_cores_passes_and_catches_a_disagreeing_device(emulated):
    """Kernels.check_tensor_cores (run by the CuPy backend before a device's first tensor-core
    bgemm) runs both kernels and passes when they agree; a device whose bgemm_tc differs in one
    entry (a launcher that corrupts it) raises RuntimeError naming the device."""
    emulated.check_tensor_cores()
    assert {"bgemm", "bgemm_tc"} <= {kernel for kernel, _, _ in emulated._launch.launches[-2:]}

    def corrupting(kernel, grid, block, args):
        emulated._launch(kernel, grid, block, args)
        if kernel == "bgemm_tc":
            args[9][3, 5] += 2                                   # the output array

    with pytest.raises(RuntimeError, match="disagrees with bgemm on device 7"):
        cuda.Kernels(np, corrupting).check_tensor_cores("device 7")


@pytest.mark.gpu_emulated
def test_bgemm_tc_row_strides_and_binary_matmul(emulated):
    """A a strided view of a wider array (row stride != words); binary_matmul with tensor_cores."""
    rng = np.random.default_rng(2)
    k = 9 * 64 + 7
    a, b = signs(rng, (19, k)), signs(rng, (35, k))
    wide = np.zeros((19, 14), np.uint64)
    wide[:, 2:12] = ref.pack_bits(a, 1)
    np.testing.assert_array_equal(emulated.bgemm(wide[:, 2:12], ref.pack_bits(b, 1), k, tensor_cores=True), a @ b.T)
    got = emulated.binary_matmul(a.astype(np.float64), b.astype(np.float64), tensor_cores=True)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ref.binary_matmul(a.astype(np.float64), b.astype(np.float64)))
    assert emulated._launch.launches[-1][0] == "bgemm_tc"


@pytest.mark.gpu_emulated
@given(m=st.integers(0, 20), n=st.integers(0, 20), k=st.integers(0, 150), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=15)
def test_binary_matmul_equals_reference(emulated, m, n, k, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = signs(rng, (m, k), dtype), signs(rng, (n, k), dtype)
    got = emulated.binary_matmul(a, b)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, ref.binary_matmul(a, b))


conv_cases = st.fixed_dictionaries({
    "n": st.integers(0, 2), "cg": st.sampled_from([1, 3, 64, 70]), "groups": st.integers(1, 3),
    "og": st.integers(1, 3), "h": st.integers(1, 6), "w": st.integers(1, 6), "kh": st.integers(1, 3),
    "kw": st.integers(1, 3), "stride": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)), "pad_value": st.sampled_from([0.0, 1.0, -1.0]),
    "seed": st.integers(0, 2 ** 32 - 1)})


# partial channel words (70 per group), two groups, stride, dilation and padding on both axes
CONV_EXAMPLE = {"n": 2, "cg": 70, "groups": 2, "og": 3, "h": 5, "w": 4, "kh": 3, "kw": 2, "stride": (2, 1),
                "padding": (2, 1), "dilation": (1, 2), "seed": 7}


def conv_inputs(case):
    """Packed NHWC activations / OHWI weights, the reference's int64 NHWC dot products, or None
    when the shape has no output."""
    rng = np.random.default_rng(case["seed"])
    g, cg = case["groups"], case["cg"]
    c, o = g * cg, g * case["og"]
    x, w = signs(rng, (case["n"], c, case["h"], case["w"])), signs(rng, (o, cg, case["kh"], case["kw"]))
    geo = (case["stride"], case["padding"], case["dilation"])
    try:
        conv2d_geometry(x.shape, w.shape, *geo, g)
    except ValueError:
        return None
    n, h, wd = case["n"], case["h"], case["w"]
    xw = ref.pack_bits(x.reshape(n, g, cg, h, wd), 2)                      # (N, g, H, W, CWg)
    xw = np.ascontiguousarray(xw.transpose(0, 2, 3, 1, 4)).reshape(n, h, wd, -1 if n else g * xw.shape[-1])
    ww = ref.pack_bits(w, 1)
    dots = ref.bconv2d_bits(xw, ww, c, *geo, g, case["pad_value"])        # (N, Ho, Wo, O)
    np.testing.assert_array_equal(dots, ref.binary_conv2d(x, w, *geo, g, case["pad_value"]).transpose(0, 2, 3, 1))
    return x, w, xw, ww, c, geo, dots


@pytest.mark.gpu_emulated
@given(case=conv_cases, layout=st.sampled_from(["nhwc", "nchw"]))
@settings(max_examples=25)
@example(case={**CONV_EXAMPLE, "pad_value": 0.0}, layout="nhwc")
@example(case={**CONV_EXAMPLE, "pad_value": 1.0}, layout="nchw")
@example(case={**CONV_EXAMPLE, "pad_value": -1.0}, layout="nhwc")
@example(case={**CONV_EXAMPLE, "pad_value": 0.0, "n": 0}, layout="nchw")   # empty batch
def test_bconv2d_int32_equals_reference(emulated, case, layout):
    """Stride, dilation, groups, every padding mode (exact zero padding, +-1), partial words of
    channels, empty batches."""
    inputs = conv_inputs(case)
    if inputs is None:
        return
    _, _, xw, ww, c, geo, dots = inputs
    got = emulated.bconv2d(xw, ww, c, *geo, case["groups"], case["pad_value"], layout=layout)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, dots if layout == "nhwc" else dots.transpose(0, 3, 1, 2))


@pytest.mark.gpu_emulated
@given(case=conv_cases, use_mul=st.booleans(), use_bias=st.booleans(), use_clamp=st.booleans(), data=st.data())
@settings(max_examples=20)
def test_bconv2d_float_output_equals_numpy_float32(emulated, case, use_mul, use_bias, use_clamp, data):
    """float32(clip(dot)) * multiplier + bias, rounded twice as NumPy's float32 (no fused multiply-add)."""
    inputs = conv_inputs(case)
    if inputs is None:
        return
    _, _, xw, ww, c, geo, dots = inputs
    o = dots.shape[-1]
    rng = np.random.default_rng(case["seed"] + 1)
    mul = (rng.standard_normal(o) * 0.37).astype(np.float32) if use_mul else None
    bias = (rng.standard_normal(o) * 1.3).astype(np.float32) if use_bias else None
    clamp = tuple(sorted(data.draw(st.tuples(st.integers(-20, 20), st.integers(-20, 20))))) if use_clamp else None
    expected = (np.clip(dots, *clamp) if clamp else dots).astype(np.float32)
    if mul is not None:
        expected = expected * mul
    if bias is not None:
        expected = expected + bias
    got = emulated.bconv2d(xw, ww, c, *geo, case["groups"], case["pad_value"], output="float", multiplier=mul,
                           bias=bias, clamp=clamp)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.gpu_emulated
def test_bconv2d_float_output_keeps_negative_zero_without_bias(emulated):
    """dot 0 times a negative multiplier is -0.0; with no bias it stays -0.0 (adding a 0.0 bias would
    make it +0.0), as on the CPU."""
    x = np.ones((1, 1, 1, 2), np.float32)
    x[..., 1] = -1
    xw, ww = ref.pack_bits(x, 1), ref.pack_bits(np.ones((1, 1, 1, 2), np.float32), 1)
    got = emulated.bconv2d(xw, ww, 1, output="float", multiplier=np.array([-2.0], np.float32))
    assert got[0, 0, 0, 0] == 0 and np.signbit(got[0, 0, 0, 0])


@pytest.mark.gpu_emulated
@given(case=conv_cases, data=st.data())
@settings(max_examples=20)
def test_bconv2d_bits_output_equals_thresholds(emulated, case, data):
    """bit o = (dot < thresholds[o]) XOR flip[o], packed NHWC along the output channels, tail bits 0."""
    inputs = conv_inputs(case)
    if inputs is None:
        return
    _, _, xw, ww, c, geo, dots = inputs
    o = dots.shape[-1]
    k = int(np.prod(ww.shape[1:3])) * (c // case["groups"])
    thr = np.array(data.draw(st.lists(st.integers(-k - 1, k + 1), min_size=o, max_size=o)), np.int64)
    flip = np.array(data.draw(st.lists(st.booleans(), min_size=o, max_size=o)))
    bits = (dots < thr) ^ flip
    expected = ref.pack_bits(np.where(bits, -1.0, 1.0), -1)                  # LCE: bit 1 <-> -1
    got = emulated.bconv2d(xw, ww, c, *geo, case["groups"], case["pad_value"], output="bits", thresholds=thr,
                           flip=flip)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.gpu_emulated
def test_bconv2d_bits_output_over_64_channels(emulated):
    """More than one output word, the last one partial (70 channels): bits past 70 are 0."""
    rng = np.random.default_rng(3)
    x, w = signs(rng, (2, 5, 4, 4)), signs(rng, (70, 5, 3, 3))
    xw, ww = ref.pack_bits(x, 1), ref.pack_bits(w, 1)
    dots = ref.bconv2d_bits(xw, ww, 5, (1, 1), (1, 1), (1, 1), 1, 0.0)
    thr = rng.integers(-10, 10, 70)
    flip = rng.random(70) < 0.5
    got = emulated.bconv2d(xw, ww, 5, 1, 1, output="bits", thresholds=thr, flip=flip)
    np.testing.assert_array_equal(got, ref.pack_bits(np.where((dots < thr) ^ flip, -1.0, 1.0), -1))
    assert not (got[..., 1] >> np.uint64(6)).any()


@pytest.mark.gpu_emulated
@given(case=conv_cases, dtype=st.sampled_from([np.float32, np.float64]))
@settings(max_examples=15)
def test_binary_conv2d_equals_reference(emulated, case, dtype):
    """The backend's whole path: pack (NCHW float -> NHWC words, groups), bconv2d, NCHW output."""
    inputs = conv_inputs(case)
    if inputs is None:
        return
    x, w, _, _, _, geo, _ = inputs
    x, w = x.astype(dtype), w.astype(dtype)
    got = emulated.binary_conv2d(x, w, *geo, case["groups"], case["pad_value"])
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, ref.binary_conv2d(x, w, *geo, case["groups"], case["pad_value"]))


def maxpool_reference(x, kh, kw, sh, sw, ph, pw):
    """Float max pool of (N, C, H, W) skipping taps outside the image."""
    n, c, h, wd = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph, 1), conv_output_size(wd, kw, sw, pw, 1)
    out = np.full((n, c, ho, wo), -np.inf, x.dtype)
    for i in range(ho):
        for j in range(wo):
            y0, x0 = i * sh - ph, j * sw - pw
            win = x[:, :, max(y0, 0):min(y0 + kh, h), max(x0, 0):min(x0 + kw, wd)]
            out[:, :, i, j] = win.max(axis=(2, 3))
    return out


@pytest.mark.gpu_emulated
@given(n=st.integers(0, 2), c=st.sampled_from([1, 5, 64, 65, 130]), h=st.integers(1, 6), w=st.integers(1, 6),
       kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3), data=st.data(),
       seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_bmaxpool2d_equals_float_max_pool(emulated, n, c, h, w, kh, kw, sh, sw, data, seed):
    ph, pw = data.draw(st.integers(0, kh // 2)), data.draw(st.integers(0, kw // 2))
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, c, h, w)) < 0.7, -1.0, 1.0).astype(np.float32)   # mostly -1: ANDs that keep bits
    got = emulated.bmaxpool2d(ref.pack_bits(x, 1), (kh, kw), (sh, sw), (ph, pw))
    np.testing.assert_array_equal(got, ref.pack_bits(maxpool_reference(x, kh, kw, sh, sw, ph, pw), 1))


# ---- bad input: refused in Python, before any launch ----------------------------------------------

def no_launch(kernel, grid, block, args):
    raise AssertionError(f"{kernel} was launched")


@pytest.mark.gpu_emulated
def test_unsupported_shapes_are_refused_before_the_launch():
    kernels = cuda.Kernels(np, no_launch)
    one = np.zeros((1, 1), np.uint64)
    with pytest.raises(ValueError, match="unsupported shape"):
        kernels.bgemm(one, np.zeros((cuda.MAX_GRID_Y * cuda.BGEMM_TILE + 1, 1), np.uint64), 64)
    with pytest.raises(ValueError, match="needs 2 words per row"):
        kernels.bgemm(one, one, 65)
    with pytest.raises(TypeError, match="uint64"):
        kernels.bgemm(one.astype(np.int64), one, 64)
    with pytest.raises(TypeError, match="expected a numpy array"):
        kernels.bgemm([[0]], one, 64)
    with pytest.raises(ValueError, match="unsupported shape"):
        kernels.bgemm(one, np.zeros((cuda.MAX_GRID_Y * cuda.TC_BN + 1, 1), np.uint64), 64, tensor_cores=True)
    with pytest.raises(TypeError, match="tensor_cores: expected True or False"):
        kernels.bgemm(one, one, 64, tensor_cores="yes")
    with pytest.raises(TypeError, match="tensor_cores: expected True or False"):
        kernels.binary_matmul(np.ones((1, 0)), np.ones((1, 0)), tensor_cores=1)
    with pytest.raises(ValueError, match=r"a_frag: expected uint32 of shape \(32, 4\)"):
        kernels.mma_b1_probe(np.zeros((32, 2), np.uint32), np.zeros((32, 2), np.uint32), np.zeros((32, 4), np.int32))
    with pytest.raises(ValueError, match="c_frag: expected int32"):
        kernels.mma_b1_probe(np.zeros((32, 4), np.uint32), np.zeros((32, 2), np.uint32), np.zeros((32, 4), np.int64))
    xw, ww = np.zeros((1, 4, 4, 1), np.uint64), np.zeros((2, 3, 3, 1), np.uint64)
    with pytest.raises(ValueError, match="taps"):
        kernels.bconv2d(xw, np.zeros((1, 33, 32, 1), np.uint64), 3)
    with pytest.raises(ValueError, match="pad_value"):
        kernels.bconv2d(xw, ww, 3, pad_value=0.5)
    with pytest.raises(ValueError, match="thresholds"):
        kernels.bconv2d(xw, ww, 3, output="bits")
    with pytest.raises(ValueError, match="multiplier"):
        kernels.bconv2d(xw, ww, 3, output="float", multiplier=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        kernels.bconv2d(xw, ww, 3, output="float", bias=np.array([0.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="smaller than"):
        kernels.bconv2d(np.zeros((1, 2, 2, 1), np.uint64), ww, 3)
    with pytest.raises(ValueError, match="at most half"):
        kernels.bmaxpool2d(xw, 2, padding=2)


# ---- the CuPy backend ---------------------------------------------------------------------------

def test_backend_reports_why_it_is_unavailable():
    """Without CuPy, or with CuPy and no usable device, the "cupy" backend is unavailable and says
    which (refbnn info prints it)."""
    from refbnn import kernels  # noqa: PLC0415

    if "cupy" in kernels.available_backends():
        pytest.skip("the CuPy backend is available here (a CUDA device is present)")
    why = kernels.backend_errors()["cupy"]
    try:
        import cupy  # noqa: F401, PLC0415
    except ImportError:
        assert "CuPy is not installed" in why and "refbnn[gpu]" in why
    else:
        assert "no usable device" in why or "no CUDA device" in why


@pytest.fixture(scope="module")
def gpu():
    from refbnn import kernels  # noqa: PLC0415

    if "cupy" not in kernels.available_backends():
        pytest.skip(f"needs a CUDA GPU: {kernels.backend_errors().get('cupy')}")
    import cupy  # noqa: PLC0415

    from refbnn.kernels import cupy_backend  # noqa: PLC0415
    return cupy, cupy_backend


@pytest.mark.gpu
def test_gpu_binary_products_equal_reference(gpu):
    cupy, backend = gpu
    rng = np.random.default_rng(5)
    a, b = signs(rng, (37, 130)), signs(rng, (19, 130))
    np.testing.assert_array_equal(cupy.asnumpy(backend.binary_matmul(cupy.asarray(a), cupy.asarray(b))), a @ b.T)
    x, w = signs(rng, (2, 6, 7, 5)), signs(rng, (4, 3, 3, 3))
    for pad_value in (0.0, 1.0, -1.0):
        got = backend.binary_conv2d(cupy.asarray(x), cupy.asarray(w), (2, 1), (1, 2), (1, 2), 2, pad_value)
        np.testing.assert_array_equal(cupy.asnumpy(got), ref.binary_conv2d(x, w, (2, 1), (1, 2), (1, 2), 2, pad_value))


@pytest.mark.gpu
def test_gpu_mma_b1_layout_on_the_hardware(gpu):
    """The fragment layout the emulation implements (mma_b1_fragments, from the PTX ISA) is the
    hardware's: one MMA on the device gives the expected D (needs compute capability 8.0)."""
    cupy, backend = gpu
    if not backend.use_tensor_cores(None):
        pytest.skip(f"compute capability {backend.compute_capability()} < 8.0: no m16n8k256 .b1 MMA")
    rng = np.random.default_rng(11)
    a_bits, b_bits = rng.random((16, 256)) < 0.5, rng.random((256, 8)) < 0.5
    c = rng.integers(-1000, 1000, (16, 8)).astype(np.int32)
    a_frag, b_frag, c_frag, d = mma_b1_fragments(a_bits, b_bits, c)
    got = backend._kernels.mma_b1_probe(cupy.asarray(a_frag), cupy.asarray(b_frag), cupy.asarray(c_frag))
    np.testing.assert_array_equal(cupy.asnumpy(got), d)


@pytest.mark.gpu
def test_gpu_bgemm_tc_equals_bgemm(gpu):
    """bgemm on the tensor cores equals the plain kernel and the reference on the device (partial
    tiles, K not a multiple of 64 or 256, one row / column, dirty tails, a larger GEMM), and the
    default follows the compute capability."""
    cupy, backend = gpu
    if not backend.use_tensor_cores(None):
        pytest.skip(f"compute capability {backend.compute_capability()} < 8.0: no m16n8k256 .b1 MMA")
    rng = np.random.default_rng(12)
    for m, n, k in [(1, 1, 1), (65, 33, 300), (1, 70, 129), (70, 1, 700), (33, 17, 1100), (300, 500, 2304)]:
        aw, bw, expected = bgemm_case(rng, m, n, k, dirty_tail=True)
        da, db = cupy.asarray(aw), cupy.asarray(bw)
        tc = cupy.asnumpy(backend.bgemm(da, db, k, tensor_cores=True))
        np.testing.assert_array_equal(tc, cupy.asnumpy(backend.bgemm(da, db, k, tensor_cores=False)))
        np.testing.assert_array_equal(tc, expected)
        np.testing.assert_array_equal(cupy.asnumpy(backend.bgemm(da, db, k)), expected)


@pytest.mark.gpu
def test_gpu_refuses_numpy_arrays_mixed_with_cupy(gpu):
    cupy, backend = gpu
    a = signs(np.random.default_rng(0), (3, 5))
    with pytest.raises(TypeError, match="b: expected a CuPy array"):
        backend.binary_matmul(cupy.asarray(a), a)


def _import_backend_fresh():
    """A fresh import of refbnn.kernels.cupy_backend that leaves no trace: neither in sys.modules
    nor as the attribute the import sets on refbnn.kernels (which `from refbnn.kernels import
    cupy_backend` would find in later tests)."""
    import importlib  # noqa: PLC0415
    import sys  # noqa: PLC0415

    import refbnn.kernels as package  # noqa: PLC0415

    missing = object()
    before = package.__dict__.get("cupy_backend", missing)
    sys.modules.pop("refbnn.kernels.cupy_backend", None)
    try:
        return importlib.import_module("refbnn.kernels.cupy_backend")
    finally:
        sys.modules.pop("refbnn.kernels.cupy_backend", None)
        if before is missing:
            package.__dict__.pop("cupy_backend", None)
        else:
            package.cupy_backend = before


def test_backend_import_without_cupy_says_how_to_install(monkeypatch):
    import sys  # noqa: PLC0415

    monkeypatch.setitem(sys.modules, "cupy", None)          # `import cupy` raises ImportError
    with pytest.raises(ImportError, match=r"CuPy is not installed .*pip install 'refbnn\[gpu\]'"):
        _import_backend_fresh()


def test_backend_import_without_a_device_says_so(monkeypatch):
    cupy = pytest.importorskip("cupy", reason="needs CuPy installed (pip install cupy-cuda13x)")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    with pytest.raises(ImportError, match="there is no CUDA device"):
        _import_backend_fresh()


def test_backend_refuses_numpy_arrays_before_any_launch(monkeypatch):
    """Mixed NumPy / CuPy arguments are refused naming the argument (checked with the device count
    faked: no kernel runs, so no GPU is needed)."""
    cupy = pytest.importorskip("cupy", reason="needs CuPy installed (pip install cupy-cuda13x)")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    backend = _import_backend_fresh()
    a = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="a: expected a CuPy array"):
        backend.binary_matmul(a, a)
    with pytest.raises(TypeError, match="x_words: expected a CuPy array"):
        backend.bconv2d(np.zeros((1, 3, 3, 1), np.uint64), np.zeros((1, 1, 1, 1), np.uint64), 3)


class _FakeDevice:
    def __init__(self, cc):
        self.compute_capability, self.id = cc, 0


@pytest.mark.parametrize("cc,auto", [("75", False), ("80", True), ("86", True), ("90", True), ("120", True)])
def test_backend_uses_tensor_cores_from_compute_capability_8(monkeypatch, cc, auto):
    """tensor_cores=None picks bgemm_tc from compute capability 8.0 (CuPy's "80", "90", "120"), the
    plain kernel before; True / False force it, True on an older device is refused (checked with a
    faked device: no kernel runs)."""
    cupy = pytest.importorskip("cupy", reason="needs CuPy installed (pip install cupy-cuda13x)")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    backend = _import_backend_fresh()
    monkeypatch.setattr(backend.cupy.cuda, "Device", lambda *a: _FakeDevice(cc))
    assert backend.use_tensor_cores(None) is auto
    assert backend.use_tensor_cores(False) is False
    if auto:
        assert backend.use_tensor_cores(True) is True
    else:
        with pytest.raises(ValueError, match=r"tensor_cores=True needs compute capability 8\.0 .* has 7\.5"):
            backend.use_tensor_cores(True)
    with pytest.raises(TypeError, match="tensor_cores: expected None, True or False"):
        backend.use_tensor_cores("auto")


def test_backend_checks_the_tensor_cores_once_per_device(monkeypatch):
    """The first tensor-core call on a device runs Kernels.check_tensor_cores there; a passed check
    is not repeated, a failed one is run (and fails) again on the next call; plain calls skip it."""
    cupy = pytest.importorskip("cupy", reason="needs CuPy installed (pip install cupy-cuda13x)")
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    backend = _import_backend_fresh()
    monkeypatch.setattr(backend.cupy.cuda, "Device", lambda *a: _FakeDevice("90"))
    calls, broken = [], [True]

    class Stub:
        def check_tensor_cores(self, device):
            calls.append(device)
            if broken[0]:
                raise RuntimeError("disagrees")

    monkeypatch.setattr(backend, "_kernels", Stub())
    assert backend._tensor_cores_for_call(False) is False and calls == []
    for _ in range(2):
        with pytest.raises(RuntimeError, match="disagrees"):
            backend._tensor_cores_for_call(None)
    assert calls == ["CUDA device 0 (compute capability 9.0)"] * 2
    broken[0] = False
    assert backend._tensor_cores_for_call(True) is True and backend._tensor_cores_for_call(None) is True
    assert len(calls) == 3


@pytest.mark.gpu_emulated
def test_binary_products_refuse_values_other_than_plus_minus_one(emulated):
    a = np.ones((3, 70), np.float32)
    a[2, 69] = 0.0
    with pytest.raises(ValueError, match=r"exactly \+-1"):
        emulated.binary_matmul(a, np.ones((2, 70), np.float32))
    with pytest.raises(ValueError, match=r"exactly \+-1"):
        emulated.binary_conv2d(a.reshape(1, 3, 70, 1), np.ones((1, 3, 1, 1), np.float32))
