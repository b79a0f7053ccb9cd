//! Stage `build_neighbor_list` on the GPU (mirrors `cpu/neighbors.rs`; kernels in
//! `cuda/neighbors.cu`): every directed pair within the search radius (cutoff + skin), with
//! the CPU list's exact semantics, from a cell list over the binning frame of [`Grid`].
//!
//! The edge arrays are sized from the exact edge count before they are filled (one small
//! synchronous download per build), so a build never overflows them.

use super::Gpu;
use super::buffers::Buffers;
use super::grid::Grid;
use super::launch::{per_atom, sort_rows};
use crate::cell::Cell;
use crate::error::Result;

/// Headroom on the edge arrays when they grow, so that a list that grows a little (an MD
/// run that heats up) does not reallocate at every build.
const EDGE_HEADROOM: f64 = 1.25;
/// Edges of room beyond the headroom (small systems).
const EDGE_SLACK: usize = 1024;

/// Builds the list of every pair within `search_radius_angstrom` of the positions already
/// uploaded (`positions` is their host copy, for the binning frame) in `cell`: CSR by
/// receiver in `buffers.list`, rows sorted by `(source, image)`.
pub fn build_neighbor_list(
    gpu: &Gpu,
    buffers: &mut Buffers,
    positions: &[[f64; 3]],
    cell: &Cell,
    search_radius_angstrom: f64,
) -> Result<()> {
    let n = positions.len();
    if n == 0 {
        return Ok(());
    }
    let grid = Grid::new(positions, cell, search_radius_angstrom)?;
    let radius2 = search_radius_angstrom * search_radius_angstrom;
    let edges = count_edges(gpu, buffers, n, grid, radius2)?;
    if edges > buffers.edge_capacity {
        let capacity = (edges as f64 * EDGE_HEADROOM) as usize + EDGE_SLACK;
        buffers.reserve_edges(&gpu.registry, capacity)?;
    }
    fill_edges(gpu, buffers, n, grid, radius2)
}

/// Bins the atoms, sorts them by bin and counts each receiver's neighbours into the row
/// offsets; returns the number of edges.
fn count_edges(
    gpu: &Gpu,
    buffers: &mut Buffers,
    n: usize,
    grid: Grid,
    radius2: f64,
) -> Result<usize> {
    let Gpu {
        device,
        kernels: k,
        registry,
    } = gpu;
    let n_bins = grid.n_bins as usize;
    let (positions, list) = (&buffers.system.positions, &mut buffers.list);
    registry.reserve(&mut list.bin_start, n_bins + 1)?;
    registry.reserve(&mut list.bin_cursor, n_bins)?;
    device.fill_zero(list.bin_start.ptr(), n_bins + 1)?;
    let atoms = per_atom(n);
    let n_i32 = n as i32;
    k.nl_bin(
        atoms,
        n_i32,
        positions,
        grid,
        &list.wraps,
        &list.bins,
        &list.bin_start,
    )?;
    let scratch = &mut buffers.scan_scratch;
    k.scan(registry, scratch, list.bin_start.ptr(), n_bins + 1)?;
    device.copy(list.bin_cursor.ptr(), list.bin_start.ptr(), n_bins)?;
    k.nl_scatter(atoms, n_i32, &list.bins, &list.bin_cursor, &list.sorted)?;
    device.fill_zero(list.offsets.offset(n), 1)?;
    k.nl_count(
        atoms,
        n_i32,
        positions,
        grid,
        &list.wraps,
        &list.bins,
        &list.bin_start,
        &list.sorted,
        radius2,
        &list.offsets,
    )?;
    k.scan(registry, scratch, list.offsets.ptr(), n + 1)?;
    let mut edges = [0i64];
    device.download(list.offsets.offset(n), &mut edges)?;
    Ok(edges[0] as usize)
}

/// Writes each row's edges as sort keys, sorts the rows and decodes the keys into sources
/// and image shifts.
fn fill_edges(gpu: &Gpu, buffers: &Buffers, n: usize, grid: Grid, radius2: f64) -> Result<()> {
    let k = &gpu.kernels;
    let (system, list) = (&buffers.system, &buffers.list);
    let atoms = per_atom(n);
    let n_i32 = n as i32;
    k.nl_fill(
        atoms,
        n_i32,
        &system.positions,
        grid,
        &list.wraps,
        &list.bins,
        &list.bin_start,
        &list.sorted,
        radius2,
        &list.offsets,
        buffers.edge_capacity as i64,
        &list.keys,
        &system.status,
    )?;
    k.nl_sort_rows(
        sort_rows(n),
        n_i32,
        &list.offsets,
        &list.keys,
        &system.status,
    )?;
    k.nl_decode(
        atoms,
        n_i32,
        &list.offsets,
        &list.keys,
        &list.wraps,
        &list.sources,
        &list.shifts,
        &system.status,
    )
}
