//! The CPU backend: the reference engine, in float64 or float32, with a hand-written analytic
//! backward pass for forces and virial. Deterministic: every reduction runs over a fixed
//! order (CSR rows sorted by source, products on fixed row blocks), so results are the same
//! bits for any thread count and any [`Schedule`].
//!
//! Stages, one file each, mirrored by name in `src/backend/cuda` and `cuda/*.cu`:
//! - `neighbors.rs`: `build_neighbor_list`;
//! - `graph.rs`: `build_graph` (edges within the cutoff, reverse edges, per-edge geometry);
//! - `message.rs`: `message_forward`, `message_backward` (the radial filter: `filter.rs`);
//! - `update.rs`: `embed`, `norm_concat`, `update_mlp`, `gate_forward`, and backward
//!   `gate_backward`, `update_mlp_backward`, `norm_backward`;
//! - `head.rs`: `head_energy`, `head_backward`;
//! - `readout.rs`: `readout` (energy, forces and virials from each edge's `dE/dr_ij`).
//!
//! Large systems run their loops on rayon's pool. Below [`SMALL_SYSTEM_ATOMS`] atoms a call
//! runs on the calling thread, its loops in order, with at most one helper thread (a
//! [`team::Team`]) chosen by measured call times.

mod dense;
mod filter;
mod graph;
mod head;
mod message;
mod neighbors;
mod readout;
mod real;
mod schedule;
mod team;
mod update;

use std::sync::Arc;
use std::time::Instant;

pub use filter::FilterMode;
pub use real::Real;

use super::{
    Backend, DeviceFacts, Exchange, GhostExchange, Request, Results, Stage, StageMarks,
    StageOutput, StageTime, Stages, System, computed_rows, inspected_layer, not_kept,
};
use crate::calculator::{CalculatorOptions, Precision};
use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::neighbors::{NeighborLimits, NeighborList};
use dense::Dense;
use filter::{FilterCache, RowFilter};
use graph::Graph;
use head::HeadState;
use message::MessageLayer;
use schedule::Schedule;

/// Below this many atoms the engine runs on the calling thread, with at most one helper (a
/// [`team::Team`]), its loops in order: a molecule's ~40 loops would cost more in wake-ups
/// of the pool than they save.
const SMALL_SYSTEM_ATOMS: usize = 40;

/// The CPU backend in `precision`; `options.filter_mode` overrides the filter evaluation
/// (exact in float64, tabulated in float32).
pub(crate) fn open(
    model: &Arc<Model>,
    precision: Precision,
    options: &CalculatorOptions,
) -> Box<dyn Backend> {
    let limits = options.neighbor_limits;
    match precision {
        Precision::F64 => Box::new(
            CpuBackend::<f64>::new(
                model.clone(),
                options.filter_mode.unwrap_or(FilterMode::Exact),
            )
            .with_neighbor_limits(limits),
        ),
        Precision::F32 => Box::new(
            CpuBackend::<f32>::new(
                model.clone(),
                options.filter_mode.unwrap_or(FilterMode::Table),
            )
            .with_neighbor_limits(limits),
        ),
    }
}

/// One interaction layer's weights in the engine's precision.
pub struct LayerWeights<T> {
    filter_hidden: Dense<T>,
    filter_out: Dense<T>,
    update_hidden: Dense<T>,
    /// `[3H][H]`, or `[H][H]` for the last layer (its vector gates never reach the energy).
    update_out: Dense<T>,
    /// M; zero when absent (the last layer, whose vector output is unused).
    mixing: [[T; 3]; 3],
}

/// The model's weights in the engine's precision.
pub struct Weights<T> {
    hidden: usize,
    radial: usize,
    /// `[max_z + 1][H]`.
    embedding: Vec<T>,
    layers: Vec<LayerWeights<T>>,
    head: [Dense<T>; 3],
}

