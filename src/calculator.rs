//! The calculator: a model bound to a device and a precision. It checks the input, owns the
//! Verlet skin rule, and drives its backend (CPU or CUDA, see [`crate::backend`]) through
//! the same stages for either; the backend keeps the neighbour list and work buffers between
//! calls. One calculator per thread; many may share one `Model`.

use std::str::FromStr;
use std::sync::Arc;

use crate::backend::cpu::FilterMode;
use crate::backend::{
    self, Backend, DeviceFacts, Exchange, GhostExchange, Request, Results, Stage, StageOutput,
    StageTime, System,
};
use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::neighbors::{NeighborLimits, VerletSkin, check_positions};

/// Where a calculator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
    /// The first CUDA GPU when one is usable, else the CPU.
    Auto,
}

impl FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda` (GPU 0), `cuda:N`, `auto`.
    fn from_str(text: &str) -> Result<Self> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::invalid(
                        "device",
                        format!("`{text}` is not one of cpu, cuda, cuda:N, auto"),
                    )
                }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Auto => write!(f, "auto"),
        }
    }
}

/// Arithmetic precision of the model evaluation. Energies and virials are always
/// accumulated in float64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// float64 throughout, the filter network evaluated exactly: the reference.
    F64,
    /// float32, the filter tabulated (error far below float32 round-off): production.
    F32,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f64" | "float64" | "double" => Ok(Precision::F64),
            "f32" | "float32" | "float" | "single" => Ok(Precision::F32),
            _ => Err(Error::invalid(
                "precision",
                format!("`{text}` is not one of f64, f32"),
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
        })
    }
}

/// Options of a calculator beyond device and precision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CalculatorOptions {
    /// Verlet skin of the neighbour list, Angstrom: the list is rebuilt only when an atom
    /// has moved by half of it since the last build.
    pub skin_angstrom: f64,
    /// Override of the filter evaluation (tests compare table and exact filters).
    pub filter_mode: Option<FilterMode>,
    /// Size limits of the neighbour list (per atom and in bytes), far above any real
    /// system by default: a structure in the wrong units is an error, not an abort. The
    /// CPU backend applies them.
    pub neighbor_limits: NeighborLimits,
}

impl Default for CalculatorOptions {
    fn default() -> Self {
        CalculatorOptions {
            skin_angstrom: 1.0,
            filter_mode: None,
            neighbor_limits: NeighborLimits::default(),
        }
    }
}

/// A model bound to a device and a precision.
pub struct Calculator {
    model: Arc<Model>,
    device: Device,
    precision: Precision,
    backend: Box<dyn Backend>,
    skin: VerletSkin,
}

impl Calculator {
    pub fn new(model: Arc<Model>, device: Device, precision: Precision) -> Result<Calculator> {
        Calculator::with_options(model, device, precision, CalculatorOptions::default())
    }

    pub fn with_options(
        model: Arc<Model>,
        device: Device,
        precision: Precision,
        options: CalculatorOptions,
    ) -> Result<Calculator> {
        if !(options.skin_angstrom.is_finite() && options.skin_angstrom >= 0.0) {
            return Err(Error::invalid(
                "skin_angstrom",
                format!("must be finite and >= 0, got {}", options.skin_angstrom),
            ));
        }
        options.neighbor_limits.validate()?;
        let (device, backend) = backend::open(&model, device, precision, &options)?;
        Ok(Calculator {
            model,
            device,
            precision,
            backend,
            skin: VerletSkin::new(options.skin_angstrom),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The device actually used (`Auto` resolved).
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device's name and the memory the backend holds on it.
    pub fn facts(&self) -> DeviceFacts {
        self.backend.facts()
    }

    /// How many times the neighbour list was built (the skin rule reuses it between).
    pub fn neighbor_list_builds(&self) -> usize {
        self.skin.builds()
    }

    /// Energy, forces and virial of a whole system: atoms `[n]` (atomic numbers),
    /// positions `[n][3]` (Angstrom, wrapped or not) in `cell`. The graph includes periodic
    /// images on the periodic axes.
    pub fn compute(
        &mut self,
        atomic_numbers: &[i32],
        positions: &[[f64; 3]],
        cell: &Cell,
        request: Request,
    ) -> Result<Results> {
        self.evaluate(
            atomic_numbers,
            positions,
            cell,
            atomic_numbers.len(),
            request,
            None,
        )
    }

    /// Domain-decomposed evaluation: atoms `0..n_owned` are owned, the rest are ghosts
    /// (images and neighbours' atoms provided by the MD engine). The graph is built over all
    /// atoms without periodicity; the energy counts owned atoms only; forces come back for
    /// every atom, and the caller adds ghost forces to their owners.
    pub fn compute_local(
        &mut self,
        atomic_numbers: &[i32],
        positions: &[[f64; 3]],
        n_owned: usize,
        request: Request,
    ) -> Result<Results> {
        check_owned(n_owned, atomic_numbers.len())?;
        self.evaluate(
            atomic_numbers,
            positions,
            &Cell::open(),
            n_owned,
            request,
            None,
        )
    }

    /// Domain-decomposed evaluation with per-layer ghost exchange: as
    /// [`compute_local`](Self::compute_local), but after each layer `exchange` fills the
    /// ghost rows of the features from their owners, and in the backward pass adds the
    /// gradient on ghost rows into their owners ([`GhostExchange`]). Only owned atoms need
    /// exact features, so ghosts are needed only within one cutoff (plus the skin) of the
    /// owned atoms, not L cutoffs. Energies count owned atoms; forces come back for every
    /// atom, and the caller adds ghost forces to their owners. The callbacks run on the
    /// calling thread. On a GPU each exchange copies the rows through host memory.
    pub fn compute_local_exchanging(
        &mut self,
        atomic_numbers: &[i32],
        positions: &[[f64; 3]],
        n_owned: usize,
        request: Request,
        exchange: &mut dyn GhostExchange,
    ) -> Result<Results> {
        check_owned(n_owned, atomic_numbers.len())?;
        let mut exchange = CheckedExchange::new(exchange, n_owned)?;
        let cell = Cell::open();
        self.evaluate(
            atomic_numbers,
            positions,
            &cell,
            n_owned,
            request,
            Some(&mut exchange),
        )
    }

    /// Turns per-stage timing on or off ([`Calculator::stage_times`]).
    pub fn set_profiling(&mut self, on: bool) {
        self.backend.set_profiling(on);
    }

    /// The time each stage of the last evaluation took, while profiling is on (`painn bench
    /// --profile`).
    pub fn stage_times(&mut self) -> Result<Vec<StageTime>> {
        self.backend.stage_times()
    }

    /// Test support: copies `stage`'s output of the last evaluation to the host.
    #[doc(hidden)]
    pub fn inspect(&mut self, stage: Stage) -> Result<StageOutput> {
        self.backend.inspect(stage)
    }

    /// Test support: keep the backward pass's per-layer gradients for [`Self::inspect`].
    #[doc(hidden)]
    pub fn keep_stage_outputs(&mut self, keep: bool) {
        self.backend.keep_stage_outputs(keep);
    }

    /// The one sequence of stages, the same for every backend.
    fn evaluate(
        &mut self,
        atomic_numbers: &[i32],
        positions: &[[f64; 3]],
        cell: &Cell,
        n_energy_atoms: usize,
        request: Request,
        exchange: Exchange<'_>,
    ) -> Result<Results> {
        if atomic_numbers.len() != positions.len() {
            return Err(Error::invalid(
                "positions",
                format!(
                    "{} positions for {} atomic numbers",
                    positions.len(),
                    atomic_numbers.len()
                ),
            ));
        }
        self.model.check_atomic_numbers(atomic_numbers)?;
        check_positions(positions)?;
        let system = System {
            atomic_numbers,
            positions,
            cell,
            n_energy_atoms,
            exchanging: exchange.is_some(),
        };
        let cutoff = self.model.cutoff_angstrom();
        let skin = &mut self.skin;
        let results = match exchange {
            // The callbacks must run on the caller's thread (MPI), so the sequence does too.
            Some(exchange) => sequence(
                &mut *self.backend,
                &system,
                cutoff,
                skin,
                request,
                Some(exchange),
            )?,
            None => self.backend.run_evaluation(
                system.n_atoms(),
                &mut |backend: &mut dyn Backend| {
                    sequence(backend, &system, cutoff, skin, request, None)
                },
            )?,
        };
        check_finite(&results)?;
        Ok(results)
    }
}

