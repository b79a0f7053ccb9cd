#!/usr/bin/env python3
"""Performance tables from the benchmarks' JSON output (Python 3, standard library only).

    python3 docs/performance.py                         # docs/data/ -> docs/performance.md
    python3 docs/performance.py --readme                # compact tables, one per machine
    python3 docs/performance.py --update-readme README.md
    python3 docs/performance.py --self-test

Data layout: one folder per run under the data directory (default docs/data/), e.g.
docs/data/h200/ or docs/data/cpu-2core/, holding

  meta.json    {"machine": ..., "date": "YYYY-MM-DD", "commit": ..., "command": ...,
                "notes": ..., "title": ... (optional heading; default the folder name)}
  *.jsonl, *.json (any names) with the lines of
    - `painn bench --json` (src/bench.rs): system, atoms, device, precision, median_us,
      atom_steps_per_s, gpu_memory_mib (null on the CPU), repeats;
    - python/scripts/bench_gpu.py (PyTorch, same weights, same GPU): system, atoms, mode
      (eager | compile), median_us, peak_memory_mib, device;
    - python/scripts/lammps_speed.py (LAMMPS MD with pair_style painn): system, atoms,
      device, steps, timesteps_per_s, atom_steps_per_s.

Each line is recognised by its fields, not by the file name; lines that are not JSON (a log
captured with tee) are skipped. python/scripts/ase_md_speed.py prints text only and is not
read. Missing files or fields leave blanks. When several runs name the same machine,
--readme shows the latest (by date, then folder name).
"""

import argparse
import contextlib
import io
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN = "<!-- performance:begin -->"
END = "<!-- performance:end -->"
EMPTY = "No runs recorded yet."
MODE_ORDER = {"eager": 0, "compile": 1}


# ---------------------------------------------------------------- reading

def number(value):
    """A finite float, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def json_records(path: Path):
    """The JSON objects in a file: one document (object or list), or JSON Lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        print(f"performance.py: skipping {path}: {error}", file=sys.stderr)
        return []
    try:
        document = json.loads(text)
        items = document if isinstance(document, list) else [document]
        return [item for item in items if isinstance(item, dict)]
    except ValueError:
        pass
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            records.append(item)
    return records


def kind(record):
    """'torch', 'lammps', 'painn' or None, from the fields a record carries."""
    if "system" not in record:
        return None
    if "timesteps_per_s" in record:
        return "lammps"
    if "mode" in record:
        return "torch"
    if any(name in record for name in ("median_us", "atom_steps_per_s", "precision")):
        return "painn"
    return None


class Run:
    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = {}
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            records = json_records(meta_path)
            if records:
                self.meta = records[0]
        self.painn = {}   # (device, precision) -> {system: record}
        self.torch = {}   # system -> {mode: record}
        self.lammps = {}  # system -> record
        self.stages = {}  # (device, precision) -> {system: [{"stage", "median_us"}]}
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix in (".jsonl", ".json") and p.name != "meta.json")
        for path in files:
            for record in json_records(path):
                what = kind(record)
                system = str(record.get("system"))
                if what == "painn":
                    key = (str(record.get("device") or "?"), str(record.get("precision") or "?"))
                    rows = self.painn.setdefault(key, {})
                    if record.get("stages"):
                        # `painn bench --profile`: its per-stage times, and its row only where
                        # no plain run gave one.
                        self.stages.setdefault(key, {})[system] = record["stages"]
                        rows.setdefault(system, record)
                    else:
                        rows[system] = record
                elif what == "torch":
                    self.torch.setdefault(system, {})[str(record.get("mode") or "?")] = record
                elif what == "lammps":
                    self.lammps[system] = record

    def field(self, name):
        value = self.meta.get(name)
        return str(value).strip() if value not in (None, "") else ""

    @property
    def title(self):
        return self.field("title") or self.folder.name

    @property
    def machine(self):
        return self.field("machine") or self.folder.name

    def empty(self):
        return not (self.painn or self.torch or self.lammps)


