//! Cell-list build of the neighbour list.
//!
//! 1. Fractional coordinates in a binning basis: the periodic lattice vectors, completed by
//!    orthonormal directions on open axes. Atoms are wrapped into the cell on periodic axes
//!    (recording the lattice shift that wrapped them), so unwrapped input costs nothing.
//! 2. Bins at least one search radius thick (measured perpendicular to their faces): a
//!    search sphere spans `reach` bins on each side, one in the common case and several when
//!    the cell is thinner than the radius (then several images of one atom appear). Dense
//!    bins when their number is O(n), hashed otherwise (sparse or huge open systems). Atoms
//!    are sorted by bin, with f32 coordinates relative to the middle of the system.
//! 3. Counting pass, in parallel over chunks of bins: the candidates of a bin's receivers
//!    are the atoms of the neighbouring bins, a few runs of consecutive sorted atoms each
//!    seen through one lattice shift; each receiver marks its edges among them in a bitmask
//!    ([`super::filter`]), kept per chunk (about 60 bytes per atom), and counts them.
//! 4. The counts give the CSR offsets. Writing pass: the candidates of a group of bins
//!    along the first axis are ranked by (atom, image) (a bitmap over their atom indices
//!    when the input is spatially ordered, a sort otherwise), each receiver's mask is
//!    carried over into that order, and its row is written straight into its place, sorted.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::bits;
use super::filter::{self, Run};
use super::{MINIMUM_DISTANCE_ANGSTROM, crowded_error, edge_vector, oversized_error};
use crate::cell::{Cell, inverse, norm};
use crate::disjoint::DisjointParts;
use crate::error::{Error, Result, grouped, try_reserve};

/// Lists at least this large (bytes) are rewritten with non-temporal stores.
pub(super) const STREAMING_BYTES: usize = 64 << 20;

/// Largest number of cell images one search may span (product over axes); beyond this the
/// cell is absurdly small for the cutoff. A real crystal's primitive cell (2 Angstrom
/// thick) spans 7^3 = 343 images at 6 Angstrom; a search over 10^6 images lists 10^6 runs
/// of candidates (28 MB) per bin.
const MAX_IMAGE_BOXES: i64 = 1_000_000;

/// Atoms farther outside the cell than this many lattice vectors cannot be represented.
const MAX_IMAGE_INDEX: f64 = (1u32 << 30) as f64;

/// Size limits of one build, resolved from [`super::NeighborLimits`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Most edges into one atom.
    pub max_neighbors: usize,
    /// Most bytes of the list's arrays.
    pub max_bytes: usize,
}

/// Bytes of the list's arrays per edge (source and image) and per atom (offset).
const BYTES_PER_EDGE: usize = std::mem::size_of::<u32>() + std::mem::size_of::<[i32; 3]>();
const BYTES_PER_ATOM: usize = std::mem::size_of::<usize>();

/// Buffers reused from one build to the next.
#[derive(Clone, Debug, Default)]
pub(super) struct Workspace {
    /// One per task.
    chunks: Vec<Chunk>,
    /// Row lengths by slot (`[n_atoms]`), from the counting pass.
    row_lengths: Vec<u32>,
    // Binning buffers, `[n_atoms]` (a rebuild of a settled system allocates nothing).
    fractional: Vec<[f64; 3]>,
    wraps: Vec<[i32; 3]>,
    bins: Vec<[i64; 3]>,
    order: Vec<u32>,
    starts: Vec<usize>,
    binned: BinnedAtoms,
    occupied: Vec<([i64; 3], Range<usize>)>,
    dense_table: Vec<u32>,
}

/// Atoms sorted by bin ("slots"): f32 Cartesian positions (wrapped, relative to the middle
/// of the system; structure of arrays, [`filter::LANES`] zeros past the end), original
/// indices, and the lattice shift that wrapped each.
#[derive(Clone, Debug, Default)]
struct BinnedAtoms {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    atom: Vec<u32>,
    wrap: Vec<[i32; 3]>,
}

struct Grid {
    bins_per_axis: [i64; 3],
    periodic: [bool; 3],
    /// Bins to search on each side, per axis.
    reach: [i64; 3],
    /// Whether one search may visit a bin twice (through two images): some periodic axis
    /// has fewer bins than the search spans.
    may_repeat: bool,
    /// Occupied bins in sorted order with their slot ranges in `BinnedAtoms`.
    occupied: Vec<([i64; 3], Range<usize>)>,
    lookup: BinLookup,
    /// Dense grids: per linear bin index, the slot after its last atom (so a row of
    /// consecutive bins holds the slots from the end of the bin before it to the end of its
    /// last bin). Empty for hashed grids.
    bin_ends: Vec<usize>,
}

enum BinLookup {
    /// Linear bin index -> index into `occupied` (u32::MAX when empty).
    Dense(Vec<u32>),
    /// Bin coordinates -> index into `occupied`.
    Sparse(HashMap<[i64; 3], u32>),
}

impl Grid {
    fn linear(&self, bin: [i64; 3]) -> usize {
        ((bin[2] * self.bins_per_axis[1] + bin[1]) * self.bins_per_axis[0] + bin[0]) as usize
    }

    fn find(&self, bin: [i64; 3]) -> Option<&Range<usize>> {
        let index = match &self.lookup {
            BinLookup::Dense(table) => table[self.linear(bin)],
            BinLookup::Sparse(map) => *map.get(&bin)?,
        };
        (index != u32::MAX).then(|| &self.occupied[index as usize].1)
    }
}

struct Search<'a> {
    positions: &'a [[f64; 3]],
    cell: &'a Cell,
    grid: &'a Grid,
    binned: &'a BinnedAtoms,
    radius: f64,
    limits: Limits,
    /// f32 filter thresholds, one set for the whole build.
    radii: filter::Radii,
    within: filter::WithinFn,
    bits: bits::Lister,
}

