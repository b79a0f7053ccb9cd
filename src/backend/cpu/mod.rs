//! The CPU backend: the reference engine, in float64 or float32, with a hand-written
//! analytic backward pass for forces and virial. Parallel over atoms with rayon;
//! deterministic: every reduction runs over a fixed order (CSR rows sorted by source, GEMMs
//! on fixed row blocks), so results are the same bits for any thread count.
//!
//! Stages (mirrored by the CUDA backend):
//! 1. geometry: per-edge `d`, `u = r / (d + 1e-8)`;
//! 2. per layer, message: `ds_i = sum_j s_j * ws(d)`, `dv_i = sum_j v_j * wv1(d) + u wv2(d)`;
//! 3. per layer, update: dense layers on `concat(s, |v|)`, gating `s` and `v`;
//! 4. energy head; then the backward pass in reverse, ending in per-edge `dE/dr_ij`;
//! 5. forces and virials from `dE/dr_ij` and its reverse edge (a gather, no atomics).

mod kernels;
mod parallel;
mod real;
mod team;

use std::sync::Arc;

use rayon::prelude::*;

pub use real::Real;
use real::{Dense, silu, silu_derivative};

use super::{Backend, Graph, Request, Results};
use crate::error::Result;
use crate::model::{FilterTable, Model};

/// How the radial filter `w(d)` is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterMode {
    /// The filter network itself, per edge (float64 reference).
    Exact,
    /// Cubic Hermite interpolation of the tabulated filter (float32 production path).
    Table,
}

/// Atoms per parallel task in the message stages: a function of the atom count only (never
/// of the thread count), so that results do not depend on the number of threads; small
/// molecules still split into a few tasks.
fn atoms_per_task(n_atoms: usize) -> usize {
    (n_atoms / 16).clamp(2, 16)
}

/// `u = r / (d + U_EPSILON)`, as in the spec.
const U_EPSILON: f64 = 1e-8;

struct LayerWeights<T> {
    filter_hidden: Dense<T>,
    filter_out: Dense<T>,
    update_hidden: Dense<T>,
    update_out: Dense<T>,
    /// M; zero when absent (the last layer, whose vector output is unused).
    mixing: [[T; 3]; 3],
}

struct Weights<T> {
    hidden: usize,
    radial: usize,
    embedding: Vec<T>,
    layers: Vec<LayerWeights<T>>,
    head: [Dense<T>; 3],
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
    /// Update MLP pre-activation `[n][H]`, its sigmoid (for SiLU's derivative without a
    /// second exponential) and output `[n][3H]` (as, av1, av2).
    update_pre: Vec<T>,
    update_sigmoid: Vec<T>,
    update_out: Vec<T>,
}

#[derive(Default)]
struct State<T> {
    layers: Vec<LayerState<T>>,
    s_final: Vec<T>,
    concat: Vec<T>,
    hidden: Vec<T>,
    head_pre: [Vec<T>; 2],
    head_sigmoid: [Vec<T>; 2],
    head_act: [Vec<T>; 2],
    energies: Vec<T>,
    /// Per edge: `[d, u_x, u_y, u_z, r_x, r_y, r_z]`.
    edges: Vec<kernels::EdgeGeometry<T>>,
    /// Per edge `dE/dr_ij`, `[n_edges][3]`.
    de_dr: Vec<[T; 3]>,
    // Backward buffers.
    gs: Vec<T>,
    gv: Vec<T>,
    gs_mid: Vec<T>,
    gv_mid: Vec<T>,
    g_update: Vec<T>,
    g_hidden: Vec<T>,
    g_concat: Vec<T>,
    g_head: [Vec<T>; 2],
    /// Small systems: every layer's filter `[layers][n_pairs][3H]` and its derivative,
    /// evaluated once per pair of edges (see [`CpuBackend::cache_filters`]), and each edge's
    /// pair `[n_edges]`; empty otherwise.
    filter_w: Vec<Vec<T>>,
    filter_dw: Vec<Vec<T>>,
    pair_of_edge: Vec<u32>,
    /// `0, 1, 2, ...`: the filter rows of an edge row evaluated on its own.
    identity_rows: Vec<u32>,
}

/// Pairs of edges per block of a molecule's filter evaluation.
const FILTER_BLOCK_PAIRS: usize = 16;

/// Below this many atoms the engine runs on the calling thread, with at most one helper (a
/// [`team::Team`]), its loops in order.
const SMALL_SYSTEM_ATOMS: usize = 40;

/// Largest filter cache, bytes, counted per edge (twice what the pairs take): a molecule of
/// 39 atoms counts about 14 MB in float32.
const FILTER_CACHE_BYTES: usize = 32 << 20;

