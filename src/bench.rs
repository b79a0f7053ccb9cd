//! `painn bench`: median time per energy + forces call for benzene, water clusters and
//! periodic water boxes, on the CPU or a GPU.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use painn::io::elements::symbol;
use painn::structures::{Structure, benzene, water_box, water_box_side_for_atoms, water_cluster};
use painn::{Calculator, Cell, Device, Model, Precision, Request};

pub struct Options {
    pub model: Arc<Model>,
    pub device: Device,
    pub precision: Precision,
    /// Largest system; `None`: a default for the device.
    pub max_atoms: Option<usize>,
    pub repeats: usize,
    pub write_structures: Option<PathBuf>,
    pub json: bool,
    /// Also time each stage (after the timed calls, in calls of their own).
    pub profile: bool,
}

/// Default largest system on a GPU and on the CPU (a call on 10^4 atoms takes about a
/// second on a few cores).
const GPU_MAX_ATOMS: usize = 1_000_000;
const CPU_MAX_ATOMS: usize = 11_000;

/// Timed calls stop after this long (at least three are made).
const TIME_PER_SYSTEM: Duration = Duration::from_secs(10);

/// Progress on standard error at most this often, once a system has run this long.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

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
        // Sizes come from the atom targets: build only those that can be kept.
        let side = water_box_side_for_atoms(atoms);
        if 3 * side * side * side <= max_atoms.saturating_mul(2) {
            let structure = water_box(side, 7);
            systems.push((format!("water_box_{}", structure.len()), structure));
        }
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

/// Progress of one system on standard error: rewritten in place on a terminal, a line every
/// few seconds otherwise; nothing for systems that finish quickly.
struct Progress {
    name: String,
    started: Instant,
    last: Option<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(name: &str) -> Self {
        Progress {
            name: name.to_string(),
            started: Instant::now(),
            last: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, what: &str) {
        let now = Instant::now();
        let due = self
            .last
            .map_or(now - self.started >= PROGRESS_EVERY, |last| {
                now - last >= PROGRESS_EVERY
            });
        if !due {
            return;
        }
        self.last = Some(now);
        let elapsed = (now - self.started).as_secs_f64();
        let line = format!("  {}: {what} ({elapsed:.0} s)", self.name);
        let mut stderr = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(stderr, "\r{line:<70}")
        } else {
            writeln!(stderr, "{line}")
        };
    }

    fn finish(&self) {
        if self.terminal && self.last.is_some() {
            eprint!("\r{:<70}\r", "");
        }
    }
}

/// Calls made with per-stage timing on (at least this many, for about two seconds at most).
const PROFILE_CALLS: usize = 5;
const PROFILE_TIME: Duration = Duration::from_secs(2);

/// Each stage's median time over calls made with profiling on, then the neighbour list of
/// one call that rebuilds it (`call(calculator, k, shift)` first moves every atom by `shift`
/// Angstrom along x: 0.6 A is past half the default skin).
fn profile(
    calculator: &mut Calculator,
    call: &mut impl FnMut(&mut Calculator, usize, f64) -> painn::Result<f64>,
    first_call: usize,
    progress: &mut Progress,
) -> painn::Result<Vec<(String, f64)>> {
    calculator.set_profiling(true);
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    let started = Instant::now();
    let mut k = 0;
    while k < PROFILE_CALLS || (k < 50 && started.elapsed() < PROFILE_TIME) {
        progress.update(&format!("profiled call {}", k + 1));
        call(calculator, first_call + k, 0.0)?;
        for (index, time) in calculator.stage_times()?.into_iter().enumerate() {
            if samples.len() <= index {
                samples.push((time.stage.clone(), Vec::new()));
            }
            samples[index].1.push(time.seconds);
        }
        k += 1;
    }
    let mut stages: Vec<(String, f64)> = samples
        .into_iter()
        .map(|(stage, mut seconds)| {
            seconds.sort_by(|a, b| a.total_cmp(b));
            (stage, seconds[seconds.len() / 2])
        })
        .collect();
    call(calculator, first_call + k, REBUILD_SHIFT_ANGSTROM)?;
    let rebuild = calculator.stage_times()?;
    calculator.set_profiling(false);
    if let Some(list) = rebuild.iter().find(|time| time.stage == "neighbor list") {
        stages.push(("neighbor list (rebuild)".to_string(), list.seconds));
    }
    Ok(stages)
}

