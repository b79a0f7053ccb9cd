//! The CUDA backend: neighbour list, graph, float32 forward and analytic backward on the GPU,
//! stage by stage as the CPU backend (src/backend/cpu). State stays on the GPU between
//! calls: buffers grow geometrically and are reused; an evaluation uploads the positions once
//! (the atomic numbers and the cell only when they change) and downloads the results once
//! (plus the edge count when the neighbour list is rebuilt).
//!
//! Deterministic: no floating-point atomics; every reduction runs in a fixed order over
//! CSR rows sorted by (source, image), or in fixed trees.
//!
//! Modules by concern:
//! - `device.rs`: the GPU, its one stream, transfers and fills;
//! - `compile.rs`: the kernels' program, NVRTC compilation and the disk cache, and the numbers
//!   shared with the kernels (`-D` options);
//! - `launch.rs`: one typed launch method per kernel;
//! - `buffers.rs`: device buffers, the registry that counts their bytes, the backend's
//!   buffers by stage;
//! - `exchange.rs`: the per-layer ghost exchange of a domain-decomposed evaluation;
//! - `grid.rs`: host arithmetic (binning frame, block sizes, grid sizes);
//! - the stages, named as on the CPU: `neighbors.rs` (`build_neighbor_list`), `graph.rs`
//!   (`build_graph`), `message.rs` (`message_forward`, `message_backward`), `update.rs`
//!   (`embed`, `norm_concat`, `update_mlp`, `gate_forward`, `gate_backward`,
//!   `update_mlp_backward`, `norm_backward`), `head.rs` (`head_energy`, `head_backward`),
//!   `readout.rs` (`readout`); their kernels are in `cuda/<stage>.cu`.

mod buffers;
pub mod compile;
mod device;
mod exchange;
mod graph;
pub mod grid;
mod head;
mod inspect;
mod launch;
mod message;
mod neighbors;
mod readout;
mod replay;
mod small;
mod update;

use std::sync::Arc;

use cudarc::driver::CudaEvent;

use super::{
    Backend, DeviceFacts, Exchange, Request, Results, Stage, StageMarks, StageOutput, StageTime,
    Stages, System, computed_rows,
};
use crate::calculator::Precision;
use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::model::Model;
use buffers::{Buffers, DeviceBuffer, DevicePtr, KeptGradients, LayerBuffers, Registry, Weights};
pub use device::device_count;
use device::{Device, PinnedBuffer, driver};
use exchange::{Direction, ExchangeStaging, exchange_rows};
use grid::MAX_HIDDEN;
use launch::Kernels;
use readout::STATUS_WORDS;
use replay::{GraphKey, GraphStage, StageGraphs};

/// What every stage launches with: the device and its stream, the kernels, and the registry
/// every allocation goes through.
struct Gpu {
    device: Device,
    kernels: Kernels,
    registry: Registry,
}

/// How far the current evaluation has come (`load_system` starts it over).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Progress {
    #[default]
    Loaded,
    Graph,
    Forward,
    Backward,
}

/// The loaded system on the host side.
#[derive(Default)]
struct LoadedSystem {
    /// `[n][3]`, Angstrom: the binning frame and the error for atoms too close need them.
    positions: Vec<[f64; 3]>,
    cell: Option<Cell>,
    n_energy_atoms: usize,
    /// See [`System::exchanging`].
    exchanging: bool,
    /// What the device holds, to upload only what changed.
    uploaded_atomic_numbers: Vec<i32>,
    uploaded_cell: Option<Cell>,
}

/// The model on one GPU.
pub struct CudaBackend {
    hidden: usize,
    weights: Weights,
    buffers: Buffers,
    kept: KeptGradients,
    keep_stage_outputs: bool,
    system: LoadedSystem,
    progress: Progress,
    /// Atoms of the last neighbour-list build (`None`: none yet, or it failed).
    list_atoms: Option<usize>,
    /// The round-off of the graph's edge vectors, Angstrom (`edge_round_off_angstrom`).
    edge_round_off_angstrom: f64,
    /// Page-locked host copies of the positions uploaded and the results downloaded.
    positions_host: PinnedBuffer<f64>,
    results_host: PinnedBuffer<f64>,
    /// Host copies of the rows a ghost exchange reads and writes.
    exchange_staging: ExchangeStaging,
    /// Events between the stages while profiling.
    profile: StageMarks<CudaEvent>,
    /// Blocks of the small-system kernels' cluster (0: this GPU runs no clusters).
    small_cluster_blocks: u32,
    /// The steady-state stages recorded as CUDA graphs (not while profiling or keeping stage
    /// outputs).
    graphs: StageGraphs,
    /// Last: the buffers above are freed while its context lives.
    gpu: Gpu,
}

