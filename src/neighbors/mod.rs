//! The neighbour list: every directed pair `j -> i` within the cutoff, including periodic
//! images, as CSR by receiver.
//!
//! Contract (shared by the CPU and CUDA engines, LAMMPS and ASE):
//! - an edge is `(receiver i, source j, image n)` with `n` an integer lattice shift on the
//!   periodic axes (always 0 on open axes) and `0 < |r_ij| <= cutoff + skin`, where
//!   `r_ij = (r_j - r_i) + n . cell` is computed from the positions *as given* (unwrapped
//!   positions are fine: the shifts refer to them), see [`edge_vector`];
//! - rows are sorted by `(source, image)`, so every reduction over a row is deterministic;
//! - the list is symmetric: `(i <- j, n)` is present exactly when `(j <- i, -n)` is.
//!
//! The build is a cell list in the fractional coordinates of the periodic lattice vectors
//! (Angstrom on open axes), see [`cell_list`]: O(n) time and memory for homogeneous
//! systems, with a hashed grid when a dense one would be much larger than the atom count.

mod bits;
mod cell_list;
mod filter;

use crate::cell::Cell;
use crate::error::{Error, Result, bytes_text, grouped};

/// Two distinct atoms closer than this are refused as a malformed structure.
pub const MINIMUM_DISTANCE_ANGSTROM: f64 = 1e-4;

/// Positions farther than this from the origin are refused: beyond it, float64 no longer
/// resolves the minimum distance to a few percent (1e10 Angstrom is one metre; no
/// simulation, however long, drifts that far, while positions in the wrong units may).
pub(crate) const MAX_COORDINATE_ANGSTROM: f64 = 1e10;

/// Density, atoms per cubic Angstrom, that sets the default neighbour limit: 20 times
/// liquid water.
const DEFAULT_MAX_DENSITY: f64 = 2.0;

/// The default neighbour limit is never below this.
const DEFAULT_MIN_MAX_NEIGHBORS: usize = 1000;

/// Number density of liquid water, atoms per cubic Angstrom: the scale messages quote.
const WATER_DENSITY: f64 = 0.1;

/// Size limits of a neighbour list, checked while it is built and before its memory is
/// allocated, so that a structure in the wrong units (copper in nanometres, 10^5 atoms in
/// a few nanometres) is an error that says so rather than minutes of work and an abort.
///
/// The defaults are far above any real system: the densest solids hold 0.18 atoms per
/// cubic Angstrom (diamond), compressed hydrogen 0.8, liquid water 0.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighborLimits {
    /// Most neighbours one atom may have within the search radius (cutoff + skin).
    /// `None`: as many as 2 atoms per cubic Angstrom (20 times liquid water) put in the
    /// search sphere, and at least 1,000 (1,810 at 6 Angstrom).
    pub max_neighbors: Option<usize>,
    /// Most bytes the list's arrays may take (16 per edge and 8 per atom). `None`: half
    /// the machine's physical memory (the model's work per edge takes several times the
    /// list's).
    pub max_bytes: Option<usize>,
}

impl NeighborLimits {
    /// No limit beyond what the list can index (tests of dense geometry).
    pub fn unlimited() -> Self {
        NeighborLimits {
            max_neighbors: Some(u32::MAX as usize),
            max_bytes: Some(usize::MAX),
        }
    }

    /// Refuses zero limits (a limit of 0 would refuse every system).
    pub fn validate(&self) -> Result<()> {
        if self.max_neighbors == Some(0) {
            return Err(Error::invalid(
                "max_neighbors",
                "must be at least 1 (None: the default)",
            ));
        }
        if self.max_bytes == Some(0) {
            return Err(Error::invalid(
                "max_bytes",
                "must be at least 1 (None: the default)",
            ));
        }
        Ok(())
    }

    /// The neighbour limit for a search radius (Angstrom).
    pub fn max_neighbors_within(&self, radius_angstrom: f64) -> usize {
        self.max_neighbors.unwrap_or_else(|| {
            // A float-to-integer cast saturates: a huge radius gives usize::MAX.
            let at_density = (DEFAULT_MAX_DENSITY * sphere_volume(radius_angstrom)).ceil();
            (at_density as usize).max(DEFAULT_MIN_MAX_NEIGHBORS)
        })
    }

    /// The byte limit.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes.unwrap_or_else(|| physical_memory() / 2)
    }
}

fn sphere_volume(radius: f64) -> f64 {
    4.0 / 3.0 * std::f64::consts::PI * radius.powi(3)
}

