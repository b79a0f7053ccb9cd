//! The engine's behaviour, one test body per property, instantiated for every platform and
//! precision (OpenMM style): committed fixtures from an independent PyTorch implementation,
//! finite differences for forces and virial, invariances, isolated atoms, determinism.
//! CUDA instances skip, with the reason printed, where no GPU is usable.

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use painn::{
    Calculator, Cell, Device, Model, NeighborList, NeighborListOptions, Precision, Request, Results,
};

on_every_platform!(
    matches_fixtures,
    forces_and_virial_are_energy_derivatives,
    translation_permutation_and_wrapping_invariance,
    supercell_energy_is_extensive,
    atom_without_neighbours_is_finite_and_force_free,
    results_are_bitwise_reproducible,
);

fn tiny() -> Arc<Model> {
    Arc::new(tiny_model())
}

fn evaluate(
    calculator: &mut Calculator,
    z: &[i32],
    positions: &[[f64; 3]],
    cell: &Cell,
) -> Results {
    calculator
        .compute(z, positions, cell, Request::ALL)
        .unwrap()
}

fn matches_fixtures(platform: Platform) {
    let model = tiny();
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let reference = load_json(repository().join("tests/data/tiny_reference.json"));
    for case in cases(&reference) {
        let results = evaluate(
            &mut calculator,
            &case.atomic_numbers,
            &case.positions,
            &case.cell,
        );
        let list = NeighborList::build(
            &case.positions,
            &case.cell,
            NeighborListOptions::new(model.cutoff_angstrom()),
        )
        .unwrap();
        assert_eq!(list.n_edges(), case.edges, "{}: edge count", case.name);
        // Absolute tolerance: the fixture's own (float64) or the precision's, scaled.
        let scale = 1.0 + case.energy.abs();
        let tolerance = match platform.precision {
            Precision::F64 => case.tolerance.unwrap_or(1e-9),
            Precision::F32 => platform.tolerance() * scale,
        };
        let energy_error = (results.energy - case.energy).abs();
        let force_error = max_abs_difference(&results.forces, &case.forces);
        let virial_error = max_abs_difference(&results.virial, &case.virial);
        let energies_error = case
            .energies
            .as_ref()
            .map(|e| {
                e.iter()
                    .zip(&results.energies)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max)
            })
            .unwrap_or(0.0);
        println!(
            "{} {:?}: |dE| {energy_error:.1e} |dE_i| {energies_error:.1e} |dF| {force_error:.1e} |dW| {virial_error:.1e} (tolerance {tolerance:.0e})",
            case.name, platform
        );
        assert!(energy_error <= tolerance, "{}: energy", case.name);
        assert!(
            energies_error <= tolerance,
            "{}: per-atom energies",
            case.name
        );
        assert!(force_error <= tolerance, "{}: forces", case.name);
        assert!(virial_error <= tolerance * scale, "{}: virial", case.name);
    }
}