/// Builds CSR rows for `positions` in `cell` with `radius` (cutoff plus skin) into
/// `offsets` (`[n + 1]`), `sources` and `shifts` (`[n_edges]`), within `limits`: the
/// counting pass stops at the first row over the neighbour limit, and the list's arrays are
/// allocated only once the counts show that they fit the byte limit.
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    positions: &[[f64; 3]],
    cell: &Cell,
    radius: f64,
    limits: Limits,
    workspace: &mut Workspace,
    offsets: &mut Vec<usize>,
    sources: &mut Vec<u32>,
    shifts: &mut Vec<[i32; 3]>,
) -> Result<()> {
    let n_atoms = positions.len();
    offsets.clear();
    sources.clear();
    shifts.clear();
    if n_atoms == 0 {
        offsets.push(0);
        return Ok(());
    }
    let pbc = cell.pbc();
    let basis = cell.binning_basis();
    let to_fractional = inverse(&basis);

    // Fractional coordinates, wrapped into [0, 1) on periodic axes.
    let fractional = &mut workspace.fractional;
    let wraps = &mut workspace.wraps;
    reserve_cleared(fractional, n_atoms, "fractional coordinates")?;
    reserve_cleared(wraps, n_atoms, "image wraps")?;
    for (atom, r) in positions.iter().enumerate() {
        let mut f = [0.0; 3];
        let mut k = [0i32; 3];
        for a in 0..3 {
            f[a] = r[0] * to_fractional[0][a]
                + r[1] * to_fractional[1][a]
                + r[2] * to_fractional[2][a];
            if pbc[a] {
                let image = floor(f[a]);
                if image.abs() >= MAX_IMAGE_INDEX {
                    // `image` saturates for huge `f`: the message quotes `f` itself.
                    return Err(Error::invalid(
                        "positions",
                        format!(
                            "atom {atom} lies {:.3e} lattice vectors outside the cell along \
                             axis {a} (at most {MAX_IMAGE_INDEX:.3e} are supported): are the \
                             positions and the cell in Angstrom?",
                            f[a].abs()
                        ),
                    ));
                }
                f[a] -= image;
                k[a] = image as i32;
            }
        }
        fractional.push(f);
        wraps.push(k);
    }

    // Bin geometry. Periodic axes: bins of fractional width 1/bins with bins =
    // floor(height / radius), so one bin on each side covers the sphere, or, when the cell
    // is thinner than the radius, one bin per cell and ceil(radius / height) cells on each
    // side. Open axes: bins of `radius` Angstrom.
    let mut bins_per_axis = [1i64; 3];
    let mut reach = [1i64; 3];
    let mut origin = [0.0; 3];
    let mut inverse_width = [1.0; 3];
    // Wrapped positions are stored relative to the middle of the system, in f32: the middle
    // of the cell on periodic axes and of the atoms' extent on open ones (not of the bins,
    // which a huge radius puts out of f32's range).
    let mut middle_fractional = [0.5; 3];
    for a in 0..3 {
        if pbc[a] {
            let column = [
                to_fractional[0][a],
                to_fractional[1][a],
                to_fractional[2][a],
            ];
            let height = 1.0 / norm(column);
            let bins = (height / radius).floor().clamp(1.0, 1e6);
            bins_per_axis[a] = bins as i64;
            // Saturates for an absurd ratio; the count of image boxes below refuses it.
            reach[a] = (radius * bins / height).ceil().max(1.0) as i64;
            inverse_width[a] = bins;
        } else {
            let (lo, hi) = fractional
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), f| {
                    (lo.min(f[a]), hi.max(f[a]))
                });
            origin[a] = lo;
            middle_fractional[a] = 0.5 * (lo + hi);
            inverse_width[a] = 1.0 / radius;
            bins_per_axis[a] = (((hi - lo) / radius).floor() + 1.0).min(1e15) as i64;
        }
    }
    // Checked: the product of three large reaches overflows i64.
    let image_boxes = reach.iter().try_fold(1i64, |product, &r| {
        r.checked_mul(2)?.checked_add(1)?.checked_mul(product)
    });
    if image_boxes.is_none_or(|boxes| boxes > MAX_IMAGE_BOXES) {
        let boxes: f64 = reach.iter().map(|&r| 2.0 * r as f64 + 1.0).product();
        return Err(Error::BadCell {
            reason: format!(
                "the cell is too small for a search radius of {radius} Angstrom: a search \
                 spans {reach:?} cells on each side, {boxes:.3e} images of the cell (at most \
                 {} are supported): are the cell and the cutoff in Angstrom?",
                grouped(MAX_IMAGE_BOXES as usize)
            ),
        });
    }

    let bins = &mut workspace.bins;
    reserve_cleared(bins, n_atoms, "bins")?;
    bins.extend(fractional.iter().map(|f| {
        let mut b = [0i64; 3];
        for a in 0..3 {
            let raw = floor((f[a] - origin[a]) * inverse_width[a]) as i64;
            b[a] = raw.clamp(0, bins_per_axis[a] - 1);
        }
        b
    }));

    // Sort atoms by bin (z-major), keeping index order within each bin.
    let total_bins: f64 = bins_per_axis.iter().map(|&b| b as f64).product();
    let dense = total_bins <= (4 * n_atoms + 64) as f64;
    let mut grid = Grid {
        bins_per_axis,
        periodic: pbc,
        reach,
        may_repeat: (0..3).any(|a| pbc[a] && 2 * reach[a] + 1 > bins_per_axis[a]),
        occupied: std::mem::take(&mut workspace.occupied),
        lookup: BinLookup::Sparse(HashMap::new()),
        bin_ends: Vec::new(),
    };
    grid.occupied.clear();
    let order = &mut workspace.order;
    reserve_cleared(order, n_atoms, "atom order")?;
    if dense {
        let starts = &mut workspace.starts;
        reserve_cleared(starts, total_bins as usize + 1, "bin starts")?;
        starts.resize(total_bins as usize + 1, 0);
        for b in bins.iter() {
            starts[grid.linear(*b) + 1] += 1;
        }
        for index in 1..starts.len() {
            starts[index] += starts[index - 1];
        }
        order.resize(n_atoms, 0);
        for (atom, b) in bins.iter().enumerate() {
            let slot = &mut starts[grid.linear(*b)];
            order[*slot] = atom as u32;
            *slot += 1;
        }
        // Each bin's start has moved to its end.
        starts.pop();
        grid.bin_ends = std::mem::take(starts);
    } else {
        order.extend(0..n_atoms as u32);
        order.sort_unstable_by_key(|&atom| {
            let b = bins[atom as usize];
            (b[2], b[1], b[0], atom)
        });
    }

    let middle: [f64; 3] =
        std::array::from_fn(|x| (0..3).map(|a| middle_fractional[a] * basis[a][x]).sum());
    let lattice = cell.vectors();
    let binned = &mut workspace.binned;
    for axis in [&mut binned.x, &mut binned.y, &mut binned.z] {
        reserve_cleared(axis, n_atoms + filter::LANES, "binned coordinates")?;
    }
    reserve_cleared(&mut binned.atom, n_atoms, "binned atoms")?;
    reserve_cleared(&mut binned.wrap, n_atoms, "binned wraps")?;
    let mut largest_coordinate = 0.0f32;
    for &atom in order.iter() {
        let (r, k) = (positions[atom as usize], wraps[atom as usize]);
        let mut wrapped = [0.0f32; 3];
        for x in 0..3 {
            wrapped[x] = ((r[x]
                - (k[0] as f64 * lattice[0][x]
                    + k[1] as f64 * lattice[1][x]
                    + k[2] as f64 * lattice[2][x]))
                - middle[x]) as f32;
            largest_coordinate = largest_coordinate.max(wrapped[x].abs());
        }
        binned.x.push(wrapped[0]);
        binned.y.push(wrapped[1]);
        binned.z.push(wrapped[2]);
        binned.atom.push(atom);
        binned.wrap.push(k);
    }
    for axis in [&mut binned.x, &mut binned.y, &mut binned.z] {
        axis.extend([0.0; filter::LANES]);
    }
    let mut start = 0;
    while start < n_atoms {
        let b = bins[order[start] as usize];
        let mut end = start + 1;
        while end < n_atoms && bins[order[end] as usize] == b {
            end += 1;
        }
        grid.occupied.push((b, start..end));
        start = end;
    }
    grid.lookup = if dense {
        let mut table = std::mem::take(&mut workspace.dense_table);
        reserve_cleared(&mut table, total_bins as usize, "bin table")?;
        table.resize(total_bins as usize, u32::MAX);
        for (index, (b, _)) in grid.occupied.iter().enumerate() {
            table[grid.linear(*b)] = index as u32;
        }
        BinLookup::Dense(table)
    } else {
        BinLookup::Sparse(
            grid.occupied
                .iter()
                .enumerate()
                .map(|(index, (b, _))| (*b, index as u32))
                .collect(),
        )
    };

    // The band absorbs the round-off of wrapping (relative to the coordinates' magnitude)
    // and of the f32 arithmetic (relative to the largest coordinate and image shift).
    let scale = positions
        .iter()
        .flat_map(|p| p.iter())
        .fold(radius, |m, x| m.max(x.abs()))
        + lattice.iter().map(|v| norm(*v)).sum::<f64>();
    // A search shifts by at most ceil(reach / bins) lattice vectors along a periodic axis.
    let largest_shift = (0..3)
        .map(|x| {
            (0..3)
                .filter(|&a| pbc[a])
                .map(|a| {
                    let images = (reach[a] + bins_per_axis[a] - 1) / bins_per_axis[a];
                    images as f64 * lattice[a][x].abs()
                })
                .sum::<f64>()
        })
        .fold(0.0, f64::max);
    let search = Search {
        positions,
        cell,
        grid: &grid,
        binned,
        radius,
        limits,
        radii: thresholds(
            radius,
            1e-9 * scale,
            largest_coordinate as f64,
            largest_shift,
        ),
        within: filter::select(),
        bits: bits::select(),
    };

    // Two passes over contiguous chunks of bins, in parallel: count each row, then, once
    // the counts have placed every row, write each row into its place.
    let n_chunks = grid
        .occupied
        .len()
        .min(4 * rayon::current_num_threads())
        .max(1);
    if workspace.chunks.len() < n_chunks {
        workspace.chunks.resize_with(n_chunks, Chunk::default);
    }
    let per_chunk = grid.occupied.len().div_ceil(n_chunks);
    let chunk_bins = |index: usize| {
        let first = (index * per_chunk).min(grid.occupied.len());
        let last = ((index + 1) * per_chunk).min(grid.occupied.len());
        &grid.occupied[first..last]
    };

    // Row lengths by slot: each chunk's bins hold a contiguous range of slots.
    let lengths = &mut workspace.row_lengths;
    reserve_cleared(lengths, n_atoms, "row lengths")?;
    lengths.resize(n_atoms, 0);
    let mut length_parts = Vec::with_capacity(n_chunks);
    let mut rest = &mut lengths[..];
    for index in 0..n_chunks {
        let slots: usize = chunk_bins(index).iter().map(|(_, s)| s.len()).sum();
        let (part, tail) = rest.split_at_mut(slots);
        length_parts.push(part);
        rest = tail;
    }
    // A chunk stops at its first row over the neighbour limit (or buffer it cannot grow):
    // the first such row in slot order, whatever the chunking, is the error.
    let too_close = length_parts
        .into_par_iter()
        .zip(workspace.chunks[..n_chunks].par_iter_mut())
        .enumerate()
        .map(|(index, (part, chunk))| chunk.count_rows(chunk_bins(index), &search, part))
        .reduce(
            || Ok(None),
            |a, b| match (a, b) {
                (Err(a), Err(b)) => Err(if a.slot <= b.slot { a } else { b }),
                (Err(stop), Ok(_)) | (Ok(_), Err(stop)) => Err(stop),
                (Ok(a), Ok(b)) => Ok(a.into_iter().chain(b).min()),
            },
        )
        .map_err(|stop| stop.error)?;
    if let Some((receiver, source, shift)) = too_close {
        let r = edge_vector(positions, cell, receiver as usize, source as usize, shift);
        return Err(Error::AtomsTooClose {
            first: receiver as usize,
            second: source as usize,
            shift,
            distance_angstrom: norm(r),
            minimum_angstrom: MINIMUM_DISTANCE_ANGSTROM,
        });
    }

    // Offsets by receiver from the lengths by slot.
    try_reserve(offsets, n_atoms + 1, || {
        format!("the neighbour list's offsets ({} atoms)", grouped(n_atoms))
    })?;
    advise_huge_pages(offsets);
    offsets.resize(n_atoms + 1, 0);
    for (&length, &atom) in lengths.iter().zip(&binned.atom) {
        offsets[atom as usize + 1] = length as usize;
    }
    for atom in 0..n_atoms {
        offsets[atom + 1] += offsets[atom];
    }
    let total = offsets[n_atoms];
    let bytes = total
        .checked_mul(BYTES_PER_EDGE)
        .and_then(|edges| edges.checked_add((n_atoms + 1) * BYTES_PER_ATOM));
    match bytes {
        Some(bytes) if bytes <= limits.max_bytes => {}
        _ => {
            let bytes = bytes.unwrap_or(usize::MAX);
            return Err(oversized_error(
                n_atoms,
                total,
                bytes,
                radius,
                limits.max_bytes,
            ));
        }
    }
    // Non-temporal stores pay where the list is much larger than the caches and its memory
    // was touched before (a rebuild); into fresh pages, which the kernel has just cleared
    // through the cache, plain stores measured faster.
    let streaming = cfg!(target_arch = "x86_64")
        && total * std::mem::size_of::<(u32, [i32; 3])>() >= STREAMING_BYTES
        && sources.capacity() >= total
        && shifts.capacity() >= total;
    let edges = || format!("the neighbour list's {} edges", grouped(total));
    try_reserve(sources, total, edges)?;
    try_reserve(shifts, total, edges)?;
    advise_huge_pages(sources);
    advise_huge_pages(shifts);
    {
        let places = RowPlaces {
            offsets,
            sources: DisjointParts::new(&mut sources.spare_capacity_mut()[..total]),
            shifts: DisjointParts::new(&mut shifts.spare_capacity_mut()[..total]),
            streaming,
        };
        workspace.chunks[..n_chunks]
            .par_iter_mut()
            .enumerate()
            .for_each(|(index, chunk)| chunk.write_rows(chunk_bins(index), &search, &places));
    }
    // SAFETY: every atom is the receiver of exactly one bin, so the places of all rows tile
    // 0..total, and `write_rows` asserted that each row filled its place.
    unsafe {
        sources.set_len(total);
        shifts.set_len(total);
    }
    workspace.occupied = grid.occupied;
    workspace.starts = grid.bin_ends;
    if let BinLookup::Dense(table) = grid.lookup {
        workspace.dense_table = table;
    }
    Ok(())
}

