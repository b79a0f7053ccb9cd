//! The seam between the [`Calculator`](crate::Calculator) and the engines that run the model:
//! one [`Backend`] trait, implemented by the CPU backend ([`cpu`], the reference, float64 and
//! float32) and the CUDA backend ([`cuda`], float32).
//!
//! The calculator drives every backend through the same sequence of stages, named alike on
//! both sides (`cpu/{neighbors,graph,message,update,head,readout}.rs` mirror
//! `cuda/{neighbors,graph,message,update,head,readout}.rs` and the kernel families in
//! `cuda/*.cu`):
//!
//! ```text
//! load_system -> [build_neighbor_list] -> build_graph -> forward -> [backward] -> readout
//! ```
//!
//! The neighbour list is rebuilt only when the calculator's Verlet skin rule says so
//! ([`crate::neighbors::VerletSkin`]). The graph is the one contract both backends build
//! from their list: CSR by receiver, rows sorted by `(source, image)`, every edge within the
//! cutoff with the index of its reverse edge (the list is symmetric), so that every backward
//! reduction is a gather over the receiver's own row and results are deterministic without
//! atomics.
//!
//! [`Backend::inspect`] copies a stage's output to the host, so that tests can compare the
//! backends stage by stage (`tests/stages.rs`).

pub mod cpu;
pub mod cuda;

use std::sync::Arc;

use crate::calculator::{CalculatorOptions, Device, Precision};
use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::model::Model;

/// Values of per-edge geometry in the graph of both backends: `[d, u_x, u_y, u_z, r_x, r_y,
/// r_z, k, t]`, with `k` and `t` locating `d` in the filter table. Shared with the kernels.
pub(crate) const GEOMETRY_WIDTH: usize = 9;

/// `u = r / (d + U_EPSILON)`, as in the spec. Shared with the kernels.
pub(crate) const U_EPSILON: f64 = 1e-8;

/// A feature of `v` whose norm `|v|` is zero to round-off is set to 0, the spec's `v = 0`
/// (whose gradient is 0): when `|v|` is at most this factor times `v`'s round-off estimate,
/// per feature the sum over the terms added into `v` of each term's magnitude times
/// `(epsilon + edge_round_off / d)`, with epsilon of the engine's precision and
/// `edge_round_off` from [`edge_round_off_angstrom`].
///
/// Why: at a centre of inversion (every site of a perfect fcc, bcc or rock-salt crystal) the
/// terms cancel exactly, `|v|` is round-off, and `v / |v|` a unit vector in a random
/// direction: forces of 0.02-7 eV/A from nothing with the copper model, changing with how the
/// cell is written. Only features within round-off of 0 change. Setting them to 0 (rather
/// than only the gradient) keeps that noise out of the next layer. 16 is the smallest power
/// of 4 that zeroes those forces in every crystal of `tests/lattice_symmetry.rs` with the
/// copper model and with the student model (untrained for copper, it amplifies round-off
/// more), f32 and f64; 4 is enough for the copper model. Shared with the kernels.
pub(crate) const NORM_ROUND_OFF_FACTOR: f64 = 16.0;

/// The round-off of an edge vector `r_j - r_i + n . cell`, computed in f64 from `positions`
/// (its rounding error grows with the coordinates, not with the edge's length), in Angstrom.
pub(crate) fn edge_round_off_angstrom(positions: &[[f64; 3]], cutoff_angstrom: f64) -> f64 {
    let largest = positions
        .iter()
        .flatten()
        .fold(0.0f64, |largest, x| largest.max(x.abs()));
    // |r_j|, |r_i| and the image shift (at most |r_i| + |r_j| + cutoff), rounded up to a
    // power of two: the value then stays the same from one MD step to the next (a GPU graph
    // replays it).
    let scale = (4.0 * largest + cutoff_angstrom).max(1.0);
    f64::EPSILON * 2f64.powi(scale.log2().ceil() as i32)
}

