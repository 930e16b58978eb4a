"""Hostile input to the command line and its files (issue 8): a clear error (exit status 2, or a
ValueError in Python), never a traceback, a wrong result or a changed file.

Hypothesis generates bad option values and bad files: truncations and bit flips of a real checkpoint
and bundle, ``.npz`` members whose ``.npy`` headers lie (shape, dtype, version, length), zip entries
whose declared sizes lie, zip bombs, and checkpoint metadata of every JSON shape. The files are read
by ``load_checkpoint`` (with and without the layout of the model being resumed), ``refbnn train
--resume`` and ``refbnn crosscheck``; each file's bytes are compared before and after.

REFBNN_HOSTILE_EXAMPLES=N sets every property's example count (default: a few dozen each, so the
module stays well under a minute).
"""
import io
import json
import os
import struct
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refbnn import crosscheck as xc
from refbnn.checkpoint import CheckpointError, load_checkpoint, model_layout, optimizer_layout
from refbnn.cli import main
from refbnn.npzio import NpzError, read_npz
from refbnn.train import RANGES, TrainConfig, build, train

EXAMPLES = int(os.environ.get("REFBNN_HOSTILE_EXAMPLES", "0"))


class Blob(bytes):
    """File contents that print as their length in a falsifying example."""

    def __repr__(self):
        return f"<{len(self)} bytes>"