/// Where each receiver's row goes: `offsets[i]..offsets[i + 1]` of the output.
struct RowPlaces<'a> {
    offsets: &'a [usize],
    sources: DisjointParts<'a, MaybeUninit<u32>>,
    shifts: DisjointParts<'a, MaybeUninit<[i32; 3]>>,
    /// Whether rows are written with non-temporal stores.
    streaming: bool,
}

/// One task's state, reused from build to build: the masks its counting pass leaves for
/// its writing pass, and scratch for one bin (counting) or group of bins (writing) at a
/// time.
#[derive(Clone, Debug, Default)]
struct Chunk {
    /// Each receiver's edges among its bin's candidates, one bit per candidate in run
    /// order (bit `k % 8` of byte `k / 8`), whole 8-byte words per receiver, receivers in
    /// slot order.
    masks: Vec<u8>,
    candidates: Candidates,
    /// Each bin's runs, from the counting pass for the writing pass: all runs and their
    /// shifts, and per bin where its runs end.
    bin_runs: Vec<Run>,
    bin_run_shifts: Vec<[i32; 3]>,
    bin_run_ends: Vec<u32>,
    /// One receiver's edges in sorted candidate order.
    sorted_mask: Vec<u64>,
    /// Per candidate of one bin (in its run order), its rank in the bin's group.
    local_rank: Vec<u32>,
}

