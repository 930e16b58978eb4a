"""The training loop: accuracy targets on digits, bit-exact resume, checkpoints, metrics, the CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import stopped_after

from refbnn.checkpoint import HISTORY_KEYS, load_checkpoint, save_checkpoint
from refbnn.cli import main
from refbnn.train import TrainConfig, train


@pytest.mark.parametrize("method,target", [("float", 0.97), ("bnn", 0.90)])
def test_digits_targets(method, target, tmp_path):
    """The issue's targets for the main job's data: full precision >= 97 %, 1w1a BNN >= 90 %."""
    m = train(TrainConfig(method=method, progress=False, metrics_json=str(tmp_path / "m.json")))
    assert m["test_accuracy"] >= target, m["test_accuracy_per_epoch"]
    saved = json.loads((tmp_path / "m.json").read_text())
    for key in ("test_accuracy", "train_loss", "epochs", "seconds", "method", "model", "dataset"):
        assert key in saved
    assert len(saved["train_loss"]) == saved["epochs"] == 30
    assert saved["method"] == method and saved["dataset"] == "digits" and saved["model"] == "mlp"
    assert saved["train_loss"][-1] < saved["train_loss"][0]
    if method == "bnn":
        assert saved["binary_parameters"] == 2 * 512 * 512


def _weights(out):
    model, optim, meta = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    return model, optim, meta


@pytest.mark.parametrize("method,optimizer", [("bnn", "adam"), ("float", "sgd"), ("recu", "adam")])
def test_resume_is_bit_exact(tmp_path, method, optimizer):
    common = dict(method=method, optimizer=optimizer, epochs=4, width=0.25, progress=False, seed=3)
    full = train(TrainConfig(out=str(tmp_path / "full"), **common))
    # interrupted run: stop after 2 of 4 epochs (same schedule length), then resume
    cfg = TrainConfig(out=str(tmp_path / "part"), **common)
    with stopped_after(2):
        train(cfg)
    assert _weights(tmp_path / "part")[2]["epoch"] == 1
    cfg.resume = True
    m = train(cfg)
    full_model, full_optim, full_meta = _weights(tmp_path / "full")
    part_model, part_optim, part_meta = _weights(tmp_path / "part")
    assert full_model.keys() == part_model.keys() and full_optim.keys() == part_optim.keys()
    for k in full_model:
        assert np.array_equal(full_model[k], part_model[k]), k
    for k in full_optim:
        assert np.array_equal(full_optim[k], part_optim[k]), k
    assert full_meta["history"]["train_loss"] == part_meta["history"]["train_loss"] == m["train_loss"]
    # every per-epoch record but the wall times, flip ratios included
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy_per_epoch", "lr", "schedule",
                "binary_layers", "flip_ratio", "flip_ratio_mean", "tail_flips"):
        assert m[key] == full[key], key
    for key in HISTORY_KEYS:
        if key != "epoch_seconds":
            assert full_meta["history"][key] == part_meta["history"][key], key
    assert len(m["epoch_seconds"]) == 4 and m["epoch_seconds"][:2] == part_meta["history"]["epoch_seconds"][:2]
    if method != "float":
        assert len(m["binary_layers"]) == 2 and all(len(v) == 4 for v in m["flip_ratio"].values())
        assert m["flip_ratio_mean"][2] > 0


def test_resume_refuses_other_settings(tmp_path):
    train(TrainConfig(epochs=1, width=0.1, out=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="other settings .*lr="):
        train(TrainConfig(epochs=1, width=0.1, lr=0.5, out=str(tmp_path), resume=True, progress=False))
    with pytest.raises(ValueError, match="--resume needs --out"):
        train(TrainConfig(epochs=1, resume=True, progress=False))


def test_corrupt_checkpoint_is_rejected_and_never_overwritten(tmp_path):
    path = tmp_path / "checkpoint.npz"
    train(TrainConfig(epochs=1, width=0.1, out=str(tmp_path), progress=False))
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated, as after a crash of a non-atomic writer
    with pytest.raises(ValueError, match="not a valid refbnn checkpoint"):
        train(TrainConfig(epochs=2, width=0.1, out=str(tmp_path), resume=True, progress=False))
    assert path.read_bytes() == good[: len(good) // 2]  # left as it was for the user to inspect
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="not a valid refbnn checkpoint"):
        load_checkpoint(str(path))
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="'meta' entry is missing"):
        load_checkpoint(str(path))
    np.savez(path, meta=np.array([object()], dtype=object))  # a pickled array is never loaded
    with pytest.raises(ValueError, match="not a valid refbnn checkpoint|'meta' entry is missing"):
        load_checkpoint(str(path))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.npz"))


def test_atomic_write_keeps_the_old_checkpoint_on_failure(tmp_path):
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, {"w": np.ones(3)}, {}, {"epoch": 0})
    before = open(path, "rb").read()

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"w": Boom()}, {}, {"epoch": 1})
    assert open(path, "rb").read() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def test_cli_train_and_info(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["train", "--epochs", "1", "--width", "0.1", "--no-progress", "--metrics-json", str(out)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert json.loads(out.read_text())["epochs"] == 1
    assert main(["train", "--dataset", "cifar10"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "numpy" in data["kernel_backends"]
    try:
        import refbnn.kernels._floatops  # noqa: F401
        built = True
    except ImportError:
        built = False
    assert data["compiled_float_ops"].startswith("built" if built else "not available")


def test_python_m_refbnn_runs():
    r = subprocess.run([sys.executable, "-m", "refbnn", "train", "--method", "unknown"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# ---- hostile input: no silent wrong result, no lost file, no traceback (issue 8) ---------------------------
import zipfile  # noqa: E402

from refbnn import kernels  # noqa: E402
from refbnn.checkpoint import CheckpointError, remove_stale_temp_files  # noqa: E402

TINY = dict(width=0.1, progress=False)


def _rewrite_meta(path, **changes):
    """Rewrite a checkpoint's meta JSON (``changes``: key -> value, or a callable meta -> meta as ``_all``)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta = changes.pop("_all")(meta) if "_all" in changes else {**meta, **changes}
    arrays["meta"] = np.asarray(json.dumps(meta))
    np.savez(path, **arrays)


