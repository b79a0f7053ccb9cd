//! Stage `build_graph` on the CPU (mirrors `cuda/graph.rs` and `cuda/graph.cu`): the edges of
//! the neighbour list within the cutoff for the current positions, each edge's reverse, and
//! the per-edge geometry the model reads.

use super::real::Real;
use crate::backend::{GEOMETRY_WIDTH, U_EPSILON};
use crate::cell::Cell;
use crate::model::FilterTable;
use crate::neighbors::{NeighborList, edge_vector};

/// Per-edge geometry: `[d, u_x, u_y, u_z, r_x, r_y, r_z, k, t]`, where `k` (an integer
/// value) and `t` locate `d` in the filter table. They are computed from the float64
/// distance: in float32, `d / h` would lose up to 6e-5 of `t` and, through the steep
/// filter, about 1e-6 of `w`.
pub type EdgeGeometry<T> = [T; GEOMETRY_WIDTH];

/// The graph a CPU backend evaluates: CSR by receiver, rows sorted by `(source, image)`.
#[derive(Default)]
pub struct Graph<T> {
    /// `[n_atoms + 1]`.
    pub offsets: Vec<usize>,
    /// `[n_edges]`.
    pub sources: Vec<u32>,
    /// `[n_edges]`: lattice image of each edge.
    pub shifts: Vec<[i32; 3]>,
    /// `[n_edges]`: index of the edge `(j <- i, -n)` for edge `(i <- j, n)`.
    pub reverse: Vec<u32>,
    /// `[n_edges][3]`: `r_ij = (r_j - r_i) + n . cell`, Angstrom, `0 < |r_ij| <= cutoff`.
    pub vectors: Vec<[f64; 3]>,
    /// `[n_edges]`, in the engine's precision.
    pub geometry: Vec<EdgeGeometry<T>>,
    /// The round-off of the edge vectors, Angstrom
    /// ([`edge_round_off_angstrom`](crate::backend::edge_round_off_angstrom)).
    pub edge_round_off_angstrom: f64,
}

impl<T> Graph<T> {
    pub fn n_atoms(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn n_edges(&self) -> usize {
        self.sources.len()
    }

    /// The edges into atom `i`.
    pub fn row(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }
}

/// Fills `graph` with the edges of `list` within `cutoff` (inclusive) for `positions` in
/// `cell`, their reverse edges and their geometry (`table` locates each distance in the
/// filter table of the float32 engine). Edges between two atoms from `first_ghost` on are
/// left out (pass the atom count to keep all).
pub fn build_graph<T: Real>(
    list: &NeighborList,
    positions: &[[f64; 3]],
    cell: &Cell,
    cutoff_angstrom: f64,
    first_ghost: usize,
    table: Option<&FilterTable>,
    graph: &mut Graph<T>,
) {
    let cutoff_squared = cutoff_angstrom * cutoff_angstrom;
    graph.edge_round_off_angstrom =
        crate::backend::edge_round_off_angstrom(positions, cutoff_angstrom);
    graph.offsets.clear();
    graph.sources.clear();
    graph.shifts.clear();
    graph.vectors.clear();
    graph.offsets.push(0);
    for i in 0..list.n_atoms() {
        let (sources, shifts) = list.row(i);
        for (&j, &n) in sources.iter().zip(shifts) {
            if i >= first_ghost && j as usize >= first_ghost {
                continue;
            }
            let r = edge_vector(positions, cell, i, j as usize, n);
            if r[0] * r[0] + r[1] * r[1] + r[2] * r[2] <= cutoff_squared {
                graph.sources.push(j);
                graph.shifts.push(n);
                graph.vectors.push(r);
            }
        }
        graph.offsets.push(graph.sources.len());
    }
    // Reverse edges: (j <- i, -n) in row j, found by binary search (rows are sorted).
    graph.reverse.clear();
    for i in 0..list.n_atoms() {
        for e in graph.row(i) {
            let j = graph.sources[e] as usize;
            let n = graph.shifts[e];
            let key = (i as u32, [-n[0], -n[1], -n[2]]);
            let (mut lo, mut hi) = (graph.offsets[j], graph.offsets[j + 1]);
            while lo < hi {
                let middle = (lo + hi) / 2;
                if (graph.sources[middle], graph.shifts[middle]) < key {
                    lo = middle + 1;
                } else {
                    hi = middle;
                }
            }
            debug_assert!(graph.sources[lo] == i as u32 && graph.shifts[lo] == key.1);
            graph.reverse.push(lo as u32);
        }
    }
    edge_geometry(&graph.vectors, table, &mut graph.geometry);
}

/// Per-edge geometry in the engine's precision, computed from float64 edge vectors.
fn edge_geometry<T: Real>(
    vectors: &[[f64; 3]],
    table: Option<&FilterTable>,
    geometry: &mut Vec<EdgeGeometry<T>>,
) {
    geometry.clear();
    geometry.extend(vectors.iter().map(|r| {
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
