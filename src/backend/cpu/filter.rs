//! The radial filter `w(d)` of each layer on the CPU: evaluated exactly (the filter network,
//! float64 reference) or interpolated from the model's table (float32 production), per row of
//! edges, or for a molecule once per pair of edges and kept for both passes. On the GPU the
//! filter is interpolated inside the message kernels (`cuda/message.cu`).

use multiversion::multiversion;

use super::Weights;
use super::graph::{EdgeGeometry, Graph};
use super::real::{Real, silu, silu_derivative};
use super::schedule::Schedule;
use crate::disjoint::DisjointParts;
use crate::model::filter::NODE_VECTORS;
use crate::model::{FilterTable, Model};

/// How the radial filter `w(d)` is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterMode {
    /// The filter network itself, per edge (float64 reference).
    Exact,
    /// Cubic Hermite interpolation of the tabulated filter (float32 production path).
    Table,
}

/// Pairs of edges per block of a molecule's filter evaluation.
const FILTER_BLOCK_PAIRS: usize = 16;

/// Largest filter cache, bytes, counted per edge (twice what the pairs take): a molecule of
/// 39 atoms counts about 14 MB in float32.
const FILTER_CACHE_BYTES: usize = 32 << 20;

/// Scratch buffers of one parallel task.
pub struct Scratch<T> {
    /// `[degree][3H]` filter values and derivatives.
    pub w: Vec<T>,
    pub dw: Vec<T>,
    /// Exact filter only: `[degree][K]` radial features and derivatives, `[degree][H]`
    /// hidden pre-activations and their derivatives.
    e: Vec<T>,
    de: Vec<T>,
    pre: Vec<T>,
    dpre: Vec<T>,
}

