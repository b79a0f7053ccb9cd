//! Helpers shared by the integration tests: locating fixtures and the training project's
//! files, and comparing results with explicit tolerances.

#![allow(dead_code)]

use std::path::PathBuf;

use std::sync::Arc;

use painn::structures::SplitMix64;
use painn::{
    Calculator, Cell, Device, Model, NeighborList, NeighborListOptions, Precision, Request, Results,
};
use serde_json::Value;

/// The repository root: `$PAINN_REPOSITORY` (test binaries run on another machine, such as
/// a GPU host), else where the tests were built.
pub fn repository() -> PathBuf {
    std::env::var_os("PAINN_REPOSITORY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Reports a skipped test: prints `SKIPPED test: reason` and, when `$PAINN_SKIP_LOG` names a
/// file, appends the line to it (the test command prints that file's lines in its summary,
/// since cargo shows a test that returns early as passed).
pub fn skipped(test: &str, reason: impl std::fmt::Display) {
    let line = format!("SKIPPED {test}: {reason}");
    println!("{line}");
    if let Some(path) = std::env::var_os("PAINN_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// The training project's files (`spec/`, `models/`, `reference/`): `$PAINN_SHARED_DIR`,
/// else `../shared` beside the repository. `None` (and a printed reason) when absent.
pub fn shared_dir(test: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("PAINN_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("../shared"));
    if candidate.join("reference/seed_reference_f64.json").exists() {
        Some(candidate)
    } else {
        skipped(
            test,
            format!(
                "the training project's files are not at {} (set PAINN_SHARED_DIR)",
                candidate.display()
            ),
        );
        None
    }
}

/// The trained student model converted by `painn-convert` (the test command does this):
/// `$PAINN_STUDENT_MODEL`, else `target/models/student_427k.safetensors`.
pub fn student_model(test: &str) -> Option<Model> {
    shared_dir(test)?;
    let path = std::env::var_os("PAINN_STUDENT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("target/models/student_427k.safetensors"));
    if !path.exists() {
        skipped(
            test,
            format!(
                "no converted student model at {} (run painn-convert, see tests/run_all.sh)",
                path.display()
            ),
        );
        return None;
    }
    Some(Model::from_file(&path).expect("the converted student model loads"))
}

pub fn tiny_model() -> Model {
    Model::from_file(repository().join("tests/data/tiny_model.safetensors")).unwrap()
}

pub fn load_json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// One structure of a reference file.
pub struct Case {
    pub name: String,
    pub atomic_numbers: Vec<i32>,
    pub positions: Vec<[f64; 3]>,
    pub cell: Cell,
    pub energy: f64,
    pub energies: Option<Vec<f64>>,
    pub forces: Vec<[f64; 3]>,
    pub virial: [[f64; 3]; 3],
    pub edges: usize,
    pub tolerance: Option<f64>,
}

fn vec3(value: &Value) -> [f64; 3] {
    let a = value.as_array().unwrap();
    [
        a[0].as_f64().unwrap(),
        a[1].as_f64().unwrap(),
        a[2].as_f64().unwrap(),
    ]
}

pub fn cases(reference: &Value) -> Vec<Case> {
    reference
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, case)| {
            let lattice = case["cell"]
                .as_array()
                .map(|rows| [vec3(&rows[0]), vec3(&rows[1]), vec3(&rows[2])]);
            let pbc = match case.get("pbc") {
                Some(Value::Array(flags)) => [
                    flags[0].as_bool().unwrap(),
                    flags[1].as_bool().unwrap(),
                    flags[2].as_bool().unwrap(),
                ],
                _ => [lattice.is_some(); 3],
            };
            let virial = case["virial"].as_array().unwrap();
            Case {
                name: name.clone(),
                atomic_numbers: case["Z"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|z| z.as_i64().unwrap() as i32)
                    .collect(),
                positions: case["pos"].as_array().unwrap().iter().map(vec3).collect(),
                cell: Cell::from_optional(lattice, pbc).unwrap(),
                energy: case["energy"].as_f64().unwrap(),
                energies: case.get("energies").and_then(|e| {
                    e.as_array()
                        .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect())
                }),
                forces: case["forces"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(vec3)
                    .collect(),
                virial: [vec3(&virial[0]), vec3(&virial[1]), vec3(&virial[2])],
                edges: case["edges"].as_u64().unwrap() as usize,
                tolerance: case.get("tolerance").and_then(Value::as_f64),
            }
        })
        .collect()
}

/// `calculator`'s results (all of them) for `case`.
pub fn evaluate_case(calculator: &mut Calculator, case: &Case) -> Results {
    calculator
        .compute(
            &case.atomic_numbers,
            &case.positions,
            &case.cell,
            Request::ALL,
        )
        .unwrap()
}

/// A new CPU calculator's results for `case` in `precision`.
pub fn compute(model: &Arc<Model>, precision: Precision, case: &Case) -> Results {
    let mut calculator = Calculator::new(model.clone(), Device::Cpu, precision).unwrap();
    evaluate_case(&mut calculator, case)
}

pub fn max_abs_difference(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub fn rms(a: &[[f64; 3]]) -> f64 {
    (a.iter().flatten().map(|x| x * x).sum::<f64>() / (a.len().max(1) * 3) as f64).sqrt()
}

pub fn rms_difference(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    (a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        / (a.len().max(1) * 3) as f64)
        .sqrt()
}

/// A device and precision to run a test body on, with the tolerances that precision earns.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    pub device: Device,
    pub precision: Precision,
}

impl Platform {
    /// Relative tolerance of energies, forces and virials against a float64 reference.
    pub fn tolerance(&self) -> f64 {
        match self.precision {
            Precision::F64 => 1e-10,
            Precision::F32 => 2e-5,
        }
    }

    pub fn calculator(&self, model: &Arc<Model>) -> Option<Calculator> {
        match Calculator::new(model.clone(), self.device, self.precision) {
            Ok(calculator) => Some(calculator),
            Err(error) if self.device != Device::Cpu => {
                skipped(&format!("{self:?}"), error);
                None
            }
            Err(error) => panic!("{error}"),
        }
    }
}

/// One test body per platform and precision: `mod body { cpu_f64, cpu_f32, cuda_f32 }`.
#[macro_export]
macro_rules! on_every_platform {
    ($($body:ident),* $(,)?) => {
        $(
            mod $body {
                use super::*;
                #[test]
                fn cpu_f64() {
                    super::$body(Platform { device: painn::Device::Cpu, precision: painn::Precision::F64 });
                }
                #[test]
                fn cpu_f32() {
                    super::$body(Platform { device: painn::Device::Cpu, precision: painn::Precision::F32 });
                }
                #[test]
                #[ignore = "needs a CUDA GPU (run with --include-ignored on a GPU host)"]
                fn cuda_f32() {
                    super::$body(Platform { device: painn::Device::Cuda(0), precision: painn::Precision::F32 });
                }
            }
        )*
    };
}

/// A random periodic triclinic system of `n` atoms with no two atoms closer than 0.9 A.
pub fn random_system(seed: u64, n: usize, max_z: i32) -> (Vec<i32>, Vec<[f64; 3]>, [[f64; 3]; 3]) {
    let mut rng = SplitMix64::new(seed);
    let lattice = [
        [rng.range(6.0, 7.5), 0.0, 0.0],
        [rng.range(-1.5, 1.5), rng.range(6.0, 7.5), 0.0],
        [
            rng.range(-1.5, 1.5),
            rng.range(-1.5, 1.5),
            rng.range(6.0, 7.5),
        ],
    ];
    let mut positions: Vec<[f64; 3]> = Vec::new();
    while positions.len() < n {
        let f = [rng.uniform(), rng.uniform(), rng.uniform()];
        let mut r = [0.0; 3];
        for x in 0..3 {
            r[x] = f[0] * lattice[0][x] + f[1] * lattice[1][x] + f[2] * lattice[2][x];
        }
        let cell = Cell::new(lattice, [true; 3]).unwrap();
        let mut trial = positions.clone();
        trial.push(r);
        let list = NeighborList::build(&trial, &cell, NeighborListOptions::new(0.9)).unwrap();
        if list.n_edges() == 0 {
            positions = trial;
        }
    }
    let z = (0..n)
        .map(|_| 1 + (rng.next_u64() % max_z as u64) as i32)
        .collect();
    (z, positions, lattice)
}