/// Bytes of physical memory (`usize::MAX` where unknown).
fn physical_memory() -> usize {
    static MEMORY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: sysconf only reads system configuration.
            let (pages, page_size) = unsafe {
                (
                    libc::sysconf(libc::_SC_PHYS_PAGES),
                    libc::sysconf(libc::_SC_PAGESIZE),
                )
            };
            if pages > 0 && page_size > 0 {
                return (pages as usize).saturating_mul(page_size as usize);
            }
        }
        usize::MAX
    })
}

/// "4.6 atoms per cubic Angstrom, 46x liquid water" for `neighbors` within `radius`.
fn density_text(neighbors: f64, radius: f64) -> String {
    let density = neighbors / sphere_volume(radius);
    let water = density / WATER_DENSITY;
    let digits = |x: f64| {
        if x >= 10.0 {
            0
        } else if x >= 1.0 {
            1
        } else {
            2
        }
    };
    format!(
        "{density:.*} atoms per cubic Angstrom, {water:.*}x liquid water",
        digits(density),
        digits(water)
    )
}

/// What the limit errors ask: most such lists come from a units mistake.
const UNITS_QUESTION: &str = "are the positions and the cell in Angstrom?";

/// The error for an atom with more neighbours than the limit.
pub(crate) fn crowded_error(atom: usize, neighbors: usize, radius: f64, limit: usize) -> Error {
    Error::invalid(
        "positions",
        format!(
            "atom {atom} has {} neighbours within {radius} Angstrom (the limit is {}; {}): \
             {UNITS_QUESTION} (for a system really this dense, raise `max_neighbors` of the \
             neighbour limits)",
            grouped(neighbors),
            grouped(limit),
            density_text(neighbors as f64, radius)
        ),
    )
}

/// The error for a list larger than the byte limit.
pub(crate) fn oversized_error(
    n_atoms: usize,
    edges: usize,
    bytes: usize,
    radius: f64,
    limit: usize,
) -> Error {
    let per_atom = edges as f64 / n_atoms.max(1) as f64;
    Error::invalid(
        "positions",
        format!(
            "the neighbour list of {} atoms needs {} edges, {}, more than the limit of {} \
             ({per_atom:.0} neighbours per atom within {radius} Angstrom; {}): {UNITS_QUESTION} \
             (for a system really this large, raise `max_bytes` of the neighbour limits)",
            grouped(n_atoms),
            grouped(edges),
            bytes_text(bytes),
            bytes_text(limit),
            density_text(per_atom, radius)
        ),
    )
}

/// Parameters of a neighbour-list build.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NeighborListOptions {
    /// Interaction cutoff, Angstrom (> 0).
    pub cutoff_angstrom: f64,
    /// Verlet skin added to the cutoff, Angstrom (>= 0). The list stays valid until some
    /// atom has moved by `skin / 2` or more.
    pub skin_angstrom: f64,
    /// Size limits, checked during the build.
    pub limits: NeighborLimits,
}

impl NeighborListOptions {
    pub fn new(cutoff_angstrom: f64) -> Self {
        NeighborListOptions {
            cutoff_angstrom,
            skin_angstrom: 0.0,
            limits: NeighborLimits::default(),
        }
    }

    pub fn with_skin(mut self, skin_angstrom: f64) -> Self {
        self.skin_angstrom = skin_angstrom;
        self
    }

    pub fn with_limits(mut self, limits: NeighborLimits) -> Self {
        self.limits = limits;
        self
    }

    fn validate(&self) -> Result<()> {
        if !(self.cutoff_angstrom.is_finite() && self.cutoff_angstrom > 0.0) {
            return Err(Error::invalid(
                "cutoff_angstrom",
                format!("must be finite and > 0, got {}", self.cutoff_angstrom),
            ));
        }
        if !(self.skin_angstrom.is_finite() && self.skin_angstrom >= 0.0) {
            return Err(Error::invalid(
                "skin_angstrom",
                format!("must be finite and >= 0, got {}", self.skin_angstrom),
            ));
        }
        if !self.search_radius_angstrom().is_finite() {
            return Err(Error::invalid(
                "skin_angstrom",
                format!(
                    "cutoff {} plus skin {} is not a finite radius",
                    self.cutoff_angstrom, self.skin_angstrom
                ),
            ));
        }
        self.limits.validate()
    }

    /// Radius the list is built with: cutoff plus skin, Angstrom.
    pub fn search_radius_angstrom(&self) -> f64 {
        self.cutoff_angstrom + self.skin_angstrom
    }
}

