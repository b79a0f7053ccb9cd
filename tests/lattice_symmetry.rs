//! Forces at centres of inversion. Every site of a perfect fcc or bcc crystal is one: the
//! vector features there cancel exactly, and their norm is round-off. The engine takes the
//! norm's gradient there as 0 (`NORM_ROUND_OFF_FACTOR` in src/backend/mod.rs), so symmetric
//! sites get zero forces however the cell is written, while an atom moved off its site keeps
//! the gradient that finite differences of the energy give. One body per platform.

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use painn::{Calculator, Cell, Model, Precision, Request};

on_every_platform!(
    perfect_lattices_have_zero_forces,
    a_displaced_atom_keeps_its_gradient
);

const COPPER: i32 = 29;
const LATTICE_CONSTANT_ANGSTROM: f64 = 3.615;

fn copper_model() -> Arc<Model> {
    Arc::new(Model::from_file(repository().join("examples/cu_student.safetensors")).unwrap())
}

/// An fcc crystal of `repeats` conventional cells per axis (4 atoms each), its origin moved
/// by `offset_angstrom`.
fn fcc_cubic(repeats: usize, offset_angstrom: f64) -> (Vec<[f64; 3]>, Cell) {
    let a = LATTICE_CONSTANT_ANGSTROM;
    let basis = [
        [0.0, 0.0, 0.0],
        [0.0, 0.5, 0.5],
        [0.5, 0.0, 0.5],
        [0.5, 0.5, 0.0],
    ];
    let mut positions = Vec::new();
    for i in 0..repeats {
        for j in 0..repeats {
            for k in 0..repeats {
                for b in basis {
                    positions.push([
                        (i as f64 + b[0]) * a + offset_angstrom,
                        (j as f64 + b[1]) * a + offset_angstrom,
                        (k as f64 + b[2]) * a + offset_angstrom,
                    ]);
                }
            }
        }
    }
    let side = repeats as f64 * a;
    let vectors = [[side, 0.0, 0.0], [0.0, side, 0.0], [0.0, 0.0, side]];
    (positions, Cell::new(vectors, [true; 3]).unwrap())
}

/// The same crystal written in its primitive (rhombohedral) cell, `repeats` per axis.
fn fcc_primitive(repeats: usize) -> (Vec<[f64; 3]>, Cell) {
    let half = LATTICE_CONSTANT_ANGSTROM / 2.0;
    let cell = [[0.0, half, half], [half, 0.0, half], [half, half, 0.0]];
    let mut positions = Vec::new();
    for i in 0..repeats {
        for j in 0..repeats {
            for k in 0..repeats {
                let n = [i as f64, j as f64, k as f64];
                positions.push(std::array::from_fn(|x| {
                    (0..3).map(|row| n[row] * cell[row][x]).sum()
                }));
            }
        }
    }
    let vectors = cell.map(|row| row.map(|x| x * repeats as f64));
    (positions, Cell::new(vectors, [true; 3]).unwrap())
}

fn max_force(calculator: &mut Calculator, positions: &[[f64; 3]], cell: &Cell) -> f64 {
    let numbers = vec![COPPER; positions.len()];
    let results = calculator
        .compute(&numbers, positions, cell, Request::ENERGY_FORCES_VIRIAL)
        .unwrap();
    results
        .forces
        .iter()
        .flatten()
        .fold(0.0f64, |m, f| m.max(f.abs()))
}

/// Before the round-off rule, these gave max |F| of 0.02-0.1 eV/A (f64 and f32) and 7 eV/A
/// for the small box; exact arithmetic gives 0.
fn perfect_lattices_have_zero_forces(platform: Platform) {
    let model = copper_model();
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let limit = match platform.precision {
        Precision::F64 => 1e-10,
        Precision::F32 => 1e-5,
    };
    let mut crystals = vec![
        ("fcc, 3x3x3 cubic cells", fcc_cubic(3, 0.0)),
        ("fcc, 4x4x4 primitive cells", fcc_primitive(4)),
        ("fcc, 3x3x3 cubic cells moved by 100 A", fcc_cubic(3, 100.0)),
        ("fcc, 8x8x8 cubic cells", fcc_cubic(8, 0.0)),
    ];
    // bcc with a = 2 A: two atoms, each with ~100 periodic images within the cutoff.
    let side = 2.0;
    crystals.push((
        "bcc, 2 atoms in a 2 A box",
        (
            vec![[0.0; 3], [1.0; 3]],
            Cell::new(
                [[side, 0.0, 0.0], [0.0, side, 0.0], [0.0, 0.0, side]],
                [true; 3],
            )
            .unwrap(),
        ),
    ));
    for (name, (positions, cell)) in crystals {
        let force = max_force(&mut calculator, &positions, &cell);
        println!("{name} on {platform:?}: max |F| = {force:.2e} eV/A");
        assert!(force <= limit, "{name}: max |F| = {force:e} eV/A");
    }
}

/// An atom moved off its site: its force (dominated by the norm's gradient, which the
/// round-off rule must keep there) equals, in f64, the central difference of the energy
/// (1e-3 A off the site) and, in f32, the f64 engine's force (1e-2 A off: closer in, f32's
/// own round-off in the neighbours' cancelling sums is a few per cent of the force).
fn a_displaced_atom_keeps_its_gradient(platform: Platform) {
    let model = copper_model();
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let (mut positions, cell) = fcc_cubic(3, 0.0);
    let numbers = vec![COPPER; positions.len()];
    let moved = 13;
    let scale = match platform.precision {
        Precision::F64 => 1e-3,
        Precision::F32 => 1e-2,
    };
    for (x, direction) in [1.0, 0.4, -0.7].into_iter().enumerate() {
        positions[moved][x] += scale * direction;
    }
    let force_of = |calculator: &mut Calculator, positions: &[[f64; 3]]| {
        calculator
            .compute(&numbers, positions, &cell, Request::ENERGY_FORCES_VIRIAL)
            .unwrap()
    };
    let force = force_of(&mut calculator, &positions).forces[moved];
    let magnitude = force.iter().map(|f| f * f).sum::<f64>().sqrt();
    assert!(
        magnitude > 1e-2,
        "the moved atom feels a force ({magnitude:e} eV/A)"
    );
    let expected: [f64; 3] = match platform.precision {
        Precision::F64 => std::array::from_fn(|x| {
            let step = 1e-5;
            let mut energy_at = |sign: f64| {
                let mut p = positions.clone();
                p[moved][x] += sign * step;
                force_of(&mut calculator, &p).energy
            };
            -(energy_at(1.0) - energy_at(-1.0)) / (2.0 * step)
        }),
        Precision::F32 => {
            let mut reference = Platform {
                device: painn::Device::Cpu,
                precision: Precision::F64,
            }
            .calculator(&model)
            .unwrap();
            force_of(&mut reference, &positions).forces[moved]
        }
    };
    let tolerance = match platform.precision {
        Precision::F64 => 1e-3,
        Precision::F32 => 2e-2,
    };
    for x in 0..3 {
        println!(
            "{platform:?}: F_{x} = {:.6e}, expected {:.6e} eV/A",
            force[x], expected[x]
        );
        assert!(
            (force[x] - expected[x]).abs() <= tolerance * magnitude,
            "component {x}: {} against {}",
            force[x],
            expected[x]
        );
    }
}