impl<T: Real> Weights<T> {
    fn from_model(model: &Model) -> Self {
        let h = model.hidden_features();
        let n_layers = model.interactions.len();
        let layers = model
            .interactions
            .iter()
            .enumerate()
            .map(|(l, layer)| LayerWeights {
                filter_hidden: Dense::from_model(&layer.filter_hidden),
                filter_out: Dense::from_model(&layer.filter_out),
                update_hidden: Dense::from_model(&layer.update_hidden),
                update_out: if l + 1 == n_layers {
                    Dense::from_model(&layer.update_out.first_outputs(h))
                } else {
                    Dense::from_model(&layer.update_out)
                },
                mixing: layer
                    .mixing
                    .map(|m| m.map(|row| row.map(T::of)))
                    .unwrap_or([[T::zero(); 3]; 3]),
            })
            .collect();
        Weights {
            hidden: h,
            radial: model.radial_basis(),
            embedding: model.embedding.iter().map(|&x| T::of(x)).collect(),
            layers,
            head: [
                Dense::from_model(&model.energy_head[0]),
                Dense::from_model(&model.energy_head[1]),
                Dense::from_model(&model.energy_head[2]),
            ],
        }
    }
}

/// Forward activations of one layer, kept for the backward pass.
#[derive(Default)]
struct LayerState<T> {
    /// `[n][H]`, `[n][3][H]`: input of the message.
    s_in: Vec<T>,
    v_in: Vec<T>,
    /// After the message.
    s_mid: Vec<T>,
    v_mid: Vec<T>,
    /// `|v_mid|` over x, y, z, `[n][H]`.
    norm: Vec<T>,
    /// Update MLP pre-activation `[n][H]`, its sigmoid and output `[n][3H]` (as, av1, av2).
    update_pre: Vec<T>,
    update_sigmoid: Vec<T>,
    update_out: Vec<T>,
}

/// The backward pass's buffers, overwritten layer by layer.
#[derive(Default)]
struct Gradients<T> {
    /// Gradient of the current layer's outputs `[n][H]`, `[n][3][H]` (then of its inputs).
    gs: Vec<T>,
    gv: Vec<T>,
    /// Of its message outputs.
    gs_mid: Vec<T>,
    gv_mid: Vec<T>,
    g_update: Vec<T>,
    g_hidden: Vec<T>,
    g_concat: Vec<T>,
}

/// Per-layer gradients kept for [`Backend::inspect`] (test support).
#[derive(Default)]
struct KeptGradients<T> {
    head_gs: Vec<T>,
    /// Per layer: `(gs_mid, gv_mid)` and `(gs_in, gv_in)`.
    update: Vec<(Vec<T>, Vec<T>)>,
    message: Vec<(Vec<T>, Vec<T>)>,
}

/// The system of the current evaluation.
#[derive(Default)]
struct LoadedSystem {
    atomic_numbers: Vec<i32>,
    positions: Vec<[f64; 3]>,
    cell: Option<Cell>,
    n_energy_atoms: usize,
    /// See [`System::exchanging`].
    exchanging: bool,
}

/// How the current evaluation runs its loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Pool,
    InOrder,
    /// Team call number `call` is open: the pool's worker serves it until it ends.
    Team {
        call: usize,
    },
}

/// A molecule's second thread: a one-thread pool (created on first use) whose worker serves
/// the team during a call, and the choice between one thread and two.
#[derive(Default)]
struct SmallSystems {
    pool: Option<rayon::ThreadPool>,
    team: Arc<team::Team>,
    mode: team::ModeChoice,
    /// When the current molecule's evaluation started, for the mode choice.
    started: Option<Instant>,
}