def hostile(default):
    return settings(max_examples=EXAMPLES or default, deadline=None, derandomize=not EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ---- real files to corrupt ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished one-epoch run: OUT/checkpoint.npz and its config."""
    out = tmp_path_factory.mktemp("run")
    cfg = dict(epochs=1, width=0.1, method="bnn", progress=False)
    train(TrainConfig(out=str(out), **cfg))
    return out, cfg


@pytest.fixture(scope="module")
def layouts(run_dir):
    from refbnn.data import load_dataset
    _, cfg = run_dir
    c = TrainConfig(**cfg).resolved()
    data = load_dataset(c.dataset)
    _, model, optimizer = build(c, data.input_shape, data.num_classes)
    return model_layout(model), optimizer_layout(optimizer)


@pytest.fixture(scope="module")
def good_checkpoint(run_dir):
    path = run_dir[0] / "checkpoint.npz"
    return Blob(path.read_bytes()), load_checkpoint(str(path))


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory):
    (path,) = xc.export_bundles(tmp_path_factory.mktemp("bundle"), method="bnn", convention="official", part="layer")
    return Blob(open(path, "rb").read())


def _same_state(a, b):
    (ma, oa, meta_a), (mb, ob, meta_b) = a, b
    return (ma.keys() == mb.keys() and oa.keys() == ob.keys() and meta_a == meta_b
            and all(np.array_equal(ma[k], mb[k]) and ma[k].dtype == mb[k].dtype for k in ma)
            and all(np.array_equal(oa[k], ob[k]) for k in oa))


def _flip(data: bytes, flips) -> bytes:
    b = bytearray(data)
    for pos, bit in flips:
        b[pos % len(b)] ^= 1 << bit
    return bytes(b)


def _corruptions(n):
    """Truncations, bit flips, and overwritten byte ranges of an n-byte file."""
    return st.one_of(
        st.integers(0, n - 1).map(lambda k: ("truncate", k)),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=4).map(
            lambda f: ("flip", f)),
        st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=16)).map(lambda t: ("overwrite", t)),
    )


def _corrupt(data, how):
    kind, arg = how
    if kind == "truncate":
        return data[:arg]
    if kind == "flip":
        return _flip(data, arg)
    pos, junk = arg
    return data[:pos] + junk + data[pos + len(junk):]


# ---- .npz files whose headers and zip entries lie ----------------------------------------------------------

DESCRS = ["<f4", "<f8", ">f8", "|b1", "<i8", "|u1", "<U7", "|S3", "<c16", "|O", "O", "<M8[s]", "|V8", "<f2",
          "(2,)<f4", "[('a', '<f4')]", "", "float64", "xyz", "<f99"]


@st.composite
def npy_members(draw):
    """The bytes of one .npy member whose header may say anything about the data that follows."""
    shape = draw(st.one_of(
        st.lists(st.integers(0, 6), max_size=3).map(tuple),
        st.lists(st.integers(-3, 2 ** 62), min_size=1, max_size=3).map(tuple),
        st.sampled_from(["(3,)", "3", "[3]", "(1e3,)", "(True,)", "None"]),
    ))
    descr = draw(st.sampled_from(DESCRS))
    fortran = draw(st.sampled_from([False, True, "False", 0]))
    if isinstance(shape, str) or descr.startswith("["):
        header = f"{{'descr': {descr if descr.startswith('[') else repr(descr)}, 'fortran_order': {fortran!r}, " \
                 f"'shape': {shape}, }}"
    else:
        header = repr({"descr": descr, "fortran_order": fortran, "shape": shape})
    header = draw(st.one_of(st.just(header), st.just(header[:draw(st.integers(0, len(header)))]),
                            st.just("{" * 300 + "}" * 300), st.text(max_size=40)))
    raw = header.encode("latin-1", "replace") + b"\n"
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (4, 0), (0, 0)]))
    size = len(raw) if draw(st.booleans()) else draw(st.integers(0, 2 ** 32 - 1))
    length = struct.pack("<H", size & 0xFFFF) if version[0] == 1 else struct.pack("<I", size)
    magic = b"\x93NUMPY" if draw(st.integers(0, 9)) else draw(st.binary(min_size=6, max_size=6))
    data = draw(st.one_of(st.binary(max_size=64), st.integers(0, 4096).map(bytes)))
    return magic + bytes(version) + length + raw + data


@st.composite
def lying_npz(draw):
    members = draw(st.lists(st.tuples(st.sampled_from(["x.npy", "out.npy", "x", "a/b.npy", "x.npy"]), npy_members()),
                            min_size=1, max_size=3))
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression=draw(st.sampled_from(
            [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": a duplicate is one of the lies
        for name, data in members:
            zf.writestr(name, data)
    return Blob(buf.getvalue())


def _patch_sizes(data: bytes, which, value) -> bytes:
    """Overwrite a size field of every central-directory entry (and the end record) with ``value``."""
    b = bytearray(data)
    offsets = {"compress_size": 20, "file_size": 24}
    if which in offsets:
        at = 0
        while (at := b.find(b"PK\x01\x02", at)) >= 0:
            b[at + offsets[which]:at + offsets[which] + 4] = struct.pack("<I", value & 0xFFFFFFFF)
            at += 4
    else:
        at = b.rfind(b"PK\x05\x06")
        field = {"entries": (10, "<H"), "directory_size": (12, "<I"), "directory_offset": (16, "<I")}[which]
        mask = 0xFFFF if field[1] == "<H" else 0xFFFFFFFF
        b[at + field[0]:at + field[0] + struct.calcsize(field[1])] = struct.pack(field[1], value & mask)
    return bytes(b)


LIMIT = 1 << 20


def _read_or_refuse(path):
    """read_npz under a 1 MiB limit: either a clear NpzError or plain arrays within the limit."""
    try:
        arrays = read_npz(path, max_member_bytes=LIMIT, max_total_bytes=4 * LIMIT, max_members=16)
    except NpzError as exc:
        assert str(exc).startswith(path)
        return None
    for a in arrays.values():
        assert isinstance(a, np.ndarray) and a.dtype.kind in "biufUS" and not a.dtype.hasobject
        assert a.nbytes <= LIMIT
    return arrays


@hostile(60)
@given(data=lying_npz())
def test_npz_members_whose_headers_lie(tmp_path, data):
    path = tmp_path / "lies.npz"
    path.write_bytes(data)
    arrays = _read_or_refuse(str(path))
    if arrays is not None:  # what numpy reads from the same file must be the same arrays
        with np.load(path, allow_pickle=False) as z:
            assert sorted(arrays) == sorted(z.files)
            for k in z.files:
                assert np.array_equal(z[k], arrays[k]) and z[k].dtype == arrays[k].dtype and z[k].shape == arrays[k].shape
    assert path.read_bytes() == data


@hostile(60)
@given(which=st.sampled_from(["compress_size", "file_size", "entries", "directory_size", "directory_offset"]),
       value=st.one_of(st.integers(0, 2 ** 32 - 1), st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 2 ** 31])))
def test_zip_entries_whose_sizes_lie(tmp_path, good_bundle, which, value):
    path = tmp_path / "b.npz"
    path.write_bytes(_patch_sizes(good_bundle, which, value))
    arrays = _read_or_refuse(str(path))
    if arrays is not None:
        original = dict(np.load(io.BytesIO(good_bundle)))
        assert arrays.keys() == original.keys() and all(np.array_equal(arrays[k], original[k]) for k in arrays)


def _bomb(declared_elements):
    """A deflated .npz whose member 'x' is an all-zero float64 array of ``declared_elements`` values; the zip
    entry is forged to declare it while the stream holds only 1 MiB of zeros (no 8 GB is ever written)."""
    buf = io.BytesIO()
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (declared_elements,)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", npy.getvalue() + bytes(1 << 20))
    real = len(npy.getvalue()) + (1 << 20)
    return _patch_sizes(buf.getvalue(), "file_size", len(npy.getvalue()) + declared_elements * 8) \
        if declared_elements * 8 + len(npy.getvalue()) != real else buf.getvalue()


@hostile(20)
@given(elements=st.sampled_from([2 ** 18, 2 ** 20, 2 ** 27, 2 ** 28 - 1, 10 ** 12]))
def test_zip_bombs_are_refused_from_their_headers(tmp_path, elements):
    """A bundle whose member claims more than it holds, or more than the limit: refused, never allocated."""
    path = tmp_path / "bomb.npz"
    path.write_bytes(_bomb(elements))
    with pytest.raises(ValueError, match="not a readable .npz bundle"):
        xc.load_bundle(path)


# ---- checkpoints -------------------------------------------------------------------------------------------

@hostile(80)
@given(how=st.data())
def test_corrupt_checkpoints_are_refused_or_read_intact(tmp_path, good_checkpoint, layouts, how):
    good_bytes, good_state = good_checkpoint
    bad = _corrupt(good_bytes, how.draw(_corruptions(len(good_bytes))))
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(bad)
    for args in ((), layouts):
        try:
            state = load_checkpoint(str(path), *args)
        except CheckpointError:
            continue
        assert _same_state(state, good_state)  # a corruption that changed nothing that is read
    assert path.read_bytes() == bad


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10, 10 ** 7) | st.floats() | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                    max_leaves=12)


@st.composite
def metas(draw, good):
    """Checkpoint metadata: the good one with fields replaced, removed or retyped, or any JSON at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(JSON)
    meta = json.loads(json.dumps(good))
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(["epoch", "run", "history", "seconds", "format"]))
        if key == "history" and draw(st.booleans()):
            sub = draw(st.sampled_from(sorted(meta["history"]) if isinstance(meta.get("history"), dict) else ["x"]))
            if isinstance(meta.get("history"), dict):
                meta["history"][sub] = draw(st.one_of(JSON, st.lists(JSON, min_size=1, max_size=3)))
        elif draw(st.booleans()):
            meta.pop(key, None)
        else:
            meta[key] = draw(JSON)
    return meta