/// A shift of every atom that the neighbour list's default skin (1 A) does not cover.
const REBUILD_SHIFT_ANGSTROM: f64 = 0.6;

/// The per-stage table under a system's row.
fn print_stages(stages: &[(String, f64)]) {
    // Shares of a steady call (the rebuild is a call of its own).
    let total: f64 = stages
        .iter()
        .filter(|(stage, _)| !stage.ends_with("(rebuild)"))
        .map(|(_, seconds)| seconds)
        .sum();
    for (stage, seconds) in stages {
        println!(
            "    {stage:<22} {:>12.1} us {:>5.1}%",
            seconds * 1e6,
            100.0 * seconds / total.max(f64::MIN_POSITIVE)
        );
    }
}

pub fn run(options: Options) -> painn::Result<()> {
    // The device first: the first calculator says which one `auto` resolved to.
    let probe = Calculator::new(options.model.clone(), options.device, options.precision)?;
    let device = probe.device();
    let device_name = probe.facts().name;
    drop(probe);
    let max_atoms = options.max_atoms.unwrap_or(match device {
        Device::Cuda(_) => GPU_MAX_ATOMS,
        _ => CPU_MAX_ATOMS,
    });
    if !options.json {
        let label = if device_name == device.to_string() {
            device_name.clone()
        } else {
            format!("{device} ({device_name})")
        };
        println!(
            "painn bench on {label}, precision {}, systems up to {max_atoms} atoms",
            options.precision
        );
    }
    let systems = systems(max_atoms);
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
    if !options.json {
        println!(
            "{:<22} {:>9} {:>12} {:>14} {:>8} {:>12}",
            "system", "atoms", "median us", "atom-steps/s", "calls", "GPU MiB"
        );
    }
    for (name, structure) in &systems {
        let mut progress = Progress::new(name);
        let mut calculator =
            Calculator::new(options.model.clone(), options.device, options.precision)?;
        let cell = match structure.cell {
            Some(lattice) => Cell::new(lattice, [true; 3])?,
            None => Cell::open(),
        };
        // Positions move by 0.001 A from call to call, as in MD (within the skin: the
        // neighbour list is checked every call and rebuilt when needed).
        let mut positions = structure.positions.clone();
        let mut call = |calculator: &mut Calculator, k: usize, shift: f64| -> painn::Result<f64> {
            let sign = if k.is_multiple_of(2) { 1e-3 } else { -1e-3 };
            for r in positions.iter_mut() {
                r[0] += sign + shift;
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
            progress.update(&format!("warm-up call {}", k + 1));
            call(&mut calculator, k, 0.0)?;
        }
        let timing = Instant::now();
        let mut times = Vec::new();
        while times.len() < options.repeats.max(1)
            && (times.len() < 3 || timing.elapsed() < TIME_PER_SYSTEM)
        {
            progress.update(&format!(
                "call {} of at most {}",
                times.len() + 1,
                options.repeats
            ));
            times.push(call(&mut calculator, times.len() + 3, 0.0)?);
        }
        let stages = if options.profile {
            Some(profile(
                &mut calculator,
                &mut call,
                times.len(),
                &mut progress,
            )?)
        } else {
            None
        };
        progress.finish();
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
                    "repeats": times.len(),
                    "stages": stages.as_ref().map(|stages| stages
                        .iter()
                        .map(|(stage, seconds)| serde_json::json!({
                            "stage": stage, "median_us": seconds * 1e6
                        }))
                        .collect::<Vec<_>>()),
                })
            );
        } else {
            println!(
                "{:<22} {:>9} {:>12.1} {:>14.3e} {:>8} {:>12}",
                name,
                structure.len(),
                median * 1e6,
                atom_steps,
                times.len(),
                memory.map_or("-".to_string(), |m| format!("{m:.0}"))
            );
            if let Some(stages) = &stages {
                print_stages(stages);
            }
        }
    }
    Ok(())
}