def read_runs(data: Path):
    if not data.is_dir():
        return []
    runs = [Run(folder) for folder in sorted(data.iterdir()) if folder.is_dir()]
    runs = [run for run in runs if not run.empty()]
    # Newest first; runs without a date last.
    runs.sort(key=lambda run: run.folder.name)
    runs.sort(key=lambda run: run.field("date"), reverse=True)
    return runs


# ---------------------------------------------------------------- formatting

def sig3(value):
    """Three significant digits; whole numbers with thousands separators from 100 up."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def fmt_time(us):
    us = number(us)
    if us is None:
        return ""
    return f"{sig3(us)} us" if us < 100 else f"{sig3(us / 1000)} ms"


def fmt_ratio(numerator, denominator):
    a, b = number(numerator), number(denominator)
    if a is None or b is None or b <= 0:
        return ""
    ratio = a / b
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.1f}x"


def fmt_mib(mib):
    mib = number(mib)
    if mib is None:
        return ""
    if mib >= 1024:
        return f"{mib / 1024:.1f} GiB"
    return f"{mib:.0f} MiB"


def fmt_rate(rate):
    rate = number(rate)
    if rate is None:
        return ""
    if rate >= 1e6:
        return f"{sig3(rate / 1e6)} M"
    if rate >= 1e3:
        return f"{sig3(rate / 1e3)} k"
    return sig3(rate)


def fmt_int(value):
    value = number(value)
    return "" if value is None else f"{value:,.0f}"


def fmt_steps(value):
    value = number(value)
    if value is None:
        return ""
    return sig3(value)


def label(system):
    if system.startswith("water_cluster"):
        return "water cluster"
    if system.startswith("water_box") or system.startswith("water_"):
        return "periodic water box"
    return system.replace("_", " ")


def mode_label(mode):
    return {"eager": "PyTorch eager", "compile": "torch.compile"}.get(mode, f"PyTorch {mode}")


def table(header, rows):
    """A Markdown table; columns (other than the first two) that are empty in every row are
    dropped. header: [(title, align)] with align 'l' or 'r'."""
    keep = [k for k in range(len(header)) if k < 2 or any(row[k] for row in rows)]
    lines = ["| " + " | ".join(header[k][0] for k in keep) + " |",
             "|" + "|".join("---:" if header[k][1] == "r" else "---" for k in keep) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(row[k] for k in keep) + " |")
    return "\n".join(lines)


def atoms_of(*records):
    for record in records:
        if record and number(record.get("atoms")) is not None:
            return number(record["atoms"])
    return None


def sort_key(system, atoms):
    # Molecules and clusters first, periodic boxes after, each by size (as painn bench).
    return (system.startswith("water_box"), atoms if atoms is not None else float("inf"), system)


def nearest_powers_of_ten(systems, atoms):
    """The README's selection: for each power of ten, the system whose atom count is closest
    to it (benzene, then about 10^2, 10^3, ... atoms), in size order; systems of unknown size
    are kept."""
    best, unknown = {}, []
    for system in systems:
        n = atoms(system)
        if n is None or n < 1:
            unknown.append(system)
            continue
        power = round(math.log10(n))
        distance = abs(math.log10(n) - power)
        if power not in best or distance < best[power][0]:
            best[power] = (distance, system)
    kept = sorted((system for _, system in best.values()), key=lambda s: (atoms(s), s))
    return kept + unknown


def torch_matches(painn_device, torch_record):
    """PyTorch rows (GPU) sit beside painn's GPU rows only."""
    torch_device = str(torch_record.get("device") or "")
    return not (painn_device == "cpu" and torch_device and torch_device != "cpu")