/// What a caller wants besides the total energy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Per-atom energies.
    pub energies: bool,
    pub forces: bool,
    /// The 3x3 virial.
    pub virial: bool,
    /// Per-atom virials (9 per atom), LAMMPS's `compute stress/atom`.
    pub atom_virials: bool,
}

impl Request {
    pub const ALL: Request = Request {
        energies: true,
        forces: true,
        virial: true,
        atom_virials: true,
    };

    pub const ENERGY_FORCES_VIRIAL: Request = Request {
        energies: false,
        forces: true,
        virial: true,
        atom_virials: false,
    };

    pub(crate) fn needs_backward(&self) -> bool {
        self.forces || self.virial || self.atom_virials
    }
}

/// Results of one evaluation. Arrays that were not requested are empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    /// Total energy of the energy-counting atoms, eV.
    pub energy: f64,
    /// Per-atom energies, `[n_atoms]`, eV (zero for atoms that do not count).
    pub energies: Vec<f64>,
    /// Forces `-dE/dr`, `[n_atoms][3]`, eV/Angstrom (for ghosts too).
    pub forces: Vec<[f64; 3]>,
    /// Virial `W[a][b] = sum over edges r_ij[a] f_ij[b]`, eV.
    pub virial: [[f64; 3]; 3],
    /// Per-atom virials, `[n_atoms][3][3]`, eV: each edge's share split half to each end.
    pub atom_virials: Vec<[[f64; 3]; 3]>,
}

/// The system a backend evaluates, checked by the calculator: as many positions as atomic
/// numbers, every atomic number known to the model, every position finite.
#[derive(Clone, Copy, Debug)]
pub struct System<'a> {
    /// `[n_atoms]`, each within 1..=max_z.
    pub atomic_numbers: &'a [i32],
    /// `[n_atoms][3]`, Angstrom, wrapped or not.
    pub positions: &'a [[f64; 3]],
    /// The periodic axes and lattice; [`Cell::open`] for owned + ghost atoms.
    pub cell: &'a Cell,
    /// Atoms `0..n_energy_atoms` count towards the energy (the owned atoms of an MPI rank);
    /// all atoms do in a whole system.
    pub n_energy_atoms: usize,
    /// The ghost rows of each layer's input come from a [`GhostExchange`]: a backend may then
    /// leave out the edges between two ghosts, which reach no owned atom's energy.
    pub exchanging: bool,
}

impl System<'_> {
    pub fn n_atoms(&self) -> usize {
        self.atomic_numbers.len()
    }
}

/// Facts about the device a backend runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    /// `cpu`, or the GPU's name and architecture (`NVIDIA H200 (sm_90)`).
    pub name: String,
    /// Bytes of device memory held by the backend's buffers and weights (0 on the CPU,
    /// whose buffers live in the process's own memory).
    pub bytes_held: usize,
}

/// A stage whose output [`Backend::inspect`] copies to the host. Layer indices count from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// `offsets [n + 1]`, `sources [E]`, `shifts [E][3]`: every pair within cutoff + skin.
    NeighborList,
    /// `offsets [n + 1]`, `sources [E]`, `reverse [E]`, `distances [E]` (Angstrom),
    /// `directions [E][3]` (`u = r / (d + 1e-8)`): the edges within the cutoff.
    Graph,
    /// `s [n][H]`: the embedding, the first layer's scalar input.
    Embedding,
    /// `s_mid [n][H]`, `v_mid [n][3][H]`: the layer's features after its message.
    Message { layer: usize },
    /// `s_out [n][H]` and, except after the last layer, `v_out [n][3][H]`: the layer's
    /// output after its update (the next layer's input).
    Update { layer: usize },
    /// `energies [n]`: per-atom energies from the energy head (every atom, ghosts too).
    Head,
    /// `gs [n][H]`: `dE/ds` at the last layer's scalar output.
    HeadBackward,
    /// `gs_mid [n][H]`, `gv_mid [n][3][H]`: `dE/d(s_mid, v_mid)` of the layer, through its
    /// update. Kept only while [`Backend::keep_stage_outputs`] is on.
    UpdateBackward { layer: usize },
    /// `gs_in [n][H]`, `gv_in [n][3][H]`: `dE/d(s_in, v_in)` of the layer, through its
    /// message (the gradient of the previous layer's output; layers above 0 only). Kept only
    /// while [`Backend::keep_stage_outputs`] is on.
    MessageBackward { layer: usize },
    /// `de_dr [E][3]`: `dE/dr_ij` of every graph edge, the backward pass's result.
    EdgeGradients,
}

