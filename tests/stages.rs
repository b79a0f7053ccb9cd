//! Every stage of every backend against the CPU float64 backend, on random small systems
//! (periodic, open and slab; a molecule on the calling thread's path and a system on the
//! pool's): the neighbour list, the graph, the embedding, each layer's message and update,
//! the energy head, the backward pass layer by layer, and each edge's `dE/dr_ij`. A stage
//! that goes wrong is named here, not found later as a wrong force.
//!
//! Integer arrays (offsets, sources, shifts, reverse edges) must be equal. Real arrays must
//! agree within a tolerance relative to the reference array's largest magnitude: exactly for
//! the float64 backend (it is the reference, evaluated again), and for float32 backends
//! within [`f32_tolerance`]. The CUDA instance runs on a GPU host and prints why it skips
//! elsewhere.

#[macro_use]
mod common;

use std::sync::Arc;

use common::*;
use painn::backend::{Stage, StageOutput};
use painn::{Calculator, Cell, Device, Model, Precision, Request};

on_every_platform!(
    stages_match_the_float64_cpu_backend,
    profiles_time_every_stage
);

/// Largest error of a float32 backend's stage output, relative to the largest magnitude of
/// the float64 array: float32 rounding (6e-8) grows through the filter table, the sums over
/// each row of edges and the layers, most in the backward pass, whose gradients are products
/// of everything before. About ten times the CPU float32 backend's largest error on these
/// systems (graph 5e-8, forward 1e-6, backward 2.5e-6).
fn f32_tolerance(stage: Stage) -> f64 {
    match stage {
        Stage::NeighborList | Stage::Graph | Stage::Embedding => 1e-6,
        Stage::Message { .. } | Stage::Update { .. } | Stage::Head | Stage::HeadBackward => 1e-5,
        Stage::UpdateBackward { .. } | Stage::MessageBackward { .. } | Stage::EdgeGradients => 3e-5,
    }
}

/// Every stage with an output for a model of `n_layers` layers, in evaluation order.
fn stages(n_layers: usize) -> Vec<Stage> {
    let mut stages = vec![Stage::NeighborList, Stage::Graph, Stage::Embedding];
    for layer in 0..n_layers {
        stages.push(Stage::Message { layer });
        stages.push(Stage::Update { layer });
    }
    stages.push(Stage::Head);
    stages.push(Stage::HeadBackward);
    for layer in (0..n_layers).rev() {
        stages.push(Stage::UpdateBackward { layer });
        if layer > 0 {
            stages.push(Stage::MessageBackward { layer });
        }
    }
    stages.push(Stage::EdgeGradients);
    stages
}

/// Arrays compared exactly.
fn is_integer_array(name: &str) -> bool {
    matches!(name, "offsets" | "sources" | "shifts" | "reverse")
}

/// A named system: atomic numbers, positions, cell.
type System = (String, Vec<i32>, Vec<[f64; 3]>, Cell);

/// Random systems of atomic numbers up to `max_z`.
fn systems(max_z: i32) -> Vec<System> {
    let mut systems = Vec::new();
    for (seed, n_atoms, pbc) in [
        (101, 12, [true; 3]),
        (102, 45, [true; 3]),
        (103, 30, [false; 3]),
        (104, 20, [true, true, false]),
    ] {
        let (z, positions, lattice) = random_system(seed, n_atoms, max_z);
        let cell = Cell::new(lattice, pbc).unwrap();
        let name = format!("{n_atoms} atoms, pbc {pbc:?}");
        systems.push((name, z, positions, cell));
    }
    systems
}

/// The largest error of `output` against `reference` relative to each reference array's
/// largest magnitude, over the real arrays; integer arrays must be equal.
fn relative_error(what: &str, output: &StageOutput, reference: &StageOutput) -> f64 {
    let names = |o: &StageOutput| o.arrays.iter().map(|a| a.name).collect::<Vec<_>>();
    assert_eq!(names(output), names(reference), "{what}: arrays");
    let mut worst = 0.0f64;
    for (array, expected) in output.arrays.iter().zip(&reference.arrays) {
        assert_eq!(
            array.shape, expected.shape,
            "{what}: shape of {}",
            array.name
        );
        if is_integer_array(array.name) {
            assert!(
                array.values == expected.values,
                "{what}: {} differ",
                array.name
            );
            continue;
        }
        let scale = expected.values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let error = array
            .values
            .iter()
            .zip(&expected.values)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(error.is_finite(), "{what}: {} is not finite", array.name);
        if scale > 0.0 {
            worst = worst.max(error / scale);
        } else {
            assert_eq!(error, 0.0, "{what}: {} should be zero", array.name);
        }
    }
    worst
}