@hostile(80)
@given(data=st.data())
def test_checkpoint_metadata_of_any_shape(tmp_path, good_checkpoint, layouts, data):
    good_bytes, (model, optim, good_meta) = good_checkpoint
    meta = data.draw(metas({"format": "refbnn-checkpoint-v1", **good_meta}))
    arrays = {**{f"model/{k}": v for k, v in model.items()}, **{f"optim/{k}": v for k, v in optim.items()},
              "meta": np.asarray(json.dumps(meta))}
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)
    try:
        _, _, read = load_checkpoint(str(path), *layouts)
    except CheckpointError:
        return
    # accepted: every field a resume uses is what it must be
    assert type(read["epoch"]) is int and read["epoch"] >= 0 and isinstance(read["run"], dict)
    assert all(len(read["history"][k]) == read["epoch"] + 1 for k in ("train_loss", "test_accuracy", "lr"))
    assert all(0 <= a <= 1 for a in read["history"]["test_accuracy"]) and np.isfinite(read["seconds"])


def _one_line_error(err):
    assert "Traceback" not in err and err.count("\n") == 1 and ": error: " in err, err


@hostile(25)
@given(how=st.data())
def test_train_resume_from_a_corrupt_checkpoint(run_dir, good_checkpoint, capsys, how):
    """refbnn train --resume: exit 2 with one line, or (a corruption that changed nothing read) a clean
    resume; the checkpoint file is never changed by a refused resume."""
    out, cfg = run_dir
    good_bytes, _ = good_checkpoint
    path = out / "checkpoint.npz"
    bad = _corrupt(good_bytes, how.draw(_corruptions(len(good_bytes))))
    path.write_bytes(bad)
    try:
        status = main(["train", "--method", "bnn", "--epochs", "1", "--width", "0.1", "--no-progress", "--out",
                       str(out), "--resume"])
        err = capsys.readouterr().err
        assert status in (0, 2), err
        if status == 2:
            _one_line_error(err)
        assert path.read_bytes() == bad
    finally:
        path.write_bytes(good_bytes)


