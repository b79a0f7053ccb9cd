//! Host-side arithmetic of the GPU neighbour list and launches: the binning frame handed to
//! the kernels (same layout as `struct Grid` in cuda/neighbors.cu), the block sizes the
//! kernels are written for, and grid sizes. Pure functions, unit-tested on the CPU.

use crate::cell::{Cell, inverse, norm};
use crate::error::{Error, Result};

/// Bins are this much wider than the search radius, so that round-off in the fractional
/// coordinates can never push a neighbour out of the searched bins.
const BIN_MARGIN: f64 = 1e-9;

/// Largest number of bins searched on each side of an axis (the sort key has 10 bits per
/// axis for the image). Shared with the kernels.
pub const MAX_REACH: i32 = 500;

/// Threads per block of the one-thread-per-atom kernels.
pub(crate) const ATOM_THREADS: u32 = 128;

/// Threads per block of the grid-stride element-wise kernels.
pub(crate) const STRIDE_THREADS: u32 = 256;

/// Elements (and threads) per block of the scan. Shared with the kernels.
pub(crate) const SCAN_BLOCK: usize = 1024;

/// Rows per block of `nl_sort_rows`, one warp each. Shared with the kernels.
pub(crate) const SORT_WARPS: u32 = 4;

/// Threads of the one block of `reduce_results`. Shared with the kernels.
pub(crate) const REDUCE_THREADS: u32 = 256;

/// Side of the GEMM's square output tile and threads per GEMM block. Shared with the
/// kernels.
pub(crate) const GEMM_TILE: u32 = 64;
pub(crate) const GEMM_THREADS: u32 = 256;

/// Rows per warp (NT) or thread (NN) of the few-rows GEMMs. Shared with the kernels.
pub(crate) const GEMM_FEW_ROWS: usize = 4;

/// Up to this many rows the few-rows GEMMs run instead of the tiled one: there a handful of
/// 64-row tiles is bound by the latency of its slices (benzene: 35 us per tiled GEMM), while
/// the few-rows kernels' re-reads of the weights (from L2) stay cheap.
pub(crate) const GEMM_FEW_ROWS_MAX: usize = 256;

/// The small-system kernels (cuda/small.cu): one cluster of at most `SMALL_CLUSTER_BLOCKS`
/// blocks (16 is a non-portable cluster size: fewer where the GPU cannot) of `SMALL_THREADS`
/// threads, `SMALL_ROWS` rows per group in their backward products, models of at most
/// `SMALL_MAX_LAYERS` layers and `SMALL_MAX_HIDDEN` features (a group's rows fit in a
/// block's shared memory). Shared with the kernels, except `SMALL_CLUSTER_BLOCKS`.
pub(crate) const SMALL_CLUSTER_BLOCKS: u32 = 16;
pub(crate) const SMALL_THREADS: u32 = 512;
pub(crate) const SMALL_ROWS: usize = 8;
pub(crate) const SMALL_MAX_LAYERS: usize = 8;
pub(crate) const SMALL_MAX_HIDDEN: usize = 128;
/// Lanes sharing one (atom, feature)'s edges in the small-system message stages (a power of
/// two, at most 8). Shared with the kernels.
pub(crate) const SMALL_EDGE_PARTS: usize = 4;

/// Largest hidden size H: the message kernels run one thread per feature in one block.
/// Shared with the kernels.
pub(crate) const MAX_HIDDEN: usize = 1024;

/// Atoms farther outside the cell than this many lattice vectors cannot be represented.
const MAX_IMAGE_INDEX: f64 = (1u32 << 30) as f64;

/// `struct Grid` of cuda/neighbors.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub to_fractional: [f64; 9],
    pub lattice: [f64; 9],
    pub origin: [f64; 3],
    pub inverse_width: [f64; 3],
    pub bins: [i32; 3],
    pub reach: [i32; 3],
    pub periodic: [i32; 3],
    pub n_bins: i32,
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for Grid {}

