//! Extended XYZ text (any bytes, lossily decoded) through `painn::io::xyz::parse`, then
//! every frame that makes a cell through a calculator with the tiny model.

#![no_main]

use libfuzzer_sys::fuzz_target;
use painn::Cell;
use painn::io::xyz;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(frames) = xyz::parse(&text, "fuzz.xyz") else {
        return;
    };
    let model = painn_fuzz::tiny_model();
    for frame in frames.iter().take(4) {
        if let Ok(cell) = Cell::from_optional(frame.lattice, frame.pbc) {
            painn_fuzz::compute_all(&model, &frame.atomic_numbers, &frame.positions, &cell);
        }
    }
});