# ---- bundles -----------------------------------------------------------------------------------------------

@hostile(40)
@given(how=st.data())
def test_crosscheck_of_a_corrupt_bundle(tmp_path, good_bundle, capsys, how):
    """exit 0 (nothing read changed) or 2 with one line; never 1 ('differs') and never a changed file."""
    bad = _corrupt(good_bundle, how.draw(_corruptions(len(good_bundle))))
    path = tmp_path / "b.npz"
    path.write_bytes(bad)
    status = main(["crosscheck", str(path)])
    err = capsys.readouterr().err
    assert status in (0, 2), err
    if status == 2:
        _one_line_error(err)
    assert path.read_bytes() == bad


@hostile(40)
@given(data=lying_npz())
def test_crosscheck_of_a_lying_bundle(tmp_path, capsys, data):
    path = tmp_path / "b.npz"
    path.write_bytes(data)
    assert main(["crosscheck", str(path), "--quantizer", "ste_sign"]) == 2
    _one_line_error(capsys.readouterr().err)
    assert path.read_bytes() == data


# ---- option values -----------------------------------------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-2 ** 70, 2 ** 70).map(str),
    st.sampled_from(["", " ", "nan", "-nan", "inf", "-inf", "1e999", "0x10", "1_000", "1.", ".5", "--", "true",
                     "0", "-0", "-0.0", "1e-400", "nan(0x1)", "١٢", "\0"]),
    st.text(max_size=6),
)


@hostile(150)
@given(option=st.sampled_from(sorted(RANGES)), text=NUMBER_TEXT)
def test_train_numeric_options(monkeypatch, capsys, option, text):
    """Every numeric option: refused at parse time (exit 2, one line naming the option and its range), or
    accepted only inside its range."""
    import refbnn.cli as cli
    seen = {}
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.update(vars(args)) or 0)
    flag = "--" + option.replace("_", "-")
    try:
        status = main(["train", f"{flag}={text}"])
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"refbnn train: error: argument {flag}: ") and err.count("\n") == 1, err
        return
    assert status == 0
    value = seen[option]
    RANGES[option].check(option, value)  # raises if out of range
    assert value == RANGES[option].kind(text)


