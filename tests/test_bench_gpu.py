"""benchmarks/bench_gpu.py without a GPU: its no-GPU exit, its pure helpers, and its GEMM, convolution
and training-step parts run on stand-ins (the CUDA kernels under the emulation harness,
tests/cuda_emulation/, and the simulated device, tests/simdevice.py), so that a GPU run does not
meet its first bug on the GPU."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from refbnn.device import gpu_unavailable

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- the no-GPU path ------------------------------------------------------------------------------

@pytest.mark.skipif(gpu_unavailable() is None, reason="a GPU is available here: the script runs the benchmark")
def test_without_a_gpu_the_script_says_why_and_exits_2(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--quick"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0] == f"bench_gpu.py: no GPU benchmark run: {gpu_unavailable()}"
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(gpu_unavailable() is not None, reason=f"needs a CUDA GPU: {gpu_unavailable()}")
def test_on_a_gpu_the_script_runs_every_part(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--quick", "--shapes", "64,64,4096",
                           "256,256,2304", "--repeats", "2", "--batch", "16"], capture_output=True, text=True,
                          timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    assert [r["shape"] for r in res["gemm"]] == [[64, 64, 4096], [256, 256, 2304]]
    assert all(r["bgemm_s"] > 0 and r["sgemm_s"] > 0 for r in res["gemm"])
    assert [r["batch"] for r in res["conv"]] == [1] and res["conv"][0]["bconv2d_s"] > 0
    assert res["train"]["gpu_s"] > 0 and res["train"]["loss_rel_diff"] <= 0.05
    assert "bgemm (packed XNOR-popcount) vs cuBLAS sgemm" in proc.stdout


def test_bad_options_are_usage_errors(bench, capsys):
    for argv in (["--shapes", "1,2"], ["--shapes", "a,b,c"], ["--shapes", "0,4,4"], ["--repeats", "0"],
                 ["--parts", "nope"]):
        with pytest.raises(SystemExit) as exc:
            bench.parse_args(argv)
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err


# ---- pure helpers -----------------------------------------------------------------------------------

def test_shapes_are_bench_kernels_shapes(bench):
    tree = ast.parse((ROOT / "benchmarks" / "bench_kernels.py").read_text())
    shapes = next(ast.literal_eval(n.value) for n in tree.body
                  if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "SHAPES" for t in n.targets))
    assert bench.SHAPES == shapes
    assert bench.BIG in bench.SHAPES


def test_parse_and_select_shapes(bench):
    assert bench.parse_shape("64,32,4096") == (64, 32, 4096)
    assert bench.select_shapes(None, quick=False) == bench.SHAPES
    assert bench.BIG not in bench.select_shapes(None, quick=True)
    assert len(bench.select_shapes(None, quick=True)) == len(bench.SHAPES) - 1
    assert bench.select_shapes([(4096, 4096, 4096), (8, 8, 8)], quick=True) == [(8, 8, 8)]


def test_tops_and_ratio(bench):
    assert bench.tops(2 * 4096**3, 0.5) == pytest.approx(2 * 4096**3 / 0.5 / 1e12)
    assert bench.tops(10, None) is None
    assert bench.ratio(3.0, 1.5) == 2.0
    assert bench.ratio(None, 1.0) is None and bench.ratio(1.0, None) is None and bench.ratio(1.0, 0.0) is None


def test_accepts_finds_named_parameters_only(bench):
    def tc(a, b, k, tensor_cores=False):
        return a

    def kw_only(a, *, tensor_cores=False):
        return a

    def plain(a, b, k, **kwargs):
        return a

    assert bench.accepts(tc, "tensor_cores") and bench.accepts(kw_only, "tensor_cores")
    assert not bench.accepts(plain, "tensor_cores")
    assert not bench.accepts(42, "tensor_cores")


def gemm_row(bench, tc):
    row = {"shape": [4096, 4096, 4096], "sgemm_s": 2e-3, "bgemm_s": 5e-4, "pack_a_s": 1e-5,
           "bgemm_tc_s": 2.5e-4 if tc else None}
    for name in ("sgemm", "bgemm", "bgemm_tc"):
        row[f"{name}_tops"] = bench.tops(2 * 4096**3, row[f"{name}_s"])
    row["bgemm_vs_sgemm"] = bench.ratio(row["sgemm_s"], row["bgemm_s"])
    row["bgemm_tc_vs_sgemm"] = bench.ratio(row["sgemm_s"], row["bgemm_tc_s"])
    return row


def test_gemm_table(bench):
    lines = bench.gemm_table([gemm_row(bench, tc=False)])
    assert "bgemm TC" not in lines[0] and len(lines) == 3
    assert "4096,4096,4096" in lines[2] and "2000.0" in lines[2] and "500.0" in lines[2]
    assert "   4.00 " in lines[2]                                  # sgemm / bgemm
    assert f"{2 * 4096**3 / 5e-4 / 1e12:7.2f}" in lines[2]         # bgemm TOP/s
    lines = bench.gemm_table([gemm_row(bench, tc=True), {**gemm_row(bench, tc=False), "shape": [8, 8, 64]}])
    assert "bgemm TC us" in lines[0]
    assert "   8.00 " in lines[2]                                  # the tensor-core variant: 2 ms / 0.25 ms
    assert " - " in lines[3]                                       # a row without it


def test_conv_table_and_train_lines(bench):
    row = {"batch": 64, "float_conv": bench.FLOAT_CONV, "float_conv_s": 4e-3, "float_conv_tops": 1.5,
           "sgemm_only_s": 3e-3, "bconv2d_s": 1e-3, "bconv2d_tops": 6.0, "bconv2d_vs_float": 4.0,
           "layer_path_s": 2e-3, "layer_path_vs_float": 2.0}
    lines = bench.conv_table([row, {**row, "batch": 1}])
    assert lines[0] == f"float convolution: {bench.FLOAT_CONV}" and "cuDNN" in lines[0]
    assert lines[3].split("|")[0].strip() == "64" and "4.000" in lines[3] and "4.00" in lines[3]
    assert len(lines) == 5
    text = "\n".join(bench.train_lines({"batch": 128, "parameters": 270000, "steps": 5, "gpu_s": 0.02, "cpu_s": 0.5,
                                        "cpu_kernels": "kernels avx2, 2 cores", "cpu_vs_gpu": 25.0,
                                        "loss_gpu": 2.31, "loss_cpu": 2.3101, "loss_rel_diff": 4e-5}))
    assert "20.0 ms" in text and "500.0 ms" in text and "25.0x" in text and "4.0e-05" in text


class FakeClock:
    now = 0.0


class FakeEvent:
    syncs_at_record = []

    def record(self):
        import simdevice  # noqa: PLC0415 - tests/simdevice.py

        self.t = FakeClock.now
        self.syncs_at_record.append(len(simdevice.syncs))

    def synchronize(self):
        pass


class FakeCupy:
    """CuPy's timing API over a clock that each call of the timed function advances."""
    class cuda:
        Event = FakeEvent

        class Device:
            def synchronize(self):
                pass

        @staticmethod
        def get_elapsed_time(start, end):
            return 1e3 * (end.t - start.t)