/// A counting pass that stopped early: at which slot, and why.
struct Stopped {
    slot: usize,
    error: Error,
}

impl Chunk {
    /// Counting pass over `bins`: each receiver's row length into `lengths` (by slot, from
    /// the chunk's first slot) and its edges into `masks`. Returns the first (by receiver,
    /// source, image) pair closer than the minimum distance, or stops at the first receiver
    /// with more neighbours than the limit.
    fn count_rows(
        &mut self,
        bins: &[([i64; 3], Range<usize>)],
        search: &Search,
        lengths: &mut [u32],
    ) -> std::result::Result<Option<(u32, u32, [i32; 3])>, Stopped> {
        let binned = search.binned;
        let first_slot = bins.first().map_or(0, |(_, slots)| slots.start);
        let receivers: usize = bins.iter().map(|(_, slots)| slots.len()).sum();
        self.masks.clear();
        self.bin_runs.clear();
        self.bin_run_shifts.clear();
        self.bin_run_ends.clear();
        // Room up front for a liquid's masks (up to 8 words per receiver at 5 A): growing
        // by doubling would copy everything written so far.
        if self.masks.capacity() < 64 * receivers {
            try_reserve(&mut self.masks, 64 * receivers, || {
                "the neighbour search's masks".into()
            })
            .map_err(|error| Stopped {
                slot: first_slot,
                error,
            })?;
            advise_huge_pages(&mut self.masks);
        }
        let radius_squared = search.radius * search.radius;
        let minimum_squared = MINIMUM_DISTANCE_ANGSTROM * MINIMUM_DISTANCE_ANGSTROM;
        let mut too_close = None;
        for (bin, receivers) in bins {
            let candidates = &mut self.candidates;
            candidates.visit(*bin, 1, search);
            self.bin_runs.extend_from_slice(&candidates.runs);
            self.bin_run_shifts
                .extend_from_slice(&candidates.run_shifts);
            self.bin_run_ends.push(self.bin_runs.len() as u32);
            let coordinates = filter::Coordinates {
                x: &binned.x,
                y: &binned.y,
                z: &binned.z,
            };
            let runs = filter::CheckedRuns::new(&coordinates, &candidates.runs);
            let mask_length = runs.mask_bytes();
            let words = mask_length.div_ceil(8);
            for slot in receivers.clone() {
                let (receiver, wrap_i) = (binned.atom[slot], binned.wrap[slot]);
                // The filter writes the mask straight into its place; the bytes past its
                // end, up to a whole word, stay zero.
                let start = self.masks.len();
                if start + 8 * words > self.masks.capacity() {
                    // Receivers with very many candidates: grown fallibly.
                    try_reserve(&mut self.masks, 8 * words, || {
                        "the neighbour search's masks".into()
                    })
                    .map_err(|error| Stopped { slot, error })?;
                }
                self.masks.resize(start + 8 * words, 0);
                let mask_bytes = &mut self.masks[start..];
                let seen = (search.within)(
                    &runs,
                    [binned.x[slot], binned.y[slot], binned.z[slot]],
                    &search.radii,
                    &mut mask_bytes[..mask_length],
                );
                if !seen.in_band && seen.too_close == 1 {
                    // Common case: every hit is an edge but the receiver itself (the one
                    // image at distance 0).
                    let own = candidates.own_place(slot);
                    mask_bytes[own / 8] &= !(1u8 << (own % 8));
                } else {
                    // Near the boundary or suspiciously close: each hit is decided exactly
                    // from the positions as given (the contract's definition of an edge).
                    for (byte_index, byte) in mask_bytes.iter_mut().enumerate() {
                        let mut bits = *byte;
                        while bits != 0 {
                            let bit = bits.trailing_zeros() as usize;
                            bits &= bits - 1;
                            let (source, base) = candidates.identity(binned, byte_index * 8 + bit);
                            let shift = [
                                base[0] + wrap_i[0],
                                base[1] + wrap_i[1],
                                base[2] + wrap_i[2],
                            ];
                            let keep = if source == receiver && shift == [0; 3] {
                                false
                            } else {
                                let r = edge_vector(
                                    search.positions,
                                    search.cell,
                                    receiver as usize,
                                    source as usize,
                                    shift,
                                );
                                let d2 = r[0] * r[0] + r[1] * r[1] + r[2] * r[2];
                                if d2 < minimum_squared {
                                    let pair = (receiver, source, shift);
                                    too_close = Some(
                                        too_close
                                            .map_or(pair, |p: (u32, u32, [i32; 3])| p.min(pair)),
                                    );
                                }
                                d2 <= radius_squared
                            };
                            if !keep {
                                *byte &= !(1u8 << bit);
                            }
                        }
                    }
                }
                let length: u32 = mask_bytes
                    .chunks_exact(8)
                    .map(|bytes| {
                        u64::from_le_bytes(bytes.try_into().expect("8 bytes")).count_ones()
                    })
                    .sum();
                lengths[slot - first_slot] = length;
                if length as usize > search.limits.max_neighbors {
                    let error = crowded_error(
                        receiver as usize,
                        length as usize,
                        search.radius,
                        search.limits.max_neighbors,
                    );
                    return Err(Stopped { slot, error });
                }
            }
        }
        Ok(too_close)
    }