/// Opens GPU `ordinal` for the float32 engine.
pub(crate) fn open(
    model: &Arc<Model>,
    ordinal: usize,
    precision: Precision,
) -> Result<Box<dyn Backend>> {
    if precision != Precision::F32 {
        return Err(Error::Unsupported(format!(
            "the CUDA backend computes in float32; precision {precision} needs device cpu"
        )));
    }
    Ok(Box::new(CudaBackend::new(model, ordinal)?))
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) the kernels for its
    /// architecture and uploads the model.
    pub fn new(model: &Model, ordinal: usize) -> Result<CudaBackend> {
        let h = model.hidden_features();
        if !h.is_multiple_of(32) || h > MAX_HIDDEN {
            return Err(Error::Unsupported(format!(
                "the CUDA kernels need a hidden size that is a multiple of 32 and at most \
                 {MAX_HIDDEN}; this model has H = {h}: use device cpu"
            )));
        }
        let device = Device::open(ordinal)?;
        let cubin = compile::cubin_for(device.arch())?;
        let module = device
            .context()
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(|e| driver("loading the kernels", e))?;
        let kernels = Kernels::load(&module, device.stream().clone())?;
        // Without clusters (before sm_90), or where the driver refuses them, every system
        // takes the staged path.
        let small_cluster_blocks = match device.has_clusters() {
            true => kernels.small_cluster_blocks().unwrap_or(0),
            false => 0,
        };
        let gpu = Gpu {
            device,
            kernels,
            registry: Registry::default(),
        };
        let weights = Weights::upload(&gpu.device, &gpu.registry, model)?;
        let mut buffers = Buffers {
            layers: (0..model.interactions.len())
                .map(|_| LayerBuffers::default())
                .collect(),
            ..Buffers::default()
        };
        let status = [0i32; STATUS_WORDS];
        gpu.device
            .upload(&gpu.registry, &mut buffers.system.status, &status)?;
        gpu.device.synchronize()?;
        Ok(CudaBackend {
            hidden: h,
            weights,
            buffers,
            kept: KeptGradients::default(),
            keep_stage_outputs: false,
            system: LoadedSystem::default(),
            progress: Progress::Loaded,
            list_atoms: None,
            edge_round_off_angstrom: 0.0,
            positions_host: PinnedBuffer::default(),
            results_host: PinnedBuffer::default(),
            exchange_staging: ExchangeStaging::default(),
            profile: StageMarks::default(),
            small_cluster_blocks,
            graphs: StageGraphs::new(),
            gpu,
        })
    }

    fn n_atoms(&self) -> usize {
        self.system.positions.len()
    }

    fn cell(&self) -> Cell {
        self.system.cell.unwrap_or_else(Cell::open)
    }

    /// Fails unless the current evaluation has come as far as `stage`.
    fn require(&self, stage: Progress, what: &str) -> Result<()> {
        if self.progress >= stage {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "{what} before the stage that computes it"
            )))
        }
    }

    /// Marks the end of `stage` in the profile (while profiling).
    fn mark(&mut self, stage: impl FnOnce() -> String) -> Result<()> {
        let device = &self.gpu.device;
        self.profile.mark(stage, || device.timing_event())
    }

    /// Whether the forward and backward passes run as the two small-system kernels
    /// (`small.rs`): a small system, not while profiling or keeping stage outputs (those
    /// time and read the staged path's stages).
    fn takes_small_path(&self) -> bool {
        !self.profile.on
            && !self.keep_stage_outputs
            && small::takes_small_path(
                self.small_cluster_blocks,
                &self.weights,
                self.n_atoms(),
                self.hidden,
            )
    }

    /// Runs `stage` directly while profiling or keeping stage outputs, else through the
    /// stage graphs (recorded on its second run with the same key, replayed after).
    fn replayed(
        &mut self,
        stage: GraphStage,
        scalars: u64,
        run: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<()> {
        if self.profile.on || self.keep_stage_outputs {
            return run(self);
        }
        let key = GraphKey {
            stage,
            n_atoms: self.n_atoms(),
            n_energy_atoms: self.system.n_energy_atoms,
            generation: self.gpu.registry.generation(),
            scalars,
        };
        let mut graphs = std::mem::replace(&mut self.graphs, StageGraphs::disabled());
        let done = graphs.run(
            self,
            |backend| &backend.gpu.device,
            |backend| backend.gpu.registry.generation(),
            key,
            run,
        );
        self.graphs = graphs;
        done
    }

    /// The forward pass; with an `exchange`, the ghost rows of each layer's input are filled
    /// between the layers.
    fn forward_stages(
        &self,
        profile: &mut StageMarks<CudaEvent>,
        mut exchange: Exchange<'_>,
        staging: &mut ExchangeStaging,
    ) -> Result<()> {
        let n = self.n_atoms();
        let h = self.hidden;
        let (gpu, w, b) = (&self.gpu, &self.weights, &self.buffers);
        let n_layers = b.layers.len();
        let rows = computed_rows(&exchange, n, self.system.n_energy_atoms);
        let first = &b.layers[0];
        update::embed(
            gpu,
            n,
            h,
            &b.system.atomic_numbers,
            &w.embedding,
            &first.s_in,
        )?;
        gpu.device.fill_zero(first.v_in.ptr(), 3 * n * h)?;
        let now = || gpu.device.timing_event();
        profile.mark(|| "embed".into(), now)?;
        for l in 0..n_layers {
            let (layer, lw) = (&b.layers[l], &w.layers[l]);
            let table = w.filter_table(l);
            let edge_round_off = self.edge_round_off_angstrom as f32;
            // A rank that owns no atoms still takes part in every exchange.
            if rows > 0 {
                message::message_forward(
                    gpu,
                    rows,
                    h,
                    &b.graph,
                    table,
                    layer,
                    l == 0,
                    edge_round_off,
                    &b.concat,
                )?;
                profile.mark(|| format!("message {l}"), now)?;
                update::norm_concat(gpu, rows, h, layer, &b.concat)?;
                update::update_mlp(gpu, rows, h, lw, &b.concat, layer, &b.hidden)?;
                // Gate into the next layer's input (or the final scalars).
                let (s_next, v_next) = match b.layers.get(l + 1) {
                    Some(next) => (next.s_in.ptr(), next.v_in.ptr()),
                    None => (b.s_final.ptr(), DevicePtr::null()),
                };
                update::gate_forward(gpu, rows, h, lw, layer, s_next, v_next)?;
                profile.mark(|| format!("update {l}"), now)?;
            }
            if let (Some(exchange), Some(next)) = (exchange.as_deref_mut(), b.layers.get(l + 1)) {
                let owned = self.system.n_energy_atoms;
                let rows = (&next.s_in, &next.v_in);
                let forward = Direction::Forward;
                exchange_rows(gpu, exchange, forward, n, owned, h, rows, staging)?;
                profile.mark(|| format!("exchange {l}"), now)?;
            }
        }
        if rows > 0 {
            head::head_energy(gpu, rows, h, &w.head, &b.s_final, &b.head)?;
        }
        profile.mark(|| "head".into(), now)
    }

    /// The backward pass; with an `exchange`, the ghost rows of each layer's input gradient
    /// are added into their owners between the layers.
    fn backward_stages(
        &mut self,
        profile: &mut StageMarks<CudaEvent>,
        mut exchange: Exchange<'_>,
        staging: &mut ExchangeStaging,
    ) -> Result<()> {
        let n = self.n_atoms();
        let h = self.hidden;
        let (gpu, w, b) = (&self.gpu, &self.weights, &self.buffers);
        let n_layers = b.layers.len();
        let keep = self.keep_stage_outputs;
        let kept = &mut self.kept;
        if keep {
            kept.atoms = None;
            kept.reserve(&gpu.registry, n, h, n_layers)?;
        }
        let device = &gpu.device;
        let g = &b.gradients;
        let n_energy_atoms = self.system.n_energy_atoms;
        let rows = computed_rows(&exchange, n, n_energy_atoms);
        if rows > 0 {
            head::head_backward(gpu, rows, n_energy_atoms, h, &w.head, &b.head, &g.gs)?;
        }
        device.fill_zero(g.gs.offset(rows * h), (n - rows) * h)?;
        let now = || gpu.device.timing_event();
        if keep {
            device.copy(kept.head_gs.ptr(), g.gs.ptr(), n * h)?;
        }
        device.fill_zero(g.gv.ptr(), 3 * n * h)?;
        device.fill_zero(g.de_dr.ptr(), 3 * b.edge_capacity)?;
        profile.mark(|| "head backward".into(), now)?;
        let spacing_angstrom = w.filter_spacing_angstrom as f32;
        for l in (0..n_layers).rev() {
            let (layer, lw) = (&b.layers[l], &w.layers[l]);
            if rows > 0 {
                update::gate_backward(gpu, rows, h, lw, layer, l + 1 == n_layers, g)?;
                update::update_mlp_backward(gpu, rows, h, lw, layer, g)?;
                update::norm_backward(gpu, rows, h, layer, g)?;
            }
            device.fill_zero(g.gs_mid.offset(rows * h), (n - rows) * h)?;
            device.fill_zero(g.gv_mid.offset(3 * rows * h), 3 * (n - rows) * h)?;
            if keep {
                keep_pair(device, &kept.update[l], (&g.gs_mid, &g.gv_mid), n * h)?;
            }
            profile.mark(|| format!("update backward {l}"), now)?;
            let table = w.filter_table(l);
            message::message_backward(
                gpu,
                n,
                h,
                &b.graph,
                table,
                spacing_angstrom,
                layer,
                g,
                l > 0,
            )?;
            if let (Some(exchange), true) = (exchange.as_deref_mut(), l > 0) {
                let owned = n_energy_atoms;
                let rows = (&g.gs, &g.gv);
                let reverse = Direction::Reverse;
                exchange_rows(gpu, exchange, reverse, n, owned, h, rows, staging)?;
            }
            if keep && l > 0 {
                keep_pair(device, &kept.message[l], (&g.gs, &g.gv), n * h)?;
            }
            profile.mark(|| format!("message backward {l}"), now)?;
        }
        if keep {
            kept.atoms = Some(n);
        }
        Ok(())
    }
}

