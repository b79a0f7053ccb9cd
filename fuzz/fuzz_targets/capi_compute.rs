//! The C ABI's compute entry, `painn_compute` (and `painn_compute_local`), called through
//! its `extern "C"` functions with fuzzed sizes and values: negative and zero counts, NULL
//! arrays, NULL or degenerate cells, any pbc flags, skins from negative to 1e300, either
//! precision. Arrays always hold what the count says (the contract; fuzzing past it would
//! only find the caller's own out-of-bounds reads). Every status must be an error code or
//! success, never PAINN_INTERNAL_ERROR (a caught panic).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use painn::capi::*;

#[derive(Arbitrary, Debug)]
struct Input {
    /// The count passed (any value); arrays hold `min(|n_atoms|, 64)` atoms.
    n_atoms: i64,
    n_owned: i64,
    atomic_numbers: Vec<i32>,
    positions: Vec<f64>,
    cell: Option<[f64; 9]>,
    pbc: Option<[i32; 3]>,
    skin: f64,
    float32: bool,
    /// Bit k set: output k (energy, forces, virial, energies, atom virials) is wanted.
    outputs: u8,
    /// Pass NULL for the atomic numbers or the positions.
    null_atomic_numbers: bool,
    null_positions: bool,
    local: bool,
}

/// The tiny model through `painn_model_load_buffer`, loaded once (a model is immutable and
/// shared by any number of calculators); its address.
fn model() -> *const painn_model_t {
    static MODEL: OnceLock<usize> = OnceLock::new();
    *MODEL.get_or_init(|| {
        let bytes = painn_fuzz::TINY_MODEL;
        let mut handle = std::ptr::null_mut();
        // SAFETY: a valid buffer and output pointer; the name may be NULL.
        let status = unsafe {
            painn_model_load_buffer(bytes.as_ptr(), bytes.len(), std::ptr::null(), &mut handle)
        };
        assert_eq!(status, PAINN_SUCCESS);
        handle as usize
    }) as *const painn_model_t
}

fuzz_target!(|input: Input| {
    let atoms = input.n_atoms.unsigned_abs().min(64) as usize;
    let mut atomic_numbers = input.atomic_numbers.clone();
    let mut positions = input.positions.clone();
    // Arrays of the size the count gives, padded with plausible atoms.
    atomic_numbers.resize(atoms, 1);
    let padding = positions.len()..3 * atoms;
    positions.extend(padding.map(|k| 1.5 * k as f64));
    positions.truncate(3 * atoms);
    let mut energy = 0.0;
    let mut forces = vec![0.0; 3 * atoms];
    let mut virial = [0.0; 9];
    let mut energies = vec![0.0; atoms];
    let mut atom_virials = vec![0.0; 9 * atoms];
    let wanted = |bit: u8| input.outputs & (1 << bit) != 0;
    // SAFETY: every pointer is NULL or holds what painn.h says for the count passed (the
    // count is replaced by the array size where it would exceed it).
    unsafe {
        let mut calculator = std::ptr::null_mut();
        let precision = if input.float32 { c"f32" } else { c"f64" };
        let status = painn_calculator_create(
            model(),
            c"cpu".as_ptr(),
            precision.as_ptr(),
            input.skin,
            &mut calculator,
        );
        assert_ne!(status, PAINN_INTERNAL_ERROR);
        if status == PAINN_SUCCESS {
            let n = if input.n_atoms < 0 {
                input.n_atoms
            } else {
                atoms as i64
            };
            let z = if input.null_atomic_numbers {
                std::ptr::null()
            } else {
                atomic_numbers.as_ptr()
            };
            let r = if input.null_positions {
                std::ptr::null()
            } else {
                positions.as_ptr()
            };
            let out = |bit: u8, pointer: *mut f64| {
                if wanted(bit) {
                    pointer
                } else {
                    std::ptr::null_mut()
                }
            };
            let status = if input.local {
                painn_compute_local(
                    calculator,
                    n,
                    input.n_owned,
                    z,
                    r,
                    out(0, &mut energy),
                    out(1, forces.as_mut_ptr()),
                    out(2, virial.as_mut_ptr()),
                    out(3, energies.as_mut_ptr()),
                    out(4, atom_virials.as_mut_ptr()),
                )
            } else {
                let cell = input.cell.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
                let pbc = input.pbc.as_ref().map_or(std::ptr::null(), |p| p.as_ptr());
                painn_compute(
                    calculator,
                    n,
                    z,
                    r,
                    cell,
                    pbc,
                    out(0, &mut energy),
                    out(1, forces.as_mut_ptr()),
                    out(2, virial.as_mut_ptr()),
                    out(3, energies.as_mut_ptr()),
                    out(4, atom_virials.as_mut_ptr()),
                )
            };
            let message = std::ffi::CStr::from_ptr(painn_last_error()).to_string_lossy();
            assert_ne!(status, PAINN_INTERNAL_ERROR, "{message}: {input:?}");
            painn_calculator_free(calculator);
        }
    }
});