impl Grid {
    /// The binning frame for `positions` in `cell` with search radius `radius`: bins at
    /// least `radius` thick on every axis, coarsened until there are at most
    /// `4 n + 1024` of them (sparse or huge open systems).
    pub fn new(positions: &[[f64; 3]], cell: &Cell, radius: f64) -> Result<Grid> {
        let pbc = cell.pbc();
        let basis = cell.binning_basis();
        let to_fractional = inverse(&basis);
        let bin_radius = radius * (1.0 + BIN_MARGIN) + BIN_MARGIN;
        let mut grid = Grid {
            to_fractional: [0.0; 9],
            lattice: [0.0; 9],
            origin: [0.0; 3],
            inverse_width: [1.0; 3],
            bins: [1; 3],
            reach: [1; 3],
            periodic: pbc.map(i32::from),
            n_bins: 1,
        };
        for x in 0..3 {
            for a in 0..3 {
                grid.to_fractional[3 * x + a] = to_fractional[x][a];
                grid.lattice[3 * x + a] = cell.vectors()[x][a];
            }
        }
        let mut heights = [0.0; 3];
        let mut extents = [0.0; 3];
        for a in 0..3 {
            let column = [
                to_fractional[0][a],
                to_fractional[1][a],
                to_fractional[2][a],
            ];
            let mut lo = f64::INFINITY;
            let mut hi = f64::NEG_INFINITY;
            for (atom, r) in positions.iter().enumerate() {
                let f = r[0] * column[0] + r[1] * column[1] + r[2] * column[2];
                if pbc[a] && f.floor().abs() >= MAX_IMAGE_INDEX {
                    return Err(Error::invalid(
                        "positions",
                        format!(
                            "atom {atom} lies {} lattice vectors outside the cell along axis {a}",
                            f.floor()
                        ),
                    ));
                }
                lo = lo.min(f);
                hi = hi.max(f);
            }
            if pbc[a] {
                heights[a] = 1.0 / norm(column);
                let bins = (heights[a] / bin_radius).floor().clamp(1.0, 1e6);
                grid.bins[a] = bins as i32;
            } else {
                let (lo, hi) = if positions.is_empty() {
                    (0.0, 0.0)
                } else {
                    (lo, hi)
                };
                grid.origin[a] = lo;
                extents[a] = hi - lo;
                grid.bins[a] = ((extents[a] / bin_radius).floor() + 1.0).min(1e6) as i32;
            }
        }
        // Coarsen the axis with the most bins until the grid is O(n).
        let cap = 4 * positions.len() as i64 + 1024;
        while grid.bins.iter().map(|&b| b as i64).product::<i64>() > cap {
            let axis = (0..3).max_by_key(|&a| grid.bins[a]).expect("three axes");
            grid.bins[axis] = (grid.bins[axis] + 1) / 2;
        }
        for a in 0..3 {
            if pbc[a] {
                grid.inverse_width[a] = grid.bins[a] as f64;
                let reach = (bin_radius * grid.bins[a] as f64 / heights[a])
                    .ceil()
                    .max(1.0);
                if reach > MAX_REACH as f64 {
                    return Err(Error::BadCell {
                        reason: format!(
                            "the cell is too thin along axis {a} for the GPU neighbour list (a \
                             search radius of {radius} Angstrom spans {reach} cells; at most \
                             {MAX_REACH}): use device cpu"
                        ),
                    });
                }
                grid.reach[a] = reach as i32;
            } else {
                // Open axes: width at least the radius and covering every atom.
                let width = bin_radius.max((extents[a] + bin_radius) / grid.bins[a] as f64);
                grid.inverse_width[a] = 1.0 / width;
                grid.reach[a] = 1;
            }
        }
        let boxes: i64 = grid.reach.iter().map(|&r| 2 * r as i64 + 1).product();
        if boxes > 10_000_000 {
            return Err(Error::BadCell {
                reason: format!(
                    "the cell is too small for a search radius of {radius} Angstrom: it spans \
                     {:?} cells on each side",
                    grid.reach
                ),
            });
        }
        grid.n_bins = grid.bins.iter().product();
        Ok(grid)
    }

    /// Bin of a fractional coordinate, as `nl_bin` computes it (for tests).
    pub fn bin_of(&self, f: f64, axis: usize) -> i32 {
        let f = if self.periodic[axis] != 0 {
            f - f.floor()
        } else {
            f
        };
        let raw = ((f - self.origin[axis]) * self.inverse_width[axis]).floor() as i64;
        raw.clamp(0, self.bins[axis] as i64 - 1) as i32
    }
}

/// Blocks of `per_block` threads covering `count` threads.
pub fn blocks(count: usize, per_block: u32) -> u32 {
    let needed = count.div_ceil(per_block as usize).max(1);
    assert!(
        needed <= u32::MAX as usize,
        "{count} threads exceed one launch"
    );
    needed as u32
}