/// Queues copies of a gradient pair `(gs [n][H], gv [n][3][H])` (`scalars` = n H) into `kept`.
fn keep_pair(
    device: &Device,
    kept: &(DeviceBuffer<f32>, DeviceBuffer<f32>),
    (gs, gv): (&DeviceBuffer<f32>, &DeviceBuffer<f32>),
    scalars: usize,
) -> Result<()> {
    device.copy(kept.0.ptr(), gs.ptr(), scalars)?;
    device.copy(kept.1.ptr(), gv.ptr(), 3 * scalars)
}

impl Backend for CudaBackend {
    fn facts(&self) -> DeviceFacts {
        DeviceFacts {
            name: self.gpu.device.name().to_string(),
            bytes_held: self.gpu.registry.bytes_held(),
        }
    }

    fn load_system(&mut self, system: &System) -> Result<()> {
        let n = system.n_atoms();
        if n >= i32::MAX as usize / 3 {
            return Err(Error::invalid(
                "positions",
                format!("{n} atoms are too many for the GPU backend"),
            ));
        }
        self.progress = Progress::Loaded;
        let device = &self.gpu.device;
        self.profile.start(|| {
            device.bind()?;
            device.timing_event()
        })?;
        let loaded = &mut self.system;
        loaded.positions.clear();
        loaded.positions.extend_from_slice(system.positions);
        loaded.cell = Some(*system.cell);
        loaded.n_energy_atoms = system.n_energy_atoms;
        loaded.exchanging = system.exchanging;
        if n == 0 {
            return Ok(());
        }
        let Gpu {
            device,
            kernels,
            registry,
        } = &self.gpu;
        device.bind()?;
        let b = &mut self.buffers;
        b.reserve_atoms(registry, n, self.hidden, &self.weights)?;
        let positions = self.positions_host.slice(device, 3 * n)?;
        positions.copy_from_slice(system.positions.as_flattened());
        device.upload(registry, &mut b.system.positions, positions)?;
        if loaded.uploaded_atomic_numbers != system.atomic_numbers {
            device.upload(
                registry,
                &mut b.system.atomic_numbers,
                system.atomic_numbers,
            )?;
            loaded.uploaded_atomic_numbers = system.atomic_numbers.to_vec();
        }
        if loaded.uploaded_cell != Some(*system.cell) {
            let lattice = system.cell.vectors();
            device.upload(registry, &mut b.system.lattice, lattice.as_flattened())?;
            loaded.uploaded_cell = Some(*system.cell);
        }
        kernels.status_reset(launch::status(), &b.system.status)?;
        self.mark(|| "upload".into())
    }