/// Directed edges `j -> i` in CSR form by receiver `i`.
#[derive(Clone, Debug)]
pub struct NeighborList {
    /// Row offsets by receiver, `[n_atoms + 1]`.
    offsets: Vec<usize>,
    /// Source atom j of each edge, `[n_edges]`.
    sources: Vec<u32>,
    /// Lattice image n of each edge, `[n_edges][3]`.
    shifts: Vec<[i32; 3]>,
    options: NeighborListOptions,
    cell: Cell,
    /// Positions and cell of the last successful build (none after a failed rebuild).
    skin: VerletSkin,
    workspace: cell_list::Workspace,
}

/// The Verlet skin rule, the one both the [`NeighborList`] and the
/// [`Calculator`](crate::Calculator) (for every backend) apply: a list built with radius
/// `cutoff + skin` still holds every pair within `cutoff` while the atom count and the cell
/// are unchanged and every atom has moved by less than `skin / 2` since the build (two atoms
/// then close in by less than `skin`).
#[derive(Clone, Debug)]
pub struct VerletSkin {
    skin_angstrom: f64,
    /// Positions `[n_atoms][3]` and cell of the last build; `None` when there is none.
    reference: Option<(Vec<[f64; 3]>, Cell)>,
    builds: usize,
}

impl VerletSkin {
    pub fn new(skin_angstrom: f64) -> Self {
        VerletSkin {
            skin_angstrom,
            reference: None,
            builds: 0,
        }
    }

    pub fn skin_angstrom(&self) -> f64 {
        self.skin_angstrom
    }

    /// Whether a list built for the recorded positions still covers `positions` in `cell`.
    /// One pass over the positions.
    pub fn covers(&self, positions: &[[f64; 3]], cell: &Cell) -> bool {
        let Some((reference, reference_cell)) = &self.reference else {
            return false;
        };
        if positions.len() != reference.len() || cell != reference_cell {
            return false;
        }
        let half_skin = 0.5 * self.skin_angstrom;
        let limit = half_skin * half_skin;
        positions.iter().zip(reference).all(|(now, then)| {
            let d = [now[0] - then[0], now[1] - then[1], now[2] - then[2]];
            // `<` is false for NaN: a non-finite position forces a rebuild (and its error).
            d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < limit
        })
    }

    /// Records a successful build for `positions` in `cell` (reusing the buffer).
    pub fn record(&mut self, positions: &[[f64; 3]], cell: &Cell) {
        let mut reference = match self.reference.take() {
            Some((reference, _)) => reference,
            None => Vec::new(),
        };
        if cell_list::reserve_cleared(&mut reference, positions.len(), "reference positions")
            .is_err()
        {
            // No room for a copy of the positions: nothing is recorded, and the next call
            // builds again (where the shortage shows as an error, if it lasts).
            return;
        }
        reference.extend_from_slice(positions);
        self.reference = Some((reference, *cell));
        self.builds += 1;
    }

    /// Forgets the last build: the next [`covers`](Self::covers) is false.
    pub fn invalidate(&mut self) {
        self.reference = None;
    }

    /// How many builds were recorded.
    pub fn builds(&self) -> usize {
        self.builds
    }
}

impl NeighborList {
    /// Builds the list for `positions` (`[n_atoms][3]`, Angstrom, wrapped or not) in `cell`.
    pub fn build(
        positions: &[[f64; 3]],
        cell: &Cell,
        options: NeighborListOptions,
    ) -> Result<NeighborList> {
        options.validate()?;
        let mut list = NeighborList {
            offsets: vec![0],
            sources: Vec::new(),
            shifts: Vec::new(),
            options,
            cell: *cell,
            skin: VerletSkin::new(options.skin_angstrom),
            workspace: cell_list::Workspace::default(),
        };
        list.rebuild(positions, cell)?;
        Ok(list)
    }

    /// Rebuilds in place for new positions or a new cell, reusing every buffer (an MD step
    /// that re-neighbours allocates nothing once sizes have settled). A failed rebuild
    /// leaves an empty list, never half of one.
    pub fn rebuild(&mut self, positions: &[[f64; 3]], cell: &Cell) -> Result<()> {
        self.skin.invalidate();
        let built = self.build_rows(positions, cell);
        if built.is_err() {
            self.offsets.clear();
            self.offsets.push(0);
            self.sources.clear();
            self.shifts.clear();
        }
        built?;
        self.skin.record(positions, cell);
        Ok(())
    }