@hostile(80)
@given(option=st.sampled_from(["--rtol", "--atol"]), text=NUMBER_TEXT)
def test_crosscheck_tolerances(tmp_path_factory, good_bundle, capsys, option, text):
    """NaN made every tensor pass, a negative tolerance failed identical ones: refused at parse time."""
    path = tmp_path_factory.mktemp("tol") / "b.npz"
    path.write_bytes(good_bundle)
    try:
        status = main(["crosscheck", str(path), f"{option}={text}"])
    except SystemExit as exc:
        assert exc.code == 2
        assert f"argument {option}: expected a finite number >= 0" in capsys.readouterr().err
        return
    assert status == 0  # an accepted tolerance: the identical tensors agree
    v = float(text)
    assert np.isfinite(v) and v >= 0


# ---- the items of issue 8 for crosscheck, one by one ----------------------------------------------------------

def _bundle_with(good_bundle, tmp_path, **changes):
    b = dict(np.load(io.BytesIO(good_bundle)))
    b.update({k: np.asarray(v) for k, v in changes.items()})
    path = tmp_path / "b.npz"
    np.savez(path, **b)
    return path


@pytest.mark.parametrize("value", ["false", "0", "no", "off", float("nan"), 2, 0.0, "none", "", "yes"])
def test_training_is_read_strictly(tmp_path, good_bundle, capsys, value):
    """Item 9: bool('false'), bool('0'), bool(nan) are all True; only true/false, 1/0 and bools are read."""
    path = _bundle_with(good_bundle, tmp_path, training=value)
    status = main(["crosscheck", str(path)])
    out, err = capsys.readouterr()
    if value == "false":  # read as False (the bnn layer computes the same in both modes, so it passes)
        assert status == 0 and "training=False" in out, out + err
    else:
        assert status == 2 and "training" in err, err


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), (1, True), (0, False), ("TRUE", True),
                                            ("False", False), (np.bool_(False), False)])
def test_training_values_that_are_read(good_bundle, value, expected):
    b = dict(np.load(io.BytesIO(good_bundle)))
    b["training"] = np.asarray(value)
    assert xc.crosscheck(b).settings["training"] is expected
    with pytest.raises(xc.BundleError, match="training"):
        xc.crosscheck({**b, "training": np.asarray("no")})
    with pytest.raises(xc.BundleError, match="training"):
        xc.crosscheck({k: v for k, v in b.items() if k != "training"}, params={"training": "0"})


@pytest.mark.parametrize("rtol,atol", [(float("nan"), None), (None, float("nan")), (-1.0, None), (None, -1e-9),
                                       (float("inf"), None), ("1e-3", None), (True, None)])
def test_tolerances_in_the_python_api(good_bundle, rtol, atol):
    """Item 10: NaN passed every tensor, -1 failed identical ones."""
    b = dict(np.load(io.BytesIO(good_bundle)))
    with pytest.raises(ValueError, match="rtol|atol"):
        xc.crosscheck(b, rtol=rtol, atol=atol)


def test_export_refuses_existing_files_and_writes_atomically(tmp_path, good_bundle, capsys, monkeypatch):
    """Item 11: --export replaced a user's files of the same name (even the bundle being exported from, which
    then 'passed'); now an existing file needs --overwrite, the input bundle is never replaced, and a failed
    write leaves the old file and no temporary file."""
    mine = _bundle_with(good_bundle, tmp_path, out=np.load(io.BytesIO(good_bundle))["out"] + 1.0)
    mine = mine.rename(tmp_path / "bnn-official-conv2d-nchw.npz")  # the user's own outputs, differing from refbnn's
    before = mine.read_bytes()
    assert main(["crosscheck", str(mine)]) == 1
    args = ["crosscheck", "--export", str(tmp_path), "--method", "bnn", "--convention", "official", "--part", "layer"]
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and mine.read_bytes() == before
    assert main(["crosscheck", str(mine), *args[1:], "--overwrite"]) == 2  # the input itself: never replaced
    assert "is the input bundle" in capsys.readouterr().err and mine.read_bytes() == before
    import refbnn.crosscheck.bundle as bundle_module
    monkeypatch.setattr(bundle_module.np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "disk full")))
    assert main(args + ["--overwrite"]) == 2
    assert mine.read_bytes() == before and sorted(os.listdir(tmp_path)) == [mine.name]
    monkeypatch.undo()
    assert main(args + ["--overwrite"]) == 0
    assert mine.read_bytes() != before and main(["crosscheck", str(mine)]) == 0


