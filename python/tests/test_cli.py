"""The `painn` command installed by `pip install ./python` runs the bundled program."""

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_painn_command_runs_the_bundled_program():
    command = shutil.which("painn")
    if command is None:
        pytest.skip("the painn command is not installed (pip install ./python installs it)")
    version = subprocess.run([command, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("painn "), version.stdout
    info = subprocess.run([command, "info", str(REPO / "tests/data/tiny_model.safetensors")],
                          capture_output=True, text=True, check=True)
    assert '"architecture": "painn-student"' in info.stdout
    failed = subprocess.run([command, "info", "no-such-model.safetensors"], capture_output=True, text=True)
    assert failed.returncode != 0 and "no-such-model.safetensors" in failed.stderr
