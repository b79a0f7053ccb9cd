"""Build step of the painn Python package: the Rust engine as painn/libpainn.so.

The metadata lives in pyproject.toml; this file only adds the build step, so that
`pip install ./python` (from the repository) is the one command that installs the package
with its engine:

* `build_ext` runs `cargo build --release --lib --bin painn` in the repository root
  (`../Cargo.toml` relative to this file) and copies `<target dir>/release/libpainn.so`
  and the `painn` command line into the built package as `painn/libpainn.so` and
  `painn/bin/painn` (into the source tree for an editable install); the `painn` console
  script runs the latter. The
  target dir is $PAINN_CARGO_TARGET_DIR, else $CARGO_TARGET_DIR, else cargo's own choice
  (`target/` of the repository); $CARGO names the cargo binary if it is not on PATH.
* the distribution declares binary content, so the wheel is platform-specific
  (py3-none-<platform>: the library does not depend on the Python version).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIBRARY = "libpainn.so"
BINARY = "painn"


class BuildError(RuntimeError):
    pass


def _cargo() -> str:
    candidates = [os.environ.get("CARGO"), shutil.which("cargo"), str(Path.home() / ".cargo" / "bin" / "cargo")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BuildError(
        "painn: building the engine needs Rust's cargo, which was not found (not on PATH, "
        "not in ~/.cargo/bin, $CARGO unset). Install Rust from https://rustup.rs and retry "
        "`pip install ./python`.")


def build_engine() -> "tuple[Path, Path]":
    """Runs cargo in the repository root; returns the paths of libpainn.so and the CLI."""
    manifest = REPO / "Cargo.toml"
    if not manifest.is_file():
        raise BuildError(
            f"painn: the Rust crate was not found at {manifest}. The Python package is built "
            "from the painn repository (`pip install ./python` in its root, or "
            "`pip install /path/to/painn/python`): its build step compiles the engine with "
            "cargo from ../Cargo.toml.")
    cargo = _cargo()
    env = dict(os.environ)
    target = os.environ.get("PAINN_CARGO_TARGET_DIR") or os.environ.get("CARGO_TARGET_DIR")
    if target:
        target = Path(target)
        if not target.is_absolute():
            target = REPO / target
        env["CARGO_TARGET_DIR"] = str(target)
    command = [cargo, "build", "--release", "--lib", "--bin", BINARY, "--manifest-path", str(manifest)]
    print("painn: " + " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=REPO, env=env)
    if done.returncode != 0:
        raise BuildError(f"painn: `{' '.join(command)}` failed with status {done.returncode} (its output is above)")
    if target is None:
        target = _cargo_target_dir(cargo, manifest, env)
    built = target / "release" / LIBRARY, target / "release" / BINARY
    for path in built:
        if not path.is_file():
            raise BuildError(f"painn: cargo succeeded but {path} does not exist")
    return built


def _cargo_target_dir(cargo, manifest, env) -> Path:
    """cargo's target directory (honours .cargo/config.toml), else ../target."""
    try:
        import json

        done = subprocess.run([cargo, "metadata", "--format-version", "1", "--no-deps", "--offline",
                               "--manifest-path", str(manifest)], cwd=REPO, env=env, capture_output=True,
                              text=True, check=True)
        return Path(json.loads(done.stdout)["target_directory"])
    except (subprocess.CalledProcessError, ValueError, KeyError):
        return REPO / "target"


class BuildEngine(build_ext):
    """`build_ext` that builds the Rust engine instead of C extensions."""

    description = "build the painn engine with cargo and bundle libpainn.so"

    def _package(self) -> Path:
        if self.inplace or getattr(self, "editable_mode", False):
            return HERE / "painn"
        return Path(self.build_lib) / "painn"

    def run(self):
        try:
            library, binary = build_engine()
        except BuildError as error:
            sys.exit(str(error))
        package = self._package()
        self._built = {}
        for source, name in ((library, LIBRARY), (binary, "bin/" + BINARY)):
            destination = package / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            os.chmod(destination, 0o755)
            self._built[str(Path(self.build_lib) / "painn" / name)] = str(source)
            print(f"painn: bundled {source} as {destination}", file=sys.stderr, flush=True)

    def get_outputs(self):
        return [str(Path(self.build_lib) / "painn" / name) for name in (LIBRARY, "bin/" + BINARY)]

    def get_output_mapping(self):
        return dict(getattr(self, "_built", {}))


class BinaryDistribution(Distribution):
    """Binary content (libpainn.so): a platform wheel."""

    def has_ext_modules(self):
        return True


commands = {"build_ext": BuildEngine}
try:
    try:
        from setuptools.command.bdist_wheel import bdist_wheel
    except ImportError:  # setuptools < 70.1
        from wheel.bdist_wheel import bdist_wheel

    class PlatformWheel(bdist_wheel):
        """py3-none-<platform>: tied to the platform (the .so), not to a Python ABI (ctypes)."""

        def finalize_options(self):
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    commands["bdist_wheel"] = PlatformWheel
except ImportError:
    pass

setup(distclass=BinaryDistribution, cmdclass=commands)