fn check_model(platform: Platform, model_name: &str, model: &Arc<Model>) {
    let max_z = model.max_z().min(8) as i32;
    for (name, z, positions, cell) in systems(max_z) {
        let mut reference = Calculator::new(model.clone(), Device::Cpu, Precision::F64).unwrap();
        reference.keep_stage_outputs(true);
        reference
            .compute(&z, &positions, &cell, Request::ALL)
            .unwrap();
        let Some(mut calculator) = platform.calculator(model) else {
            return;
        };
        calculator.keep_stage_outputs(true);
        calculator
            .compute(&z, &positions, &cell, Request::ALL)
            .unwrap();
        let mut report = Vec::new();
        for stage in stages(model.layers()) {
            let what = format!("{model_name}, {name}, {stage:?} on {platform:?}");
            let output = calculator
                .inspect(stage)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let expected = reference
                .inspect(stage)
                .unwrap_or_else(|e| panic!("{what} (reference): {e}"));
            let error = relative_error(&what, &output, &expected);
            let tolerance = match platform.precision {
                Precision::F64 => 0.0,
                Precision::F32 => f32_tolerance(stage),
            };
            assert!(
                error <= tolerance,
                "{what}: relative error {error:.2e} above {tolerance:.0e}"
            );
            report.push(format!("{stage:?} {error:.1e}"));
        }
        println!(
            "{model_name}, {name} on {platform:?}: {}",
            report.join(", ")
        );
    }
}

fn stages_match_the_float64_cpu_backend(platform: Platform) {
    check_model(platform, "tiny model", &Arc::new(tiny_model()));
    let test = format!("stages_match_the_float64_cpu_backend (student model) on {platform:?}");
    if let Some(student) = student_model(&test) {
        check_model(platform, "student model", &Arc::new(student));
    }
}

/// With profiling on, every stage of an evaluation has a time, in order; off, none.
fn profiles_time_every_stage(platform: Platform) {
    let model = Arc::new(tiny_model());
    let Some(mut calculator) = platform.calculator(&model) else {
        return;
    };
    let (z, positions, lattice) = random_system(7, 20, 8);
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    calculator.set_profiling(true);
    calculator
        .compute(&z, &positions, &cell, Request::ALL)
        .unwrap();
    let times = calculator.stage_times().unwrap();
    let names: Vec<&str> = times.iter().map(|t| t.stage.as_str()).collect();
    println!("{platform:?}: {times:?}");
    let n_layers = model.layers();
    let mut expected = vec!["neighbor list", "graph"];
    let layers: Vec<String> = (0..n_layers)
        .flat_map(|l| [format!("message {l}"), format!("update {l}")])
        .collect();
    let backward: Vec<String> = (0..n_layers)
        .rev()
        .flat_map(|l| {
            [
                format!("update backward {l}"),
                format!("message backward {l}"),
            ]
        })
        .collect();
    expected.extend(layers.iter().map(String::as_str));
    expected.extend(["head", "head backward"]);
    expected.extend(backward.iter().map(String::as_str));
    expected.push("readout");
    // Every expected stage appears once, in this order (a backend may time more).
    let mut position = 0;
    for stage in &expected {
        let found = names[position..].iter().position(|name| name == stage);
        let found = found.unwrap_or_else(|| panic!("{stage} missing or out of order in {names:?}"));
        position += found + 1;
    }
    assert!(
        times
            .iter()
            .all(|t| t.seconds.is_finite() && t.seconds >= 0.0)
    );
    calculator.set_profiling(false);
    calculator
        .compute(&z, &positions, &cell, Request::ALL)
        .unwrap();
    assert!(calculator.stage_times().unwrap().is_empty());
}