/// `layer` of a [`Stage`] to inspect in a model of `n_layers` layers, or the error saying
/// there is no such layer.
pub(crate) fn inspected_layer(layer: usize, n_layers: usize) -> Result<usize> {
    if layer < n_layers {
        Ok(layer)
    } else {
        Err(Error::invalid(
            "stage",
            format!("layer {layer} of a model of {n_layers} layers"),
        ))
    }
}

/// The error of [`Backend::inspect`] for an output that was not kept.
pub(crate) fn not_kept(what: &str) -> Error {
    Error::invalid("stage", format!("{what} was not kept"))
}

/// One array of a stage's output, in float64 (integers and float32 values are exact).
#[derive(Clone, Debug, PartialEq)]
pub struct StageArray {
    pub name: &'static str,
    /// Row-major shape, e.g. `[n, 3, H]`.
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// A stage's output, array by array in the order [`Stage`] documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageOutput {
    pub arrays: Vec<StageArray>,
}

impl StageOutput {
    /// Adds an array of `shape` from values of any type that widens exactly to f64.
    pub fn push<T: Copy + Into<f64>>(&mut self, name: &'static str, shape: &[usize], values: &[T]) {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        self.arrays.push(StageArray {
            name,
            shape: shape.to_vec(),
            values: values.iter().map(|&v| v.into()).collect(),
        });
    }

    /// Adds an array of indices or counts (exact in float64 below 2^53).
    pub fn push_indices(&mut self, name: &'static str, shape: &[usize], values: &[usize]) {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len(), "{name}");
        self.arrays.push(StageArray {
            name,
            shape: shape.to_vec(),
            values: values.iter().map(|&v| v as f64).collect(),
        });
    }

    /// The array called `name`.
    pub fn array(&self, name: &str) -> Option<&StageArray> {
        self.arrays.iter().find(|a| a.name == name)
    }
}

/// The time one stage of an evaluation took.
#[derive(Clone, Debug, PartialEq)]
pub struct StageTime {
    /// `upload`, `neighbor list`, `graph`, `embed`, `message 0`, `update 0`, ..., `head`,
    /// `head backward`, `update backward 2`, `message backward 2`, ..., `readout`.
    pub stage: String,
    pub seconds: f64,
}

/// Marks between the stages of one evaluation, each named by the stage it ends, for
/// [`Backend::stage_times`]: `M` is an instant on the CPU, an event on a GPU stream. Marks
/// are only taken while profiling is on.
pub(crate) struct StageMarks<M> {
    pub on: bool,
    /// The evaluation's start, then one mark per stage.
    pub marks: Vec<(String, M)>,
}

impl<M> Default for StageMarks<M> {
    fn default() -> Self {
        StageMarks {
            on: false,
            marks: Vec::new(),
        }
    }
}

impl<M> StageMarks<M> {
    /// Starts an evaluation's marks with `start` (taken only while profiling).
    pub fn start(&mut self, start: impl FnOnce() -> Result<M>) -> Result<()> {
        self.marks.clear();
        if self.on {
            self.marks.push((String::new(), start()?));
        }
        Ok(())
    }

    /// Marks the end of `stage` (a name made only while profiling).
    pub fn mark(
        &mut self,
        stage: impl FnOnce() -> String,
        now: impl FnOnce() -> Result<M>,
    ) -> Result<()> {
        if self.on && !self.marks.is_empty() {
            self.marks.push((stage(), now()?));
        }
        Ok(())
    }