def _count_epochs(monkeypatch):
    import refbnn.train as T
    calls = []
    real = T.train_epoch
    monkeypatch.setattr(T, "train_epoch", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_resume_refuses_a_checkpoint_past_the_end_of_the_run(tmp_path, monkeypatch):
    """Item 1: a checkpoint claiming more finished epochs than the run has is an error, not a 'success'
    that trained nothing."""
    train(TrainConfig(epochs=2, out=str(tmp_path), **TINY))
    path = tmp_path / "checkpoint.npz"
    history_of = lambda n: {k: ([{}] * n if k in ("schedule", "flips") else [0.5] * n)  # noqa: E731
                            for k in HISTORY_KEYS}
    _rewrite_meta(path, epoch=5, history=history_of(6))
    calls = _count_epochs(monkeypatch)
    with pytest.raises(CheckpointError, match="epoch 6 is done, but the run has 2 epochs"):
        train(TrainConfig(epochs=2, out=str(tmp_path), resume=True, **TINY))
    _rewrite_meta(path, epoch=1_000_000)  # and a history that does not say so
    with pytest.raises(CheckpointError, match="history.train_loss: expected a list of 1000001 entries"):
        train(TrainConfig(epochs=2, out=str(tmp_path), resume=True, **TINY))
    assert calls == []


@pytest.mark.parametrize("meta,match", [
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"format": "refbnn-checkpoint-v1"}', "missing epoch, run, history, seconds"),
    ('{"format": "refbnn-checkpoint-v1", "epoch": "0", "run": {}, "history": {}, "seconds": 0}', "epoch: expected an"),
    ('{"format": "refbnn-checkpoint-v1", "epoch": 0, "run": [], "history": {}, "seconds": 0}', "run: expected a JSON"),
    ('{"format": "refbnn-checkpoint-v1", "epoch": 0, "run": {}, "history": {}, "seconds": NaN}', "seconds: expected"),
    ('{"format": "refbnn-checkpoint-v1", "epoch": 0, "run": {}, "history": [], "seconds": 0}', "history: expected"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_checkpoint_meta_of_the_wrong_shape_is_a_clear_error(tmp_path, meta, match):
    """Item 6: metadata of the wrong JSON type or missing keys (a traceback before)."""
    train(TrainConfig(epochs=1, out=str(tmp_path), **TINY))
    path = tmp_path / "checkpoint.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.asarray(meta)
    np.savez(path, **arrays)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointError, match=match):
        train(TrainConfig(epochs=2, out=str(tmp_path), resume=True, **TINY))
    assert path.read_bytes() == before


def _npy_header(shape, descr="<f8"):
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin-1")
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def test_a_huge_array_header_is_refused_before_allocation(tmp_path):
    """Item 6/7: a member whose .npy header claims 8 TB (numpy.load: MemoryError) is refused from the header."""
    path = tmp_path / "checkpoint.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.npy", _npy_header((10 ** 12,)) + b"\0" * 64)
    with pytest.raises(CheckpointError, match="promises float64"):
        load_checkpoint(str(path))


def _zip_bomb(path, member, shape, real_members=None):
    """An .npz whose ``member`` is a deflated all-zero array of ``shape`` (float32), written in chunks."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, a in (real_members or {}).items():
            with zf.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)
        with zf.open(member + ".npy", "w", force_zip64=True) as f:
            f.write(_npy_header(shape, "<f4"))
            chunk = bytes(1 << 20)
            for _ in range(int(np.prod(shape)) * 4 // len(chunk)):
                f.write(chunk)


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_decompressed(tmp_path):
    """Item 7: a 100 MB array deflated to 100 KB in place of a model weight: refused from the headers, with
    the memory of the run (numpy.load decompressed it whole first)."""
    import tracemalloc
    train(TrainConfig(epochs=1, out=str(tmp_path), **TINY))
    path = tmp_path / "checkpoint.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k[6:] for k, v in arrays.items() if k.startswith("model/") and v.ndim == 2)
    del arrays["model/" + name]
    _zip_bomb(path, "model/" + name, (25 * 1024 * 1024,), real_members=arrays)
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"model/{name}.*expected float32"):
            train(TrainConfig(epochs=1, out=str(tmp_path), resume=True, **TINY))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30 * 1024 * 1024, peak


def test_stale_temporary_files_are_removed_by_the_next_write(tmp_path):
    """Item 7: a writer killed mid-write leaves its temporary file; the next write removes it (and those of
    earlier refbnn versions), but never a file a live writer holds, nor anyone else's files."""
    fcntl = pytest.importorskip("fcntl")
    path = str(tmp_path / "checkpoint.npz")
    stale = [tmp_path / ".checkpoint.npz.tmp-k1ll3d__.npz", tmp_path / ".tmp-abcd1234.npz"]
    others = [tmp_path / "mine.npz", tmp_path / ".tmp-notours.txt", tmp_path / ".other.npz.tmp-x.npz"]
    for p in stale + others:
        p.write_bytes(b"partial")
    live = tmp_path / ".checkpoint.npz.tmp-writing.npz"
    live.write_bytes(b"in progress")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        save_checkpoint(path, {"w": np.ones(3)}, {}, {"epoch": 0})
        assert live.exists()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)
    assert remove_stale_temp_files(path) == [str(live)]  # its writer is gone now