@pytest.mark.parametrize("case", ["inf_stride", "nan_padding", "inf_groups", "json_dir", "json_is_bundle",
                                  "json_fifo", "export_is_file", "x_shape_huge", "x_shape_zero", "rtol_text",
                                  "missing_bundle", "bundle_is_dir", "not_npz", "npy_file", "object_array",
                                  "unknown_setting", "param_twice", "memory", "runtime", "oserror", "no_bundle"])
def test_every_crosscheck_error_is_exit_status_2(tmp_path, good_bundle, capsys, monkeypatch, case):
    """Item 12: exit status 1 means 'a tensor differs' and nothing else; every error is 2 and one line."""
    good = tmp_path / "good.npz"
    good.write_bytes(good_bundle)
    argv = {
        "inf_stride": lambda: [str(_bundle_with(good_bundle, tmp_path, stride=np.inf))],
        "nan_padding": lambda: [str(_bundle_with(good_bundle, tmp_path, padding=np.nan))],
        "inf_groups": lambda: [str(_bundle_with(good_bundle, tmp_path, groups=-np.inf))],
        "json_dir": lambda: [str(good), "--json", str(tmp_path)],
        "json_is_bundle": lambda: [str(good), "--json", str(good)],
        "json_fifo": lambda: (os.mkfifo(tmp_path / "fifo"), [str(good), "--json", str(tmp_path / "fifo")])[1],
        "export_is_file": lambda: ["--export", str(good), "--method", "bnn", "--convention", "official"],
        "x_shape_huge": lambda: ["--export", str(tmp_path / "e"), "--method", "bnn", "--convention", "official",
                                 "--part", "layer", "--x-shape", "100000,100000,100,100"],
        "x_shape_zero": lambda: ["--export", str(tmp_path / "e"), "--quantizer", "ste_sign", "--x-shape", "0,3"],
        "rtol_text": lambda: [str(good), "--rtol", "lots"],
        "missing_bundle": lambda: [str(tmp_path / "missing.npz")],
        "bundle_is_dir": lambda: [str(tmp_path)],
        "not_npz": lambda: ((tmp_path / "t.npz").write_text("hello"), [str(tmp_path / "t.npz")])[1],
        "npy_file": lambda: (np.save(tmp_path / "a.npy", np.zeros(3)), [str(tmp_path / "a.npy")])[1],
        "object_array": lambda: (np.savez(tmp_path / "o.npz", x=np.array([{}], dtype=object)),
                                 [str(tmp_path / "o.npz"), "--quantizer", "ste_sign"])[1],
        "unknown_setting": lambda: [str(_bundle_with(good_bundle, tmp_path, strdie=1))],
        "param_twice": lambda: [str(good), "--param", "a=1", "--param", "a=2"],
        "no_bundle": lambda: ["--method", "bnn", "--convention", "official"],
    }
    if case in ("memory", "runtime", "oserror"):
        import refbnn.cli as cli
        exc = {"memory": MemoryError(), "runtime": RuntimeError("kernel"), "oserror": OSError(5, "I/O error")}[case]
        monkeypatch.setattr(cli.crosscheck, "crosscheck", lambda *a, **k: (_ for _ in ()).throw(exc))
        args = [str(good)]
    else:
        args = argv[case]()
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    try:
        status = main(["crosscheck", *args])
    except SystemExit as exc:  # a parse-time refusal
        status = exc.code
    assert status == 2, capsys.readouterr()
    _one_line_error(capsys.readouterr().err)
    assert {p: p.read_bytes() for p in files} == files