/// The CPU engine in precision `T`.
pub struct CpuBackend<T: Real> {
    model: Arc<Model>,
    weights: Weights<T>,
    filter_mode: FilterMode,
    state: State<T>,
    /// One-thread pool whose worker serves as a molecule's second thread (created on first
    /// use), and the team through which it does.
    small_pool: Option<rayon::ThreadPool>,
    small_team: Arc<team::Team>,
    /// One thread or two for small systems, from measured call times.
    small_mode: team::ModeChoice,
}

impl<T: Real> CpuBackend<T> {
    pub fn new(model: Arc<Model>, filter_mode: FilterMode) -> Self {
        let h = model.hidden_features();
        let convert = |v: &[f64]| -> Vec<T> { v.iter().map(|&x| T::of(x)).collect() };
        let n_layers = model.interactions.len();
        let layers = model
            .interactions
            .iter()
            .enumerate()
            .map(|(l, layer)| LayerWeights {
                filter_hidden: Dense::from_model(&layer.filter_hidden),
                filter_out: Dense::from_model(&layer.filter_out),
                update_hidden: Dense::from_model(&layer.update_hidden),
                // The last layer's vector gates (av1, av2) never reach the energy: only its
                // first H outputs (as) are computed.
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
        let weights = Weights {
            hidden: h,
            radial: model.radial_basis(),
            embedding: convert(&model.embedding),
            layers,
            head: [
                Dense::from_model(&model.energy_head[0]),
                Dense::from_model(&model.energy_head[1]),
                Dense::from_model(&model.energy_head[2]),
            ],
        };
        if filter_mode == FilterMode::Table {
            // Build (or reuse) the shared table now rather than inside the first step.
            model.filter_table();
        }
        CpuBackend {
            model,
            weights,
            filter_mode,
            state: State::default(),
            small_pool: None,
            small_team: Arc::default(),
            small_mode: team::ModeChoice::default(),
        }
    }

    fn filter(&self) -> RowFilter<'_, T> {
        match self.filter_mode {
            FilterMode::Exact => RowFilter::Exact {
                model: &self.model,
                weights: &self.weights,
            },
            FilterMode::Table => RowFilter::Table(self.model.filter_table()),
        }
    }
}

impl<T: Real> Backend for CpuBackend<T> {
    fn evaluate(&mut self, graph: &Graph, request: Request) -> Result<Results> {
        if graph.n_atoms() < SMALL_SYSTEM_ATOMS {
            // A molecule's work is too small to share through the pool: its ~40 loops would
            // each wake a sleeping worker. It runs here, on the calling thread, its loops in
            // order; when two threads are allowed, the engine's one-thread pool serves as a
            // second thread for the call (a `Team`), taking blocks of the dense products and
            // message rows, on the calls where that measured faster (`ModeChoice`). Neither
            // changes the bits.
            let two_threads =
                rayon::current_num_threads() >= 2 && self.small_mode.two_threads(graph.n_atoms());
            let start = std::time::Instant::now();
            let results = if two_threads {
                let pool = match self.small_pool.take() {
                    Some(pool) => pool,
                    None => rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(|_| "painn-small".into())
                        .build()
                        .map_err(|e| {
                            crate::error::Error::Unsupported(format!("thread pool: {e}"))
                        })?,
                };
                let small_team = Arc::clone(&self.small_team);
                let call = small_team.begin_call();
                let server = Arc::clone(&small_team);
                pool.spawn(move || server.serve_call(call));
                self.small_pool = Some(pool);
                // Ends the call (so the server returns) even if the evaluation panics.
                struct EndCall<'a>(&'a team::Team, usize);
                impl Drop for EndCall<'_> {
                    fn drop(&mut self) {
                        self.0.end_call(self.1);
                    }
                }
                let _end = EndCall(&small_team, call);
                parallel::in_order(|| {
                    team::with_team(&small_team, || self.evaluate_here(graph, request))
                })
            } else {
                parallel::in_order(|| self.evaluate_here(graph, request))
            };
            if rayon::current_num_threads() >= 2 {
                self.small_mode
                    .record(two_threads, start.elapsed().as_secs_f64());
            }
            return results;
        }
        // Run on a pool thread: the parallel loops inside then start without waking and
        // waiting for the pool each time.
        if rayon::current_thread_index().is_none() {
            return rayon::scope(|_| self.evaluate_here(graph, request));
        }
        self.evaluate_here(graph, request)
    }
}