/// The CPU engine in precision `T`.
pub struct CpuBackend<T: Real> {
    model: Arc<Model>,
    weights: Weights<T>,
    filter_mode: FilterMode,
    system: LoadedSystem,
    list: Option<NeighborList>,
    neighbor_limits: NeighborLimits,
    graph: Graph<T>,
    filters: FilterCache<T>,
    layers: Vec<LayerState<T>>,
    s_final: Vec<T>,
    concat: Vec<T>,
    /// `[n][4H]` float64 rows handed to a ghost exchange.
    exchange_rows: Vec<f64>,
    hidden: Vec<T>,
    head: HeadState<T>,
    energies: Vec<T>,
    gradients: Gradients<T>,
    /// Per edge `dE/dr_ij`, `[n_edges][3]`.
    de_dr: Vec<[T; 3]>,
    keep_stage_outputs: bool,
    kept: KeptGradients<T>,
    run: Run,
    small: SmallSystems,
    profile: StageMarks<Instant>,
}

impl<T: Real> CpuBackend<T> {
    /// The backend with these size limits on its neighbour list.
    pub fn with_neighbor_limits(mut self, limits: NeighborLimits) -> Self {
        self.neighbor_limits = limits;
        self
    }

    pub fn new(model: Arc<Model>, filter_mode: FilterMode) -> Self {
        if filter_mode == FilterMode::Table {
            // Build (or reuse) the shared table now rather than inside the first step.
            model.filter_table();
        }
        let n_layers = model.interactions.len();
        CpuBackend {
            weights: Weights::from_model(&model),
            model,
            filter_mode,
            system: LoadedSystem::default(),
            list: None,
            neighbor_limits: NeighborLimits::default(),
            graph: Graph::default(),
            filters: FilterCache::default(),
            layers: (0..n_layers).map(|_| LayerState::default()).collect(),
            s_final: Vec::new(),
            concat: Vec::new(),
            exchange_rows: Vec::new(),
            hidden: Vec::new(),
            head: HeadState::default(),
            energies: Vec::new(),
            gradients: Gradients::default(),
            de_dr: Vec::new(),
            keep_stage_outputs: false,
            kept: KeptGradients::default(),
            run: Run::Pool,
            small: SmallSystems::default(),
            profile: StageMarks::default(),
        }
    }

    /// Starts the schedule of an evaluation of `n_atoms`: a molecule runs here, and when two
    /// threads are allowed and measured faster, the one-thread pool's worker serves the call
    /// as a second thread until [`end_run`](Self::end_run).
    fn begin_run(&mut self, n_atoms: usize) -> Result<()> {
        self.end_run(false);
        if n_atoms >= SMALL_SYSTEM_ATOMS {
            self.run = Run::Pool;
            return Ok(());
        }
        let two_threads = rayon::current_num_threads() >= 2 && self.small.mode.two_threads(n_atoms);
        self.run = Run::InOrder;
        if two_threads {
            if self.small.pool.is_none() {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(|_| "painn-small".into())
                    .build()
                    .map_err(|e| Error::Unsupported(format!("thread pool: {e}")))?;
                self.small.pool = Some(pool);
            }
            let call = self.small.team.begin_call();
            let server = Arc::clone(&self.small.team);
            if let Some(pool) = &self.small.pool {
                pool.spawn(move || server.serve_call(call));
            }
            self.run = Run::Team { call };
        }
        self.small.started = Some(Instant::now());
        Ok(())
    }

    /// Ends the evaluation's schedule: the team's server returns, and a completed molecule
    /// evaluation (`completed`) records its time for the choice between one and two threads.
    fn end_run(&mut self, completed: bool) {
        let two_threads = if let Run::Team { call } = self.run {
            self.small.team.end_call(call);
            true
        } else {
            false
        };
        if let Some(started) = self.small.started.take()
            && completed
            && rayon::current_num_threads() >= 2
        {
            self.small
                .mode
                .record(two_threads, started.elapsed().as_secs_f64());
        }
        self.run = Run::Pool;
    }

    /// Runs `stage` with this evaluation's schedule. A failed stage ends the run.
    fn staged<R>(&mut self, stage: impl FnOnce(&mut Self, Schedule) -> Result<R>) -> Result<R> {
        let team = Arc::clone(&self.small.team);
        let schedule = match self.run {
            Run::Pool => Schedule::Pool,
            Run::InOrder => Schedule::InOrder,
            Run::Team { .. } => Schedule::Team(&team),
        };
        let result = stage(self, schedule);
        if result.is_err() {
            self.end_run(false);
        }
        result
    }