impl<T: Real> Scratch<T> {
    pub fn new() -> Self {
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
pub enum RowFilter<'a, T: Real> {
    Exact {
        model: &'a Model,
        weights: &'a Weights<T>,
    },
    Table(&'a FilterTable),
}

impl<T: Real> RowFilter<'_, T> {
    /// Fills `scratch.w` (and `scratch.dw` when `derivative`) for edges `edges`.
    pub fn evaluate(
        &self,
        layer: usize,
        edges: &[EdgeGeometry<T>],
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
                interpolate_rows(
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

/// A molecule's filters, evaluated once per pair of edges for both passes; empty for larger
/// systems, whose rows evaluate their own filters.
#[derive(Default)]
pub struct FilterCache<T> {
    /// Every layer's filter `[layers][n_pairs][3H]` and its derivative.
    pub w: Vec<Vec<T>>,
    pub dw: Vec<Vec<T>>,
    /// Each edge's pair `[n_edges]`, the filter row it reads.
    pub pair_of_edge: Vec<u32>,
    /// `0, 1, 2, ...`: the filter rows of an edge row evaluated on its own.
    pub identity_rows: Vec<u32>,
}

impl<T: Real> FilterCache<T> {
    /// The filter rows that the edges `row` of layer `layer` read, and the values and
    /// derivatives they read them from: the cache's, or (when the layer is not cached) those
    /// `filter` writes into `scratch` for this row alone.
    #[allow(clippy::type_complexity)]
    pub fn rows<'s>(
        &'s self,
        filter: &RowFilter<'_, T>,
        layer: usize,
        edges: &[EdgeGeometry<T>],
        row: std::ops::Range<usize>,
        derivative: bool,
        scratch: &'s mut Scratch<T>,
    ) -> (&'s [T], &'s [T], &'s [u32]) {
        let cached = if derivative {
            &self.dw[layer]
        } else {
            &self.w[layer]
        };
        if cached.is_empty() {
            filter.evaluate(layer, &edges[row.clone()], derivative, scratch);
            (&scratch.w, &scratch.dw, &self.identity_rows[..row.len()])
        } else {
            (&self.w[layer], &self.dw[layer], &self.pair_of_edge[row])
        }
    }
}

/// Whether a system's filters are cached (a molecule with the tabulated filter).
pub fn caches_filters(mode: FilterMode, n_atoms: usize, small_system_atoms: usize) -> bool {
    mode == FilterMode::Table && n_atoms < small_system_atoms
}

/// For small systems with the tabulated filter, evaluates every layer's filter (and its
/// derivative, when `derivative`) once per pair of edges `(i <- j, n)`, `(j <- i, -n)` (same
/// distance, same values bit for bit): a quarter of the table reads of evaluating it per row
/// in each pass. Table reads dominate a molecule's filter cost (the table does not fit in
/// cache). Larger systems evaluate per row, in parallel, with nothing stored.
#[allow(clippy::too_many_arguments)]
pub fn cache_filters<T: Real>(
    schedule: Schedule,
    graph: &Graph<T>,
    table: Option<&FilterTable>,
    width: usize,
    n_layers: usize,
    cache_wanted: bool,
    derivative: bool,
    cache: &mut FilterCache<T>,
) {
    let bytes = graph.n_edges() * width * n_layers * 2 * std::mem::size_of::<T>();
    cache.w.resize_with(n_layers, Vec::new);
    cache.dw.resize_with(n_layers, Vec::new);
    let table = table.filter(|_| cache_wanted && bytes <= FILTER_CACHE_BYTES);
    let Some(table) = table else {
        // Rows evaluated on their own read their filter rows in order.
        let max_degree = (0..graph.n_atoms())
            .map(|i| graph.row(i).len())
            .max()
            .unwrap_or(0);
        if cache.identity_rows.len() < max_degree {
            cache.identity_rows = (0..max_degree as u32).collect();
        }
        for l in 0..n_layers {
            cache.w[l].clear();
            cache.dw[l].clear();
        }
        return;
    };
    // One edge of each pair, the one with the smaller index, is evaluated; both read its row.
    let mut first_of_pair = Vec::new();
    cache.pair_of_edge.clear();
    cache.pair_of_edge.resize(graph.n_edges(), 0);
    for e in 0..graph.n_edges() {
        let reverse = graph.reverse[e] as usize;
        debug_assert_eq!(
            graph.reverse[reverse] as usize, e,
            "reverse is an involution"
        );
        if reverse >= e {
            cache.pair_of_edge[e] = first_of_pair.len() as u32;
            cache.pair_of_edge[reverse] = first_of_pair.len() as u32;
            first_of_pair.push(e);
        }
    }
    let geometry: Vec<EdgeGeometry<T>> = first_of_pair.iter().map(|&e| graph.geometry[e]).collect();
    let n_pairs = geometry.len();
    for l in 0..n_layers {
        cache.w[l].resize(n_pairs * width, T::zero());
        cache.dw[l].resize(if derivative { n_pairs * width } else { 0 }, T::zero());
    }
    // In blocks of pairs of one layer, on both threads of a molecule's team: the table reads
    // (a few kB per pair, scattered over a table larger than the cache) are what this costs,
    // and two threads keep twice as many in flight.
    let blocks_per_layer = n_pairs.div_ceil(FILTER_BLOCK_PAIRS);
    let w: Vec<_> = cache.w.iter_mut().map(|w| DisjointParts::new(w)).collect();
    let dw: Vec<_> = cache
        .dw
        .iter_mut()
        .map(|dw| DisjointParts::new(dw))
        .collect();
    schedule.for_each_block(
        n_layers * blocks_per_layer,
        || (),
        |_, block| {
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
            interpolate_rows(
                table.layer(l),
                table.width,
                table.n_intervals,
                table.spacing_angstrom,
                &geometry[pairs],
                w,
                dw,
            );
        },
    );
}

/// Cubic Hermite interpolation of a filter table for a row of edges: `w[e] = sum of the four
/// basis weights times the two nodes' values and scaled derivatives`, and `dw/dd` likewise
/// with the basis derivatives (when `dw` is given).
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn interpolate_rows<T: Real>(
    nodes: &[f32],
    width: usize,
    n_intervals: usize,
    spacing: f64,
    edges: &[EdgeGeometry<T>],
    w: &mut [T],
    mut dw: Option<&mut [T]>,
) {
    let inverse_h = T::of(1.0 / spacing);
    debug_assert!(n_intervals > 0);
    for (e, edge) in edges.iter().enumerate() {
        let k = edge[7].f64() as usize;
        let t = edge[8];
        let stride = NODE_VECTORS * width;
        let node = &nodes[k * stride..][..stride];
        let next = &nodes[(k + 1) * stride..][..stride];
        let (value, rest) = node.split_at(width);
        let (delta, slope) = rest.split_at(width);
        let next_slope = &next[2 * width..3 * width];
        let [_, h10, h01, h11] = crate::model::filter::hermite_basis(t);
        let out = &mut w[e * width..][..width];
        for o in 0..width {
            out[o] = T::of(value[o] as f64)
                + h01 * T::of(delta[o] as f64)
                + h10 * T::of(slope[o] as f64)
                + h11 * T::of(next_slope[o] as f64);
        }
        if let Some(dw) = dw.as_deref_mut() {
            let [_, g10, g01, g11] = crate::model::filter::hermite_basis_derivative(t);
            let (g10, g01, g11) = (g10 * inverse_h, g01 * inverse_h, g11 * inverse_h);
            let out = &mut dw[e * width..][..width];
            for o in 0..width {
                out[o] = g01 * T::of(delta[o] as f64)
                    + g10 * T::of(slope[o] as f64)
                    + g11 * T::of(next_slope[o] as f64);
            }
        }
    }
}