    /// Writing pass over the same `bins` (with the runs the counting pass found): ranks the
    /// candidates of each group of bins along the first axis by (atom, image) and writes
    /// each receiver's edges, in that order, into its place.
    ///
    /// Ranking was the costly part of a bin, and neighbouring bins along an axis share two
    /// thirds of their candidates: a group of eight bins ranks 9 x 10 bins' worth of
    /// candidates, 11 per bin instead of 27. Each bin's
    /// candidates are slices of the group's runs, so their ranks in the group are copied
    /// slice by slice.
    fn write_rows(
        &mut self,
        bins: &[([i64; 3], Range<usize>)],
        search: &Search,
        places: &RowPlaces,
    ) {
        let (grid, binned) = (search.grid, search.binned);
        // A group must not see one atom through two images (ranking assumes each atom once
        // per image), so on a periodic first axis it spans at most that many bins.
        let group_bins = if grid.may_repeat {
            1
        } else if grid.periodic[0] {
            (grid.bins_per_axis[0] - 2 * grid.reach[0]).clamp(1, GROUP_BINS)
        } else {
            GROUP_BINS
        };
        let mut next_byte = 0;
        let mut first_run = 0;
        let mut index = 0;
        while index < bins.len() {
            let first_bin = bins[index].0;
            let mut end = index + 1;
            while end < bins.len()
                && bins[end].0[1] == first_bin[1]
                && bins[end].0[2] == first_bin[2]
                && bins[end].0[0] < first_bin[0] + group_bins
            {
                end += 1;
            }
            let group = &mut self.candidates;
            group.visit(first_bin, bins[end - 1].0[0] - first_bin[0] + 1, search);
            group.rank(search);
            let sorted_words = group.count.div_ceil(64);
            self.sorted_mask.resize(sorted_words, 0);
            for (receivers, &runs_end) in bins[index..end]
                .iter()
                .map(|(_, r)| r)
                .zip(&self.bin_run_ends[index..end])
            {
                let runs = first_run..runs_end as usize;
                first_run = runs_end as usize;
                let local_rank = group.slice_ranks(
                    &self.bin_runs[runs.clone()],
                    &self.bin_run_shifts[runs],
                    &mut self.local_rank,
                );
                let words = local_rank.len() / 64;
                for slot in receivers.clone() {
                    let (receiver, wrap) = (binned.atom[slot] as usize, binned.wrap[slot]);
                    let place = places.offsets[receiver]..places.offsets[receiver + 1];
                    // SAFETY: each receiver has one row, and rows of different receivers
                    // have disjoint places (the offsets are the running sum of the row
                    // lengths).
                    let (sources, shifts) = unsafe {
                        (
                            places.sources.part(place.clone()),
                            places.shifts.part(place),
                        )
                    };
                    let mask = &self.masks[next_byte..next_byte + 8 * words];
                    next_byte += 8 * words;
                    let written = write_row(
                        mask,
                        local_rank,
                        &mut self.sorted_mask[..sorted_words],
                        &group.entries,
                        wrap,
                        sources,
                        shifts,
                        places.streaming,
                    );
                    // Every place written: what `build` relies on before it sets the
                    // lengths.
                    assert_eq!(written, sources.len(), "a row's edges fill its place");
                    assert_eq!(written, shifts.len(), "a row's edges fill its place");
                }
            }
            index = end;
        }
        if places.streaming {
            // Non-temporal stores are weakly ordered: make them visible before the join.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: SSE2 is part of the x86-64 baseline.
            unsafe {
                std::arch::x86_64::_mm_sfence()
            };
        }
    }
}

/// Writes one receiver's row: carries its `mask` (bits in its bin's run order) over to the
/// group's rank order through `local_rank` (padded to whole words) into `sorted_mask`, then
/// writes its edges in that order, from `entries` (padded to whole words) and the
/// receiver's `wrap`. Returns the number of edges written.
///
/// A loop per set bit in both steps: for these denser masks it is faster than the byte-table
/// listing that ranking uses.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn write_row(
    mask: &[u8],
    local_rank: &[u32],
    sorted_mask: &mut [u64],
    entries: &[Entry],
    wrap: [i32; 3],
    sources: &mut [MaybeUninit<u32>],
    shifts: &mut [MaybeUninit<[i32; 3]>],
    streaming: bool,
) -> usize {
    sorted_mask.fill(0);
    for (bytes, ranks) in mask.chunks_exact(8).zip(local_rank.chunks_exact(64)) {
        let ranks: &[u32; 64] = ranks.try_into().expect("64 ranks per word");
        let mut bits = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        while bits != 0 {
            // `& 63`: the index is a bit position, which the compiler cannot see.
            let rank = ranks[bits.trailing_zeros() as usize & 63] as usize;
            bits &= bits - 1;
            sorted_mask[rank / 64] |= 1u64 << (rank % 64);
        }
    }
    let mut row = sources.iter_mut().zip(shifts.iter_mut());
    let mut written = 0;
    for (&word, entries) in sorted_mask.iter().zip(entries.chunks_exact(64)) {
        let entries: &[Entry; 64] = entries.try_into().expect("64 entries per word");
        let mut bits = word;
        while bits != 0 {
            let entry = entries[bits.trailing_zeros() as usize & 63];
            bits &= bits - 1;
            let shift = [
                entry.shift[0] + wrap[0],
                entry.shift[1] + wrap[1],
                entry.shift[2] + wrap[2],
            ];
            let (source_place, shift_place) = row.next().expect("a row's edges fit its place");
            if streaming {
                stream_edge(source_place, shift_place, entry.atom, shift);
            } else {
                source_place.write(entry.atom);
                shift_place.write(shift);
            }
            written += 1;
        }
    }
    written
}