    fn n_atoms(&self) -> usize {
        self.system.atomic_numbers.len()
    }

    fn forward_stages(
        &mut self,
        schedule: Schedule,
        backward_follows: bool,
        mut exchange: Exchange<'_>,
    ) -> Result<()> {
        let n = self.n_atoms();
        let rows = computed_rows(&exchange, n, self.system.n_energy_atoms);
        let h = self.weights.hidden;
        let n_layers = self.weights.layers.len();
        let table = (self.filter_mode == FilterMode::Table).then(|| self.model.filter_table());
        let cache_wanted = filter::caches_filters(self.filter_mode, n, SMALL_SYSTEM_ATOMS);
        let mut filters = std::mem::take(&mut self.filters);
        filter::cache_filters(
            schedule,
            &self.graph,
            table.filter(|_| cache_wanted),
            3 * h,
            n_layers,
            backward_follows,
            &mut filters,
        );
        self.filters = filters;
        let profile = &mut self.profile;
        profile.mark(|| "filters".into(), now)?;
        let filter = row_filter(self.filter_mode, &self.model, &self.weights);
        let weights = &self.weights;
        let layers = &mut self.layers;
        update::embed(
            h,
            &self.system.atomic_numbers,
            &weights.embedding,
            &mut layers[0].s_in,
        );
        layers[0].v_in.clear();
        layers[0].v_in.resize(n * 3 * h, T::zero());
        profile.mark(|| "embed".into(), now)?;
        for l in 0..n_layers {
            let lw = &weights.layers[l];
            let (done, rest) = layers.split_at_mut(l + 1);
            let layer = &mut done[l];
            layer.s_mid.resize(rows * h, T::zero());
            layer.v_mid.resize(rows * 3 * h, T::zero());
            let inputs = (&layer.s_in[..], &layer.v_in[..]);
            let message = MessageLayer::new(h, l, &self.graph, &filter, &self.filters, inputs);
            self.concat.resize(rows * 2 * h, T::zero());
            message::message_forward(
                schedule,
                &message,
                &mut layer.s_mid,
                &mut layer.v_mid,
                &mut self.concat,
            );
            profile.mark(|| format!("message {l}"), now)?;
            layer.norm.resize(rows * h, T::zero());
            update::norm_concat(
                schedule,
                h,
                &layer.s_mid,
                &mut layer.v_mid,
                &mut layer.norm,
                &mut self.concat,
            );
            update::update_mlp(
                schedule,
                lw,
                &self.concat,
                &mut layer.update_pre,
                &mut layer.update_sigmoid,
                &mut self.hidden,
                &mut layer.update_out,
            );
            // Gate into the next layer's input (or the final scalars).
            let (s_next, v_next) = if l + 1 == n_layers {
                self.s_final.resize(rows * h, T::zero());
                (&mut self.s_final[..], None)
            } else {
                let next = &mut rest[0];
                next.s_in.resize(n * h, T::zero());
                next.v_in.resize(n * 3 * h, T::zero());
                (
                    &mut next.s_in[..rows * h],
                    Some(&mut next.v_in[..rows * 3 * h]),
                )
            };
            update::gate_forward(
                schedule,
                h,
                lw.update_out.n_out,
                &layer.s_mid,
                &layer.v_mid,
                &layer.update_out,
                lw.mixing,
                s_next,
                v_next,
            );
            if let (Some(exchange), Some(next)) = (exchange.as_deref_mut(), rest.first_mut()) {
                let owned = self.system.n_energy_atoms;
                let rows = &mut self.exchange_rows;
                exchange_forward(exchange, h, owned, &mut next.s_in, &mut next.v_in, rows)?;
            }
            profile.mark(|| format!("update {l}"), now)?;
        }
        head::head_energy(
            schedule,
            &weights.head,
            &self.s_final,
            &mut self.head,
            &mut self.energies,
        );
        // The ghosts' energies are not counted (readout reports them as 0).
        self.energies.resize(n, T::zero());
        profile.mark(|| "head".into(), now)
    }