def bench_rows(run, device, precision, compact):
    painn_rows = run.painn.get((device, precision), {})
    torch_rows = {system: {mode: record for mode, record in modes.items()
                           if torch_matches(device, record)}
                  for system, modes in run.torch.items()}
    torch_rows = {system: modes for system, modes in torch_rows.items() if modes}
    modes = sorted({mode for m in torch_rows.values() for mode in m},
                   key=lambda mode: (MODE_ORDER.get(mode, 9), mode))
    systems = set(painn_rows) | set(torch_rows)
    ordered = sorted(systems, key=lambda s: sort_key(
        s, atoms_of(painn_rows.get(s), *torch_rows.get(s, {}).values())))
    if compact:
        ordered = nearest_powers_of_ten(ordered, lambda s: atoms_of(
            painn_rows.get(s), *torch_rows.get(s, {}).values()))
    header = [("system", "l"), ("atoms", "r"), ("painn", "r")]
    if compact:
        header += [(mode_label(mode) + " (speed-up)", "r") for mode in modes]
        header += [("atom-steps/s", "r"), ("painn GPU memory", "r")]
    else:
        header += [(mode_label(mode), "r") for mode in modes]
        header += [(f"vs {mode}", "r") for mode in modes]
        header += [("atom-steps/s", "r"), ("painn GPU memory", "r")]
        header += [(f"{mode_label(mode)} peak memory", "r") for mode in modes]
    rows = []
    for system in ordered:
        p = painn_rows.get(system) or {}
        t = torch_rows.get(system, {})
        painn_us = p.get("median_us")
        row = [label(system), fmt_int(atoms_of(p, *t.values())), fmt_time(painn_us)]
        if compact:
            for mode in modes:
                time = fmt_time((t.get(mode) or {}).get("median_us"))
                ratio = fmt_ratio((t.get(mode) or {}).get("median_us"), painn_us)
                row.append(f"{time} ({ratio})" if time and ratio else time)
            row += [fmt_rate(p.get("atom_steps_per_s")), fmt_mib(p.get("gpu_memory_mib"))]
        else:
            row += [fmt_time((t.get(mode) or {}).get("median_us")) for mode in modes]
            row += [fmt_ratio((t.get(mode) or {}).get("median_us"), painn_us) for mode in modes]
            row += [fmt_rate(p.get("atom_steps_per_s")), fmt_mib(p.get("gpu_memory_mib"))]
            row += [fmt_mib((t.get(mode) or {}).get("peak_memory_mib")) for mode in modes]
        rows.append(row)
    return header, rows


def bench_tables(run, compact):
    """[(heading, table)] for painn bench (with PyTorch beside it where it exists)."""
    keys = sorted(run.painn) or ([("", "")] if run.torch else [])
    tables = []
    for device, precision in keys:
        header, rows = bench_rows(run, device, precision, compact)
        if not rows:
            continue
        where = "CPU" if device == "cpu" else device
        heading = f"{where}, {precision}" if device else "PyTorch only (no painn bench rows)"
        tables.append((heading, table(header, rows)))
    return tables


def lammps_table(run):
    systems = sorted(run.lammps, key=lambda s: sort_key(
        "water_box" if s.startswith("water") else s, atoms_of(run.lammps[s])))
    header = [("system", "l"), ("atoms", "r"), ("device", "l"), ("steps", "r"),
              ("timesteps/s", "r"), ("atom-steps/s", "r")]
    rows = []
    for system in systems:
        r = run.lammps[system]
        rows.append([label(system) if system != "benzene" else "benzene (open box)",
                     fmt_int(r.get("atoms")), str(r.get("device") or ""), fmt_int(r.get("steps")),
                     fmt_steps(r.get("timesteps_per_s")), fmt_rate(r.get("atom_steps_per_s"))])
    return table(header, rows)


def stage_tables(run):
    """[(heading, table)] of per-stage times (`painn bench --profile`): a column per system,
    microseconds and the share of a call."""
    tables = []
    for (device, precision), by_system in sorted(run.stages.items()):
        systems = sorted(by_system, key=lambda s: sort_key(s, atoms_of(run.painn.get(
            (device, precision), {}).get(s))))
        names = []
        for system in systems:
            for entry in by_system[system]:
                if entry.get("stage") not in names:
                    names.append(entry.get("stage"))
        header = [("stage", "l")] + [(f"{label(s)} ({fmt_int(atoms_of(run.painn.get((device, precision), {}).get(s)))})", "r")
                                     for s in systems]
        times = {s: {e.get("stage"): number(e.get("median_us")) for e in by_system[s]} for s in systems}
        totals = {s: sum(v for k, v in times[s].items() if v is not None and not str(k).endswith("(rebuild)"))
                  for s in systems}
        rows = []
        for name in names:
            row = [str(name)]
            for system in systems:
                us = times[system].get(name)
                share = "" if us is None or not totals[system] or str(name).endswith("(rebuild)") \
                    else f" ({100 * us / totals[system]:.0f}%)"
                row.append("" if us is None else fmt_time(us) + share)
            rows.append(row)
        where = "CPU" if device == "cpu" else device
        tables.append((f"{where}, {precision}", table(header, rows)))
    return tables