def test_cuda_timer_reports_the_time_per_call_and_defers_checks(bench):
    """Per-call time from the events; a value check of a timed call (on a device array) is answered
    after the round's end event, not inside the timed region."""
    import simdevice  # noqa: PLC0415 - tests/simdevice.py

    from refbnn.checks import check_value  # noqa: PLC0415

    calls, ok = [], simdevice.asarray(np.array(True))

    def f():
        calls.append(1)
        FakeClock.now += 2.5e-5
        check_value(ok, lambda: None)

    FakeEvent.syncs_at_record.clear()
    before = len(simdevice.syncs)
    t = bench.cuda_timer(FakeCupy, target=1e-3, warmup=2)(f, repeats=3)
    assert t == pytest.approx(2.5e-5)
    assert len(calls) == 2 + 1 + 3 * 40          # warm-up, the sizing call, 3 rounds of 1 ms / 25 us
    marks = FakeEvent.syncs_at_record
    assert len(marks) == 2 * 4 and all(marks[i] == marks[i + 1] for i in range(0, 8, 2))   # none while timed
    assert len(simdevice.syncs) - before == 2 + 4                 # the warm-up calls', then one per round


# ---- the parts on stand-ins ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def emulated(cuda_emulation_library):
    """refbnn.kernels.cuda.Kernels on NumPy arrays, the .cu sources run on the CPU (a fresh launch
    record per module)."""
    from cuda_emulation import emulator  # noqa: PLC0415 - tests/cuda_emulation/

    from refbnn.kernels import cuda  # noqa: PLC0415

    return cuda.Kernels(np, emulator.EmulatedLaunch(cuda_emulation_library))