    fn build_neighbor_list(&mut self, search_radius_angstrom: f64) -> Result<()> {
        self.list_atoms = None;
        let cell = self.cell();
        let n = self.n_atoms();
        self.gpu.device.bind()?;
        neighbors::build_neighbor_list(
            &self.gpu,
            &mut self.buffers,
            &self.system.positions,
            &cell,
            search_radius_angstrom,
        )?;
        self.list_atoms = Some(n);
        self.mark(|| "neighbor list".into())
    }

    fn build_graph(&mut self, cutoff_angstrom: f64) -> Result<()> {
        let n = self.n_atoms();
        if self.list_atoms != Some(n) {
            return Err(Error::Unsupported(
                "build_graph before build_neighbor_list".into(),
            ));
        }
        self.gpu.device.bind()?;
        self.edge_round_off_angstrom =
            crate::backend::edge_round_off_angstrom(&self.system.positions, cutoff_angstrom);
        // With an exchange, pairs of two ghosts are left out (see `System::exchanging`); the
        // recorded graph's key tells the two apart by the sign bit of the (positive) cutoff.
        let first_ghost = match self.system.exchanging {
            true => self.system.n_energy_atoms,
            false => n,
        };
        let key = cutoff_angstrom.to_bits() | (u64::from(self.system.exchanging) << 63);
        self.replayed(GraphStage::Graph, key, |backend| {
            graph::build_graph(
                &backend.gpu,
                &mut backend.buffers,
                n,
                first_ghost,
                cutoff_angstrom,
                &backend.weights,
            )
        })?;
        self.progress = Progress::Graph;
        self.mark(|| "graph".into())
    }

