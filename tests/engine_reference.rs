//! Every platform against the training project's own float64 values (`../shared/reference`),
//! one test body per platform and precision. Without the training project's files, or
//! without a GPU for the CUDA instance, the tests print why they skip.

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use painn::Precision;

on_every_platform!(seed_reference);

/// float64: within 1e-8 eV and eV/A of the reference. float32: relative energy error at most
/// 1e-6 and force RMS error at most 1e-5 of the RMS force.
fn seed_reference(platform: Platform) {
    let test = format!("seed_reference on {platform:?}");
    let Some(shared) = shared_dir(&test) else {
        return;
    };
    let Some(model) = student_model(&test) else {
        return;
    };
    let model = Arc::new(model);
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let reference = load_json(shared.join("reference/seed_reference_f64.json"));
    for case in cases(&reference) {
        let results = evaluate_case(&mut calculator, &case);
        let energy_error = (results.energy - case.energy).abs();
        let force_error = max_abs_difference(&results.forces, &case.forces);
        let virial_error = max_abs_difference(&results.virial, &case.virial);
        let relative_energy = energy_error / case.energy.abs();
        let force_rms_ratio = rms_difference(&results.forces, &case.forces) / rms(&case.forces);
        println!(
            "{} on {platform:?}: |dE| = {energy_error:.2e} eV (relative {relative_energy:.1e}), \
             max |dF| = {force_error:.2e} eV/A (RMS error / RMS force {force_rms_ratio:.1e}), \
             max |dW| = {virial_error:.2e} eV",
            case.name
        );
        match platform.precision {
            Precision::F64 => {
                assert!(energy_error <= 1e-8, "{}: energy", case.name);
                assert!(force_error <= 1e-8, "{}: forces", case.name);
                assert!(virial_error <= 1e-8, "{}: virial", case.name);
            }
            Precision::F32 => {
                let virial_scale = case
                    .virial
                    .iter()
                    .flatten()
                    .fold(0.0f64, |m, w| m.max(w.abs()));
                assert!(relative_energy <= 1e-6, "{}: energy", case.name);
                assert!(force_rms_ratio <= 1e-5, "{}: forces", case.name);
                assert!(virial_error <= 1e-5 * virial_scale, "{}: virial", case.name);
            }
        }
    }
}