/// The owned atoms of a domain-decomposed evaluation are among the atoms given.
fn check_owned(n_owned: usize, n_atoms: usize) -> Result<()> {
    if n_owned > n_atoms {
        return Err(Error::invalid(
            "n_owned",
            format!("{n_owned} owned atoms but only {n_atoms} atoms given"),
        ));
    }
    Ok(())
}

/// The one sequence of stages, the same for every backend.
fn sequence(
    backend: &mut dyn Backend,
    system: &System,
    cutoff: f64,
    skin: &mut VerletSkin,
    request: Request,
    mut exchange: Exchange<'_>,
) -> Result<Results> {
    let (positions, cell) = (system.positions, system.cell);
    backend.load_system(system)?;
    let rebuild = !skin.covers(positions, cell);
    if rebuild {
        skin.invalidate();
        backend.build_neighbor_list(cutoff + skin.skin_angstrom())?;
    }
    backend.build_graph(cutoff)?;
    backend.forward(request.needs_backward(), backend::reborrow(&mut exchange))?;
    if request.needs_backward() {
        backend.backward(exchange)?;
    }
    let results = backend.readout(request)?;
    // Recorded only once the whole evaluation succeeded: a backend may find a problem with
    // the list (two atoms too close) as late as its readout.
    if rebuild {
        skin.record(positions, cell);
    }
    Ok(results)
}

