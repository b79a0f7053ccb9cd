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
        /// cpu, cuda, cuda:N or auto (a GPU when one is usable, else the CPU).
        #[arg(long, default_value = "auto")]
        device: Device,
        /// f32 (production) or f64 (the CPU reference).
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Largest system to run, in atoms [default: 1,000,000 on a GPU, 11,000 on the CPU].
        #[arg(long)]
        max_atoms: Option<usize>,
        /// Timed calls per system (fewer where calls are slow: each system is timed for
        /// about ten seconds at most).
        #[arg(long, default_value_t = 50)]
        repeats: usize,
        /// Also write each structure there (extended XYZ), for other codes to time the same atoms.
        #[arg(long)]
        write_structures: Option<PathBuf>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Also time each stage (neighbour list, graph, each layer's message and update,
        /// head, backward, readout; on a GPU from events on its stream), in calls of their
        /// own after the timed ones, and one neighbour-list rebuild.
        #[arg(long)]
        profile: bool,
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
    // A GPU the command cannot use is refused first, before any file is read.
    match &cli.command {
        Command::Eval {
            device, precision, ..
        } => check_device(*device, *precision, Precision::F64)?,
        Command::Bench {
            device, precision, ..
        } => check_device(*device, *precision, Precision::F32)?,
        Command::Info { .. } => {}
    }
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
            print_json(&value)
        }
        Command::Bench {
            model,
            device,
            precision,
            max_atoms,
            repeats,
            write_structures,
            json,
            profile,
        } => bench::run(bench::Options {
            model: Arc::new(Model::from_file(&model)?),
            device,
            precision,
            max_atoms,
            repeats,
            write_structures,
            json,
            profile,
        }),
        Command::Info { model } => {
            let model = Model::from_file(&model)?;
            let config = serde_json::to_value(model.config()).expect("serialisable");
            print_json(&config)
        }
    }
}

/// Refuses a GPU that cannot run the command, saying why in the order that matters: first
/// whether there is a GPU at all, then which precision it needs (`default` is the command's
/// default precision, which the user may not have chosen).
fn check_device(device: Device, precision: Precision, default: Precision) -> painn::Result<()> {
    let Device::Cuda(ordinal) = device else {
        return Ok(());
    };
    let needs_f32 = precision == Precision::F64;
    let default_note = if default == Precision::F64 {
        " (the default precision of this command is f64)"
    } else {
        ""
    };
    let count = painn::backend::cuda::device_count();
    if count == 0 {
        let also = if needs_f32 {
            format!("; the GPU would also need --precision f32{default_note}")
        } else {
            String::new()
        };
        return Err(painn::Error::Cuda(format!(
            "--device {device}: no CUDA GPU was found on this machine (no driver or no \
             device): use --device cpu{also}"
        )));
    }
    if ordinal >= count {
        return Err(painn::Error::Cuda(format!(
            "--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{}",
            count - 1
        )));
    }
    if needs_f32 {
        return Err(painn::Error::Unsupported(format!(
            "--device {device} computes in float32: add --precision f32{default_note}, or use \
             --device cpu for float64"
        )));
    }
    Ok(())
}

/// Prints `value` as JSON on standard output, one array of numbers (a force, a row of the
/// virial) per line. A closed pipe (`painn eval ... | head`) ends the output quietly.
fn print_json(value: &Value) -> painn::Result<()> {
    use std::io::Write;
    let mut text = String::new();
    write_json(value, 0, &mut text);
    text.push('\n');
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(painn::Error::Io {
            path: PathBuf::from("<standard output>"),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// Pretty JSON, except that arrays of scalars stay on one line.
fn write_json(value: &Value, indent: usize, out: &mut String) {
    let pad = |level: usize| "  ".repeat(level);
    match value {
        Value::Array(items) if items.iter().any(|v| v.is_array() || v.is_object()) => {
            out.push_str("[\n");
            for (k, item) in items.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                write_json(item, indent + 1, out);
                out.push_str(if k + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push_str("{\n");
            for (k, (key, item)) in map.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_json(item, indent + 1, out);
                out.push_str(if k + 1 < map.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(Value::to_string).collect();
            out.push_str(&format!("[{}]", items.join(", ")));
        }
        scalar => out.push_str(&scalar.to_string()),
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
