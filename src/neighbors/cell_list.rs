//! Cell-list build of the neighbour list.
//!
//! 1. Fractional coordinates in a binning basis: the periodic lattice vectors, completed by
//!    orthonormal directions on open axes. Atoms are wrapped into the cell on periodic axes
//!    (recording the lattice shift that wrapped them), so unwrapped input costs nothing.
//! 2. Bins at least one search radius thick (measured perpendicular to their faces): a
//!    search sphere spans `reach` bins on each side, one in the common case and several when
//!    the cell is thinner than the radius (then several images of one atom appear). Dense
//!    bins when their number is O(n), hashed otherwise (sparse or huge open systems).
//! 3. For each bin, the atom images of the neighbouring bins are gathered sorted by (atom,
//!    image) (a bitmap over their atom indices when the input is spatially ordered, a sort
//!    otherwise); each receiver of the bin marks its edges among them in a bitmask
//!    ([`super::filter`]). In parallel over chunks of bins, which keep each bin's candidates
//!    and each receiver's mask (about 0.5 kB per atom in a liquid, half the rows' size).
//! 4. Row lengths give the CSR offsets; then each row is written straight into its place,
//!    in candidate order, so sorted.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::filter;
use super::{MINIMUM_DISTANCE_ANGSTROM, edge_vector};
use crate::cell::{Cell, inverse, norm};
use crate::error::{Error, Result};

/// Largest number of cell images one search may span (product over axes); beyond this the
/// cell is absurdly small for the cutoff.
const MAX_IMAGE_BOXES: i64 = 10_000_000;

/// Atoms farther outside the cell than this many lattice vectors cannot be represented.
const MAX_IMAGE_INDEX: f64 = (1u32 << 30) as f64;

/// Candidate images per receiver reserved ahead in each task's buffers.
const EXPECTED_CANDIDATES: usize = 32;