impl<T: Real> CpuBackend<T> {
    fn evaluate_here(&mut self, graph: &Graph, request: Request) -> Result<Results> {
        let n = graph.n_atoms();
        let h = self.weights.hidden;
        let n_layers = self.weights.layers.len();
        let mut state = std::mem::take(&mut self.state);
        state.layers.resize_with(n_layers, LayerState::default);
        let table = (self.filter_mode == FilterMode::Table).then(|| self.model.filter_table());
        geometry(graph, table, &mut state.edges);
        self.cache_filters(graph, &mut state, request.needs_backward());
        self.forward(graph, &mut state);

        let mut results = Results {
            energy: state.energies[..graph.n_energy_atoms]
                .iter()
                .map(|e| e.f64())
                .sum(),
            ..Results::default()
        };
        if request.energies {
            results.energies = state
                .energies
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    if i < graph.n_energy_atoms {
                        e.f64()
                    } else {
                        0.0
                    }
                })
                .collect();
        }
        if request.needs_backward() {
            self.backward(graph, &mut state);
            forces_and_virials(graph, &state, request, &mut results);
        }
        debug_assert_eq!(state.s_final.len(), n * h);
        self.state = state;
        Ok(results)
    }
}

/// `out = silu(pre) = pre * sigmoid(pre)`, keeping `sigmoid(pre)` for the backward pass.
fn silu_keeping_sigmoid<T: Real>(pre: &[T], sigmoid: &mut Vec<T>, out: &mut Vec<T>) {
    sigmoid.clear();
    sigmoid.extend(pre.iter().map(|&x| T::one() / (T::one() + (-x).exp())));
    out.clear();
    out.extend(pre.iter().zip(sigmoid.iter()).map(|(&x, &s)| x * s));
}

/// `d silu / dx` at `x` from `s = sigmoid(x)`.
#[inline]
fn silu_derivative_from<T: Real>(x: T, s: T) -> T {
    s * (T::one() + x * (T::one() - s))
}

/// Per-edge geometry in the engine's precision, computed from float64 edge vectors.
fn geometry<T: Real>(
    graph: &Graph,
    table: Option<&FilterTable>,
    edges: &mut Vec<kernels::EdgeGeometry<T>>,
) {
    edges.clear();
    edges.extend(graph.vectors.iter().map(|r| {
        let d = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
        let inverse = 1.0 / (d + U_EPSILON);
        let (k, t) = table.map_or((0.0, 0.0), |table| table.locate(d));
        [
            T::of(d),
            T::of(r[0] * inverse),
            T::of(r[1] * inverse),
            T::of(r[2] * inverse),
            T::of(r[0]),
            T::of(r[1]),
            T::of(r[2]),
            T::of(k),
            T::of(t),
        ]
    }));
}

/// Scratch buffers of one parallel task.
struct Scratch<T> {
    /// `[degree][3H]` filter values and derivatives.
    w: Vec<T>,
    dw: Vec<T>,
    /// Exact filter only: `[degree][K]` radial features and derivatives, `[degree][H]`
    /// hidden pre-activations and their derivatives.
    e: Vec<T>,
    de: Vec<T>,
    pre: Vec<T>,
    dpre: Vec<T>,
}

impl<T: Real> Scratch<T> {
    fn new() -> Self {
        Scratch {
            w: Vec::new(),
            dw: Vec::new(),
            e: Vec::new(),
            de: Vec::new(),
            pre: Vec::new(),
            dpre: Vec::new(),
        }
    }
}

/// Evaluates a layer's filter for the edges of one row.
enum RowFilter<'a, T: Real> {
    Exact {
        model: &'a Model,
        weights: &'a Weights<T>,
    },
    Table(&'a FilterTable),
}

impl<T: Real> RowFilter<'_, T> {
    /// Fills `scratch.w` (and `scratch.dw` when `derivative`) for edges `edges`.
    fn evaluate(
        &self,
        layer: usize,
        edges: &[kernels::EdgeGeometry<T>],
        derivative: bool,
        scratch: &mut Scratch<T>,
    ) {
        let m = edges.len();
        match self {
            RowFilter::Exact { model, weights } => {
                let (h, k) = (weights.hidden, weights.radial);
                let width = 3 * h;
                let lw = &weights.layers[layer];
                scratch.e.resize(m * k, T::zero());
                scratch.de.resize(m * k, T::zero());
                let mut e = vec![0.0; k];
                let mut de = vec![0.0; k];
                for (index, edge) in edges.iter().enumerate() {
                    model.radial_features(edge[0].f64(), &mut e, &mut de);
                    for kk in 0..k {
                        scratch.e[index * k + kk] = T::of(e[kk]);
                        scratch.de[index * k + kk] = T::of(de[kk]);
                    }
                }
                scratch.pre.resize(m * h, T::zero());
                lw.filter_hidden.forward_rows(&scratch.e, &mut scratch.pre);
                scratch.w.resize(m * width, T::zero());
                if derivative {
                    // dw/dd = W2 (silu'(pre) * (W1 de/dd)).
                    scratch.dpre.resize(m * h, T::zero());
                    lw.filter_hidden.linear_rows(&scratch.de, &mut scratch.dpre);
                    for (dp, p) in scratch.dpre.iter_mut().zip(&scratch.pre) {
                        *dp *= silu_derivative(*p);
                    }
                    scratch.dw.resize(m * width, T::zero());
                    lw.filter_out.linear_rows(&scratch.dpre, &mut scratch.dw);
                }
                for p in scratch.pre.iter_mut() {
                    *p = silu(*p);
                }
                lw.filter_out.forward_rows(&scratch.pre, &mut scratch.w);
            }
            RowFilter::Table(table) => {
                scratch.w.resize(m * table.width, T::zero());
                if derivative {
                    scratch.dw.resize(m * table.width, T::zero());
                }
                kernels::interpolate_rows(
                    table.layer(layer),
                    table.width,
                    table.n_intervals,
                    table.spacing_angstrom,
                    edges,
                    &mut scratch.w,
                    derivative.then_some(&mut scratch.dw[..]),
                );
            }
        }
    }
}

