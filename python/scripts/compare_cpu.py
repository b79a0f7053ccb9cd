#!/usr/bin/env python3
"""CPU benchmark, side by side in one run: the painn engine (criterion, `cargo bench --bench
model_cpu`) against the PyTorch implementation of the same weights (`painn.reference`,
float32, eager, autograd forces) on the same structures and the same machine.

    python3 python/scripts/compare_cpu.py [--threads 2] [--precision f32]

Prints a Markdown table (also written to target/bench-cpu.md) with the median time per
energy + forces call and the ratio. Needs the converted student model
(target/models/student_427k.safetensors or $PAINN_STUDENT_MODEL) and torch.

The criterion and PyTorch halves run minutes apart, and this VM's speed drifts by tens of
percent from minute to minute. For the structures below 500 atoms a second table therefore
interleaves the two in the same seconds: rounds of painn calls (through the Python
bindings, `painn.Calculator`, ctypes overhead included) and PyTorch calls, medians over all
rounds. Each block starts with an untimed 50 ms pause, so that neither side runs beside the
other's leftover threads (PyTorch's OpenMP workers spin for milliseconds after a call), and
untimed warm-up calls (10 of painn's, 1 of PyTorch's: about 5 and 10 ms), because on this VM
the first calls after any pause are slow.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python"))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", default="f32", choices=["f32", "f64"])
    parser.add_argument("--repeats", type=int, default=30,
                        help="PyTorch calls timed per structure below 1,000 atoms (3 above)")
    args = parser.parse_args()
    # The in-process engine of the interleaved table reads this when its pool starts.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    model = Path(os.environ.get("PAINN_STUDENT_MODEL",
                                REPO / "target/models/student_427k.safetensors"))
    env = dict(os.environ, PAINN_BENCH_PRECISIONS=args.precision,
               RAYON_NUM_THREADS=str(args.threads), PAINN_STUDENT_MODEL=str(model))
    subprocess.run(["cargo", "bench", "--bench", "model_cpu"], cwd=REPO, env=env, check=True)
    # The engine library for the interleaved table (painn.Calculator finds target/release).
    subprocess.run(["cargo", "build", "--release", "--lib"], cwd=REPO, env=env, check=True)

    from painn import reference, reference_bench  # torch is imported here

    structures = json.loads((REPO / "target/bench-structures/cpu.json").read_text())
    torch_model = reference.load_model(model)
    rows = []
    for name, case in structures.items():
        estimate = REPO / f"target/criterion/energy_forces_cpu/{args.precision}/{name}/new/estimates.json"
        painn_s = json.loads(estimate.read_text())["median"]["point_estimate"] * 1e-9
        timing = reference_bench.time_energy_forces(
            torch_model, case["Z"], case["pos"], None, (False, False, False),
            threads=args.threads, repeats=args.repeats if len(case["Z"]) < 1000 else 3)
        rows.append((name, len(case["Z"]), painn_s, timing["median_s"]))

    lines = [
        f"CPU: {cpu_name()}, {args.threads} threads; painn {args.precision} (criterion median) "
        f"vs PyTorch float32 eager (painn.reference, median); energy + forces per call.",
        "",
        "| structure | atoms | painn | PyTorch | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, atoms, ours, theirs in rows:
        lines.append(f"| {name} | {atoms} | {ours * 1e3:.3f} ms | {theirs * 1e3:.1f} ms | "
                     f"{theirs / ours:.1f}x |")
    lines += [
        "",
        "Interleaved in the same seconds (rounds of 40 painn calls through `painn.Calculator`",
        "and 3 PyTorch calls, each block after an untimed 50 ms pause and warm-up calls, 10 of painn's",
        "and 1 of PyTorch's; medians over all rounds):",
        "",
        "| structure | atoms | painn | PyTorch | speed-up | rounds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, case in structures.items():
        if len(case["Z"]) >= 500:
            continue
        ours, theirs, rounds = interleaved(model, torch_model, case, args)
        lines.append(f"| {name} | {len(case['Z'])} | {ours * 1e3:.3f} ms | {theirs * 1e3:.1f} ms | "
                     f"{theirs / ours:.1f}x | {rounds} |")
    text = "\n".join(lines)
    (REPO / "target/bench-cpu.md").write_text(text + "\n")
    print(text)


# Pause between the blocks of painn and PyTorch calls in the interleaved table, seconds.
IDLE_BETWEEN_BLOCKS_S = 0.05


def interleaved(model_path: Path, torch_model, case: dict, args, rounds: int = 15):
    """Median seconds per call of painn and of PyTorch, measured alternately in rounds."""
    import statistics
    import time

    import numpy as np
    import torch

    from painn import Calculator, Model, reference

    torch.set_num_threads(args.threads)
    numbers = np.asarray(case["Z"], dtype=np.int32)
    positions = np.asarray(case["pos"], dtype=np.float64)
    calculator = Calculator(Model(model_path), device="cpu", precision=args.precision)
    neighbors = reference.neighbor_list(case["pos"], None, (False, False, False), torch_model.cutoff)

    def ours():
        calculator.compute(numbers, positions)

    def theirs():
        reference.evaluate(torch_model, case["Z"], case["pos"], None, (False, False, False),
                           dtype=torch.float32, virial=False, neighbors=neighbors)

    for _ in range(3):
        ours()
        theirs()
    times = {"ours": [], "theirs": []}
    for _ in range(rounds):
        for key, function, warm_up, calls in (("ours", ours, 10, 40), ("theirs", theirs, 1, 3)):
            # Untimed: a pause, so that PyTorch's OpenMP workers, which keep spinning for a
            # few milliseconds after its last call, do not take the cores from the calls
            # that follow (the first five painn calls after PyTorch's took 1.1-2.2 ms
            # instead of 0.5 in a check); then warm-up calls, about 5 ms on each side,
            # because the first calls after any pause are slow on this VM (the first painn
            # call 1.2-1.3 ms, the third 0.6, with no PyTorch in the process at all).
            time.sleep(IDLE_BETWEEN_BLOCKS_S)
            for _ in range(warm_up):
                function()
            for _ in range(calls):
                start = time.perf_counter()
                function()
                times[key].append(time.perf_counter() - start)
    calculator.close()
    return statistics.median(times["ours"]), statistics.median(times["theirs"]), rounds


if __name__ == "__main__":
    main()
