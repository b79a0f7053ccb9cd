//! The calculator: a model bound to a device and a precision, owning its neighbour list and
//! work buffers between calls. One calculator per thread; many may share one `Model`.

use std::str::FromStr;
use std::sync::Arc;

use crate::backend::cpu::{CpuBackend, FilterMode};
use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, Graph, Request, Results};
use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::neighbors::{NeighborList, NeighborListOptions, edge_vector};

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
}

impl Default for CalculatorOptions {
    fn default() -> Self {
        CalculatorOptions {
            skin_angstrom: 1.0,
            filter_mode: None,
        }
    }
}

/// A model bound to a device and a precision.
pub struct Calculator {
    model: Arc<Model>,
    device: Device,
    precision: Precision,
    options: CalculatorOptions,
    engine: Engine,
}

enum Engine {
    /// The CPU engine with the host-side neighbour list and graph.
    Cpu(Box<CpuEngine>),
    /// The GPU: neighbour list, graph and model all on the device.
    Cuda(Box<CudaBackend>),
}

struct CpuEngine {
    backend: Box<dyn Backend>,
    neighbors: Option<NeighborList>,
    graph: GraphBuffers,
}

/// The graph handed to the backend: the neighbour list restricted to the cutoff.
#[derive(Default)]
struct GraphBuffers {
    offsets: Vec<usize>,
    sources: Vec<u32>,
    shifts: Vec<[i32; 3]>,
    reverse: Vec<u32>,
    vectors: Vec<[f64; 3]>,
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
        let cuda = |ordinal: usize| -> Result<Engine> {
            if precision != Precision::F32 {
                return Err(Error::Unsupported(format!(
                    "the CUDA backend computes in float32; precision {precision} needs device cpu"
                )));
            }
            Ok(Engine::Cuda(Box::new(CudaBackend::new(
                model.clone(),
                ordinal,
                options.skin_angstrom,
            )?)))
        };
        let (device, engine) = match device {
            Device::Cuda(ordinal) => (device, cuda(ordinal)?),
            // Auto: the first GPU when one is usable (and the precision is float32).
            Device::Auto => match cuda(0) {
                Ok(engine) => (Device::Cuda(0), engine),
                Err(_) => (Device::Cpu, Self::cpu_engine(&model, precision, &options)),
            },
            Device::Cpu => (Device::Cpu, Self::cpu_engine(&model, precision, &options)),
        };
        Ok(Calculator {
            model,
            device,
            precision,
            options,
            engine,
        })
    }

    fn cpu_engine(model: &Arc<Model>, precision: Precision, options: &CalculatorOptions) -> Engine {
        let backend: Box<dyn Backend> = match precision {
            Precision::F64 => Box::new(CpuBackend::<f64>::new(
                model.clone(),
                options.filter_mode.unwrap_or(FilterMode::Exact),
            )),
            Precision::F32 => Box::new(CpuBackend::<f32>::new(
                model.clone(),
                options.filter_mode.unwrap_or(FilterMode::Table),
            )),
        };
        Engine::Cpu(Box::new(CpuEngine {
            backend,
            neighbors: None,
            graph: GraphBuffers::default(),
        }))
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

    /// The GPU backend, when the calculator runs on one (benchmarks read its memory use).
    pub fn cuda_backend(&mut self) -> Option<&mut CudaBackend> {
        match &mut self.engine {
            Engine::Cuda(backend) => Some(backend),
            Engine::Cpu(_) => None,
        }
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
        if n_owned > atomic_numbers.len() {
            return Err(Error::invalid(
                "n_owned",
                format!(
                    "{n_owned} owned atoms but only {} atoms given",
                    atomic_numbers.len()
                ),
            ));
        }
        self.evaluate(atomic_numbers, positions, &Cell::open(), n_owned, request)
    }

    fn evaluate(
        &mut self,
        atomic_numbers: &[i32],
        positions: &[[f64; 3]],
        cell: &Cell,
        n_energy_atoms: usize,
        request: Request,
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
        let cutoff = self.model.cutoff_angstrom();
        let results = match &mut self.engine {
            Engine::Cpu(engine) => {
                let CpuEngine {
                    backend,
                    neighbors,
                    graph,
                } = engine.as_mut();
                match neighbors {
                    Some(list) => {
                        list.update(positions, cell)?;
                    }
                    None => {
                        let options =
                            NeighborListOptions::new(cutoff).with_skin(self.options.skin_angstrom);
                        *neighbors = Some(NeighborList::build(positions, cell, options)?);
                    }
                }
                let list = neighbors.as_ref().expect("built above");
                graph.fill(list, positions, cell, cutoff);
                let graph = Graph {
                    atomic_numbers,
                    n_energy_atoms,
                    offsets: &graph.offsets,
                    sources: &graph.sources,
                    reverse: &graph.reverse,
                    vectors: &graph.vectors,
                };
                backend.evaluate(&graph, request)?
            }
            Engine::Cuda(backend) => {
                backend.compute(atomic_numbers, positions, cell, n_energy_atoms, request)?
            }
        };
        check_finite(&results)?;
        Ok(results)
    }
}

impl GraphBuffers {
    /// The edges of `list` within `cutoff` (inclusive) for the current positions, with
    /// their vectors and reverse edges.
    fn fill(&mut self, list: &NeighborList, positions: &[[f64; 3]], cell: &Cell, cutoff: f64) {
        let cutoff_squared = cutoff * cutoff;
        self.offsets.clear();
        self.sources.clear();
        self.shifts.clear();
        self.vectors.clear();
        self.offsets.push(0);
        for i in 0..list.n_atoms() {
            let (sources, shifts) = list.row(i);
            for (&j, &n) in sources.iter().zip(shifts) {
                let r = edge_vector(positions, cell, i, j as usize, n);
                if r[0] * r[0] + r[1] * r[1] + r[2] * r[2] <= cutoff_squared {
                    self.sources.push(j);
                    self.shifts.push(n);
                    self.vectors.push(r);
                }
            }
            self.offsets.push(self.sources.len());
        }
        // Reverse edges: (j <- i, -n) in row j, found by binary search (rows are sorted).
        self.reverse.clear();
        for i in 0..list.n_atoms() {
            for e in self.offsets[i]..self.offsets[i + 1] {
                let j = self.sources[e] as usize;
                let n = self.shifts[e];
                let key = (i as u32, [-n[0], -n[1], -n[2]]);
                let (mut lo, mut hi) = (self.offsets[j], self.offsets[j + 1]);
                while lo < hi {
                    let middle = (lo + hi) / 2;
                    if (self.sources[middle], self.shifts[middle]) < key {
                        lo = middle + 1;
                    } else {
                        hi = middle;
                    }
                }
                debug_assert!(self.sources[lo] == i as u32 && self.shifts[lo] == key.1);
                self.reverse.push(lo as u32);
            }
        }
    }
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
