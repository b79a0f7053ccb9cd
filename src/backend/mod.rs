//! Backends run the model on a graph: `cpu` (the reference, float64 and float32) and `cuda`.
//!
//! Both take the same [`Graph`]: atoms, and directed edges as CSR by receiver with their
//! edge vectors and the index of each edge's reverse (the list is symmetric). The reverse
//! index lets every backward reduction be a gather over the receiver's own row, so results
//! are deterministic without atomics.

pub mod cpu;
pub mod cuda;

use crate::error::Result;

/// What a caller wants besides the total energy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Per-atom energies.
    pub energies: bool,
    pub forces: bool,
    /// The 3x3 virial.
    pub virial: bool,
    /// Per-atom virials (9 per atom), LAMMPS's `compute stress/atom`.
    pub atom_virials: bool,
}

impl Request {
    pub const ALL: Request = Request {
        energies: true,
        forces: true,
        virial: true,
        atom_virials: true,
    };

    pub const ENERGY_FORCES_VIRIAL: Request = Request {
        energies: false,
        forces: true,
        virial: true,
        atom_virials: false,
    };

    pub(crate) fn needs_backward(&self) -> bool {
        self.forces || self.virial || self.atom_virials
    }
}

/// Results of one evaluation. Arrays that were not requested are empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Results {
    /// Total energy of the energy-counting atoms, eV.
    pub energy: f64,
    /// Per-atom energies, `[n_atoms]`, eV (zero for atoms that do not count).
    pub energies: Vec<f64>,
    /// Forces `-dE/dr`, `[n_atoms][3]`, eV/Angstrom (for ghosts too).
    pub forces: Vec<[f64; 3]>,
    /// Virial `W[a][b] = sum over edges r_ij[a] f_ij[b]`, eV.
    pub virial: [[f64; 3]; 3],
    /// Per-atom virials, `[n_atoms][3][3]`, eV: each edge's share split half to each end.
    pub atom_virials: Vec<[[f64; 3]; 3]>,
}

/// The graph a backend evaluates.
#[derive(Clone, Copy, Debug)]
pub struct Graph<'a> {
    /// `[n_atoms]`, each within 1..=max_z.
    pub atomic_numbers: &'a [i32],
    /// Atoms `0..n_energy_atoms` count towards the energy (the owned atoms of an MPI rank);
    /// all atoms do in a periodic system.
    pub n_energy_atoms: usize,
    /// `[n_atoms + 1]`.
    pub offsets: &'a [usize],
    /// `[n_edges]`.
    pub sources: &'a [u32],
    /// `[n_edges]`: index of the edge `(j <- i, -n)` for edge `(i <- j, n)`.
    pub reverse: &'a [u32],
    /// `[n_edges][3]`: `r_ij = (r_j - r_i) + n . cell`, Angstrom, `0 < |r_ij| <= cutoff`.
    pub vectors: &'a [[f64; 3]],
}

impl Graph<'_> {
    pub fn n_atoms(&self) -> usize {
        self.atomic_numbers.len()
    }

    pub fn n_edges(&self) -> usize {
        self.sources.len()
    }
}

/// A backend evaluates the model on a graph.
pub trait Backend: Send {
    fn evaluate(&mut self, graph: &Graph, request: Request) -> Result<Results>;
}
