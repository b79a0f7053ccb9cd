//! What the fuzz targets share: the tiny model, and computing whatever an input produced.

use std::sync::{Arc, OnceLock};

use painn::{Calculator, Cell, Device, Model, Precision, Request};

/// The repository's tiny model (H=32, L=2, K=8, max_z=10, cutoff 4 A), built in.
pub const TINY_MODEL: &[u8] = include_bytes!("../../tests/data/tiny_model.safetensors");

/// The tiny model, loaded once.
pub fn tiny_model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(Model::from_bytes(TINY_MODEL, "tiny").expect("the tiny model")))
        .clone()
}

/// Energy, forces and virials of a structure with `model` in float64 and float32. Errors
/// are fine; panics, aborts and hangs are what the fuzzer looks for.
pub fn compute_all(
    model: &Arc<Model>,
    atomic_numbers: &[i32],
    positions: &[[f64; 3]],
    cell: &Cell,
) {
    for precision in [Precision::F64, Precision::F32] {
        if let Ok(mut calculator) = Calculator::new(model.clone(), Device::Cpu, precision) {
            let _ = calculator.compute(atomic_numbers, positions, cell, Request::ALL);
        }
    }
}

/// A water molecule and a periodic pair of atoms, for a fuzzed model to compute.
pub fn small_structures() -> Vec<(Vec<i32>, Vec<[f64; 3]>, Cell)> {
    let open = Cell::open();
    let periodic = Cell::new(
        [[3.0, 0.0, 0.0], [0.0, 3.5, 0.0], [0.5, 0.0, 4.0]],
        [true; 3],
    )
    .expect("a valid cell");
    vec![
        (
            vec![8, 1, 1],
            vec![[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]],
            open,
        ),
        (vec![6, 1], vec![[0.1, 0.2, 0.3], [1.2, 1.5, 2.0]], periodic),
    ]
}