/// Buffers reused from one build to the next.
#[derive(Clone, Debug, Default)]
pub(super) struct Workspace {
    chunks: Vec<Chunk>,
    /// Where each atom's row was found: (chunk, index into its `rows`).
    row_location: Vec<(u32, u32)>,
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

/// What one task found in its bins: each bin's candidate images and, per receiver, which of
/// them are its edges (a bitmask); written out into the list once every row's length, and
/// so its place, is known.
#[derive(Clone, Debug, Default)]
struct Chunk {
    /// The candidate images of each bin, one bin after the other, sorted by (atom, image)
    /// within a bin: the atom and its image shift minus the atom's own wrap.
    atoms: Vec<u32>,
    shifts: Vec<[i32; 3]>,
    /// Each receiver's edges among its bin's candidates, one bit per candidate.
    masks: Vec<u64>,
    rows: Vec<Row>,
    /// The first (by receiver, source, image) pair closer than the minimum distance.
    too_close: Option<(u32, u32, [i32; 3])>,
    /// Filter output of one receiver, reused.
    mask_bytes: Vec<u8>,
    candidates: Candidates,
}

/// One receiver's row, found by a task.
#[derive(Clone, Copy, Debug)]
struct Row {
    receiver: u32,
    /// The receiver's lattice wrap: added to each candidate's shift.
    wrap: [i32; 3],
    /// Its bin's candidates in the chunk's `atoms`/`shifts`, from here.
    first_candidate: usize,
    /// Its mask in the chunk's `masks`: words from here.
    first_word: usize,
    words: u32,
    edges: u32,
}

/// Atoms sorted by bin: wrapped Cartesian positions (structure of arrays), original
/// indices, and the lattice shift that wrapped each.
#[derive(Clone, Debug, Default)]
struct BinnedAtoms {
    x: Vec<f64>,
    y: Vec<f64>,
    z: Vec<f64>,
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
    /// Round-off of the wrapped frame relative to the positions as given, Angstrom.
    wrap_band: f64,
    within: filter::WithinFn,
}

/// Builds CSR rows for `positions` in `cell` with `radius` (cutoff plus skin) into
/// `offsets` (`[n + 1]`), `sources` and `shifts` (`[n_edges]`).
pub(super) fn build(
    positions: &[[f64; 3]],
    cell: &Cell,
    radius: f64,
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
    fractional.clear();
    wraps.clear();
    for (atom, r) in positions.iter().enumerate() {
        let mut f = [0.0; 3];
        let mut k = [0i32; 3];
        for a in 0..3 {
            f[a] = r[0] * to_fractional[0][a]
                + r[1] * to_fractional[1][a]
                + r[2] * to_fractional[2][a];
            if pbc[a] {
                let image = f[a].floor();
                if image.abs() >= MAX_IMAGE_INDEX {
                    return Err(Error::invalid(
                        "positions",
                        format!(
                            "atom {atom} lies {image} lattice vectors outside the cell along axis {a}"
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
            reach[a] = (radius * bins / height).ceil().clamp(1.0, 1e7) as i64;
            inverse_width[a] = bins;
        } else {
            let (lo, hi) = fractional
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), f| {
                    (lo.min(f[a]), hi.max(f[a]))
                });
            origin[a] = lo;
            inverse_width[a] = 1.0 / radius;
            bins_per_axis[a] = (((hi - lo) / radius).floor() + 1.0).min(1e15) as i64;
        }
    }
    let image_boxes: i64 = reach.iter().map(|r| 2 * r + 1).product();
    if image_boxes > MAX_IMAGE_BOXES {
        return Err(Error::BadCell {
            reason: format!(
                "the cell is too small for a search radius of {radius} Angstrom: it spans \
                 {reach:?} cells on each side"
            ),
        });
    }

    let bins = &mut workspace.bins;
    bins.clear();
    bins.extend(fractional.iter().map(|f| {
        let mut b = [0i64; 3];
        for a in 0..3 {
            let raw = ((f[a] - origin[a]) * inverse_width[a]).floor() as i64;
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
    };
    grid.occupied.clear();
    let order = &mut workspace.order;
    order.clear();
    if dense {
        let starts = &mut workspace.starts;
        starts.clear();
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
    } else {
        order.extend(0..n_atoms as u32);
        order.sort_unstable_by_key(|&atom| {
            let b = bins[atom as usize];
            (b[2], b[1], b[0], atom)
        });
    }

    let lattice = cell.vectors();
    let binned = &mut workspace.binned;
    binned.x.clear();
    binned.y.clear();
    binned.z.clear();
    binned.atom.clear();
    binned.wrap.clear();
    for &atom in order.iter() {
        let (r, k) = (positions[atom as usize], wraps[atom as usize]);
        let mut wrapped = [0.0; 3];
        for x in 0..3 {
            wrapped[x] = r[x]
                - (k[0] as f64 * lattice[0][x]
                    + k[1] as f64 * lattice[1][x]
                    + k[2] as f64 * lattice[2][x]);
        }
        binned.x.push(wrapped[0]);
        binned.y.push(wrapped[1]);
        binned.z.push(wrapped[2]);
        binned.atom.push(atom);
        binned.wrap.push(k);
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
        table.clear();
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

    // The band absorbs the round-off of wrapping (relative to the coordinates' magnitude).
    let scale = positions
        .iter()
        .flat_map(|p| p.iter())
        .fold(radius, |m, x| m.max(x.abs()))
        + lattice.iter().map(|v| norm(*v)).sum::<f64>();
    let search = Search {
        positions,
        cell,
        grid: &grid,
        binned,
        radius,
        wrap_band: 1e-9 * scale,
        within: filter::select(),
    };

    // Unsorted rows, in parallel over contiguous chunks of bins.
    let n_chunks = grid
        .occupied
        .len()
        .min(4 * rayon::current_num_threads())
        .max(1);
    if workspace.chunks.len() < n_chunks {
        workspace.chunks.resize_with(n_chunks, Chunk::default);
    }
    let per_chunk = grid.occupied.len().div_ceil(n_chunks);
    workspace.chunks[..n_chunks]
        .par_iter_mut()
        .enumerate()
        .for_each(|(index, chunk)| {
            let first = (index * per_chunk).min(grid.occupied.len());
            let last = ((index + 1) * per_chunk).min(grid.occupied.len());
            search_bins(&grid.occupied[first..last], &search, chunk);
        });
    let chunks = &workspace.chunks[..n_chunks];

    if let Some((receiver, source, shift)) = chunks.iter().filter_map(|c| c.too_close).min() {
        let r = edge_vector(positions, cell, receiver as usize, source as usize, shift);
        return Err(Error::AtomsTooClose {
            first: receiver as usize,
            second: source as usize,
            shift,
            distance_angstrom: norm(r),
            minimum_angstrom: MINIMUM_DISTANCE_ANGSTROM,
        });
    }

    // Each row's place in receiver order, then the rows written there.
    workspace.row_location.clear();
    workspace.row_location.resize(n_atoms, (u32::MAX, 0));
    for (index, chunk) in chunks.iter().enumerate() {
        for (row_index, row) in chunk.rows.iter().enumerate() {
            workspace.row_location[row.receiver as usize] = (index as u32, row_index as u32);
        }
    }
    offsets.reserve(n_atoms + 1);
    offsets.push(0);
    let mut total = 0;
    for (atom, &(chunk, row)) in workspace.row_location.iter().enumerate() {
        // Every atom is the receiver of the one bin it is in.
        assert!(chunk != u32::MAX, "atom {atom} was not searched");
        total += chunks[chunk as usize].rows[row as usize].edges as usize;
        offsets.push(total);
    }
    sources.reserve(total);
    shifts.reserve(total);
    advise_huge_pages(sources);
    advise_huge_pages(shifts);
    {
        let source_places = Places::new(&mut sources.spare_capacity_mut()[..total]);
        let shift_places = Places::new(&mut shifts.spare_capacity_mut()[..total]);
        let offsets = &offsets[..];
        chunks.par_iter().for_each(|chunk| {
            for row in &chunk.rows {
                let receiver = row.receiver as usize;
                let place = offsets[receiver]..offsets[receiver + 1];
                // SAFETY: each receiver has one row, and rows of different receivers have
                // disjoint places (the offsets are the running sum of the row lengths).
                let (sources, shifts) =
                    unsafe { (source_places.part(place.clone()), shift_places.part(place)) };
                chunk.write_row(row, sources, shifts);
            }
        });
    }
    // SAFETY: the places of all rows tile 0..total (one row per atom, each place as long as
    // its row), and `write_row` wrote every value of its place.
    unsafe {
        sources.set_len(total);
        shifts.set_len(total);
    }
    workspace.occupied = grid.occupied;
    if let BinLookup::Dense(table) = grid.lookup {
        workspace.dense_table = table;
    }
    Ok(())
}

/// Uninitialised values that threads fill in disjoint parts.
struct Places<'a, T> {
    pointer: *mut MaybeUninit<T>,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [MaybeUninit<T>]>,
}

// SAFETY: the parts handed out are disjoint (`part`'s contract), like `split_at_mut`.
unsafe impl<T: Send> Sync for Places<'_, T> {}

impl<'a, T> Places<'a, T> {
    fn new(values: &'a mut [MaybeUninit<T>]) -> Self {
        Places {
            pointer: values.as_mut_ptr(),
            len: values.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// # Safety
    /// No other part alive at the same time may overlap `range`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, range: Range<usize>) -> &mut [MaybeUninit<T>] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked), disjoint from other live parts (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.pointer.add(range.start), range.len()) }
    }
}

impl Chunk {
    /// Writes `row`'s edges, in candidate order (sorted by source and image), into
    /// `sources` and `shifts`, which are exactly as long as the row.
    fn write_row(
        &self,
        row: &Row,
        sources: &mut [MaybeUninit<u32>],
        shifts: &mut [MaybeUninit<[i32; 3]>],
    ) {
        let wrap = row.wrap;
        let words = &self.masks[row.first_word..row.first_word + row.words as usize];
        let atoms = &self.atoms[row.first_candidate..];
        let candidate_shifts = &self.shifts[row.first_candidate..];
        let mut written = 0;
        for (word_index, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let k = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let base = candidate_shifts[k];
                sources[written].write(atoms[k]);
                shifts[written].write([base[0] + wrap[0], base[1] + wrap[1], base[2] + wrap[2]]);
                written += 1;
            }
        }
        // Every place written: what `build` relies on before it sets the lengths.
        assert_eq!(written, sources.len(), "a row's edges fill its place");
        assert_eq!(written, shifts.len(), "a row's edges fill its place");
    }
}

fn search_bins(bins: &[([i64; 3], Range<usize>)], search: &Search, chunk: &mut Chunk) {
    let Chunk {
        atoms,
        shifts,
        masks,
        rows,
        too_close,
        mask_bytes,
        candidates,
    } = chunk;
    atoms.clear();
    shifts.clear();
    masks.clear();
    rows.clear();
    *too_close = None;
    let receivers: usize = bins.iter().map(|(_, slots)| slots.len()).sum();
    // Room up front for a liquid's candidates (about 28 per receiver at 5 A): growing by
    // doubling would copy everything written so far.
    let expected = receivers * EXPECTED_CANDIDATES;
    if atoms.capacity() < expected {
        atoms.reserve(expected);
        shifts.reserve(expected);
        advise_huge_pages(atoms);
        advise_huge_pages(shifts);
    }
    let binned = search.binned;
    let radius_squared = search.radius * search.radius;
    let minimum_squared = MINIMUM_DISTANCE_ANGSTROM * MINIMUM_DISTANCE_ANGSTROM;
    for (bin, receivers) in bins {
        // Every atom image in the neighbouring bins, sorted by (atom, image): a receiver's
        // edges are a subset, written out in this order, so each row comes out sorted.
        candidates.gather(*bin, receivers.start, search);
        let first_candidate = atoms.len();
        atoms.extend_from_slice(&candidates.atom);
        shifts.extend_from_slice(&candidates.shift);
        let mask_length = candidates.x.len() / filter::LANES;
        let words = mask_length.div_ceil(8);
        mask_bytes.clear();
        mask_bytes.resize(8 * words, 0);
        for slot in receivers.clone() {
            let receiver = binned.atom[slot];
            let wrap_i = binned.wrap[slot];
            let seen = (search.within)(
                &candidates.x,
                &candidates.y,
                &candidates.z,
                candidates.offset_of(binned, slot, [0.0; 3]),
                &candidates.radii,
                &mut mask_bytes[..mask_length],
            );
            let first_word = masks.len();
            masks.extend(
                mask_bytes
                    .chunks_exact(8)
                    .map(|bytes| u64::from_le_bytes(bytes.try_into().expect("8 bytes"))),
            );
            let mask = &mut masks[first_word..];
            if !seen.in_band && seen.too_close == 1 {
                // Common case: every hit is an edge but the receiver itself (the one point
                // at distance 0), which sits where its atom index sorts.
                let own = candidates.atom.partition_point(|&a| a < receiver);
                let own = own
                    + candidates.shift[own..]
                        .iter()
                        .position(|&shift| shift == negated(wrap_i))
                        .expect("the receiver is among its own candidates");
                debug_assert_eq!(candidates.atom[own], receiver);
                mask[own / 64] &= !(1u64 << (own % 64));
            } else {
                // Near the boundary or suspiciously close: each hit is decided exactly from
                // the positions as given (the contract's definition of an edge).
                for (word_index, word) in mask.iter_mut().enumerate() {
                    let mut bits = *word;
                    while bits != 0 {
                        let bit = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let k = word_index * 64 + bit;
                        let source = candidates.atom[k];
                        let base = candidates.shift[k];
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
                                *too_close = Some(too_close.map_or(pair, |p| p.min(pair)));
                            }
                            d2 <= radius_squared
                        };
                        if !keep {
                            *word &= !(1u64 << bit);
                        }
                    }
                }
            }
            let edges: u32 = mask.iter().map(|word| word.count_ones()).sum();
            rows.push(Row {
                receiver,
                wrap: wrap_i,
                first_candidate,
                first_word,
                words: words as u32,
                edges,
            });
        }
    }
}

/// One neighbouring bin visited: its atoms' slots and the lattice shift that brings it next
/// to the receiver's bin.
#[derive(Clone, Debug)]
struct Visit {
    slots: Range<usize>,
    wrapped_shift: [i32; 3],
    shift_vector: [f64; 3],
}

/// The atom images around one bin, as structure of arrays sorted by (atom, image).
#[derive(Clone, Debug, Default)]
struct Candidates {
    /// f32 offsets of the images from `origin`, Angstrom, padded to a multiple of
    /// [`filter::LANES`] (`x = +inf`: never a hit).
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
    atom: Vec<u32>,
    /// Image shift minus the atom's own wrap: adding the receiver's wrap gives the shift
    /// for the positions as given.
    shift: Vec<[i32; 3]>,
    /// Wrapped position of the bin's first atom, Angstrom.
    origin: [f64; 3],
    /// Filter thresholds for these offsets.
    radii: filter::Radii,
    visits: Vec<Visit>,
    /// Sorting scratch: a bitmap over the atom indices, and per atom index `(visit << 32) |
    /// slot`; or (atom, shift, visit, slot) tuples when the bitmap does not apply.
    bitmap: Vec<u64>,
    by_atom: Vec<u64>,
    tuples: Vec<(u32, [i32; 3], u32, u32)>,
}

impl Candidates {
    /// f32 offset of the atom in `slot` moved by `shift_vector`, from the origin. Every use
    /// (candidate or receiver) goes through here, so a receiver's own image sits at exactly
    /// zero distance.
    #[inline(always)]
    fn offset_of(&self, binned: &BinnedAtoms, slot: usize, shift_vector: [f64; 3]) -> [f32; 3] {
        [
            ((binned.x[slot] + shift_vector[0]) - self.origin[0]) as f32,
            ((binned.y[slot] + shift_vector[1]) - self.origin[1]) as f32,
            ((binned.z[slot] + shift_vector[2]) - self.origin[2]) as f32,
        ]
    }

    /// Gathers every atom image in the bins around `bin` (whose first atom is in
    /// `first_slot`), sorted by (atom, image), with filter thresholds for them.
    fn gather(&mut self, bin: [i64; 3], first_slot: usize, search: &Search) {
        let (grid, binned) = (search.grid, search.binned);
        let lattice = search.cell.vectors();
        self.visits.clear();
        for dz in -grid.reach[2]..=grid.reach[2] {
            for dy in -grid.reach[1]..=grid.reach[1] {
                for dx in -grid.reach[0]..=grid.reach[0] {
                    let mut other = [bin[0] + dx, bin[1] + dy, bin[2] + dz];
                    let mut shift = [0i32; 3];
                    let mut outside = false;
                    for a in 0..3 {
                        let count = grid.bins_per_axis[a];
                        if grid.periodic[a] {
                            shift[a] = other[a].div_euclid(count) as i32;
                            other[a] = other[a].rem_euclid(count);
                        } else if other[a] < 0 || other[a] >= count {
                            outside = true;
                        }
                    }
                    if outside {
                        continue;
                    }
                    if let Some(slots) = grid.find(other) {
                        let mut shift_vector = [0.0; 3];
                        for x in 0..3 {
                            shift_vector[x] = shift[0] as f64 * lattice[0][x]
                                + shift[1] as f64 * lattice[1][x]
                                + shift[2] as f64 * lattice[2][x];
                        }
                        self.visits.push(Visit {
                            slots: slots.clone(),
                            wrapped_shift: shift,
                            shift_vector,
                        });
                    }
                }
            }
        }
        self.origin = [
            binned.x[first_slot],
            binned.y[first_slot],
            binned.z[first_slot],
        ];
        let count: usize = self.visits.iter().map(|v| v.slots.len()).sum();
        let padded = count.next_multiple_of(filter::LANES);
        self.x.resize(padded, 0.0);
        self.y.resize(padded, 0.0);
        self.z.resize(padded, 0.0);
        self.atom.resize(count, 0);
        self.shift.resize(count, [0; 3]);

        let (lo, hi) = self.visits.iter().fold((u32::MAX, 0), |range, visit| {
            binned.atom[visit.slots.clone()]
                .iter()
                .fold(range, |(lo, hi), &a| (lo.min(a), hi.max(a)))
        });
        let span = (hi as usize + 1).saturating_sub(lo as usize);
        // Spatially ordered input (the common case) puts the atoms around a bin in a narrow
        // index range: then a bitmap over that range sorts in linear time.
        let mut bitmap_sorted = count > 0 && span <= 512 * count;
        if bitmap_sorted {
            self.bitmap.clear();
            self.bitmap.resize(span.div_ceil(64), 0);
            if self.by_atom.len() < span {
                self.by_atom.resize(span, 0);
            }
            if grid.may_repeat {
                'visits: for (index, visit) in self.visits.iter().enumerate() {
                    for slot in visit.slots.clone() {
                        let offset = (binned.atom[slot] - lo) as usize;
                        let (word, bit) = (offset / 64, 1u64 << (offset % 64));
                        if self.bitmap[word] & bit != 0 {
                            // Two images of one atom (small cells): sort instead.
                            bitmap_sorted = false;
                            break 'visits;
                        }
                        self.bitmap[word] |= bit;
                        self.by_atom[offset] = ((index as u64) << 32) | slot as u64;
                    }
                }
            } else {
                // Distinct bins, distinct atoms. A bin's atoms come in index order, so bits
                // gather in a register until the word changes (no load-store chain).
                for (index, visit) in self.visits.iter().enumerate() {
                    let (mut current, mut bits) = (usize::MAX, 0u64);
                    for slot in visit.slots.clone() {
                        let offset = (binned.atom[slot] - lo) as usize;
                        let word = offset / 64;
                        if word != current {
                            if current != usize::MAX {
                                self.bitmap[current] |= bits;
                            }
                            (current, bits) = (word, 0);
                        }
                        bits |= 1u64 << (offset % 64);
                        self.by_atom[offset] = ((index as u64) << 32) | slot as u64;
                    }
                    if current != usize::MAX {
                        self.bitmap[current] |= bits;
                    }
                }
            }
        }
        if bitmap_sorted {
            let mut place = 0;
            let bitmap = std::mem::take(&mut self.bitmap);
            for (word_index, &word) in bitmap.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let offset = word_index * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let packed = self.by_atom[offset];
                    self.place(
                        binned,
                        place,
                        (packed >> 32) as usize,
                        packed as u32 as usize,
                    );
                    place += 1;
                }
            }
            self.bitmap = bitmap;
        } else {
            self.tuples.clear();
            for (index, visit) in self.visits.iter().enumerate() {
                let shift = visit.wrapped_shift;
                for slot in visit.slots.clone() {
                    let wrap = binned.wrap[slot];
                    self.tuples.push((
                        binned.atom[slot],
                        [shift[0] - wrap[0], shift[1] - wrap[1], shift[2] - wrap[2]],
                        index as u32,
                        slot as u32,
                    ));
                }
            }
            self.tuples.sort_unstable();
            for place in 0..count {
                let (_, _, visit, slot) = self.tuples[place];
                self.place(binned, place, visit as usize, slot as usize);
            }
        }
        // Padding: never a hit (inf - q = inf exceeds every threshold).
        self.x[count..].fill(f32::INFINITY);
        self.y[count..].fill(0.0);
        self.z[count..].fill(0.0);
        // Eight running maxima vectorise; the values are finite.
        let mut maxima = [0.0f32; 8];
        for axis in [&self.x, &self.y, &self.z] {
            for chunk in axis[..count].chunks(8) {
                for (m, &v) in maxima.iter_mut().zip(chunk) {
                    *m = m.max(v.abs());
                }
            }
        }
        let max_abs = maxima.iter().fold(0.0f32, |a, &b| a.max(b));
        self.radii = thresholds(search, max_abs as f64);
    }

    /// Writes the image of the atom in `slot` seen through `visit` at `place`.
    #[inline(always)]
    fn place(&mut self, binned: &BinnedAtoms, place: usize, visit: usize, slot: usize) {
        let (wrapped_shift, shift_vector) = {
            let visit = &self.visits[visit];
            (visit.wrapped_shift, visit.shift_vector)
        };
        let offset = self.offset_of(binned, slot, shift_vector);
        self.x[place] = offset[0];
        self.y[place] = offset[1];
        self.z[place] = offset[2];
        self.atom[place] = binned.atom[slot];
        let wrap = binned.wrap[slot];
        self.shift[place] = [
            wrapped_shift[0] - wrap[0],
            wrapped_shift[1] - wrap[1],
            wrapped_shift[2] - wrap[2],
        ];
    }
}

/// f32 filter thresholds for offsets of magnitude at most `max_abs` Angstrom per axis.
///
/// Each f32 offset (candidates and the receiver alike) is within `max_abs * u` of its f64
/// value (u = 2^-24, the unit round-off) and their difference rounds by at most `2 max_abs
/// u`, so each component of the difference is off by at most `4 max_abs u`, the distance by
/// `sqrt(3)` times that, and the squares and sums by about `3 u` relative. The band doubles
/// this and adds the wrapping round-off: a pair outside `radius + band` is certainly outside
/// the radius, one inside `radius - band` certainly inside, and the rest (a few in a
/// thousand receivers) is decided exactly.
fn thresholds(search: &Search, max_abs: f64) -> filter::Radii {
    const UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 * 0.5;
    let radius = search.radius;
    let difference = 3f64.sqrt() * 4.0 * max_abs * UNIT_ROUNDOFF;
    let band = search.wrap_band + 2.0 * (difference + 4.0 * radius * UNIT_ROUNDOFF) + 1e-7 * radius;
    filter::Radii {
        accept_squared: ((radius + band).powi(2) * (1.0 + 1e-6)) as f32,
        exact_above_squared: ((radius - band).max(0.0).powi(2) * (1.0 - 1e-6)) as f32,
        suspicious_squared: ((MINIMUM_DISTANCE_ANGSTROM + band).powi(2) * (1.0 + 1e-6)) as f32,
    }
}

#[inline]
fn negated(n: [i32; 3]) -> [i32; 3] {
    [-n[0], -n[1], -n[2]]
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
