"""Every script of docs/tutorial runs and ends with its own checks passing ("step N ok").

A script that needs something this environment lacks (PyTorch) prints one line "SKIP: why" and exits 0;
the test then skips with that reason."""
import os
import pathlib
import subprocess
import sys

import pytest

import refbnn

TUTORIAL = pathlib.Path(__file__).resolve().parent.parent / "docs" / "tutorial"
SCRIPTS = sorted(TUTORIAL.glob("[0-9][0-9]_*.py"))


def test_the_tutorial_has_ten_steps():
    assert [p.name[:2] for p in SCRIPTS] == [f"{i:02d}" for i in range(1, 11)]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_tutorial_script_runs(script):
    # the scripts import the refbnn this test imports (installed, or a source checkout with built kernels)
    here = str(pathlib.Path(refbnn.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, script.name], cwd=TUTORIAL, capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    skip = [line for line in proc.stdout.splitlines() if line.startswith("SKIP: ")]
    if skip:
        pytest.skip(skip[0][len("SKIP: "):])
    assert f"step {int(script.name[:2])} ok" in proc.stdout