    /// Each stage's time from consecutive marks, given the seconds between two of them.
    pub fn times(&self, seconds: impl Fn(&M, &M) -> Result<f64>) -> Result<Vec<StageTime>> {
        self.marks
            .windows(2)
            .map(|pair| {
                Ok(StageTime {
                    stage: pair[1].0.clone(),
                    seconds: seconds(&pair[0].1, &pair[1].1)?,
                })
            })
            .collect()
    }
}

/// Per-layer ghost exchange for a domain-decomposed evaluation (atoms `0..n_owned` owned,
/// the rest ghosts, copies of atoms other ranks own or of periodic images): after each
/// layer, ghost rows of the next layer's input are filled from their owners; in the
/// backward pass, the gradient gathered on ghost rows is added into their owners. Only
/// owned rows are then exact, so the ghost shell needs to be one cutoff deep, not L.
/// `rows` is `[n_atoms][width]` (width stated by the engine: `4 H`, `[s, v_x, v_y, v_z]`),
/// in float64. The callbacks run on the thread that called the calculator.
pub trait GhostExchange {
    /// Fills the ghost rows of `rows` from the rows of their owners.
    fn forward(&mut self, rows: &mut [f64], width: usize) -> Result<()>;
    /// Adds the ghost rows of `rows` into the rows of their owners (the engine clears the
    /// ghost rows afterwards).
    fn reverse(&mut self, rows: &mut [f64], width: usize) -> Result<()>;
    /// The owned rows other ranks read (the union of the caller's send lists), ascending,
    /// each below `n_owned`; `None` (the default): every owned row. With a list, `forward`
    /// is given meaningful values only in these rows and the ghost rows, and `reverse` may
    /// add only into these rows; a GPU then moves only these rows and the ghost rows
    /// between its memory and the host.
    fn sent_rows(&self) -> Option<&[usize]> {
        None
    }
}

/// Checks a [`GhostExchange::sent_rows`] list: ascending, without repeats, each below
/// `n_owned`.
pub fn check_sent_rows(sent_rows: &[usize], n_owned: usize) -> Result<()> {
    if let Some(k) = sent_rows.windows(2).position(|pair| pair[0] >= pair[1]) {
        return Err(Error::invalid(
            "exchange.sent_rows",
            format!(
                "must be ascending without repeats: entry {} is {} after {}",
                k + 1,
                sent_rows[k + 1],
                sent_rows[k]
            ),
        ));
    }
    match sent_rows.last() {
        Some(&last) if last >= n_owned => Err(Error::invalid(
            "exchange.sent_rows",
            format!("row {last} is not an owned row (n_owned = {n_owned})"),
        )),
        _ => Ok(()),
    }
}

/// The exchange of one evaluation, if any.
pub type Exchange<'a> = Option<&'a mut dyn GhostExchange>;

/// The atoms whose rows each layer and the energy head compute, `0..rows`: with an exchange
/// the ghost rows of a layer's output are overwritten and the ghosts' energies not counted,
/// so the owned atoms (`n_energy_atoms`); else all `n_atoms`. The backward pass runs its
/// update stages on the same rows (the ghost rows of those gradients are zero).
pub fn computed_rows(exchange: &Exchange<'_>, n_atoms: usize, n_energy_atoms: usize) -> usize {
    match exchange {
        Some(_) => n_energy_atoms,
        None => n_atoms,
    }
}

/// `exchange` lent for a shorter while (one stage).
pub fn reborrow<'b>(exchange: &'b mut Exchange<'_>) -> Exchange<'b> {
    match exchange {
        Some(exchange) => Some(&mut **exchange),
        None => None,
    }
}

/// The calculator's sequence of stages for one evaluation, handed to
/// [`Backend::run_evaluation`].
pub type Stages<'a> = dyn FnMut(&mut dyn Backend) -> Result<Results> + Send + 'a;