impl<T: Real> CpuBackend<T> {
    /// For small systems with the tabulated filter, evaluates every layer's filter (and its
    /// derivative, when `derivative`) once per pair of edges `(i <- j, n)`, `(j <- i, -n)`
    /// (same distance, same values bit for bit) into `state.filter_w`/`filter_dw`, for the
    /// forward and the backward pass: a quarter of the table reads of evaluating it per row
    /// in each pass. Table reads dominate a molecule's filter cost (the table does not fit
    /// in cache). Larger systems evaluate per row, in parallel, with nothing stored.
    fn cache_filters(&self, graph: &Graph, state: &mut State<T>, derivative: bool) {
        let width = 3 * self.weights.hidden;
        let n_layers = self.weights.layers.len();
        let bytes = graph.n_edges() * width * n_layers * 2 * std::mem::size_of::<T>();
        let cache = self.filter_mode == FilterMode::Table
            && graph.n_atoms() < SMALL_SYSTEM_ATOMS
            && bytes <= FILTER_CACHE_BYTES;
        state.filter_w.resize_with(n_layers, Vec::new);
        state.filter_dw.resize_with(n_layers, Vec::new);
        if !cache {
            // Rows evaluated on their own read their filter rows in order.
            let max_degree = (0..graph.n_atoms())
                .map(|i| graph.offsets[i + 1] - graph.offsets[i])
                .max()
                .unwrap_or(0);
            if state.identity_rows.len() < max_degree {
                state.identity_rows = (0..max_degree as u32).collect();
            }
            for l in 0..n_layers {
                state.filter_w[l].clear();
                state.filter_dw[l].clear();
            }
            return;
        }
        // One edge of each pair, the one with the smaller index, is evaluated; both read
        // its row.
        let mut first_of_pair = Vec::new();
        state.pair_of_edge.clear();
        state.pair_of_edge.resize(graph.n_edges(), 0);
        for e in 0..graph.n_edges() {
            let reverse = graph.reverse[e] as usize;
            debug_assert_eq!(
                graph.reverse[reverse] as usize, e,
                "reverse is an involution"
            );
            if reverse >= e {
                state.pair_of_edge[e] = first_of_pair.len() as u32;
                state.pair_of_edge[reverse] = first_of_pair.len() as u32;
                first_of_pair.push(e);
            }
        }
        let geometry: Vec<kernels::EdgeGeometry<T>> =
            first_of_pair.iter().map(|&e| state.edges[e]).collect();
        let table = self.model.filter_table();
        let n_pairs = geometry.len();
        for l in 0..n_layers {
            state.filter_w[l].resize(n_pairs * width, T::zero());
            state.filter_dw[l].resize(if derivative { n_pairs * width } else { 0 }, T::zero());
        }
        // In blocks of pairs of one layer, on both threads of a molecule's team: the table
        // reads (a few kB per pair, scattered over a table larger than the cache) are what
        // this costs, and two threads keep twice as many in flight.
        let blocks_per_layer = n_pairs.div_ceil(FILTER_BLOCK_PAIRS);
        let w: Vec<_> = state
            .filter_w
            .iter_mut()
            .map(|w| team::SharedSlice::new(w))
            .collect();
        let dw: Vec<_> = state
            .filter_dw
            .iter_mut()
            .map(|dw| team::SharedSlice::new(dw))
            .collect();
        team::for_each_block(n_layers * blocks_per_layer, |block| {
            let l = block / blocks_per_layer;
            let first = block % blocks_per_layer * FILTER_BLOCK_PAIRS;
            let pairs = first..(first + FILTER_BLOCK_PAIRS).min(n_pairs);
            let rows = pairs.start * width..pairs.end * width;
            // SAFETY: each block writes the rows of its own pairs of its own layer.
            let (w, dw) = unsafe {
                (
                    w[l].part(rows.clone()),
                    derivative.then(|| dw[l].part(rows)),
                )
            };
            kernels::interpolate_rows(
                table.layer(l),
                table.width,
                table.n_intervals,
                table.spacing_angstrom,
                &geometry[pairs],
                w,
                dw,
            );
        });
    }