    fn backward_stages(&mut self, schedule: Schedule, mut exchange: Exchange<'_>) -> Result<()> {
        let n = self.n_atoms();
        let rows = computed_rows(&exchange, n, self.system.n_energy_atoms);
        let h = self.weights.hidden;
        let n_layers = self.weights.layers.len();
        let filter = row_filter(self.filter_mode, &self.model, &self.weights);
        let weights = &self.weights;
        let g = &mut self.gradients;
        head::head_backward(
            schedule,
            &weights.head,
            rows,
            self.system.n_energy_atoms,
            &mut self.head,
            &mut g.gs,
        );
        g.gs.resize(n * h, T::zero());
        let profile = &mut self.profile;
        profile.mark(|| "head backward".into(), now)?;
        let keep = self.keep_stage_outputs;
        let kept = &mut self.kept;
        if keep {
            kept.head_gs.clone_from(&g.gs);
            kept.update.resize_with(n_layers, Default::default);
            kept.message.resize_with(n_layers, Default::default);
        }
        g.gv.clear();
        g.gv.resize(n * 3 * h, T::zero());
        self.de_dr.clear();
        self.de_dr.resize(self.graph.n_edges(), [T::zero(); 3]);
        for l in (0..n_layers).rev() {
            let lw = &weights.layers[l];
            let layer = &self.layers[l];
            let a_width = lw.update_out.n_out;
            g.g_update.resize(rows * a_width, T::zero());
            g.gv_mid.resize(n * 3 * h, T::zero());
            update::gate_backward(
                schedule,
                h,
                a_width,
                l + 1 == n_layers,
                &layer.v_mid,
                &layer.update_out,
                lw.mixing,
                &g.gs,
                &g.gv,
                &mut g.g_update,
                &mut g.gv_mid[..rows * 3 * h],
            );
            update::update_mlp_backward(
                schedule,
                lw,
                &g.g_update,
                &layer.update_pre,
                &layer.update_sigmoid,
                &mut g.g_hidden,
                &mut g.g_concat,
            );
            g.gs_mid.resize(n * h, T::zero());
            update::norm_backward(
                schedule,
                h,
                &g.gs,
                &g.g_concat,
                &layer.norm,
                &layer.v_mid,
                &mut g.gs_mid[..rows * h],
                &mut g.gv_mid[..rows * 3 * h],
            );
            g.gs_mid[rows * h..].fill(T::zero());
            g.gv_mid[rows * 3 * h..].fill(T::zero());
            if keep {
                kept.update[l] = (g.gs_mid.clone(), g.gv_mid.clone());
            }
            profile.mark(|| format!("update backward {l}"), now)?;
            let inputs = (&layer.s_in[..], &layer.v_in[..]);
            let message = MessageLayer::new(h, l, &self.graph, &filter, &self.filters, inputs);
            message::message_backward(
                schedule,
                &message,
                &g.gs_mid,
                &g.gv_mid,
                l > 0,
                &mut g.gs,
                &mut g.gv,
                &mut self.de_dr,
            );
            if let (Some(exchange), true) = (exchange.as_deref_mut(), l > 0) {
                let owned = self.system.n_energy_atoms;
                let rows = &mut self.exchange_rows;
                exchange_reverse(exchange, h, owned, &mut g.gs, &mut g.gv, rows)?;
            }
            if keep && l > 0 {
                kept.message[l] = (g.gs.clone(), g.gv.clone());
            }
            profile.mark(|| format!("message backward {l}"), now)?;
        }
        Ok(())
    }
}

impl<T: Real> Backend for CpuBackend<T> {
    fn facts(&self) -> DeviceFacts {
        DeviceFacts {
            name: "cpu".into(),
            bytes_held: 0,
        }
    }