def once(f, repeats):
    f()
    return 1e-3


@pytest.mark.gpu_emulated
def test_gemm_part_on_the_emulated_kernels(bench, emulated):
    """The emulated kernels' bgemm takes tensor_cores= (bgemm_tc.cu): the plain kernel and the
    tensor-core variant are both verified against the float product and timed."""
    row = bench.bench_gemm(np, emulated, once, (37, 19, 130), 1, np.random.default_rng(0))
    assert row["shape"] == [37, 19, 130] and row["bgemm_tc_s"] == 1e-3 and row["bgemm_vs_sgemm"] == 1.0
    assert {"bgemm", "bgemm_tc"} <= {kernel for kernel, _, _ in emulated._launch.launches[-6:]}
    assert row["bgemm_tops"] == pytest.approx(2 * 37 * 19 * 130 / 1e-3 / 1e12)


class WithTensorCores:
    """The emulated kernels with a ``tensor_cores=`` bgemm whose default is the backend's choice
    (None), as a tensor-core variant has it; ``wrong`` makes the variant return one wrong entry,
    ``refuse`` makes it raise ValueError (a device too old for it)."""

    def __init__(self, kern, wrong=False, refuse=False):
        self.kern, self.wrong, self.refuse, self.calls = kern, wrong, refuse, []

    def pack_bits(self, *args, **kwargs):
        return self.kern.pack_bits(*args, **kwargs)

    def bgemm(self, a_words, b_words, k, tensor_cores=None):
        self.calls.append(tensor_cores)
        if tensor_cores and self.refuse:
            raise ValueError("tensor_cores=True needs compute capability 8.0")
        out = self.kern.bgemm(a_words, b_words, k)
        if tensor_cores and self.wrong:
            out[0, 0] += 2
        return out


@pytest.mark.gpu_emulated
def test_gemm_part_times_a_tensor_core_variant_and_verifies_it(bench, emulated):
    kern = WithTensorCores(emulated)
    row = bench.bench_gemm(np, kern, once, (8, 8, 64), 1, np.random.default_rng(1))
    assert set(kern.calls) == {False, True}        # the plain kernel named explicitly, never the default
    assert row["bgemm_tc_s"] == 1e-3 and row["bgemm_tc_vs_sgemm"] == 1.0
    with pytest.raises(AssertionError, match="tensor_cores=True .* 1 of 64 entries differ"):
        bench.bench_gemm(np, WithTensorCores(emulated, wrong=True), once, (8, 8, 64), 1, np.random.default_rng(1))
    row = bench.bench_gemm(np, WithTensorCores(emulated, refuse=True), once, (8, 8, 64), 1, np.random.default_rng(1))
    assert row["bgemm_tc_s"] is None and "compute capability" in row["bgemm_tc_note"]
    assert "8,8,64: tensor_cores=True refused" in bench.gemm_table([row])[-1]


@pytest.mark.gpu_emulated
def test_conv_part_on_the_emulated_kernels(bench, emulated):
    row = bench.bench_conv(np, emulated, once, 2, 1, np.random.default_rng(2), channels=8, size=6)
    assert row["batch"] == 2 and row["float_conv"] == bench.FLOAT_CONV
    assert row["bconv2d_tops"] == pytest.approx(2 * 2 * 6 * 6 * 8 * 8 * 9 / 1e-3 / 1e12)