    fn forward(&self, graph: &Graph, state: &mut State<T>) {
        let n = graph.n_atoms();
        let per_task = atoms_per_task(n);
        let h = self.weights.hidden;
        let n_layers = self.weights.layers.len();
        let filter = self.filter();

        // Embedding.
        let first = &mut state.layers[0];
        first.s_in.clear();
        for &z in graph.atomic_numbers {
            let z = z as usize;
            first
                .s_in
                .extend_from_slice(&self.weights.embedding[z * h..(z + 1) * h]);
        }
        first.v_in.clear();
        first.v_in.resize(n * 3 * h, T::zero());

        for l in 0..n_layers {
            let lw = &self.weights.layers[l];
            let (done, rest) = state.layers.split_at_mut(l + 1);
            let layer = &mut done[l];
            // Message.
            layer.s_mid.resize(n * h, T::zero());
            layer.v_mid.resize(n * 3 * h, T::zero());
            let (s_in, v_in) = (&layer.s_in, &layer.v_in);
            let edges = &state.edges;
            let cached = &state.filter_w[l];
            let (pair_of_edge, identity_rows) = (&state.pair_of_edge, &state.identity_rows);
            // The rows of atoms `first_atom..` into `s_mid`, `v_mid` (`[atoms][H]`, `[atoms][3H]`).
            let message_atoms =
                |scratch: &mut Scratch<T>, first_atom: usize, s_mid: &mut [T], v_mid: &mut [T]| {
                    for (local, (s_out, v_out)) in s_mid
                        .chunks_exact_mut(h)
                        .zip(v_mid.chunks_exact_mut(3 * h))
                        .enumerate()
                    {
                        let i = first_atom + local;
                        let row = graph.offsets[i]..graph.offsets[i + 1];
                        let (w, filter_rows) = if cached.is_empty() {
                            filter.evaluate(l, &edges[row.clone()], false, scratch);
                            (&scratch.w[..], &identity_rows[..row.len()])
                        } else {
                            (&cached[..], &pair_of_edge[row.clone()])
                        };
                        kernels::message_row(
                            h,
                            i,
                            &graph.sources[row.clone()],
                            &edges[row],
                            w,
                            filter_rows,
                            s_in,
                            v_in,
                            l == 0,
                            s_out,
                            v_out,
                        );
                    }
                };
            if parallel::runs_in_order() {
                let (s_mid, v_mid) = (
                    team::SharedSlice::new(&mut layer.s_mid),
                    team::SharedSlice::new(&mut layer.v_mid),
                );
                team::for_each_block(n.div_ceil(per_task), |task| {
                    let atoms = task * per_task..((task + 1) * per_task).min(n);
                    // SAFETY: each task writes the rows of its own atoms.
                    let (s_mid, v_mid) = unsafe {
                        (
                            s_mid.part(atoms.start * h..atoms.end * h),
                            v_mid.part(atoms.start * 3 * h..atoms.end * 3 * h),
                        )
                    };
                    message_atoms(&mut Scratch::new(), atoms.start, s_mid, v_mid);
                });
            } else {
                layer
                    .s_mid
                    .par_chunks_mut(per_task * h)
                    .zip(layer.v_mid.par_chunks_mut(per_task * 3 * h))
                    .enumerate()
                    .for_each_init(Scratch::new, |scratch, (task, (s_mid, v_mid))| {
                        message_atoms(scratch, task * per_task, s_mid, v_mid)
                    });
            }

            // Update.
            layer.norm.resize(n * h, T::zero());
            state.concat.resize(n * 2 * h, T::zero());
            parallel::for_each_chunk_pair(
                &mut layer.norm,
                h,
                &mut state.concat,
                2 * h,
                |i, norm, concat| {
                    let v = &layer.v_mid[i * 3 * h..(i + 1) * 3 * h];
                    for c in 0..h {
                        norm[c] = (v[c] * v[c] + v[h + c] * v[h + c] + v[2 * h + c] * v[2 * h + c])
                            .sqrt();
                    }
                    concat[..h].copy_from_slice(&layer.s_mid[i * h..(i + 1) * h]);
                    concat[h..].copy_from_slice(norm);
                },
            );
            layer.update_pre.resize(n * h, T::zero());
            lw.update_hidden
                .forward(&state.concat, &mut layer.update_pre);
            silu_keeping_sigmoid(
                &layer.update_pre,
                &mut layer.update_sigmoid,
                &mut state.hidden,
            );
            let a_width = lw.update_out.n_out;
            layer.update_out.resize(n * a_width, T::zero());
            lw.update_out.forward(&state.hidden, &mut layer.update_out);

            // Gate into the next layer's input (or the final scalars).
            let last = l + 1 == n_layers;
            let (s_next, v_next) = if last {
                state.s_final.resize(n * h, T::zero());
                (&mut state.s_final, None)
            } else {
                let next = &mut rest[0];
                next.s_in.resize(n * h, T::zero());
                next.v_in.resize(n * 3 * h, T::zero());
                (&mut next.s_in, Some(&mut next.v_in))
            };
            parallel::for_each_chunk(s_next, h, |i, s| {
                let a = &layer.update_out[i * a_width..i * a_width + h];
                let s_mid = &layer.s_mid[i * h..(i + 1) * h];
                for c in 0..h {
                    s[c] = s_mid[c] + a[c];
                }
            });
            if let Some(v_next) = v_next {
                let m = lw.mixing;
                parallel::for_each_chunk(v_next, 3 * h, |i, v| {
                    let a = &layer.update_out[i * 3 * h..(i + 1) * 3 * h];
                    let (av1, av2) = (&a[h..2 * h], &a[2 * h..]);
                    let vm = &layer.v_mid[i * 3 * h..(i + 1) * 3 * h];
                    for x in 0..3 {
                        for c in 0..h {
                            let mixed =
                                m[x][0] * vm[c] + m[x][1] * vm[h + c] + m[x][2] * vm[2 * h + c];
                            v[x * h + c] = vm[x * h + c] * av1[c] + mixed * av2[c];
                        }
                    }
                });
            }
        }

        // Energy head.
        let head = &self.weights.head;
        state.head_pre[0].resize(n * head[0].n_out, T::zero());
        head[0].forward(&state.s_final, &mut state.head_pre[0]);
        silu_keeping_sigmoid(
            &state.head_pre[0],
            &mut state.head_sigmoid[0],
            &mut state.head_act[0],
        );
        state.head_pre[1].resize(n * head[1].n_out, T::zero());
        head[1].forward(&state.head_act[0], &mut state.head_pre[1]);
        silu_keeping_sigmoid(
            &state.head_pre[1],
            &mut state.head_sigmoid[1],
            &mut state.head_act[1],
        );
        state.energies.resize(n, T::zero());
        head[2].forward(&state.head_act[1], &mut state.energies);
    }