    fn load_system(&mut self, system: &System) -> Result<()> {
        self.profile.start(now)?;
        let loaded = &mut self.system;
        loaded.atomic_numbers.clear();
        loaded
            .atomic_numbers
            .extend_from_slice(system.atomic_numbers);
        loaded.positions.clear();
        loaded.positions.extend_from_slice(system.positions);
        loaded.cell = Some(*system.cell);
        loaded.n_energy_atoms = system.n_energy_atoms;
        loaded.exchanging = system.exchanging;
        self.begin_run(system.n_atoms())?;
        self.profile.mark(|| "load".into(), now)
    }

    fn build_neighbor_list(&mut self, search_radius_angstrom: f64) -> Result<()> {
        let cell = self.system.cell.unwrap_or_else(Cell::open);
        let built = neighbors::build_neighbor_list(
            &mut self.list,
            &self.system.positions,
            &cell,
            search_radius_angstrom,
            self.neighbor_limits,
        );
        if built.is_err() {
            self.end_run(false);
        }
        built?;
        self.profile.mark(|| "neighbor list".into(), now)
    }

    fn build_graph(&mut self, cutoff_angstrom: f64) -> Result<()> {
        let Some(list) = &self.list else {
            self.end_run(false);
            return Err(Error::Unsupported(
                "build_graph before build_neighbor_list".into(),
            ));
        };
        let cell = self.system.cell.unwrap_or_else(Cell::open);
        let table = (self.filter_mode == FilterMode::Table).then(|| self.model.filter_table());
        // With an exchange, pairs of two ghosts are left out (see `System::exchanging`).
        let first_ghost = match self.system.exchanging {
            true => self.system.n_energy_atoms,
            false => self.n_atoms(),
        };
        graph::build_graph(
            list,
            &self.system.positions,
            &cell,
            cutoff_angstrom,
            first_ghost,
            table,
            &mut self.graph,
        );
        self.profile.mark(|| "graph".into(), now)
    }

    fn forward(&mut self, backward_follows: bool, exchange: Exchange<'_>) -> Result<()> {
        self.staged(|backend, schedule| {
            backend.forward_stages(schedule, backward_follows, exchange)
        })
    }

    fn backward(&mut self, exchange: Exchange<'_>) -> Result<()> {
        self.staged(|backend, schedule| backend.backward_stages(schedule, exchange))
    }

    fn readout(&mut self, request: Request) -> Result<Results> {
        let results = self.staged(|backend, schedule| {
            Ok(readout::readout(
                schedule,
                &backend.graph,
                backend.system.n_energy_atoms,
                &backend.energies,
                &backend.de_dr,
                request,
            ))
        });
        self.end_run(results.is_ok());
        self.profile.mark(|| "readout".into(), now)?;
        results
    }

    fn run_evaluation(&mut self, n_atoms: usize, stages: &mut Stages<'_>) -> Result<Results> {
        if n_atoms >= SMALL_SYSTEM_ATOMS && rayon::current_thread_index().is_none() {
            rayon::scope(|_| stages(self))
        } else {
            stages(self)
        }
    }

    fn set_profiling(&mut self, on: bool) {
        self.profile.on = on;
    }

    fn stage_times(&mut self) -> Result<Vec<StageTime>> {
        self.profile
            .times(|start, end| Ok(end.duration_since(*start).as_secs_f64()))
    }