def test_an_existing_checkpoint_needs_resume_or_overwrite(tmp_path):
    """Item 5: a new run into a directory holding a checkpoint does not silently replace it."""
    train(TrainConfig(epochs=1, out=str(tmp_path), **TINY))
    path = tmp_path / "checkpoint.npz"
    before = path.read_bytes()
    with pytest.raises(ValueError, match="earlier run; pass --resume to continue it or --overwrite"):
        train(TrainConfig(epochs=1, out=str(tmp_path), seed=1, **TINY))
    assert path.read_bytes() == before
    train(TrainConfig(epochs=1, out=str(tmp_path), seed=1, overwrite=True, **TINY))
    assert load_checkpoint(str(path))[2]["run"]["seed"] == 1
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        TrainConfig(resume=True, overwrite=True, out=str(tmp_path)).resolved()


def test_unusable_output_paths_are_found_before_the_first_epoch(tmp_path, monkeypatch):
    """Item 6: --out naming a file, --metrics-json naming a directory or a path under a file: an error before
    any training (before: after the first epoch, or after the whole run with the metrics lost)."""
    calls = _count_epochs(monkeypatch)
    a_file = tmp_path / "f"
    a_file.write_text("keep")
    for cfg, match in [(dict(out=str(a_file)), "exists and is not a directory"),
                       (dict(out=str(a_file / "sub")), "cannot write there"),
                       (dict(metrics_json=str(tmp_path)), "is a directory"),
                       (dict(metrics_json=str(a_file / "m.json")), "is not a directory"),
                       (dict(out=str(tmp_path / "o"), metrics_json=str(tmp_path / "o" / "checkpoint.npz")),
                        "is the checkpoint file")]:
        with pytest.raises(ValueError, match=match):
            train(TrainConfig(epochs=2, **cfg, **TINY))
    assert calls == [] and a_file.read_text() == "keep"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write there"):
            train(TrainConfig(epochs=2, metrics_json=str(ro / "m.json"), **TINY))
        assert calls == []