fn check_finite(results: &Results) -> Result<()> {
    let all_finite = results.energy.is_finite()
        && results.energies.iter().all(|e| e.is_finite())
        && results.forces.iter().flatten().all(|f| f.is_finite())
        && results.virial.iter().flatten().all(|w| w.is_finite())
        && results
            .atom_virials
            .iter()
            .flatten()
            .flatten()
            .all(|w| w.is_finite());
    if all_finite {
        Ok(())
    } else {
        Err(Error::NonFinite {
            what: "the model's results (energy, forces or virial); refusing to return them".into(),
        })
    }
}

/// The caller's exchange with its sent rows read and checked once per evaluation, so that
/// every exchange of the evaluation uses the list that was checked (a backend indexes its
/// arrays with it).
struct CheckedExchange<'a> {
    caller: &'a mut dyn GhostExchange,
    sent_rows: Option<Vec<usize>>,
}

impl<'a> CheckedExchange<'a> {
    fn new(caller: &'a mut dyn GhostExchange, n_owned: usize) -> Result<Self> {
        let sent_rows = caller.sent_rows().map(<[usize]>::to_vec);
        if let Some(sent_rows) = &sent_rows {
            backend::check_sent_rows(sent_rows, n_owned)?;
        }
        Ok(CheckedExchange { caller, sent_rows })
    }
}

impl GhostExchange for CheckedExchange<'_> {
    fn forward(&mut self, rows: &mut [f64], width: usize) -> Result<()> {
        self.caller.forward(rows, width)
    }

    fn reverse(&mut self, rows: &mut [f64], width: usize) -> Result<()> {
        self.caller.reverse(rows, width)
    }

    fn sent_rows(&self) -> Option<&[usize]> {
        self.sent_rows.as_deref()
    }
}
