//! The `painn` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod bench;

use clap::{Parser, Subcommand};
use painn::io::xyz;
use painn::{Calculator, Cell, Device, Model, Precision, Request, Results};
use serde_json::{Value, json};

/// PaiNN machine-learned force fields for molecular dynamics.
#[derive(Parser)]
#[command(name = "painn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Energy, forces, virial and stress of the structures in an extended XYZ file, as JSON
    /// (one object for one frame, an array for several).
    Eval {
        /// Model file (.safetensors, from painn-convert).
        #[arg(long)]
        model: PathBuf,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu")]
        device: Device,
        /// f64 (the reference, default for one-off evaluations) or f32.
        #[arg(long, default_value = "f64")]
        precision: Precision,
        /// Also print per-atom energies (`energies`).
        #[arg(long)]
        per_atom: bool,
        /// Extended XYZ file as ASE writes it.
        structure: PathBuf,
    },
    /// Time energy + forces calls (host arrays in and out) for benzene, water clusters and
    /// periodic water boxes: median microseconds per call, atom-steps per second and the GPU
    /// memory held.
    Bench {
        /// Model file (.safetensors).
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "auto")]
        device: Device,
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Largest system to run, in atoms.
        #[arg(long, default_value_t = 1_000_000)]
        max_atoms: usize,
        /// Timed calls per system (fewer for the largest ones).
        #[arg(long, default_value_t = 50)]
        repeats: usize,
        /// Also write each structure there (extended XYZ), for other codes to time the same atoms.
        #[arg(long)]
        write_structures: Option<PathBuf>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's configuration.
    Info {
        /// Model file (.safetensors).
        model: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("painn: error: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> painn::Result<()> {
    match cli.command {
        Command::Eval {
            model,
            device,
            precision,
            per_atom,
            structure,
        } => {
            let model = Arc::new(Model::from_file(&model)?);
            let path = structure.display().to_string();
            let text = std::fs::read_to_string(&structure).map_err(|source| painn::Error::Io {
                path: structure.clone(),
                source,
            })?;
            let frames = xyz::parse(&text, &path)?;
            let mut calculator = Calculator::new(model, device, precision)?;
            let request = Request {
                energies: per_atom,
                forces: true,
                virial: true,
                atom_virials: false,
            };
            let mut outputs = Vec::with_capacity(frames.len());
            for frame in &frames {
                let cell = Cell::from_optional(frame.lattice, frame.pbc)?;
                let results =
                    calculator.compute(&frame.atomic_numbers, &frame.positions, &cell, request)?;
                outputs.push(frame_json(&results, &cell, per_atom));
            }
            let value = if outputs.len() == 1 {
                outputs.pop().expect("one frame")
            } else {
                Value::Array(outputs)
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("serialisable")
            );
            Ok(())
        }
        Command::Bench {
            model,
            device,
            precision,
            max_atoms,
            repeats,
            write_structures,
            json,
        } => bench::run(bench::Options {
            model: Arc::new(Model::from_file(&model)?),
            device,
            precision,
            max_atoms,
            repeats,
            write_structures,
            json,
        }),
        Command::Info { model } => {
            let model = Model::from_file(&model)?;
            let config = serde_json::to_value(model.config()).expect("serialisable");
            println!(
                "{}",
                serde_json::to_string_pretty(&config).expect("serialisable")
            );
            Ok(())
        }
    }
}

/// `energy`, `forces`, `virial` (any periodic axis), `stress` (all periodic; eV/A^3, Voigt
/// xx yy zz yz xz xy, ASE's sign: -W / volume, symmetrised), `energies` (per atom).
fn frame_json(results: &Results, cell: &Cell, per_atom: bool) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("energy".into(), json!(results.energy));
    object.insert("forces".into(), json!(results.forces));
    if cell.is_periodic() {
        object.insert("virial".into(), json!(results.virial));
    }
    if cell.is_fully_periodic() {
        let w = &results.virial;
        let volume = cell.volume();
        let s = |a: usize, b: usize| -0.5 * (w[a][b] + w[b][a]) / volume;
        object.insert(
            "stress".into(),
            json!([s(0, 0), s(1, 1), s(2, 2), s(1, 2), s(0, 2), s(0, 1)]),
        );
    }
    if per_atom {
        object.insert("energies".into(), json!(results.energies));
    }
    Value::Object(object)
}