def test_metrics_json_is_written_atomically(tmp_path, monkeypatch):
    """A failure while writing the metrics leaves the earlier file whole and no temporary file."""
    import refbnn.train as T
    path = tmp_path / "m.json"
    path.write_text('{"earlier": true}')
    monkeypatch.setattr(T.json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        train(TrainConfig(epochs=1, metrics_json=str(path), **TINY))
    assert path.read_text() == '{"earlier": true}' and os.listdir(tmp_path) == ["m.json"]


@pytest.mark.parametrize("option,value,match", [
    ("--warmup-epochs", "-1", "an integer >= 0"), ("--epochs", "0", "a positive integer"),
    ("--epochs", "1e9", "a positive integer"), ("--batch-size", "-5", "a positive integer"),
    ("--lr", "inf", "a finite number > 0"), ("--lr", "nan", "a finite number > 0"), ("--lr", "0", "> 0"),
    ("--weight-decay", "-1e-4", ">= 0"), ("--weight-decay", "nan", "finite"), ("--width", "1e9", "<= 4"),
    ("--width", "0", "> 0"), ("--width", "-inf", "> 0"), ("--seed", "-1", "an integer >= 0"),
    ("--seed", "1.5", "an integer"), ("--bop-gamma", "1.5", "<= 1"), ("--bop-threshold", "-1", ">= 0"),
    ("--out", "", "non-empty path"), ("--metrics-json", "", "non-empty path"), ("--data-dir", "", "non-empty"),
])
def test_cli_refuses_bad_numbers_and_paths_at_parse_time(capsys, option, value, match):
    """Items 2 and 4: every numeric option is range-checked by the parser, naming the option and the range;
    an empty --out or --metrics-json (which wrote nothing) is refused. One line on stderr, exit status 2."""
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "1", "--width", "0.1", "--no-progress", f"{option}={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected" in err and match in err and err.count("\n") == 1, err


def test_train_config_checks_the_same_ranges():
    for kwargs, match in [(dict(warmup_epochs=-1), "warmup_epochs: expected an integer >= 0"),
                          (dict(warmup_epochs=31), r"warmup_epochs: expected at most epochs \(30\)"),
                          (dict(lr=float("inf")), "lr: expected a finite number > 0"),
                          (dict(width=1e9), "width: expected a finite number > 0 and <= 4"),
                          (dict(seed=-1), "seed: expected an integer >= 0"), (dict(out=""), "out: expected a non")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kwargs).resolved()
    with pytest.raises(TypeError, match="epochs: expected a positive integer"):
        TrainConfig(epochs=True).resolved()
    with pytest.raises(TypeError, match="seed: expected an integer"):
        TrainConfig(seed=1.0).resolved()


def test_cli_refuses_a_param_given_twice(capsys):
    """Item 3: --param NAME twice was 'last wins'."""
    assert main(["train", "--method", "irnet", "--param", "T_min=1e-3", "--param", "T_min=2e-3", "--epochs", "1",
                 "--width", "0.1", "--no-progress"]) == 2
    assert "--param T_min given twice" in capsys.readouterr().err


def test_cli_exit_statuses_and_one_line_errors(tmp_path, capsys, monkeypatch):
    """Item 8: 0 ok, 2 bad input, 1 a failure of the run; one line on stderr each, no traceback."""
    import refbnn.cli as cli
    common = ["train", "--epochs", "1", "--width", "0.1", "--no-progress"]
    assert main(common + ["--lr", "1e200"]) == 1  # diverges: a failure of the run, not bad input
    err = capsys.readouterr().err
    assert "training diverged" in err and err.count("\n") == 1 and "Traceback" not in err, err
    monkeypatch.setattr(cli, "train", lambda cfg: (_ for _ in ()).throw(RuntimeError("boom")))
    assert main(common) == 1
    err = capsys.readouterr().err
    assert err == "refbnn train: failed: RuntimeError: boom\n"
    monkeypatch.setenv("REFBNN_TRACEBACK", "1")
    assert main(common) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("REFBNN_TRACEBACK")
    monkeypatch.setattr(cli, "train", lambda cfg: (_ for _ in ()).throw(MemoryError()))
    assert main(common) == 1 and capsys.readouterr().err == "refbnn train: failed: out of memory\n"
    monkeypatch.setattr(cli, "train", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(common) == 130
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "exit status: 0 trained" in capsys.readouterr().out


def test_a_kernel_path_this_cpu_lacks_is_one_line_before_training(capsys, monkeypatch):
    """Item 8: $REFBNN_KERNEL_PATH naming a path the CPU lacks: exit 2 with one line, before the first epoch
    (before: a RuntimeError traceback from the first evaluation, after training an epoch)."""
    bitpack = pytest.importorskip("refbnn.kernels._bitpack")
    calls = _count_epochs(monkeypatch)
    monkeypatch.setattr(bitpack, "_SUPPORTED", ("scalar",))  # a CPU without AVX2 / AVX-512
    for path, match in (("avx2", "needs AVX2, which this CPU does not support"), ("sse9", "unknown kernel path")):
        monkeypatch.setenv("REFBNN_KERNEL_PATH", path)
        assert main(["train", "--method", "bnn", "--epochs", "1", "--width", "0.1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    assert calls == [] and "cython" in kernels.available_backends()


def test_backend_choice_reaches_every_layer_and_both_train(monkeypatch):
    """TrainConfig.backend (refbnn train --backend) builds the model on that backend: "numpy" runs the
    reference in every layer (binary, float conv, batch norm, hardtanh), "auto" the compiled ops where
    built; the digits MLP (batch norm, hardtanh, packed binary linear layers) trained three epochs
    reaches over 95 % on both, within 2 % of each other."""
    from refbnn import train as train_module

    built = {}
    real_build = train_module.build

    def spy(config, input_shape, num_classes):
        out = real_build(config, input_shape, num_classes)
        built[config.backend] = out
        return out

    monkeypatch.setattr(train_module, "build", spy)
    acc = {}
    for backend in ("numpy", "auto"):
        m = train(TrainConfig(method="bnn", epochs=3, backend=backend, progress=False))
        acc[backend] = m["test_accuracy"]
        model = next(v for v in built[backend] if hasattr(v, "modules"))
        backends = {getattr(mod, "backend") for _, mod in model.modules() if hasattr(mod, "backend")}
        assert backends == {backend}
    assert min(acc.values()) > 0.95 and abs(acc["auto"] - acc["numpy"]) <= 0.02, acc
    with pytest.raises(ValueError, match="backend"):
        TrainConfig(backend="gpu").resolved()