def provenance(run):
    parts = [f"Machine: {run.machine}", f"date: {run.field('date') or 'not recorded'}"]
    commit = run.field("commit")
    parts.append(f"commit: `{commit}`" if commit else "commit: not recorded")
    text = ", ".join(parts) + "."
    if run.field("command"):
        text += f" Command: `{run.field('command')}`."
    return text


EXPLANATION = """\
Median time per energy + forces call (float32 unless stated), host arrays in and out,
positions moved by 0.001 A between calls (`painn bench`). PyTorch is the implementation of
the same weights in `python/painn/reference.py` (autograd forces, edges built untimed) on
the same GPU, eager and `torch.compile` (`python/scripts/bench_gpu.py`); "vs" columns are
PyTorch's time over painn's. LAMMPS rows are LAMMPS's own timesteps/s for NVE MD with
`pair_style painn` (`python/scripts/lammps_speed.py`)."""


def performance_markdown(runs):
    out = ["# Performance", "",
           "Generated by `python3 docs/performance.py` from the JSON files under `docs/data/`",
           "(see `docs/data/README.md`); do not edit by hand.", ""]
    if not runs:
        out += [EMPTY, ""]
        return "\n".join(out)
    out += [EXPLANATION, ""]
    for run in runs:
        out += [f"## {run.title}", "", provenance(run), ""]
        if run.field("notes"):
            out += [run.field("notes"), ""]
        for heading, text in bench_tables(run, compact=False):
            out += [f"### painn bench: {heading}", "", text, ""]
        for heading, text in stage_tables(run):
            out += [f"### Time per stage (`painn bench --profile`): {heading}", "",
                    "Medians over calls with profiling on (GPU: events between stages on the "
                    "stream); shares of one steady call; the neighbour-list rebuild is a call "
                    "of its own.", "", text, ""]
        if run.lammps:
            out += ["### LAMMPS MD", "", lammps_table(run), ""]
    return "\n".join(out)


def latest_per_machine(runs):
    chosen = {}
    for run in runs:  # newest first
        chosen.setdefault(run.machine, run)
    return [run for run in runs if chosen[run.machine] is run]


def readme_markdown(runs):
    if not runs:
        return f"{EMPTY} See [docs/performance.md](docs/performance.md)."
    out = []
    for run in latest_per_machine(runs):
        head = f"**{run.machine}**, {run.field('date') or 'date not recorded'}, "
        head += f"commit `{run.field('commit')}`" if run.field("commit") else "commit not recorded"
        # (The command is named in docs/performance.md.)
        tables = bench_tables(run, compact=True)
        for k, (heading, text) in enumerate(tables):
            caption = f"{head}; {heading}:" if k == 0 else f"{heading}:"
            out += [caption, "", text, ""]
        if not tables:
            out += [head + ":", ""]
        if run.lammps:
            speeds = []
            for system in sorted(run.lammps, key=lambda s: atoms_of(run.lammps[s]) or 0):
                r = run.lammps[system]
                if number(r.get("timesteps_per_s")) is not None:
                    speeds.append(f"{label(system)} ({fmt_int(r.get('atoms'))} atoms) "
                                  f"{fmt_steps(r.get('timesteps_per_s'))} steps/s")
            if speeds:
                out += ["LAMMPS MD: " + "; ".join(speeds) + ".", ""]
    return "\n".join(out).rstrip("\n")


def update_readme(path: Path, text: str):
    content = path.read_text()
    start, end = content.find(BEGIN), content.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"performance.py: {path} has no {BEGIN} ... {END} markers")
    content = content[:start + len(BEGIN)] + "\n" + text.rstrip("\n") + "\n" + content[end:]
    path.write_text(content)