/// Writes one edge with non-temporal stores, which skip reading each line of the list
/// before overwriting it (the list is larger than the caches, so it would not stay there).
#[inline(always)]
fn stream_edge(
    source_place: &mut MaybeUninit<u32>,
    shift_place: &mut MaybeUninit<[i32; 3]>,
    source: u32,
    shift: [i32; 3],
) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_stream_si32, _mm_stream_si64};
        let shift_pointer = shift_place.as_mut_ptr() as *mut i32;
        // SAFETY: both places are valid for writes of their types (they are references),
        // and SSE2 is part of the x86-64 baseline.
        unsafe {
            _mm_stream_si32(source_place.as_mut_ptr() as *mut i32, source as i32);
            _mm_stream_si64(
                shift_pointer as *mut i64,
                (shift[0] as u32 as i64) | ((shift[1] as i64) << 32),
            );
            _mm_stream_si32(shift_pointer.add(2), shift[2]);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        source_place.write(source);
        shift_place.write(shift);
    }
}

/// A ranked candidate: its atom and its image shift minus the atom's own wrap, in one
/// 16-byte load.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(16))]
struct Entry {
    atom: u32,
    shift: [i32; 3],
}

/// Bins along the first axis ranked together in the writing pass.
const GROUP_BINS: i64 = 8;

/// The atom images around one bin: runs of consecutive slots, each seen through one
/// lattice shift, and, for the writing pass, their ranks by (atom, image).
///
/// Candidate `k` is bit `k % 8` of mask byte `k / 8`: each run starts on a whole byte, so
/// numbering has gaps at the end of runs.
#[derive(Clone, Debug, Default)]
struct Candidates {
    runs: Vec<Run>,
    /// Each run's lattice shift (wrapped bins to the receiver's bin).
    run_shifts: Vec<[i32; 3]>,
    /// The run holding the bin's own atoms without a shift.
    own_run: usize,
    /// Number of candidates (not counting gaps).
    count: usize,
    /// Per candidate `k`, its rank by (atom, image).
    rank: Vec<u32>,
    /// By rank: the atom, and its image shift minus the atom's own wrap (adding the
    /// receiver's wrap gives the shift for the positions as given).
    entries: Vec<Entry>,
    /// Ranking scratch: per candidate its shift minus its wrap; a bitmap over the atom
    /// indices and per atom index its candidate; or (atom, shift, candidate) tuples when
    /// the bitmap does not apply.
    candidate_shift: Vec<[i32; 3]>,
    bitmap: Vec<u64>,
    by_atom: Vec<u32>,
    tuples: Vec<(u32, [i32; 3], u32)>,
    /// Whether `bitmap` is all zero (it is cleared word by word as it is read, so a build
    /// that panicked may leave bits behind).
    bitmap_clear: bool,
    /// One bit per occupied word of `bitmap`, and those words listed.
    summary: Vec<u64>,
    occupied_words: Vec<u32>,
    /// The bitmap's set bits listed (atom index minus the lowest).
    offsets: Vec<u32>,
}

impl Candidates {
    /// Lists the runs of candidates around `bin` and the `x_bins - 1` bins after it along
    /// the first axis: the occupied bins within reach of any of them, with runs merged
    /// where consecutive bins continue each other's slots under the same shift.
    fn visit(&mut self, bin: [i64; 3], x_bins: i64, search: &Search) {
        let grid = search.grid;
        let lattice = search.cell.vectors();
        self.runs.clear();
        self.run_shifts.clear();
        self.own_run = usize::MAX;
        let (mut count, mut next_byte) = (0, 0);
        let last_x = bin[0] + x_bins - 1;
        let inside = !grid.bin_ends.is_empty()
            && (0..3).all(|a| {
                let last = if a == 0 { last_x } else { bin[a] };
                bin[a] >= grid.reach[a] && last + grid.reach[a] < grid.bins_per_axis[a]
            });
        if inside {
            // Common case: no bin in reach wraps or leaves the grid, so each row of bins
            // along x is one run, read off the dense grid's bin ends.
            for dz in -grid.reach[2]..=grid.reach[2] {
                for dy in -grid.reach[1]..=grid.reach[1] {
                    let first = grid.linear([bin[0] - grid.reach[0], bin[1] + dy, bin[2] + dz]);
                    let last = first + (last_x - bin[0] + 2 * grid.reach[0]) as usize;
                    let start = if first == 0 {
                        0
                    } else {
                        grid.bin_ends[first - 1]
                    };
                    let end = grid.bin_ends[last];
                    if end == start {
                        continue;
                    }
                    if dy == 0 && dz == 0 {
                        self.own_run = self.runs.len();
                    }
                    count += end - start;
                    let run = Run {
                        start: start as u32,
                        len: (end - start) as u32,
                        first_byte: next_byte,
                        shift: [0.0; 3],
                    };
                    next_byte += run.bytes();
                    self.runs.push(run);
                    self.run_shifts.push([0; 3]);
                }
            }
            debug_assert!(self.own_run != usize::MAX);
            self.count = count;
            return;
        }
        for dz in -grid.reach[2]..=grid.reach[2] {
            for dy in -grid.reach[1]..=grid.reach[1] {
                for dx in -grid.reach[0]..=x_bins - 1 + grid.reach[0] {
                    let mut other = [bin[0] + dx, bin[1] + dy, bin[2] + dz];
                    let mut shift = [0i32; 3];
                    let mut outside = false;
                    for a in 0..3 {
                        let bins = grid.bins_per_axis[a];
                        if other[a] >= 0 && other[a] < bins {
                            continue;
                        }
                        if grid.periodic[a] {
                            shift[a] = other[a].div_euclid(bins) as i32;
                            other[a] = other[a].rem_euclid(bins);
                        } else {
                            outside = true;
                        }
                    }
                    if outside {
                        continue;
                    }
                    let Some(slots) = grid.find(other) else {
                        continue;
                    };
                    let own = [dx, dy, dz] == [0; 3];
                    count += slots.len();
                    let continues = self.runs.last().is_some_and(|last| {
                        (last.start + last.len) as usize == slots.start
                            && self.run_shifts.last() == Some(&shift)
                    });
                    if continues {
                        let last = self.runs.last_mut().expect("a run to continue");
                        next_byte -= last.bytes();
                        last.len += slots.len() as u32;
                        next_byte += last.bytes();
                        if own {
                            self.own_run = self.runs.len() - 1;
                        }
                        continue;
                    }
                    if own {
                        self.own_run = self.runs.len();
                    }
                    let mut shift_vector = [0.0f32; 3];
                    if shift != [0; 3] {
                        for x in 0..3 {
                            shift_vector[x] = (shift[0] as f64 * lattice[0][x]
                                + shift[1] as f64 * lattice[1][x]
                                + shift[2] as f64 * lattice[2][x])
                                as f32;
                        }
                    }
                    let run = Run {
                        start: slots.start as u32,
                        len: slots.len() as u32,
                        first_byte: next_byte,
                        shift: shift_vector,
                    };
                    next_byte += run.bytes();
                    self.runs.push(run);
                    self.run_shifts.push(shift);
                }
            }
        }
        debug_assert!(self.own_run != usize::MAX);
        self.count = count;
    }

