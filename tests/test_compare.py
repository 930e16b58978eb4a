"""refbnn compare: planning and summary (no cluster), and the command against a real Dask cluster: a sweep
with a failing run, reproducibility across workers, an unreachable scheduler."""
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest

import refbnn
from refbnn.compare import (CompareError, Run, check_out, epochs_to_reach, load_runs, parse_methods, plan_runs,
                            split_params, summarize, table_markdown)
from refbnn.methods import METHODS

# the directory that holds the refbnn under test (installed, or a source checkout with the kernels built)
REFBNN_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(refbnn.__file__)))


def _cli(args, cwd, timeout=300, **env):
    """``python -m refbnn ARGS`` in a fresh interpreter importing the refbnn under test (not the working
    directory's)."""
    env = dict(os.environ, **env, PYTHONPATH=os.pathsep.join([REFBNN_PARENT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "refbnn", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---- planning and summary --------------------------------------------------------------------------------
def test_unknown_methods_list_the_known_ones():
    with pytest.raises(CompareError) as e:
        parse_methods("bnn,nope,xnor,also_not")
    assert "'nope', 'also_not'" in str(e.value) and all(m in str(e.value) for m in METHODS)
    with pytest.raises(CompareError, match="more than once"):
        parse_methods("bnn,xnor,bnn")
    with pytest.raises(CompareError, match="comma-separated"):
        parse_methods("bnn,,xnor")
    assert parse_methods(" bnn , recu") == ["bnn", "recu"]


def test_params_for_all_methods_or_one():
    assert split_params({"clip_value": 1.2}, ["bnn", "xnor"]) == {"bnn": {"clip_value": 1.2},
                                                                   "xnor": {"clip_value": 1.2}}
    assert split_params({"irnet:T_min": 1e-3}, ["bnn", "irnet"]) == {"bnn": {}, "irnet": {"T_min": 1e-3}}
    with pytest.raises(CompareError, match="T_min: not a parameter of bnn; write METHOD:T_min"):
        split_params({"T_min": 1e-3}, ["bnn", "irnet"])
    with pytest.raises(CompareError, match="'recu' is not one of the compared methods"):
        split_params({"recu:tau_end": 0.9}, ["bnn", "irnet"])


def test_plan_checks_every_run_before_anything_starts():
    runs = plan_runs(["bnn", "recu"], 2, {"dataset": "digits", "epochs": 3, "width": 0.25})
    assert [r.name for r in runs] == ["bnn-seed0", "bnn-seed1", "recu-seed0", "recu-seed1"]
    assert all(r.config["epochs"] == 3 and r.config["progress"] is False for r in runs)
    assert plan_runs(["bnn"], 1, {"dataset": "digits"})[0].config["epochs"] == 30  # refbnn train's default
    with pytest.raises(CompareError, match="recu: .*tau_end"):  # a value the method refuses
        plan_runs(["bnn", "recu"], 1, {}, {"recu:tau_end": 7.0})
    with pytest.raises(CompareError, match="bnn: .*width"):
        plan_runs(["bnn"], 1, {"width": 9.0})
    with pytest.raises(CompareError, match="seeds: expected a positive integer"):
        plan_runs(["bnn"], 0, {})


def test_epochs_to_reach():
    assert epochs_to_reach([0.5, 0.89, 0.9, 0.95]) == 3
    assert epochs_to_reach([0.5, 0.89]) is None
    assert epochs_to_reach([0.91]) == 1


def _run(method, seed, final, curve=None, flips=None, seconds=1.0, error=None):
    if error:
        return Run(method, seed, {}, error=error)
    m = {"method": method, "seed": seed, "test_accuracy": final, "test_accuracy_per_epoch": curve or [final],
         "seconds": seconds}
    if flips is not None:
        m["flip_ratio_mean"] = flips
    return Run(method, seed, {}, metrics=m)


def test_summary_numbers_by_hand():
    runs = [_run("bnn", 0, 0.90, [0.5, 0.90], [0.1, 0.02], 2.0), _run("bnn", 1, 0.94, [0.91, 0.94], [0.1, 0.04], 4.0),
            _run("bnn", 2, 0.98, [0.8, 0.98], [0.1, 0.06], 6.0),
            _run("xnor", 0, 0.80, [0.7, 0.8]), _run("xnor", 1, 0.96, [0.92, 0.96]),
            _run("recu", 0, None, error="training diverged in epoch 1"),
            _run("recu", 1, None, error="training diverged in epoch 1")]
    rows = {r["method"]: r for r in summarize(runs)}
    bnn = rows["bnn"]
    assert math.isclose(bnn["accuracy_mean"], 0.94) and math.isclose(bnn["accuracy_std"], 0.04)  # ddof 1
    assert bnn["epochs_to_target"] == (2 + 1 + 2) / 3 and bnn["n_reached"] == 3
    assert math.isclose(bnn["flip_ratio"], 0.04) and math.isclose(bnn["seconds"], 4.0)
    assert rows["xnor"]["n_reached"] == 1 and rows["xnor"]["epochs_to_target"] == 1
    assert rows["xnor"]["flip_ratio"] is None  # metrics without flip_ratio_mean
    assert rows["recu"]["n_ok"] == 0 and rows["recu"]["errors"] == {0: "training diverged in epoch 1",
                                                                     1: "training diverged in epoch 1"}
    table = table_markdown(list(rows.values())).splitlines()
    assert table[2] == "| bnn | 94.00 ± 4.00 | 1.7 | 4.00e-02 | 4.0 | 3 |"
    assert table[3].startswith("| xnor | 88.00 ± 11.31 | 1.0 (1 of 2 runs; the others not reached) | n/a |")
    assert table[4] == ("| recu | failed | – | – | – | 0 of 2 finished; seeds 0, 1 failed: training diverged in "
                        "epoch 1 |")
    strict = summarize(runs, target=0.95)
    assert strict[0]["n_reached"] == 1 and strict[0]["epochs_to_target"] == 2  # only seed 2 reaches 95 %
    assert "| epochs to 95 % test accuracy |" in table_markdown(strict)
    never = table_markdown(summarize([_run("bnn", 0, 0.5, [0.4, 0.5])])).splitlines()[2]
    assert never == "| bnn | 50.00 (1 run) | not reached | n/a | 1.0 | 1 |"


def test_out_holding_an_earlier_report_is_refused(tmp_path):
    check_out(str(tmp_path / "new" / "deeper"))  # can be made: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "README.md").write_text("x")
    with pytest.raises(CompareError, match="earlier report .*--overwrite"):
        check_out(str(tmp_path / "old"))
    check_out(str(tmp_path / "old"), overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CompareError, match="not a directory"):
        check_out(str(tmp_path / "file"))


def test_cli_unknown_method_fails_before_anything(tmp_path):
    res = _cli(["compare", "--methods", "bnn,bogus", "--out", "rep"], cwd=tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "unknown method 'bogus'; known methods: float, bc, bnn" in res.stderr
    assert not (tmp_path / "rep").exists()
    res = _cli(["compare", "--target", "101", "--out", "rep"], cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "--target: expected a percentage > 0 and <= 100, got '101'" in res.stderr


# ---- against a real Dask cluster ------------------------------------------------------------------------
needs_distributed = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                       reason="refbnn compare runs on dask.distributed (pip install 'refbnn[compare]')")


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and two single-thread worker processes (the workers import refbnn as this process does)."""
    import logging

    import dask
    import distributed

    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1,
                                                                   "MKL_NUM_THREADS": 1}}):
        c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                     silence_logs=logging.ERROR)
    yield c
    c.close()


SWEEP = ["--methods", "bnn,recu,bnnpp", "--seeds", "2", "--epochs", "2", "--width", "0.25", "--no-progress",
         "--param", "bnnpp:beta_start=1e308"]  # bnnpp's sign-Swish overflows: both its runs diverge


@needs_distributed
def test_sweep_on_a_cluster_reports_every_run(cluster, tmp_path):
    t0 = time.perf_counter()
    res = _cli(["compare", *SWEEP, "--scheduler", cluster.scheduler_address, "--out", "rep"], cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr  # some run failed
    assert time.perf_counter() - t0 < 240
    assert "2 of 6 runs failed" in res.stderr
    rep = tmp_path / "rep"
    readme = (rep / "README.md").read_text()
    rows = {line.split(" | ")[0][2:]: line for line in readme.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "bnn", "recu", "bnnpp"}
    for method in ("bnn", "recu"):
        cells = rows[method].strip("| ").split(" | ")
        mean, std = map(float, cells[1].split(" ± "))
        accs = [json.loads((rep / "runs" / f"{method}-seed{s}.json").read_text())["test_accuracy"] for s in (0, 1)]
        assert mean == pytest.approx(100 * sum(accs) / 2, abs=0.005) and 0 < mean <= 100 and std >= 0
        assert cells[-1] == "2"
    assert "| bnnpp | failed |" in rows["bnnpp"] and "seeds 0, 1 failed:" in rows["bnnpp"]
    assert "training diverged in epoch 1" in rows["bnnpp"]
    assert f"--scheduler {cluster.scheduler_address}" in readme and "refbnn compare --methods bnn,recu,bnnpp" in readme
    assert "6 runs (4 finished, 2 failed) on 2 Dask workers" in readme and " cores (" in readme
    assert sorted(p.name for p in (rep / "runs").iterdir()) == [f"{m}-seed{s}.json" for m in ("bnn", "bnnpp", "recu")
                                                                for s in (0, 1)]
    ok = json.loads((rep / "runs" / "recu-seed1.json").read_text())
    assert ok["method"] == "recu" and ok["seed"] == 1 and ok["epochs"] == 2 and len(ok["test_accuracy_per_epoch"]) == 2
    bad = json.loads((rep / "runs" / "bnnpp-seed0.json").read_text())
    assert "training diverged" in bad["error"] and bad["settings"]["method_params"] == {"beta_start": 1e308}
    again = summarize(load_runs(str(rep)))  # the report's runs read back give the README's rows
    assert table_markdown(again).splitlines()[2:] == sorted(line for line in readme.splitlines()
                                                            if line.startswith("| b") or line.startswith("| r"))
    png = (rep / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # the same seed gives the same numbers on whichever worker runs it: refbnn train here, one thread ...
    res = _cli(["train", "--method", "recu", "--seed", "1", "--epochs", "2", "--width", "0.25", "--no-progress",
                "--metrics-json", "local.json"], cwd=tmp_path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    assert res.returncode == 0, res.stderr
    local = json.loads((tmp_path / "local.json").read_text())
    assert local["test_accuracy_per_epoch"] == ok["test_accuracy_per_epoch"]  # bit-equal floats from JSON
    assert local["train_loss"] == ok["train_loss"]
    # ... and refbnn compare's own local cluster
    res = _cli(["compare", "--methods", "recu", "--seeds", "2", "--epochs", "2", "--width", "0.25", "--workers", "1",
                "--no-progress", "--out", "rep_local"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    mine = json.loads((tmp_path / "rep_local" / "runs" / "recu-seed1.json").read_text())
    assert mine["test_accuracy_per_epoch"] == ok["test_accuracy_per_epoch"] and mine["train_loss"] == ok["train_loss"]
    assert "on 1 Dask worker (a local cluster)" in (tmp_path / "rep_local" / "README.md").read_text()

    # an earlier report is not replaced without --overwrite, and that is checked before the cluster is used
    res = _cli(["compare", *SWEEP, "--scheduler", cluster.scheduler_address, "--out", "rep"], cwd=tmp_path)
    assert res.returncode == 2 and "earlier report" in res.stderr, res.stderr


@needs_distributed
def test_every_run_failing_still_writes_the_report(tmp_path):
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "learning_curves.png").write_bytes(b"an earlier report's")
    res = _cli(["compare", "--methods", "bnnpp", "--seeds", "1", "--epochs", "1", "--width", "0.25", "--workers", "1",
                "--param", "beta_start=1e308", "--no-progress", "--out", "rep", "--overwrite"], cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    readme = (tmp_path / "rep" / "README.md").read_text()
    assert "| bnnpp | failed | – | – | – | 0 of 1 finished; seed 0 failed: " in readme
    assert "No run finished: no learning curves." in readme
    assert not (tmp_path / "rep" / "learning_curves.png").exists()  # the earlier one is gone too


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_distributed
def test_unreachable_scheduler_fails_fast_before_any_run(tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    res = _cli(["compare", "--methods", "bnn", "--seeds", "1", "--epochs", "1", "--scheduler", address,
                "--out", "rep"], cwd=tmp_path, timeout=60)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2, res.stdout + res.stderr
    assert elapsed < 15, elapsed
    assert f"cannot reach the Dask scheduler at {address}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # one line, no traceback
    assert not (tmp_path / "rep").exists()
    for bad in ("not an address", "tcp://host", "tcp://:8786", "tcp://host:99999"):
        res = _cli(["compare", "--scheduler", bad, "--out", "rep"], cwd=tmp_path, timeout=60)
        assert res.returncode == 2 and "expected a Dask scheduler address tcp://HOST:PORT" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "rep").exists()