# ---------------------------------------------------------------- self-test

def self_test():
    root = Path(tempfile.mkdtemp(prefix="painn-performance-"))
    try:
        data = root / "data"
        gpu = data / "gpu-run"
        cpu = data / "cpu-run"
        gpu.mkdir(parents=True)
        cpu.mkdir(parents=True)
        (data / "README.md").write_text("not a run\n")
        (data / "empty-run").mkdir()
        # Empty data folder first.
        assert EMPTY in performance_markdown(read_runs(root / "missing"))
        (gpu / "meta.json").write_text(json.dumps({
            "machine": "Test GPU box", "date": "2000-01-02", "commit": "abc1234",
            "command": "bash benches/gpu/run_on_device.sh bench", "notes": "sample data"}))

        def painn(system, atoms, us, memory):
            return json.dumps({"system": system, "atoms": atoms, "device": "Test GPU",
                               "precision": "f32", "median_us": us,
                               "atom_steps_per_s": atoms / us * 1e6,
                               "gpu_memory_mib": memory, "repeats": 50})
        (gpu / "bench-painn.jsonl").write_text("\n".join([
            "== painn bench (cuda, f32) ==",  # a log line: skipped
            painn("benzene", 12, 530.0, 15.0),
            painn("water_cluster_48", 48, 840.0, 16.2),
            painn("water_cluster_192", 192, 1080.0, 21.0),
            painn("water_cluster_768", 768, 1300.0, 41.0),
            painn("water_box_98304", 98304, 57400.0, 3788.8),
        ]) + "\n")

        def torch(system, atoms, mode, us, memory):
            return json.dumps({"system": system, "atoms": atoms, "mode": mode, "median_us": us,
                               "peak_memory_mib": memory, "device": "Test GPU"})
        (gpu / "bench-torch.jsonl").write_text("\n".join([
            torch("benzene", 12, "eager", 8620.0, 69.0),
            torch("benzene", 12, "compile", 2680.0, 50.0),
            torch("water_cluster_48", 48, "eager", 6860.0, 95.0),
            "not json {",
        ]) + "\n")
        (gpu / "lammps-speed.jsonl").write_text(json.dumps({
            "system": "water_10k", "atoms": 10125, "device": "cuda:0", "steps": 200,
            "timesteps_per_s": 80.1, "atom_steps_per_s": 80.1 * 10125}) + "\n")
        # A CPU run without meta.json, with a missing field and a null memory.
        (cpu / "bench.jsonl").write_text(
            json.dumps({"system": "benzene", "atoms": 12, "device": "cpu", "precision": "f32",
                        "median_us": 350.0, "atom_steps_per_s": 34285.7,
                        "gpu_memory_mib": None, "repeats": 50}) + "\n" +
            json.dumps({"system": "water_cluster_192", "atoms": 192, "device": "cpu",
                        "precision": "f32", "gpu_memory_mib": None}) + "\n")

        runs = read_runs(data)
        assert [run.folder.name for run in runs] == ["gpu-run", "cpu-run"], runs
        md = performance_markdown(runs)
        expected = [
            "## gpu-run",
            "Machine: Test GPU box, date: 2000-01-02, commit: `abc1234`. "
            "Command: `bash benches/gpu/run_on_device.sh bench`.",
            "### painn bench: Test GPU, f32",
            "| system | atoms | painn | PyTorch eager | torch.compile | vs eager | vs compile "
            "| atom-steps/s | painn GPU memory | PyTorch eager peak memory "
            "| torch.compile peak memory |",
            "| benzene | 12 | 0.53 ms | 8.62 ms | 2.68 ms | 16.3x | 5.1x | 22.6 k | 15 MiB "
            "| 69 MiB | 50 MiB |",
            # no compile row: blanks
            "| water cluster | 48 | 0.84 ms | 6.86 ms |  | 8.2x |  | 57.1 k | 16 MiB | 95 MiB |  |",
            # no PyTorch rows at all: blanks
            "| periodic water box | 98,304 | 57.4 ms |  |  |  |  | 1.71 M | 3.7 GiB |  |  |",
            "### LAMMPS MD",
            "| periodic water box | 10,125 | cuda:0 | 200 | 80.1 | 811 k |",
            "## cpu-run",
            "Machine: cpu-run, date: not recorded, commit: not recorded.",
            "### painn bench: CPU, f32",
            "| system | atoms | painn | atom-steps/s |",  # empty columns dropped
            "| benzene | 12 | 0.35 ms | 34.3 k |",
            "| water cluster | 192 |  |  |",
        ]
        for line in expected:
            assert line in md.splitlines(), f"missing line:\n{line}\n--- in ---\n{md}"
        assert "| water cluster | 768 | 1.3 ms |" in md
        readme = readme_markdown(runs)
        # The README keeps, per power of ten, the system closest to it in atoms.
        # (12 -> 10, 48 and 192 -> 10^2, 768 -> 10^3, 98,304 -> 10^5)
        assert "| water cluster | 192 | 1.08 ms |" in readme and "| 48 |" not in readme
        assert "| water cluster | 768 |" in readme and "| periodic water box | 98,304 |" in readme
        for line in [
            "**Test GPU box**, 2000-01-02, commit `abc1234`; Test GPU, f32:",
            "| benzene | 12 | 0.53 ms | 8.62 ms (16.3x) | 2.68 ms (5.1x) | 22.6 k | 15 MiB |",
            "LAMMPS MD: periodic water box (10,125 atoms) 80.1 steps/s.",
            "**cpu-run**, date not recorded, commit not recorded; CPU, f32:",
            "| benzene | 12 | 0.35 ms | 34.3 k |",
        ]:
            assert line in readme.splitlines(), f"missing line:\n{line}\n--- in ---\n{readme}"
        # A newer run of the same machine replaces the older one in --readme only.
        newer = data / "gpu-run-2"
        shutil.copytree(gpu, newer)
        meta = json.loads((newer / "meta.json").read_text())
        meta["date"] = "2000-02-01"
        (newer / "meta.json").write_text(json.dumps(meta))
        runs = read_runs(data)
        assert [run.folder.name for run in runs] == ["gpu-run-2", "gpu-run", "cpu-run"]
        assert "**Test GPU box**, 2000-02-01," in readme_markdown(runs)
        assert "2000-01-02" not in readme_markdown(runs)
        assert "## gpu-run\n" in performance_markdown(runs)
        # --update-readme replaces the text between the markers, and only that.
        page = root / "README.md"
        page.write_text(f"# x\n\nbefore\n{BEGIN}\nold text\n{END}\nafter\n")
        update_readme(page, readme_markdown(runs))
        text = page.read_text()
        assert "old text" not in text and text.startswith(f"# x\n\nbefore\n{BEGIN}\n")
        assert text.endswith(f"\n{END}\nafter\n") and "8.62 ms (16.3x)" in text
        update_readme(page, readme_markdown([]))
        assert f"{BEGIN}\n{EMPTY}" in page.read_text()
        # The command line end to end.
        output = root / "performance.md"
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--data", str(data), "--output", str(output)])
            assert output.read_text() == performance_markdown(runs)
            main(["--data", str(root / "missing"), "--output", str(output)])
        assert EMPTY in output.read_text()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("performance.py self-test passed")


# ---------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "data",
                        help="folder of run folders (default docs/data)")
    parser.add_argument("--output", type=Path, default=HERE / "performance.md",
                        help="Markdown file to write (default docs/performance.md)")
    parser.add_argument("--readme", action="store_true",
                        help="print the compact tables for the README instead")
    parser.add_argument("--update-readme", type=Path, metavar="README",
                        help="replace the text between the performance markers of README")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args(argv)
    if args.self_test:
        self_test()
        return 0
    runs = read_runs(args.data)
    if args.readme:
        print(readme_markdown(runs))
        return 0
    if args.update_readme:
        update_readme(args.update_readme, readme_markdown(runs))
        print(f"updated {args.update_readme}")
        return 0
    args.output.write_text(performance_markdown(runs))
    print(f"wrote {args.output} ({len(runs)} run(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