fn forces_and_virial_are_energy_derivatives(platform: Platform) {
    if platform.precision != Precision::F64 {
        // Central differences need float64 energies; float32 forces are checked against
        // the float64 ones in the other tests.
        return;
    }
    let model = tiny();
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    for seed in 0..3 {
        let (z, positions, lattice) = random_system(seed, 14, 8);
        let cell = Cell::new(lattice, [true; 3]).unwrap();
        let results = evaluate(&mut calculator, &z, &positions, &cell);
        let mut energy_at = |positions: &[[f64; 3]], lattice: [[f64; 3]; 3]| {
            let cell = Cell::new(lattice, [true; 3]).unwrap();
            calculator
                .compute(
                    &z,
                    positions,
                    &cell,
                    Request {
                        energies: false,
                        forces: false,
                        virial: false,
                        atom_virials: false,
                    },
                )
                .unwrap()
                .energy
        };
        let step = 1e-4;
        let mut error: f64 = 0.0;
        let mut norm: f64 = 0.0;
        for atom in 0..positions.len() {
            for x in 0..3 {
                let mut plus = positions.clone();
                let mut minus = positions.clone();
                plus[atom][x] += step;
                minus[atom][x] -= step;
                let numeric =
                    -(energy_at(&plus, lattice) - energy_at(&minus, lattice)) / (2.0 * step);
                error = error.max((numeric - results.forces[atom][x]).abs());
                norm = norm.max(results.forces[atom][x].abs());
            }
        }
        println!(
            "seed {seed}: max |F - F_fd| / max |F| = {:.2e}",
            error / norm
        );
        assert!(error <= 1e-6 * norm, "forces: {error} vs {norm}");

        // W[a][b] = -dE/d eps[a][b] for r -> r (I + eps), positions and lattice together.
        let strained = |eps: [[f64; 3]; 3]| {
            let apply = |r: [f64; 3]| {
                let mut out = r;
                for b in 0..3 {
                    for a in 0..3 {
                        out[b] += r[a] * eps[a][b];
                    }
                }
                out
            };
            (
                positions.iter().map(|&r| apply(r)).collect::<Vec<_>>(),
                [apply(lattice[0]), apply(lattice[1]), apply(lattice[2])],
            )
        };
        let mut virial_error: f64 = 0.0;
        let virial_norm = results
            .virial
            .iter()
            .flatten()
            .fold(0.0f64, |m, w| m.max(w.abs()));
        for a in 0..3 {
            for b in 0..3 {
                let mut eps = [[0.0; 3]; 3];
                eps[a][b] = step;
                let (p_plus, l_plus) = strained(eps);
                eps[a][b] = -step;
                let (p_minus, l_minus) = strained(eps);
                let numeric =
                    -(energy_at(&p_plus, l_plus) - energy_at(&p_minus, l_minus)) / (2.0 * step);
                virial_error = virial_error.max((numeric - results.virial[a][b]).abs());
            }
        }
        println!(
            "seed {seed}: max |W - W_fd| / max |W| = {:.2e}",
            virial_error / virial_norm
        );
        assert!(
            virial_error <= 1e-6 * virial_norm,
            "virial: {virial_error} vs {virial_norm}"
        );
    }
}

fn assert_close(a: &Results, b: &Results, tolerance: f64, what: &str) {
    let scale = 1.0 + a.energy.abs();
    assert!(
        (a.energy - b.energy).abs() <= tolerance * scale,
        "{what}: energy {} vs {}",
        a.energy,
        b.energy
    );
    let force_scale = 1.0 + rms(&a.forces);
    assert!(
        max_abs_difference(&a.forces, &b.forces) <= tolerance * force_scale,
        "{what}: forces"
    );
    assert!(
        max_abs_difference(&a.virial, &b.virial) <= tolerance * scale,
        "{what}: virial"
    );
}

fn translation_permutation_and_wrapping_invariance(platform: Platform) {
    let model = tiny();
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let (z, positions, lattice) = random_system(7, 24, 8);
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let base = evaluate(&mut calculator, &z, &positions, &cell);
    // Looser than the precision's tolerance where round-off in the inputs themselves changes
    // (a translated, wrapped or permuted float32 sum).
    let tolerance = platform.tolerance().max(1e-9);

    let shifted: Vec<[f64; 3]> = positions
        .iter()
        .map(|r| [r[0] + 3.7, r[1] - 12.1, r[2] + 0.3])
        .collect();
    assert_close(
        &base,
        &evaluate(&mut calculator, &z, &shifted, &cell),
        tolerance,
        "translation",
    );

    // Wrap every other atom by a different lattice translation.
    let wrapped: Vec<[f64; 3]> = positions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let n = [
                (i % 3) as f64 - 1.0,
                -(i as f64 % 2.0) * 2.0,
                5.0 * (i % 2) as f64,
            ];
            let mut out = *r;
            for x in 0..3 {
                out[x] += n[0] * lattice[0][x] + n[1] * lattice[1][x] + n[2] * lattice[2][x];
            }
            out
        })
        .collect();
    assert_close(
        &base,
        &evaluate(&mut calculator, &z, &wrapped, &cell),
        tolerance,
        "wrapping",
    );

    let order: Vec<usize> = (0..z.len()).rev().collect();
    let z_permuted: Vec<i32> = order.iter().map(|&i| z[i]).collect();
    let p_permuted: Vec<[f64; 3]> = order.iter().map(|&i| positions[i]).collect();
    let permuted = evaluate(&mut calculator, &z_permuted, &p_permuted, &cell);
    let unpermuted = Results {
        forces: {
            let mut f = vec![[0.0; 3]; z.len()];
            for (k, &i) in order.iter().enumerate() {
                f[i] = permuted.forces[k];
            }
            f
        },
        ..permuted.clone()
    };
    assert_close(&base, &unpermuted, tolerance, "permutation");
}