    /// Bytes of mask the runs take.
    fn mask_bytes(&self) -> usize {
        self.runs
            .last()
            .map_or(0, |run| (run.first_byte + run.bytes()) as usize)
    }

    /// Candidate number of the receiver in `slot` itself (in the bin's own run).
    fn own_place(&self, slot: usize) -> usize {
        let run = &self.runs[self.own_run];
        8 * run.first_byte as usize + (slot - run.start as usize)
    }

    /// Candidate `k`: its atom and its shift minus the atom's wrap.
    fn identity(&self, binned: &BinnedAtoms, k: usize) -> (u32, [i32; 3]) {
        let index = self
            .runs
            .partition_point(|run| 8 * run.first_byte as usize <= k)
            - 1;
        let (run, shift) = (&self.runs[index], self.run_shifts[index]);
        let slot = run.start as usize + (k - 8 * run.first_byte as usize);
        let wrap = binned.wrap[slot];
        (
            binned.atom[slot],
            [shift[0] - wrap[0], shift[1] - wrap[1], shift[2] - wrap[2]],
        )
    }

    /// The ranks (after [`rank`](Self::rank)) of the candidates of one bin of the group, in
    /// that bin's numbering (`runs` and `run_shifts` from its own visit), into `ranks`.
    /// Each of the bin's runs lies in the group's runs of the same shift, in the same
    /// order (the group's visit passes the same bins in the same order, with more between
    /// them), and may span several of them.
    fn slice_ranks<'r>(
        &self,
        runs: &[Run],
        run_shifts: &[[i32; 3]],
        ranks: &'r mut Vec<u32>,
    ) -> &'r [u32] {
        let numbered = runs
            .last()
            .map_or(0, |run| 8 * (run.first_byte + run.bytes()) as usize);
        ranks.clear();
        // Gaps at the ends of runs, and the padding to whole words, are never read (their
        // mask bits are zero).
        ranks.resize(numbered.next_multiple_of(64), 0);
        let mut outer = 0;
        for (run, shift) in runs.iter().zip(run_shifts) {
            let (mut slot, end) = (run.start, run.start + run.len);
            let mut k = 8 * run.first_byte as usize;
            while slot < end {
                while !(self.run_shifts[outer] == *shift
                    && self.runs[outer].start <= slot
                    && slot < self.runs[outer].start + self.runs[outer].len)
                {
                    outer += 1;
                    assert!(outer < self.runs.len(), "a bin's run lies in its group's");
                }
                let group_run = &self.runs[outer];
                let take = (end.min(group_run.start + group_run.len) - slot) as usize;
                let from = 8 * group_run.first_byte as usize + (slot - group_run.start) as usize;
                ranks[k..k + take].copy_from_slice(&self.rank[from..from + take]);
                slot += take as u32;
                k += take;
            }
        }
        ranks
    }

    /// Ranks the candidates listed by [`visit`](Self::visit) by (atom, image), into
    /// `rank`, `atom` and `shift`.
    fn rank(&mut self, search: &Search) {
        let (grid, binned) = (search.grid, search.binned);
        let numbered = 8 * self.mask_bytes();
        self.rank.resize(numbered, 0);
        self.candidate_shift.resize(numbered, [0; 3]);
        // Whole words of entries, so that a bit position indexes them without a check.
        self.entries
            .resize(self.count.next_multiple_of(64), Entry::default());
        let (mut lo, mut hi) = (u32::MAX, 0);
        for (run, shift) in self.runs.iter().zip(&self.run_shifts) {
            let slots = run.start as usize..(run.start + run.len) as usize;
            let first = 8 * run.first_byte as usize;
            let places = &mut self.candidate_shift[first..first + slots.len()];
            for (place, wrap) in places.iter_mut().zip(&binned.wrap[slots.clone()]) {
                *place = [shift[0] - wrap[0], shift[1] - wrap[1], shift[2] - wrap[2]];
            }
            for &atom in &binned.atom[slots] {
                lo = lo.min(atom);
                hi = hi.max(atom);
            }
        }
        let span = (hi as usize + 1).saturating_sub(lo as usize);
        // Spatially ordered input (the common case) puts the atoms around a bin in a narrow
        // index range: then a bitmap over that range sorts in linear time, if each atom is
        // there once (no two images of one atom: small cells).
        if grid.may_repeat || self.count == 0 || span > 512 * self.count {
            self.tuples.clear();
            for run in &self.runs {
                let slots = run.start as usize..(run.start + run.len) as usize;
                let first = 8 * run.first_byte as usize;
                for (k, &atom) in (first..).zip(&binned.atom[slots]) {
                    self.tuples.push((atom, self.candidate_shift[k], k as u32));
                }
            }
            self.tuples.sort_unstable();
            for (place, &(atom, shift, k)) in self.tuples.iter().enumerate() {
                self.rank[k as usize] = place as u32;
                self.entries[place] = Entry { atom, shift };
            }
            return;
        }
        let words = span.div_ceil(64);
        if !self.bitmap_clear {
            // A build that panicked left bits behind.
            self.bitmap.fill(0);
        }
        if self.bitmap.len() < words {
            self.bitmap.resize(words, 0);
        }
        self.bitmap_clear = false;
        self.summary.clear();
        self.summary.resize(words.div_ceil(64), 0);
        if self.by_atom.len() < span {
            self.by_atom.resize(span, 0);
        }
        for run in &self.runs {
            let slots = run.start as usize..(run.start + run.len) as usize;
            let first = 8 * run.first_byte as usize;
            // A bin's atoms come in index order, so bits gather in a register until the
            // word changes.
            let (mut current, mut bits) = (usize::MAX, 0u64);
            for (k, &atom) in (first..).zip(&binned.atom[slots]) {
                let offset = (atom - lo) as usize;
                let word = offset / 64;
                if word != current {
                    if current != usize::MAX {
                        self.bitmap[current] |= bits;
                        self.summary[current / 64] |= 1u64 << (current % 64);
                    }
                    (current, bits) = (word, 0);
                }
                bits |= 1u64 << (offset % 64);
                self.by_atom[offset] = k as u32;
            }
            if current != usize::MAX {
                self.bitmap[current] |= bits;
                self.summary[current / 64] |= 1u64 << (current % 64);
            }
        }
        // The occupied words in order, then their bits (clearing the bitmap again).
        let room = 64 * self.summary.len() + 8;
        if self.occupied_words.len() < room {
            self.occupied_words.resize(room, 0);
        }
        let occupied = (search.bits.list)(&self.summary, 0, &mut self.occupied_words);
        let room = 64 * occupied + 8;
        if self.offsets.len() < room {
            self.offsets.resize(room, 0);
        }
        let listed = (search.bits.list_chosen)(
            &mut self.bitmap,
            &self.occupied_words[..occupied],
            &mut self.offsets,
        );
        self.bitmap_clear = true;
        assert_eq!(
            listed, self.count,
            "each candidate atom is in the bitmap once"
        );
        let (by_atom, rank, candidate_shift) = (
            &self.by_atom[..],
            &mut self.rank[..],
            &self.candidate_shift[..],
        );
        for (place, (&offset, entry)) in self.offsets[..listed]
            .iter()
            .zip(&mut self.entries[..listed])
            .enumerate()
        {
            let k = by_atom[offset as usize] as usize;
            rank[k] = place as u32;
            *entry = Entry {
                atom: lo + offset,
                shift: candidate_shift[k],
            };
        }
    }
}