    /// The GPU computes the same forward pass whether or not the backward pass follows.
    fn forward(&mut self, _backward_follows: bool, exchange: Exchange<'_>) -> Result<()> {
        self.require(Progress::Graph, "forward")?;
        if self.n_atoms() > 0 {
            self.gpu.device.bind()?;
            let edge_round_off = self.edge_round_off_angstrom.to_bits();
            let run = |backend: &mut Self, exchange| {
                let mut profile = std::mem::take(&mut backend.profile);
                let mut staging = std::mem::take(&mut backend.exchange_staging);
                let done = backend.forward_stages(&mut profile, exchange, &mut staging);
                backend.profile = profile;
                backend.exchange_staging = staging;
                done
            };
            match exchange {
                // The exchange calls back to the host between the layers: no graph.
                Some(exchange) => run(self, Some(exchange))?,
                None if self.takes_small_path() => {
                    let (n, h) = (self.n_atoms(), self.hidden);
                    let n_energy = self.system.n_energy_atoms;
                    let round_off = self.edge_round_off_angstrom as f32;
                    let blocks = self.small_cluster_blocks;
                    self.replayed(GraphStage::Forward, edge_round_off, |backend| {
                        let (b, w) = (&backend.buffers, &backend.weights);
                        let m = small::kernel_view(b, w, n, n_energy, h, round_off);
                        backend.gpu.kernels.launch_small(false, blocks, m)
                    })?
                }
                None => self.replayed(GraphStage::Forward, edge_round_off, |backend| {
                    run(backend, None)
                })?,
            }
        } else if let Some(exchange) = exchange {
            // A rank with no atoms still takes part in every exchange.
            for _ in 1..self.weights.layers.len() {
                exchange.forward(&mut [], 4 * self.hidden)?;
            }
        }
        self.progress = Progress::Forward;
        Ok(())
    }

