//! `painn bench`: median time per energy + forces call for benzene, water clusters and
//! periodic water boxes, on the CPU or a GPU.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use painn::io::elements::symbol;
use painn::structures::{Structure, benzene, water_box, water_box_side_for_atoms, water_cluster};
use painn::{Calculator, Cell, Device, Model, Precision, Request};

pub struct Options {
    pub model: Arc<Model>,
    pub device: Device,
    pub precision: Precision,
    pub max_atoms: usize,
    pub repeats: usize,
    pub write_structures: Option<PathBuf>,
    pub json: bool,
}

/// The benchmark's systems, smallest first.
pub fn systems(max_atoms: usize) -> Vec<(String, Structure)> {
    let mut systems = vec![("benzene".to_string(), benzene())];
    for molecules in [16usize, 64, 256, 1024, 4096, 8192] {
        systems.push((
            format!("water_cluster_{}", 3 * molecules),
            water_cluster(molecules, 1),
        ));
    }
    for atoms in [1_000usize, 10_000, 100_000, 1_000_000] {
        let structure = water_box(water_box_side_for_atoms(atoms), 7);
        systems.push((format!("water_box_{}", structure.len()), structure));
    }
    systems.retain(|(_, s)| s.len() <= max_atoms);
    systems
}

fn write_xyz(path: &std::path::Path, structure: &Structure) -> std::io::Result<()> {
    let mut text = format!("{}\n", structure.len());
    match structure.cell {
        Some(lattice) => {
            let numbers: Vec<String> = lattice.iter().flatten().map(|v| format!("{v:?}")).collect();
            text += &format!(
                "Lattice=\"{}\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n",
                numbers.join(" ")
            );
        }
        None => text += "Properties=species:S:1:pos:R:3 pbc=\"F F F\"\n",
    }
    for (z, r) in structure.atomic_numbers.iter().zip(&structure.positions) {
        text += &format!(
            "{} {:?} {:?} {:?}\n",
            symbol(*z).unwrap_or("X"),
            r[0],
            r[1],
            r[2]
        );
    }
    std::fs::write(path, text)
}

pub fn run(options: Options) -> painn::Result<()> {
    let systems = systems(options.max_atoms);
    if let Some(directory) = &options.write_structures {
        std::fs::create_dir_all(directory).map_err(|source| painn::Error::Io {
            path: directory.clone(),
            source,
        })?;
        for (name, structure) in &systems {
            let path = directory.join(format!("{name}.xyz"));
            write_xyz(&path, structure).map_err(|source| painn::Error::Io { path, source })?;
        }
    }
    let mut device_name = String::from("cpu");
    if !options.json {
        println!(
            "{:<22} {:>9} {:>12} {:>14} {:>12}",
            "system", "atoms", "median us", "atom-steps/s", "GPU MiB"
        );
    }
    for (name, structure) in &systems {
        let mut calculator =
            Calculator::new(options.model.clone(), options.device, options.precision)?;
        device_name = calculator.facts().name;
        let cell = match structure.cell {
            Some(lattice) => Cell::new(lattice, [true; 3])?,
            None => Cell::open(),
        };
        // Positions move by 0.001 A from call to call, as in MD (within the skin: the
        // neighbour list is checked every call and rebuilt when needed).
        let mut positions = structure.positions.clone();
        let mut call = |calculator: &mut Calculator, k: usize| -> painn::Result<f64> {
            let sign = if k.is_multiple_of(2) { 1e-3 } else { -1e-3 };
            for r in positions.iter_mut() {
                r[0] += sign;
            }
            let start = Instant::now();
            let results = calculator.compute(
                &structure.atomic_numbers,
                &positions,
                &cell,
                Request::ENERGY_FORCES_VIRIAL,
            )?;
            let elapsed = start.elapsed().as_secs_f64();
            std::hint::black_box(results);
            Ok(elapsed)
        };
        for k in 0..3 {
            call(&mut calculator, k)?;
        }
        let repeats = if structure.len() >= 500_000 {
            options.repeats.min(5)
        } else if structure.len() >= 50_000 {
            options.repeats.min(10)
        } else {
            options.repeats
        }
        .max(1);
        let mut times: Vec<f64> = (0..repeats)
            .map(|k| call(&mut calculator, k + 3))
            .collect::<painn::Result<_>>()?;
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let memory = matches!(calculator.device(), Device::Cuda(_))
            .then(|| calculator.facts().bytes_held as f64 / (1 << 20) as f64);
        let atom_steps = structure.len() as f64 / median;
        if options.json {
            println!(
                "{}",
                serde_json::json!({
                    "system": name,
                    "atoms": structure.len(),
                    "device": device_name,
                    "precision": options.precision.to_string(),
                    "median_us": median * 1e6,
                    "atom_steps_per_s": atom_steps,
                    "gpu_memory_mib": memory,
                    "repeats": repeats,
                })
            );
        } else {
            println!(
                "{:<22} {:>9} {:>12.1} {:>14.3e} {:>12}",
                name,
                structure.len(),
                median * 1e6,
                atom_steps,
                memory.map_or("-".to_string(), |m| format!("{m:.0}"))
            );
        }
    }
    if !options.json {
        println!("device: {device_name}, precision {}", options.precision);
    }
    Ok(())
}