/// An engine that runs the model: the CPU or a CUDA GPU. The [`Calculator`](crate::Calculator)
/// calls the stages in this order, once each per evaluation:
///
/// 1. [`load_system`](Backend::load_system) (every call);
/// 2. [`build_neighbor_list`](Backend::build_neighbor_list) (only when the skin rule asks);
/// 3. [`build_graph`](Backend::build_graph), [`forward`](Backend::forward);
/// 4. [`backward`](Backend::backward) (only when forces or virials are requested);
/// 5. [`readout`](Backend::readout), which ends the evaluation.
///
/// A failed stage leaves the backend ready for the next `load_system`. A backend does no
/// input validation of its own beyond what only it can see (two atoms closer than the
/// minimum distance, a GPU too small for the system).
pub trait Backend: Send {
    /// The device and the memory the backend holds on it.
    fn facts(&self) -> DeviceFacts;

    /// Takes the system of this evaluation (positions every call; atomic numbers and cell
    /// when they changed).
    fn load_system(&mut self, system: &System) -> Result<()>;

    /// Builds the neighbour list of the loaded positions: every directed pair within
    /// `search_radius_angstrom` (cutoff + skin), see [`crate::neighbors`].
    fn build_neighbor_list(&mut self, search_radius_angstrom: f64) -> Result<()>;

    /// Builds the graph from the list: the edges within `cutoff_angstrom` for the loaded
    /// positions, their reverse edges and geometry.
    fn build_graph(&mut self, cutoff_angstrom: f64) -> Result<()>;

    /// Embedding, every layer's message and update, and the energy head. `backward_follows`
    /// says whether [`backward`](Backend::backward) will run (a backend may then keep, or
    /// compute along, what it needs).
    fn forward(&mut self, backward_follows: bool, exchange: Exchange<'_>) -> Result<()>;

    /// The analytic backward pass, ending in `dE/dr_ij` of every edge.
    fn backward(&mut self, exchange: Exchange<'_>) -> Result<()>;

    /// The requested results (forces and virials from `dE/dr_ij` and each edge's reverse).
    fn readout(&mut self, request: Request) -> Result<Results>;

    /// Runs `stages`, the calculator's sequence for one evaluation of `n_atoms` atoms, where
    /// this backend's work is best started from: the CPU backend runs a large system's
    /// sequence on a thread of its pool (its parallel loops then start without waking the
    /// pool and putting the caller to sleep each time); other backends run it here.
    fn run_evaluation(&mut self, n_atoms: usize, stages: &mut Stages<'_>) -> Result<Results>;

    /// Turns per-stage timing on or off (off by default): the backend then marks the end of
    /// each stage of an evaluation (on the GPU with events on its stream).
    fn set_profiling(&mut self, on: bool);

    /// The time each stage of the last evaluation took, in order, while profiling is on.
    fn stage_times(&mut self) -> Result<Vec<StageTime>>;

    /// Test support: copies `stage`'s output of the last evaluation to the host.
    #[doc(hidden)]
    fn inspect(&mut self, stage: Stage) -> Result<StageOutput>;

    /// Test support: keep the backward pass's per-layer gradients ([`Stage::UpdateBackward`],
    /// [`Stage::MessageBackward`]), which are otherwise overwritten layer by layer.
    #[doc(hidden)]
    fn keep_stage_outputs(&mut self, keep: bool);
}

/// Opens the backend for `device` and `precision`: the CPU, a GPU (float32 only), or with
/// [`Device::Auto`] the first GPU when one is usable and the precision is float32, else the
/// CPU. Returns the device actually used.
pub fn open(
    model: &Arc<Model>,
    device: Device,
    precision: Precision,
    options: &CalculatorOptions,
) -> Result<(Device, Box<dyn Backend>)> {
    match device {
        Device::Cpu => Ok((Device::Cpu, cpu::open(model, precision, options))),
        Device::Cuda(ordinal) => Ok((device, cuda::open(model, ordinal, precision)?)),
        Device::Auto => match cuda::open(model, 0, precision) {
            Ok(backend) => Ok((Device::Cuda(0), backend)),
            Err(_) => Ok((Device::Cpu, cpu::open(model, precision, options))),
        },
    }
}
