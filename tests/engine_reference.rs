//! The CPU engine against float64 references: the training project's own values
//! (`../shared/reference`) and the committed fixtures computed by an independent PyTorch
//! implementation with autograd (`python/painn/reference.py`).

mod common;

use std::sync::Arc;

use common::*;
use painn::Precision;

#[test]
fn seed_reference_f64_and_f32() {
    let Some(shared) = shared_dir("seed_reference_f64_and_f32") else {
        return;
    };
    let Some(model) = student_model("seed_reference_f64_and_f32") else {
        return;
    };
    let model = Arc::new(model);
    let reference = load_json(shared.join("reference/seed_reference_f64.json"));
    for case in cases(&reference) {
        let f64_results = compute(&model, Precision::F64, &case);
        let energy_error = (f64_results.energy - case.energy).abs();
        let force_error = max_abs_difference(&f64_results.forces, &case.forces);
        let virial_error = max_abs_difference(&f64_results.virial, &case.virial);
        println!(
            "{}: f64 |dE| = {energy_error:.2e} eV, max |dF| = {force_error:.2e}, max |dW| = {virial_error:.2e}",
            case.name
        );
        assert!(energy_error <= 1e-8, "{}: energy {energy_error}", case.name);
        assert!(force_error <= 1e-8, "{}: forces {force_error}", case.name);
        assert!(virial_error <= 1e-8, "{}: virial {virial_error}", case.name);

        let f32_results = compute(&model, Precision::F32, &case);
        let relative_energy = ((f32_results.energy - case.energy) / case.energy).abs();
        let force_rms_ratio = rms_difference(&f32_results.forces, &case.forces) / rms(&case.forces);
        println!(
            "{}: f32 relative dE = {relative_energy:.2e}, force RMS error / RMS force = {force_rms_ratio:.2e}",
            case.name
        );
        assert!(relative_energy <= 1e-5, "{}", case.name);
        assert!(force_rms_ratio <= 1e-5, "{}", case.name);
    }
}