    fn build_rows(&mut self, positions: &[[f64; 3]], cell: &Cell) -> Result<()> {
        check_positions(positions)?;
        self.cell = *cell;
        let radius = self.options.search_radius_angstrom();
        let limits = cell_list::Limits {
            max_neighbors: self.options.limits.max_neighbors_within(radius),
            max_bytes: self.options.limits.max_bytes(),
        };
        cell_list::build(
            positions,
            cell,
            radius,
            limits,
            &mut self.workspace,
            &mut self.offsets,
            &mut self.sources,
            &mut self.shifts,
        )
    }

    /// Rebuilds only when [`is_valid_for`](Self::is_valid_for) says the list no longer
    /// covers `positions`; returns whether it rebuilt.
    pub fn update(&mut self, positions: &[[f64; 3]], cell: &Cell) -> Result<bool> {
        if self.is_valid_for(positions, cell) {
            return Ok(false);
        }
        self.rebuild(positions, cell)?;
        Ok(true)
    }

    /// Whether this list still holds every pair within the cutoff for `positions` in
    /// `cell` ([`VerletSkin::covers`]).
    pub fn is_valid_for(&self, positions: &[[f64; 3]], cell: &Cell) -> bool {
        self.skin.covers(positions, cell)
    }

    pub fn n_atoms(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn n_edges(&self) -> usize {
        self.sources.len()
    }

    /// Row offsets by receiver, `[n_atoms + 1]`.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Source atom of every edge, `[n_edges]`, sorted by `(receiver, source, image)`.
    pub fn sources(&self) -> &[u32] {
        &self.sources
    }

    /// Lattice image of every edge, `[n_edges][3]`; `S = n . cell`.
    pub fn shifts(&self) -> &[[i32; 3]] {
        &self.shifts
    }

    /// Sources and images of the edges into `receiver`.
    pub fn row(&self, receiver: usize) -> (&[u32], &[[i32; 3]]) {
        let range = self.offsets[receiver]..self.offsets[receiver + 1];
        (&self.sources[range.clone()], &self.shifts[range])
    }

    /// Every edge as `(receiver, source, image)`, in order.
    pub fn edges(&self) -> impl Iterator<Item = (usize, usize, [i32; 3])> + '_ {
        (0..self.n_atoms()).flat_map(move |i| {
            let (sources, shifts) = self.row(i);
            sources
                .iter()
                .zip(shifts)
                .map(move |(&j, &n)| (i, j as usize, n))
        })
    }

    /// Receiver of every edge, `[n_edges]` (the CSR rows expanded).
    pub fn receivers(&self) -> Vec<u32> {
        let mut receivers = Vec::with_capacity(self.n_edges());
        for i in 0..self.n_atoms() {
            let count = self.offsets[i + 1] - self.offsets[i];
            receivers.extend(std::iter::repeat_n(i as u32, count));
        }
        receivers
    }

    pub fn options(&self) -> NeighborListOptions {
        self.options
    }

    pub fn cell(&self) -> &Cell {
        &self.cell
    }
}

/// Edge vector `r_ij = (r_j - r_i) + n . cell`, Angstrom. Written this way it is
/// antisymmetric bit for bit: `edge_vector(i, j, n) == -edge_vector(j, i, -n)`.
#[inline]
pub fn edge_vector(
    positions: &[[f64; 3]],
    cell: &Cell,
    receiver: usize,
    source: usize,
    shift: [i32; 3],
) -> [f64; 3] {
    let (ri, rj) = (positions[receiver], positions[source]);
    let s = cell.shift_vector(shift);
    [
        (rj[0] - ri[0]) + s[0],
        (rj[1] - ri[1]) + s[1],
        (rj[2] - ri[2]) + s[2],
    ]
}