    fn inspect(&mut self, stage: Stage) -> Result<StageOutput> {
        let n = self.n_atoms();
        let h = self.weights.hidden;
        let n_layers = self.weights.layers.len();
        let edges = self.graph.n_edges();
        let mut output = StageOutput::default();
        let layer_index = |layer: usize| inspected_layer(layer, n_layers);
        let missing = not_kept;
        match stage {
            Stage::NeighborList => {
                let list = self
                    .list
                    .as_ref()
                    .ok_or_else(|| missing("no neighbour list"))?;
                let shifts: Vec<i32> = list.shifts().iter().flatten().copied().collect();
                output.push_indices("offsets", &[n + 1], list.offsets());
                output.push("sources", &[list.n_edges()], list.sources());
                output.push("shifts", &[list.n_edges(), 3], &shifts);
            }
            Stage::Graph => {
                let geometry = &self.graph.geometry;
                let distances: Vec<f64> = geometry.iter().map(|g| g[0].f64()).collect();
                let directions: Vec<f64> = geometry
                    .iter()
                    .flat_map(|g| [g[1].f64(), g[2].f64(), g[3].f64()])
                    .collect();
                output.push_indices("offsets", &[n + 1], &self.graph.offsets);
                output.push("sources", &[edges], &self.graph.sources);
                output.push("reverse", &[edges], &self.graph.reverse);
                output.push("distances", &[edges], &distances);
                output.push("directions", &[edges, 3], &directions);
            }
            Stage::Embedding => push_reals(&mut output, "s", &[n, h], &self.layers[0].s_in),
            Stage::Message { layer } => {
                let state = &self.layers[layer_index(layer)?];
                push_reals(&mut output, "s_mid", &[n, h], &state.s_mid);
                push_reals(&mut output, "v_mid", &[n, 3, h], &state.v_mid);
            }
            Stage::Update { layer } => {
                if layer_index(layer)? + 1 == n_layers {
                    push_reals(&mut output, "s_out", &[n, h], &self.s_final);
                } else {
                    let next = &self.layers[layer + 1];
                    push_reals(&mut output, "s_out", &[n, h], &next.s_in);
                    push_reals(&mut output, "v_out", &[n, 3, h], &next.v_in);
                }
            }
            Stage::Head => push_reals(&mut output, "energies", &[n], &self.energies),
            Stage::HeadBackward => {
                if self.kept.head_gs.len() != n * h {
                    return Err(missing("the head's gradient"));
                }
                push_reals(&mut output, "gs", &[n, h], &self.kept.head_gs);
            }
            Stage::UpdateBackward { layer } => {
                let (gs, gv) = self
                    .kept
                    .update
                    .get(layer_index(layer)?)
                    .filter(|(gs, _)| gs.len() == n * h)
                    .ok_or_else(|| missing("the update's gradient"))?;
                push_reals(&mut output, "gs_mid", &[n, h], gs);
                push_reals(&mut output, "gv_mid", &[n, 3, h], gv);
            }
            Stage::MessageBackward { layer } => {
                let (gs, gv) = self
                    .kept
                    .message
                    .get(layer_index(layer)?)
                    .filter(|(gs, _)| layer > 0 && gs.len() == n * h)
                    .ok_or_else(|| missing("the message's input gradient (layers above 0)"))?;
                push_reals(&mut output, "gs_in", &[n, h], gs);
                push_reals(&mut output, "gv_in", &[n, 3, h], gv);
            }
            Stage::EdgeGradients => {
                let de_dr: Vec<T> = self.de_dr.iter().flatten().copied().collect();
                push_reals(&mut output, "de_dr", &[self.de_dr.len(), 3], &de_dr);
            }
        }
        Ok(output)
    }

    fn keep_stage_outputs(&mut self, keep: bool) {
        self.keep_stage_outputs = keep;
        if !keep {
            self.kept = KeptGradients::default();
        }
    }
}

impl<T: Real> Drop for CpuBackend<T> {
    fn drop(&mut self) {
        // A call left open by a panic: its server must return.
        self.end_run(false);
    }
}

/// Now, as a stage mark.
fn now() -> Result<Instant> {
    Ok(Instant::now())
}

/// The filter evaluation of `mode`.
fn row_filter<'a, T: Real>(
    mode: FilterMode,
    model: &'a Model,
    weights: &'a Weights<T>,
) -> RowFilter<'a, T> {
    match mode {
        FilterMode::Exact => RowFilter::Exact { model, weights },
        FilterMode::Table => RowFilter::Table(model.filter_table()),
    }
}