fn supercell_energy_is_extensive(platform: Platform) {
    let model = tiny();
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let (z, positions, lattice) = random_system(3, 10, 8);
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let base = evaluate(&mut calculator, &z, &positions, &cell);
    let repeats = [2usize, 1, 3];
    let mut big_z = Vec::new();
    let mut big_positions = Vec::new();
    for a in 0..repeats[0] {
        for b in 0..repeats[1] {
            for c in 0..repeats[2] {
                for (atom, r) in positions.iter().enumerate() {
                    let mut out = *r;
                    for x in 0..3 {
                        out[x] += a as f64 * lattice[0][x]
                            + b as f64 * lattice[1][x]
                            + c as f64 * lattice[2][x];
                    }
                    big_z.push(z[atom]);
                    big_positions.push(out);
                }
            }
        }
    }
    let mut big_lattice = lattice;
    for (axis, &count) in repeats.iter().enumerate() {
        big_lattice[axis] = lattice[axis].map(|v| v * count as f64);
    }
    let big_cell = Cell::new(big_lattice, [true; 3]).unwrap();
    let big = evaluate(&mut calculator, &big_z, &big_positions, &big_cell);
    let copies = (repeats[0] * repeats[1] * repeats[2]) as f64;
    let tolerance = platform.tolerance().max(1e-11);
    println!(
        "{platform:?}: E(supercell) / copies - E = {:.2e}",
        big.energy / copies - base.energy
    );
    assert!(
        (big.energy - copies * base.energy).abs() <= tolerance * copies * (1.0 + base.energy.abs())
    );
    for (k, f) in big.forces.iter().enumerate() {
        let f0 = base.forces[k % positions.len()];
        for x in 0..3 {
            assert!(
                (f[x] - f0[x]).abs() <= tolerance * (1.0 + rms(&base.forces)),
                "force of image atom {k}"
            );
        }
    }
}

fn atom_without_neighbours_is_finite_and_force_free(platform: Platform) {
    let model = tiny();
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let z = [6, 1, 1, 8];
    let positions = [
        [0.0, 0.0, 0.0],
        [1.1, 0.0, 0.0],
        [-0.4, 1.0, 0.0],
        [30.0, 30.0, 30.0],
    ];
    let results = evaluate(&mut calculator, &z, &positions, &Cell::open());
    assert!(results.energy.is_finite());
    assert_eq!(results.forces[3], [0.0; 3]);
    assert_eq!(results.atom_virials[3], [[0.0; 3]; 3]);
    let alone = evaluate(&mut calculator, &[8], &[[30.0, 30.0, 30.0]], &Cell::open());
    assert_eq!(alone.forces, vec![[0.0; 3]]);
    assert_eq!(alone.virial, [[0.0; 3]; 3]);
    let tolerance = platform.tolerance().max(1e-12);
    assert!((results.energies[3] - alone.energy).abs() <= tolerance * (1.0 + alone.energy.abs()));
}