    fn backward(&self, graph: &Graph, state: &mut State<T>) {
        let n = graph.n_atoms();
        let per_task = atoms_per_task(n);
        let h = self.weights.hidden;
        let n_layers = self.weights.layers.len();
        let head = &self.weights.head;
        let filter = self.filter();

        // Energy head: dE/dE_i is 1 for the atoms that count, 0 for ghosts.
        let (q, p) = (head[2].n_in, head[1].n_in);
        state.g_head[1].resize(n * q, T::zero());
        parallel::for_each_chunk(&mut state.g_head[1], q, |i, g| {
            let weight = if i < graph.n_energy_atoms {
                T::one()
            } else {
                T::zero()
            };
            for c in 0..q {
                let k = i * q + c;
                g[c] = weight
                    * head[2].weight[c]
                    * silu_derivative_from(state.head_pre[1][k], state.head_sigmoid[1][k]);
            }
        });
        state.g_head[0].resize(n * p, T::zero());
        let [g_head0, g_head1] = &mut state.g_head;
        head[1].backward(g_head1, g_head0, false);
        for ((g, &pre), &sigmoid) in state.g_head[0]
            .iter_mut()
            .zip(&state.head_pre[0])
            .zip(&state.head_sigmoid[0])
        {
            *g *= silu_derivative_from(pre, sigmoid);
        }
        state.gs.resize(n * h, T::zero());
        head[0].backward(&state.g_head[0], &mut state.gs, false);
        state.gv.clear();
        state.gv.resize(n * 3 * h, T::zero());

        state.de_dr.clear();
        state.de_dr.resize(graph.n_edges(), [T::zero(); 3]);

        for l in (0..n_layers).rev() {
            let lw = &self.weights.layers[l];
            let layer = &state.layers[l];
            let last = l + 1 == n_layers;

            // Update backward: (gs, gv) are the gradients of the layer's outputs.
            let a_width = lw.update_out.n_out;
            state.g_update.resize(n * a_width, T::zero());
            state.gv_mid.resize(n * 3 * h, T::zero());
            let m = lw.mixing;
            let (gs, gv) = (&state.gs, &state.gv);
            parallel::for_each_chunk_pair(
                &mut state.g_update,
                a_width,
                &mut state.gv_mid,
                3 * h,
                |i, g_a, gv_mid| {
                    g_a[..h].copy_from_slice(&gs[i * h..(i + 1) * h]);
                    if last {
                        // The last layer's vectors never reach the energy.
                        gv_mid.fill(T::zero());
                        return;
                    }
                    let a = &layer.update_out[i * 3 * h..(i + 1) * 3 * h];
                    let (av1, av2) = (&a[h..2 * h], &a[2 * h..]);
                    let vm = &layer.v_mid[i * 3 * h..(i + 1) * 3 * h];
                    let gv_out = &gv[i * 3 * h..(i + 1) * 3 * h];
                    for c in 0..h {
                        let mut g_av1 = T::zero();
                        let mut g_av2 = T::zero();
                        for x in 0..3 {
                            let mixed =
                                m[x][0] * vm[c] + m[x][1] * vm[h + c] + m[x][2] * vm[2 * h + c];
                            g_av1 += gv_out[x * h + c] * vm[x * h + c];
                            g_av2 += gv_out[x * h + c] * mixed;
                        }
                        g_a[h + c] = g_av1;
                        g_a[2 * h + c] = g_av2;
                        for x in 0..3 {
                            let back_mixed = m[0][x] * gv_out[c]
                                + m[1][x] * gv_out[h + c]
                                + m[2][x] * gv_out[2 * h + c];
                            gv_mid[x * h + c] = gv_out[x * h + c] * av1[c] + back_mixed * av2[c];
                        }
                    }
                },
            );
            state.g_hidden.resize(n * h, T::zero());
            lw.update_out
                .backward(&state.g_update, &mut state.g_hidden, false);
            for ((g, &pre), &sigmoid) in state
                .g_hidden
                .iter_mut()
                .zip(&layer.update_pre)
                .zip(&layer.update_sigmoid)
            {
                *g *= silu_derivative_from(pre, sigmoid);
            }
            state.g_concat.resize(n * 2 * h, T::zero());
            lw.update_hidden
                .backward(&state.g_hidden, &mut state.g_concat, false);
            state.gs_mid.resize(n * h, T::zero());
            let g_concat = &state.g_concat;
            parallel::for_each_chunk_pair(
                &mut state.gs_mid,
                h,
                &mut state.gv_mid,
                3 * h,
                |i, gs_mid, gv_mid| {
                    let gc = &g_concat[i * 2 * h..(i + 1) * 2 * h];
                    let gs_out = &gs[i * h..(i + 1) * h];
                    let norm = &layer.norm[i * h..(i + 1) * h];
                    let vm = &layer.v_mid[i * 3 * h..(i + 1) * 3 * h];
                    for c in 0..h {
                        gs_mid[c] = gs_out[c] + gc[c];
                        // d|v|/dv = v / |v|, taken as 0 where v = 0.
                        if norm[c] > T::zero() {
                            let scale = gc[h + c] / norm[c];
                            for x in 0..3 {
                                gv_mid[x * h + c] += scale * vm[x * h + c];
                            }
                        }
                    }
                },
            );

            // Message backward: gradients of the layer inputs (a gather over each row,
            // using w(d_ij) = w(d_ji)) and dE/dr_ij of every edge of the row.
            let (gs_mid, gv_mid) = (&state.gs_mid, &state.gv_mid);
            let edges = &state.edges;
            let (cached_w, cached_dw) = (&state.filter_w[l], &state.filter_dw[l]);
            let (pair_of_edge, identity_rows) = (&state.pair_of_edge, &state.identity_rows);
            let need_inputs = l > 0;
            // Atoms `first_atom..`: input gradients `[atoms][H]`, `[atoms][3H]` and their
            // rows of dE/dr.
            let message_backward_atoms =
                |scratch: &mut Scratch<T>,
                 first_atom: usize,
                 gs_in: &mut [T],
                 gv_in: &mut [T],
                 de_dr_rows: &mut [[T; 3]]| {
                    let mut de_dr_rows = de_dr_rows;
                    for (local, (gs_out, gv_out)) in gs_in
                        .chunks_exact_mut(h)
                        .zip(gv_in.chunks_exact_mut(3 * h))
                        .enumerate()
                    {
                        let i = first_atom + local;
                        let row = graph.offsets[i]..graph.offsets[i + 1];
                        let (de_dr, remaining) = de_dr_rows.split_at_mut(row.len());
                        de_dr_rows = remaining;
                        let (w, dw, filter_rows) = if cached_dw.is_empty() {
                            filter.evaluate(l, &edges[row.clone()], true, scratch);
                            (&scratch.w[..], &scratch.dw[..], &identity_rows[..row.len()])
                        } else {
                            (&cached_w[..], &cached_dw[..], &pair_of_edge[row.clone()])
                        };
                        kernels::message_backward_row(
                            h,
                            i,
                            &graph.sources[row.clone()],
                            &edges[row],
                            w,
                            dw,
                            filter_rows,
                            &layer.s_in,
                            &layer.v_in,
                            gs_mid,
                            gv_mid,
                            need_inputs,
                            T::of(U_EPSILON),
                            gs_out,
                            gv_out,
                            de_dr,
                        );
                    }
                };
            if parallel::runs_in_order() {
                let (gs, gv, de_dr) = (
                    team::SharedSlice::new(&mut state.gs),
                    team::SharedSlice::new(&mut state.gv),
                    team::SharedSlice::new(&mut state.de_dr),
                );
                team::for_each_block(n.div_ceil(per_task), |task| {
                    let atoms = task * per_task..((task + 1) * per_task).min(n);
                    // SAFETY: each task writes the rows of its own atoms and their edges.
                    let (gs, gv, de_dr) = unsafe {
                        (
                            gs.part(atoms.start * h..atoms.end * h),
                            gv.part(atoms.start * 3 * h..atoms.end * 3 * h),
                            de_dr.part(graph.offsets[atoms.start]..graph.offsets[atoms.end]),
                        )
                    };
                    message_backward_atoms(&mut Scratch::new(), atoms.start, gs, gv, de_dr);
                });
            } else {
                state
                    .gs
                    .par_chunks_mut(per_task * h)
                    .zip(state.gv.par_chunks_mut(per_task * 3 * h))
                    .zip(de_dr_chunks(graph, per_task, &mut state.de_dr))
                    .enumerate()
                    .for_each_init(
                        Scratch::new,
                        |scratch, (task, ((gs_in, gv_in), de_dr_rows))| {
                            message_backward_atoms(
                                scratch,
                                task * per_task,
                                gs_in,
                                gv_in,
                                de_dr_rows,
                            )
                        },
                    );
            }
        }
    }
}

