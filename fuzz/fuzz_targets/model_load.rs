//! Model files (any bytes) through `Model::from_bytes`, then a molecule and a periodic
//! pair through calculators with whatever loaded. Seed the corpus with
//! tests/data/tiny_model.safetensors (see docs/design.md).

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use painn::Model;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = Model::from_bytes(data, "fuzz.safetensors") else {
        return;
    };
    let model = Arc::new(model);
    for (atomic_numbers, positions, cell) in painn_fuzz::small_structures() {
        painn_fuzz::compute_all(&model, &atomic_numbers, &positions, &cell);
    }
});