fn results_are_bitwise_reproducible(platform: Platform) {
    let model = tiny();
    // 40 atoms take the parallel path; 12 the molecule path, whose dense products and
    // message rows split between two threads when two are allowed.
    for (seed, n_atoms) in [(11, 40), (12, 12)] {
        let (z, positions, lattice) = random_system(seed, n_atoms, 8);
        let cell = Cell::new(lattice, [true; 3]).unwrap();
        let mut runs: Vec<Results> = Vec::new();
        for threads in [1, 2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let Some(mut calculator) = platform.calculator(&model) else {
                return;
            };
            for _ in 0..3 {
                runs.push(pool.install(|| evaluate(&mut calculator, &z, &positions, &cell)));
            }
        }
        for run in &runs[1..] {
            assert_eq!(run.energy.to_bits(), runs[0].energy.to_bits());
            assert!(
                run == &runs[0],
                "{n_atoms} atoms: results differ between calls or thread counts"
            );
        }
    }
}

#[test]
fn bad_input_is_an_error_naming_it() {
    let model = tiny();
    let mut calculator = Calculator::new(model.clone(), Device::Cpu, Precision::F64).unwrap();
    let open = Cell::open();
    let err = calculator
        .compute(&[1, 11], &[[0.0; 3], [1.0, 0.0, 0.0]], &open, Request::ALL)
        .unwrap_err();
    assert!(err.to_string().contains("atom 1"), "{err}");
    let err = calculator
        .compute(&[1, 0], &[[0.0; 3], [1.0, 0.0, 0.0]], &open, Request::ALL)
        .unwrap_err();
    assert!(err.to_string().contains("atom 1"), "{err}");
    let err = calculator
        .compute(&[1], &[[0.0; 3], [1.0, 0.0, 0.0]], &open, Request::ALL)
        .unwrap_err();
    assert!(err.to_string().contains("positions"), "{err}");
    let err = calculator
        .compute(
            &[1, 1],
            &[[0.0; 3], [f64::INFINITY, 0.0, 0.0]],
            &open,
            Request::ALL,
        )
        .unwrap_err();
    assert!(err.to_string().contains("atom 1"), "{err}");
    let err = calculator
        .compute_local(&[1, 1], &[[0.0; 3], [1.0, 0.0, 0.0]], 3, Request::ALL)
        .unwrap_err();
    assert!(err.to_string().contains("n_owned"), "{err}");
}

#[test]
fn ghost_atoms_do_not_count_but_receive_forces() {
    // An owned pair and a ghost: the energy is the owned atoms' per-atom energies in the
    // full system; forces on every atom are the derivative of that energy.
    let model = tiny();
    let mut calculator = Calculator::new(model, Device::Cpu, Precision::F64).unwrap();
    let z = [6, 8, 1];
    let positions = [[0.0, 0.0, 0.0], [1.3, 0.0, 0.0], [0.0, 1.5, 0.2]];
    let full = calculator
        .compute(&z, &positions, &Cell::open(), Request::ALL)
        .unwrap();
    let local = calculator
        .compute_local(&z, &positions, 2, Request::ALL)
        .unwrap();
    assert!((local.energy - (full.energies[0] + full.energies[1])).abs() < 1e-12);
    assert_eq!(local.energies[2], 0.0);
    let step = 1e-5;
    for x in 0..3 {
        let mut plus = positions;
        let mut minus = positions;
        plus[2][x] += step;
        minus[2][x] -= step;
        let e_plus = calculator
            .compute_local(&z, &plus, 2, Request::ALL)
            .unwrap()
            .energy;
        let e_minus = calculator
            .compute_local(&z, &minus, 2, Request::ALL)
            .unwrap()
            .energy;
        let numeric = -(e_plus - e_minus) / (2.0 * step);
        assert!(
            (numeric - local.forces[2][x]).abs() < 1e-7,
            "ghost force {x}"
        );
    }
}