/// Blocks for a grid-stride loop over `count` elements (capped; the loop covers the rest).
pub fn stride_blocks(count: usize, per_block: u32) -> u32 {
    count.div_ceil(per_block as usize).clamp(1, 65_536) as u32
}

/// Element counts of the levels of a multi-level scan over `count` elements: the element
/// count itself, then the number of block sums at each level until one block remains.
pub fn scan_levels(count: usize, block: usize) -> Vec<usize> {
    let mut levels = vec![count];
    let mut current = count;
    while current > block {
        current = current.div_ceil(block);
        levels.push(current);
    }
    levels
}

/// The (x, y) grid of the tiled GEMM: rows in tiles of [`GEMM_TILE`] along x, columns
/// along y.
pub fn gemm_grid(rows: usize, columns: usize) -> (u32, u32) {
    (blocks(rows, GEMM_TILE), blocks(columns, GEMM_TILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_arithmetic() {
        assert_eq!(blocks(0, 128), 1);
        assert_eq!(blocks(128, 128), 1);
        assert_eq!(blocks(129, 128), 2);
        assert_eq!(stride_blocks(1 << 40, 256), 65_536);
        assert_eq!(scan_levels(1000, 1024), vec![1000]);
        assert_eq!(scan_levels(1025, 1024), vec![1025, 2]);
        assert_eq!(scan_levels(3_000_001, 1024), vec![3_000_001, 2930, 3]);
        assert_eq!(gemm_grid(1_000_000, 384), (15_625, 6));
    }

    #[test]
    fn bins_are_at_least_the_radius_and_cover_the_search() {
        let lattice = [[20.0, 0.0, 0.0], [7.0, 15.0, 0.0], [-3.0, 2.0, 11.0]];
        let cell = Cell::new(lattice, [true; 3]).unwrap();
        let positions: Vec<[f64; 3]> = (0..1000).map(|i| [i as f64 * 0.01, 0.0, 0.0]).collect();
        let grid = Grid::new(&positions, &cell, 5.0).unwrap();
        let basis = cell.binning_basis();
        let to_fractional = inverse(&basis);
        for a in 0..3 {
            let column = [
                to_fractional[0][a],
                to_fractional[1][a],
                to_fractional[2][a],
            ];
            let height = 1.0 / norm(column);
            // Fractional width of a bin, times the height, is the bin's thickness.
            let thickness = height / grid.bins[a] as f64;
            assert!(thickness * grid.reach[a] as f64 >= 5.0, "axis {a}");
        }
        assert_eq!(grid.bins, [3, 2, 2]);
    }

    #[test]
    fn thin_cells_reach_several_images_and_sparse_grids_are_coarsened() {
        let cell = Cell::new(
            [[2.0, 0.0, 0.0], [0.0, 30.0, 0.0], [0.0, 0.0, 30.0]],
            [true; 3],
        )
        .unwrap();
        let grid = Grid::new(&[[0.0; 3]], &cell, 5.0).unwrap();
        assert_eq!(grid.bins[0], 1);
        assert_eq!(grid.reach[0], 3);
        // Two atoms a kilometre apart on every open axis: at most 4 n + 1024 bins.
        let far = [[0.0; 3], [1e13, 1e13, 1e13]];
        let grid = Grid::new(&far, &Cell::open(), 5.0).unwrap();
        assert!(grid.n_bins <= 1032, "{:?}", grid.bins);
        for a in 0..3 {
            assert!(1.0 / grid.inverse_width[a] >= 5.0);
            assert_eq!(grid.bin_of(1e13, a), grid.bins[a] - 1);
            assert_eq!(grid.bin_of(0.0, a), 0);
        }
        let needle = Cell::new(
            [[1e-3, 0.0, 0.0], [0.0, 30.0, 0.0], [0.0, 0.0, 30.0]],
            [true; 3],
        )
        .unwrap();
        assert!(Grid::new(&[[0.0; 3]], &needle, 5.0).is_err());
    }

    #[test]
    fn layout_matches_the_kernel_struct() {
        // 24 doubles, then 10 ints: 232 bytes, 8-byte aligned (cuda/neighbors.cu).
        assert_eq!(std::mem::size_of::<Grid>(), 232);
        assert_eq!(std::mem::align_of::<Grid>(), 8);
    }
}