/// f32 filter thresholds for a search `radius` (Angstrom), with f32 coordinates of at most
/// `largest_coordinate` and image shifts of at most `largest_shift` Angstrom per component,
/// and `wrap_band` Angstrom of round-off from wrapping.
///
/// A candidate's offset `c - (q - s)` takes five f32 roundings: c, q and s from f64 (within
/// `C u`, `C u` and `S u`, with u = 2^-24 the unit round-off), `q - s` (within `(C + S) u`)
/// and the offset itself (within `d u`, d at most the radius plus the band). Each
/// component is thus off by at most `(3 C + 2 S) u + r u`, the distance by `sqrt(3)` times
/// that, and the squares and sums add about `3 u` relative. The band doubles this and adds
/// the wrapping round-off: a pair outside `radius + band` is certainly outside the radius,
/// one inside `radius - band` certainly inside, and the rest (about one receiver in a
/// hundred in a liquid) is decided exactly.
fn thresholds(
    radius: f64,
    wrap_band: f64,
    largest_coordinate: f64,
    largest_shift: f64,
) -> filter::Radii {
    const UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 * 0.5;
    let difference = 3f64.sqrt()
        * (3.0 * largest_coordinate + 2.0 * largest_shift + 2.0 * radius)
        * UNIT_ROUNDOFF;
    let band = wrap_band + 2.0 * (difference + 4.0 * radius * UNIT_ROUNDOFF) + 1e-7 * radius;
    filter::Radii {
        accept_squared: ((radius + band).powi(2) * (1.0 + 1e-6)) as f32,
        exact_above_squared: ((radius - band).max(0.0).powi(2) * (1.0 - 1e-6)) as f32,
        suspicious_squared: ((MINIMUM_DISTANCE_ANGSTROM + band).powi(2) * (1.0 + 1e-6)) as f32,
    }
}

/// `x.floor()` for finite `x` of magnitude below 2^62 (larger ones come out huge, which the
/// callers refuse or clamp), inline: without SSE4.1 in the baseline target, `f64::floor`
/// is a library call, and binning calls it four times per atom.
#[inline(always)]
fn floor(x: f64) -> f64 {
    let truncated = x as i64 as f64;
    if truncated > x {
        truncated - 1.0
    } else {
        truncated
    }
}

/// Empties `buffer` and makes room for `length` values, backed by huge pages where large:
/// a fresh build's page faults cost more than its arithmetic. An allocation failure is an
/// error naming `what` the buffer holds.
pub(super) fn reserve_cleared<T>(buffer: &mut Vec<T>, length: usize, what: &str) -> Result<()> {
    buffer.clear();
    if buffer.capacity() < length {
        try_reserve(buffer, length, || {
            format!("the neighbour list's {what} ({} values)", grouped(length))
        })?;
        advise_huge_pages(buffer);
    }
    Ok(())
}

/// Asks the kernel to back a large buffer's spare capacity with transparent huge pages:
/// first-touch page faults otherwise dominate a fresh build of a large list. Advisory only.
fn advise_huge_pages<T>(buffer: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 << 20;
        let spare = buffer.spare_capacity_mut();
        let bytes = std::mem::size_of_val(spare);
        if bytes < 2 * HUGE_PAGE {
            return;
        }
        let start = spare.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE_PAGE);
        let length = (start + bytes - aligned) / HUGE_PAGE * HUGE_PAGE;
        // SAFETY: the range lies inside memory this Vec owns; MADV_HUGEPAGE only changes
        // how the kernel backs it, never its contents.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, length, libc::MADV_HUGEPAGE);
        }
    }
}