def test_check_equal_names_the_difference(bench):
    a = np.zeros((3, 4), np.float32)
    bench.check_equal(a.astype(np.int32), a, "same")
    b = a.copy()
    b[1, 2] = 1
    with pytest.raises(AssertionError, match="bad: 1 of 12 entries differ"):
        bench.check_equal(a, b, "bad")
    with pytest.raises(AssertionError, match="shape"):
        bench.check_equal(a, b.T, "bad")


def test_train_part_on_the_simulated_device(bench):
    """The GPU step's code path (model.to, optimizer.to, the uploaded batch) on tests/simdevice.py
    against the CPU step (the compiled kernels): the same first loss, the device synchronised after
    each timed step."""
    import simdevice  # noqa: PLC0415 - tests/simdevice.py

    syncs = []
    before = len(simdevice.syncs)
    r = bench.bench_train(simdevice, lambda: syncs.append(1), batch=4, steps=1)
    assert r["loss_rel_diff"] <= 1e-5       # the same weights and batch: the same numbers, reordered sums aside
    assert r["gpu_s"] > 0 and r["cpu_s"] > 0 and len(syncs) == 2     # warm-up and the timed step
    # three device steps (the verified first one, the warm-up, the timed one): one synchronisation each
    # (the deferred value checks), plus reading the first loss
    where = simdevice.syncs[before:]
    assert len(where) == 3 + 1, where
    assert r["parameters"] > 0


class WallEvent:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def stand_in_cupy():
    """A module that answers as CuPy does for bench_gpu.main: NumPy's functions, a device and its
    properties, events on the wall clock."""
    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)
    fake.__version__ = "14.stand-in"

    class Device:
        id = 0

        def synchronize(self):
            pass

    runtime = types.SimpleNamespace(
        getDeviceProperties=lambda i: {"name": b"Stand-in GPU", "major": 9, "minor": 0, "totalGlobalMem": 2**30},
        runtimeGetVersion=lambda: 13020, driverGetVersion=lambda: 13020)
    fake.cuda = types.SimpleNamespace(Device=Device, Event=WallEvent, runtime=runtime,
                                      get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t))
    return fake


def test_main_runs_every_part_and_writes_the_json(bench, monkeypatch, tmp_path, capsys):
    """main()'s wiring (the parts, the tables, the JSON) with CuPy replaced by a stand-in: NumPy
    arrays, and the compiled CPU kernels (same signatures) as the CuPy backend."""
    import refbnn.device  # noqa: PLC0415
    from refbnn.kernels import compiled  # noqa: PLC0415

    try:
        K = compiled()
    except ImportError as exc:
        pytest.skip(f"needs the compiled kernels: {exc}")
    backend = types.ModuleType("refbnn.kernels.cupy_backend")
    backend.pack_bits, backend.bconv2d = K.pack_bits, K.bconv2d
    backend.bgemm = lambda a_words, b_words, k: K.bgemm(a_words, b_words, k)
    monkeypatch.setattr(refbnn.device, "gpu_unavailable", lambda: None)
    monkeypatch.setitem(sys.modules, "cupy", stand_in_cupy())
    monkeypatch.setitem(sys.modules, "refbnn.kernels.cupy_backend", backend)
    out = tmp_path / "r.json"
    assert bench.main(["--json", str(out), "--quick", "--shapes", "16,8,200", "--repeats", "1", "--batch", "4",
                       "--steps", "1"]) == 0
    text = capsys.readouterr().out
    assert "GPU: Stand-in GPU (sm_90, 1 GiB), CuPy 14.stand-in" in text
    assert "the backend has no tensor-core variant" in text and "16,8,200" in text
    assert f"float convolution: {bench.FLOAT_CONV}" in text and "CPU / GPU:" in text
    res = json.loads(out.read_text())
    assert res["gemm"][0]["shape"] == [16, 8, 200] and res["tensor_cores_variant"] is False
    assert [c["batch"] for c in res["conv"]] == [1] and res["conv"][0]["channels"] == 64
    assert res["train"]["steps"] == 1 and res["train"]["loss_rel_diff"] == 0.0
    assert res["gpu"]["sm"] == "sm_90" and res["tensor_cores_default"] is None