/// Adds an array of the engine's reals to a stage's output.
fn push_reals<T: Real>(
    output: &mut StageOutput,
    name: &'static str,
    shape: &[usize],
    values: &[T],
) {
    let values: Vec<f64> = values.iter().map(|v| v.f64()).collect();
    output.push(name, shape, &values);
}

/// The owned rows an exchange sends: the caller's list, or every owned row.
fn sent_rows(exchange: &dyn GhostExchange, owned: usize) -> Vec<usize> {
    match exchange.sent_rows() {
        Some(list) => list.to_vec(),
        None => (0..owned).collect(),
    }
}

/// Sizes `rows` to `[n][4H]` for an exchange: the owned rows not sent are NaN (a caller that
/// reads one sees it), the `sent` rows and the rows `ghosts` hold atom's `[s, v]`.
fn pack_rows<T: Real>(
    h: usize,
    (s, v): (&[T], &[T]),
    owned: usize,
    sent: &[usize],
    ghosts: std::ops::Range<usize>,
    rows: &mut Vec<f64>,
) {
    let width = 4 * h;
    rows.resize(s.len() / h * width, 0.0);
    if sent.len() < owned {
        rows[..owned * width].fill(f64::NAN);
    }
    for atom in sent.iter().copied().chain(ghosts) {
        let row = &mut rows[atom * width..(atom + 1) * width];
        let features = s[atom * h..(atom + 1) * h]
            .iter()
            .chain(&v[3 * atom * h..3 * (atom + 1) * h]);
        for (to, &x) in row.iter_mut().zip(features) {
            *to = x.f64();
        }
    }
}

/// The rows of `atoms` of `rows [n][4H]` back into `s [n][H]`, `v [n][3][H]`.
fn unpack_rows<T: Real>(
    h: usize,
    rows: &[f64],
    atoms: impl Iterator<Item = usize>,
    (s, v): (&mut [T], &mut [T]),
) {
    let width = 4 * h;
    for atom in atoms {
        let row = &rows[atom * width..(atom + 1) * width];
        let features = s[atom * h..(atom + 1) * h]
            .iter_mut()
            .chain(&mut v[3 * atom * h..3 * (atom + 1) * h]);
        for (out, &x) in features.zip(row) {
            *out = T::of(x);
        }
    }
}

/// Packs the sent rows of `[s, v]` (`s [n][H]`, `v [n][3][H]`) into `rows [n][4H]`, hands
/// them to `exchange` to fill the ghost rows, and takes the ghost rows back.
fn exchange_forward<T: Real>(
    exchange: &mut dyn GhostExchange,
    h: usize,
    owned: usize,
    s: &mut [T],
    v: &mut [T],
    rows: &mut Vec<f64>,
) -> Result<()> {
    let n = s.len() / h;
    let sent = sent_rows(exchange, owned);
    pack_rows(h, (s, v), owned, &sent, 0..0, rows);
    exchange.forward(rows, 4 * h)?;
    unpack_rows(h, rows, owned..n, (s, v));
    Ok(())
}

/// Hands the gradient rows `[gs, gv]` (the sent and the ghost rows) to `exchange` to add the
/// ghost rows into their owners, then takes the sent rows back and clears the ghost rows
/// (their share has moved).
fn exchange_reverse<T: Real>(
    exchange: &mut dyn GhostExchange,
    h: usize,
    owned: usize,
    gs: &mut [T],
    gv: &mut [T],
    rows: &mut Vec<f64>,
) -> Result<()> {
    let n = gs.len() / h;
    let sent = sent_rows(exchange, owned);
    pack_rows(h, (gs, gv), owned, &sent, owned..n, rows);
    exchange.reverse(rows, 4 * h)?;
    unpack_rows(h, rows, sent.iter().copied(), (gs, gv));
    gs[owned * h..].fill(T::zero());
    gv[owned * 3 * h..].fill(T::zero());
    Ok(())
}