    fn backward(&mut self, exchange: Exchange<'_>) -> Result<()> {
        self.require(Progress::Forward, "backward")?;
        if self.n_atoms() > 0 {
            self.gpu.device.bind()?;
            let run = |backend: &mut Self, exchange| {
                let mut profile = std::mem::take(&mut backend.profile);
                let mut staging = std::mem::take(&mut backend.exchange_staging);
                let done = backend.backward_stages(&mut profile, exchange, &mut staging);
                backend.profile = profile;
                backend.exchange_staging = staging;
                done
            };
            match exchange {
                Some(exchange) => run(self, Some(exchange))?,
                None if self.takes_small_path() => {
                    let (n, h) = (self.n_atoms(), self.hidden);
                    let n_energy = self.system.n_energy_atoms;
                    small::reserve_small_backward(&self.gpu, &mut self.buffers, h)?;
                    let blocks = self.small_cluster_blocks;
                    self.replayed(GraphStage::Backward, 0, |backend| {
                        let (b, w) = (&backend.buffers, &backend.weights);
                        let m = small::kernel_view(b, w, n, n_energy, h, 0.0);
                        backend.gpu.kernels.launch_small(true, blocks, m)
                    })?
                }
                None => self.replayed(GraphStage::Backward, 0, |backend| run(backend, None))?,
            }
        } else if let Some(exchange) = exchange {
            for _ in 1..self.weights.layers.len() {
                exchange.reverse(&mut [], 4 * self.hidden)?;
            }
        }
        self.progress = Progress::Backward;
        Ok(())
    }

    fn readout(&mut self, request: Request) -> Result<Results> {
        let needed = if request.needs_backward() {
            Progress::Backward
        } else {
            Progress::Forward
        };
        self.require(needed, "readout")?;
        let n = self.n_atoms();
        if n == 0 {
            return Ok(Results::default());
        }
        self.gpu.device.bind()?;
        let cell = self.cell();
        let n_energy_atoms = self.system.n_energy_atoms;
        let variant = request.needs_backward() as u64 | (request.atom_virials as u64) << 1;
        self.replayed(GraphStage::Readout, variant, |backend| {
            readout::readout_kernels(&backend.gpu, &backend.buffers, n, n_energy_atoms, request)
        })?;
        let results = readout::download_results(
            &self.gpu,
            &self.buffers,
            n,
            request,
            &self.system.positions,
            &cell,
            &mut self.results_host,
        )?;
        self.mark(|| "readout".into())?;
        Ok(results)
    }

    fn run_evaluation(&mut self, _n_atoms: usize, stages: &mut Stages<'_>) -> Result<Results> {
        stages(self)
    }

    fn set_profiling(&mut self, on: bool) {
        self.profile.on = on;
        if !on {
            let _ = self.gpu.device.bind();
            self.profile.marks.clear();
        }
    }

    fn stage_times(&mut self) -> Result<Vec<StageTime>> {
        self.gpu.device.bind()?;
        self.profile.times(Device::seconds_between)
    }

    fn inspect(&mut self, stage: Stage) -> Result<StageOutput> {
        self.gpu.device.bind()?;
        inspect::inspect(self, stage)
    }

    fn keep_stage_outputs(&mut self, keep: bool) {
        self.keep_stage_outputs = keep;
        if !keep {
            // Freeing needs the context current.
            let _ = self.gpu.device.bind();
            self.kept = KeptGradients::default();
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // The buffers free their memory when dropped next: the context must be current.
        let _ = self.gpu.device.bind();
        let _ = self.gpu.device.synchronize();
    }
}