/// Refuses more atoms than the list can index, and non-finite positions and positions
/// beyond [`MAX_COORDINATE_ANGSTROM`] (naming the atom).
pub(crate) fn check_positions(positions: &[[f64; 3]]) -> Result<()> {
    if positions.len() >= u32::MAX as usize {
        return Err(Error::invalid(
            "positions",
            format!("{} atoms exceed the limit of 2^32 - 1", positions.len()),
        ));
    }
    if let Some((atom, position)) = positions
        .iter()
        .enumerate()
        .find(|(_, p)| p.iter().any(|x| !x.is_finite()))
    {
        return Err(Error::NonFinite {
            what: format!("the position of atom {atom} ({position:?})"),
        });
    }
    if let Some((atom, position)) = positions
        .iter()
        .enumerate()
        .find(|(_, p)| p.iter().any(|x| x.abs() > MAX_COORDINATE_ANGSTROM))
    {
        return Err(Error::invalid(
            "positions",
            format!(
                "atom {atom} is at {position:?}, more than {MAX_COORDINATE_ANGSTROM:e} \
                 Angstrom from the origin, where float64 no longer resolves interatomic \
                 distances: {UNITS_QUESTION}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_system_has_one_offset() {
        let list = NeighborList::build(&[], &Cell::open(), NeighborListOptions::new(5.0)).unwrap();
        assert_eq!(list.offsets(), &[0]);
        assert_eq!(list.n_edges(), 0);
    }

    #[test]
    fn two_atoms_far_apart_in_open_space_use_a_small_grid() {
        // 10 cm apart on every axis: a dense grid would need (2e8)^3 bins.
        let positions = [[0.0, 0.0, 0.0], [1e9, 1e9, 1e9], [1.0, 0.0, 0.0]];
        let list =
            NeighborList::build(&positions, &Cell::open(), NeighborListOptions::new(5.0)).unwrap();
        assert_eq!(
            list.edges().collect::<Vec<_>>(),
            vec![(0, 2, [0; 3]), (2, 0, [0; 3])]
        );
    }

    #[test]
    fn bad_arguments_are_errors() {
        let positions = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]];
        let open = Cell::open();
        for cutoff in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                NeighborList::build(&positions, &open, NeighborListOptions::new(cutoff)),
                Err(Error::InvalidArgument {
                    argument: "cutoff_angstrom",
                    ..
                })
            ));
        }
        let skin = NeighborListOptions::new(5.0).with_skin(-0.5);
        assert!(NeighborList::build(&positions, &open, skin).is_err());
        let bad = [[0.0, 0.0, 0.0], [1.0, f64::NAN, 0.0]];
        let err = NeighborList::build(&bad, &open, NeighborListOptions::new(5.0)).unwrap_err();
        assert!(err.to_string().contains("atom 1"), "{err}");
        let close = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 5e-5]];
        let err = NeighborList::build(&close, &open, NeighborListOptions::new(5.0)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::AtomsTooClose {
                    first: 1,
                    second: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_large_rebuild_with_non_temporal_stores_matches_a_fresh_build() {
        // A rebuild into memory the last build touched, of a list over the streaming
        // threshold, writes with non-temporal stores; a fresh build writes plainly. The same
        // water box in two atom orders, so that the rebuild must rewrite every place.
        let water = crate::structures::water_box(30, 3);
        let cell = Cell::new(water.cell.unwrap(), [true; 3]).unwrap();
        let options = NeighborListOptions::new(5.0);
        let mut reordered = water.positions.clone();
        reordered.reverse();
        let mut list = NeighborList::build(&water.positions, &cell, options).unwrap();
        let bytes_per_edge = std::mem::size_of::<(u32, [i32; 3])>();
        assert!(list.n_edges() * bytes_per_edge >= cell_list::STREAMING_BYTES);
        let (capacity_before, edges_before) = (list.sources.capacity(), list.n_edges());
        list.rebuild(&reordered, &cell).unwrap();
        // Same number of edges, no new allocation: the rebuild took the streaming path.
        assert_eq!(list.n_edges(), edges_before);
        assert_eq!(list.sources.capacity(), capacity_before);
        let fresh = NeighborList::build(&reordered, &cell, options).unwrap();
        assert_eq!(list.offsets(), fresh.offsets());
        assert!(list.sources() == fresh.sources());
        assert!(list.shifts() == fresh.shifts());
    }

    #[test]
    fn failed_rebuild_invalidates_the_list() {
        let positions = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]];
        let open = Cell::open();
        let options = NeighborListOptions::new(5.0).with_skin(1.0);
        let mut list = NeighborList::build(&positions, &open, options).unwrap();
        assert!(list.is_valid_for(&positions, &open));
        assert!(list.rebuild(&[[0.0; 3], [f64::NAN; 3]], &open).is_err());
        assert!(!list.is_valid_for(&positions, &open));
        assert_eq!((list.n_atoms(), list.n_edges()), (0, 0));
        let crowded = [[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]];
        list.options.limits.max_neighbors = Some(1);
        assert!(list.rebuild(&crowded, &open).is_err());
        assert_eq!((list.n_atoms(), list.n_edges()), (0, 0));
        list.options.limits.max_neighbors = None;
        assert!(list.update(&positions, &open).unwrap());
        assert!(!list.update(&positions, &open).unwrap());
    }
}
