//! Stage `build_graph` on the GPU (mirrors `cpu/graph.rs`; kernels in `cuda/graph.cu`): the
//! edges of the neighbour list within the cutoff for the current positions, their geometry
//! `[d, u, r, k, t]` (computed in float64, stored in float32) and each edge's reverse edge.
//! Pairs closer than the minimum distance are flagged in the status words for `readout`.

use super::Gpu;
use super::buffers::{Buffers, Weights};
use super::launch::{per_atom, warp_per_atom};
use crate::error::Result;

/// Builds the graph of `n` atoms within `cutoff_angstrom` into `buffers.graph`, locating each
/// distance in the filter table of `weights`. Pairs of two atoms from `first_ghost` on are
/// left out (`n` keeps all).
pub fn build_graph(
    gpu: &Gpu,
    buffers: &mut Buffers,
    n: usize,
    first_ghost: usize,
    cutoff_angstrom: f64,
    weights: &Weights,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let Gpu {
        device,
        kernels: k,
        registry,
    } = gpu;
    let (system, list, graph) = (&buffers.system, &buffers.list, &buffers.graph);
    let cutoff2 = cutoff_angstrom * cutoff_angstrom;
    let atoms = per_atom(n);
    let n_i32 = n as i32;
    device.fill_zero(graph.offsets.offset(n), 1)?;
    k.graph_count(
        atoms,
        n_i32,
        &system.positions,
        &system.lattice,
        &list.offsets,
        &list.sources,
        &list.shifts,
        cutoff2,
        first_ghost as i32,
        &graph.offsets,
        &system.status,
    )?;
    k.scan(
        registry,
        &mut buffers.scan_scratch,
        graph.offsets.ptr(),
        n + 1,
    )?;
    k.graph_fill(
        atoms,
        n_i32,
        &system.positions,
        &system.lattice,
        &list.offsets,
        &list.sources,
        &list.shifts,
        cutoff2,
        first_ghost as i32,
        &graph.offsets,
        &graph.sources,
        &graph.shifts,
        &graph.geometry,
        weights.filter_spacing_angstrom,
        weights.filter_intervals as i32,
        &system.status,
    )?;
    k.graph_reverse(
        warp_per_atom(n),
        n_i32,
        &graph.offsets,
        &graph.sources,
        &graph.shifts,
        &graph.reverse,
    )
}