/// Splits the per-edge gradient array into the rows of each task's atoms.
fn de_dr_chunks<'a, T: Send>(
    graph: &Graph,
    per_task: usize,
    de_dr: &'a mut [[T; 3]],
) -> rayon::vec::IntoIter<&'a mut [[T; 3]]> {
    let n = graph.n_atoms();
    let mut chunks = Vec::with_capacity(n.div_ceil(per_task));
    let mut rest = de_dr;
    for first in (0..n).step_by(per_task) {
        let last = (first + per_task).min(n);
        let length = graph.offsets[last] - graph.offsets[first];
        let (chunk, remaining) = rest.split_at_mut(length);
        chunks.push(chunk);
        rest = remaining;
    }
    chunks.into_par_iter()
}

/// Forces, virial and per-atom virials from `dE/dr_ij` (float64 accumulation).
fn forces_and_virials<T: Real>(
    graph: &Graph,
    state: &State<T>,
    request: Request,
    results: &mut Results,
) {
    let n = graph.n_atoms();
    let de_dr = &state.de_dr;
    let vectors = graph.vectors;
    let gradient = |e: usize| -> [f64; 3] { de_dr[e].map(|v| v.f64()) };
    if request.forces {
        results.forces = parallel::map_indices(n, |i| {
            let mut f = [0.0; 3];
            for e in graph.offsets[i]..graph.offsets[i + 1] {
                let (g, g_reverse) = (gradient(e), gradient(graph.reverse[e] as usize));
                for x in 0..3 {
                    f[x] += g[x] - g_reverse[x];
                }
            }
            f
        });
    }
    // Per-atom virial: each edge's r_ij (x) f_ij split half to each end, f_ij = -dE/dr_ij.
    if request.atom_virials {
        results.atom_virials = parallel::map_indices(n, |i| {
            let mut w = [[0.0; 3]; 3];
            for e in graph.offsets[i]..graph.offsets[i + 1] {
                let (g, g_reverse) = (gradient(e), gradient(graph.reverse[e] as usize));
                let r = vectors[e];
                for a in 0..3 {
                    for b in 0..3 {
                        w[a][b] -= 0.5 * r[a] * (g[b] - g_reverse[b]);
                    }
                }
            }
            w
        });
    }
    if request.virial {
        // Summed edge by edge in row order, not from the per-atom halves, so that the
        // virial is exactly sum over edges of r_ij (x) f_ij.
        let mut w = [[0.0; 3]; 3];
        for (e, r) in vectors.iter().enumerate() {
            let g = gradient(e);
            for a in 0..3 {
                for b in 0..3 {
                    w[a][b] -= r[a] * g[b];
                }
            }
        }
        results.virial = w;
    }
}
