//! Energy + forces on the CPU, float32 (production) and float64 (reference), for benzene and
//! water clusters of 48 to 3,072 atoms (water molecules on a 3.1 Angstrom cubic grid, random
//! orientations, 0.2 Angstrom jitter), with the trained student model.
//!
//! `cargo bench --bench model_cpu`. Needs the converted student model
//! (`target/models/student_427k.safetensors` or `$PAINN_STUDENT_MODEL`); the PyTorch side of
//! the comparison is `python/scripts/compare_cpu.py`, which runs this bench too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use painn::structures::{benzene, water_cluster};
use painn::{Calculator, Cell, Device, Model, Precision, Request};

fn model_path() -> PathBuf {
    std::env::var_os("PAINN_STUDENT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/models/student_427k.safetensors")
        })
}

fn model_cpu(c: &mut Criterion) {
    let path = model_path();
    let Ok(model) = Model::from_file(&path) else {
        eprintln!(
            "SKIPPED model_cpu: no student model at {} (run painn-convert)",
            path.display()
        );
        return;
    };
    let model = Arc::new(model);
    let mut structures = vec![("benzene".to_string(), benzene())];
    for molecules in [16usize, 64, 256, 1024] {
        structures.push((
            format!("water_cluster_{}", 3 * molecules),
            water_cluster(molecules, 1),
        ));
    }
    write_structures(&structures);
    let precisions: Vec<Precision> = match std::env::var("PAINN_BENCH_PRECISIONS") {
        Ok(list) => list.split(',').map(|p| p.parse().unwrap()).collect(),
        Err(_) => vec![Precision::F32, Precision::F64],
    };
    let mut group = c.benchmark_group("energy_forces_cpu");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for precision in precisions {
        for (name, structure) in &structures {
            let mut calculator = Calculator::new(model.clone(), Device::Cpu, precision).unwrap();
            let cell = Cell::open();
            group.sample_size(if structure.len() > 1000 { 10 } else { 20 });
            group.throughput(Throughput::Elements(structure.len() as u64));
            group.bench_function(BenchmarkId::new(format!("{precision}"), name), |b| {
                b.iter(|| {
                    calculator
                        .compute(
                            &structure.atomic_numbers,
                            &structure.positions,
                            &cell,
                            Request::ENERGY_FORCES_VIRIAL,
                        )
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

/// The benchmarked structures in the fixture layout, for the PyTorch side of the comparison.
fn write_structures(structures: &[(String, painn::structures::Structure)]) {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-structures");
    std::fs::create_dir_all(&directory).unwrap();
    let mut all = serde_json::Map::new();
    for (name, structure) in structures {
        all.insert(
            name.clone(),
            serde_json::json!({"Z": structure.atomic_numbers, "pos": structure.positions, "cell": null}),
        );
    }
    std::fs::write(
        directory.join("cpu.json"),
        serde_json::to_string(&all).unwrap(),
    )
    .unwrap();
}

criterion_group!(benches, model_cpu);
criterion_main!(benches);
