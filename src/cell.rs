//! The simulation cell: three lattice vectors (rows, Angstrom) and periodicity per axis.

use crate::error::{Error, Result};

/// `[3][3]` matrix whose rows are vectors.
pub type Matrix3 = [[f64; 3]; 3];

/// A cell as LAMMPS and ASE describe it: lattice vectors as rows (Angstrom) and a periodic
/// flag per lattice axis. Vectors on non-periodic axes are ignored (they may be zero).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    vectors_angstrom: Matrix3,
    pbc: [bool; 3],
}

/// Relative tolerance below which the periodic lattice vectors count as linearly dependent.
const DEGENERACY_TOLERANCE: f64 = 1e-10;

/// Longest periodic lattice vector accepted, Angstrom: as far as positions may lie from the
/// origin (beyond it, image shifts leave float32's range in the neighbour search and
/// float64 no longer resolves interatomic distances).
const MAX_LATTICE_VECTOR_ANGSTROM: f64 = 1e10;

impl Cell {
    /// A cell with the given lattice vectors (`[3][3]`, rows, Angstrom) and periodicity.
    ///
    /// Fails when a periodic vector is non-finite, zero, or when the periodic vectors are
    /// linearly dependent (a flat or collapsed cell).
    pub fn new(vectors_angstrom: Matrix3, pbc: [bool; 3]) -> Result<Self> {
        for (axis, vector) in vectors_angstrom.iter().enumerate() {
            if pbc[axis] && vector.iter().any(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("cell vector {axis} ({vector:?})"),
                });
            }
        }
        let periodic: Vec<usize> = (0..3).filter(|&a| pbc[a]).collect();
        for &axis in &periodic {
            let length = norm(vectors_angstrom[axis]);
            if length == 0.0 {
                return Err(Error::BadCell {
                    reason: format!("lattice vector {axis} is zero but axis {axis} is periodic"),
                });
            }
            let vector = vectors_angstrom[axis];
            if vector.iter().any(|x| x.abs() > MAX_LATTICE_VECTOR_ANGSTROM) {
                return Err(Error::BadCell {
                    reason: format!(
                        "lattice vector {axis} ({vector:?}) is longer than \
                         {MAX_LATTICE_VECTOR_ANGSTROM:e} Angstrom (one metre): is the cell in \
                         Angstrom? (an axis with vacuum is better left non-periodic)"
                    ),
                });
            }
        }
        let dependent = match periodic.len() {
            2 => {
                let (a, b) = (vectors_angstrom[periodic[0]], vectors_angstrom[periodic[1]]);
                norm(cross(a, b)) <= DEGENERACY_TOLERANCE * norm(a) * norm(b)
            }
            3 => {
                let [a, b, c] = vectors_angstrom;
                determinant(&vectors_angstrom).abs()
                    <= DEGENERACY_TOLERANCE * norm(a) * norm(b) * norm(c)
            }
            _ => false,
        };
        if dependent {
            return Err(Error::BadCell {
                reason: format!(
                    "the periodic lattice vectors {periodic:?} are linearly dependent: {vectors_angstrom:?}"
                ),
            });
        }
        Ok(Cell {
            vectors_angstrom,
            pbc,
        })
    }

    /// No periodicity and no lattice: an isolated molecule or cluster.
    pub fn open() -> Self {
        Cell {
            vectors_angstrom: [[0.0; 3]; 3],
            pbc: [false; 3],
        }
    }

    /// A cell from an optional lattice: `None` means open boundaries, and is an error if
    /// any axis is declared periodic.
    pub fn from_optional(vectors_angstrom: Option<Matrix3>, pbc: [bool; 3]) -> Result<Self> {
        match vectors_angstrom {
            Some(vectors) => Cell::new(vectors, pbc),
            None if pbc.iter().any(|&p| p) => Err(Error::BadCell {
                reason: format!("periodicity {pbc:?} was requested but no cell was given"),
            }),
            None => Ok(Cell::open()),
        }
    }

    /// Lattice vectors as rows, `[3][3]`, Angstrom.
    pub fn vectors(&self) -> &Matrix3 {
        &self.vectors_angstrom
    }

    /// Periodicity per lattice axis.
    pub fn pbc(&self) -> [bool; 3] {
        self.pbc
    }

    pub fn is_periodic(&self) -> bool {
        self.pbc.iter().any(|&p| p)
    }

    pub fn is_fully_periodic(&self) -> bool {
        self.pbc.iter().all(|&p| p)
    }

    /// Cell volume in cubic Angstrom (absolute value of the determinant).
    pub fn volume(&self) -> f64 {
        determinant(&self.vectors_angstrom).abs()
    }

    /// Cartesian translation `n . cell` of the lattice image `n`, computed in a fixed order so
    /// that `shift_vector(-n) == -shift_vector(n)` bit for bit.
    #[inline]
    pub fn shift_vector(&self, image: [i32; 3]) -> [f64; 3] {
        let c = &self.vectors_angstrom;
        let n = [image[0] as f64, image[1] as f64, image[2] as f64];
        let mut s = [0.0; 3];
        for (x, s_x) in s.iter_mut().enumerate() {
            *s_x = n[0] * c[0][x] + n[1] * c[1][x] + n[2] * c[2][x];
        }
        s
    }

    /// A basis in which to bin atoms: the periodic lattice vectors, completed on the
    /// non-periodic axes by orthonormal directions perpendicular to them. Fractional
    /// coordinates in this basis are periodic on periodic axes and in Angstrom otherwise.
    pub(crate) fn binning_basis(&self) -> Matrix3 {
        let periodic: Vec<usize> = (0..3).filter(|&a| self.pbc[a]).collect();
        let open: Vec<usize> = (0..3).filter(|&a| !self.pbc[a]).collect();
        let mut basis = [[0.0; 3]; 3];
        for &a in &periodic {
            basis[a] = self.vectors_angstrom[a];
        }
        match periodic.len() {
            0 => basis = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            1 => {
                let a = self.vectors_angstrom[periodic[0]];
                // Cross with the coordinate axis least aligned with `a` for a well-conditioned normal.
                let least = (0..3)
                    .min_by(|&x, &y| a[x].abs().total_cmp(&a[y].abs()))
                    .unwrap_or(0);
                let mut e = [0.0; 3];
                e[least] = 1.0;
                let u = normalized(cross(e, a));
                let w = normalized(cross(a, u));
                basis[open[0]] = u;
                basis[open[1]] = w;
            }
            2 => {
                let (a, b) = (
                    self.vectors_angstrom[periodic[0]],
                    self.vectors_angstrom[periodic[1]],
                );
                basis[open[0]] = normalized(cross(a, b));
            }
            _ => {}
        }
        basis
    }
}

#[inline]
pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

#[inline]
pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

#[inline]
pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

fn normalized(a: [f64; 3]) -> [f64; 3] {
    let length = norm(a);
    [a[0] / length, a[1] / length, a[2] / length]
}

pub(crate) fn determinant(m: &Matrix3) -> f64 {
    dot(m[0], cross(m[1], m[2]))
}

/// Inverse of a 3x3 matrix (rows as vectors), so that `f = r . inverse` maps Cartesian row
/// vectors to fractional coordinates. The caller guarantees a non-singular matrix.
pub(crate) fn inverse(m: &Matrix3) -> Matrix3 {
    let det = determinant(m);
    let c0 = cross(m[1], m[2]);
    let c1 = cross(m[2], m[0]);
    let c2 = cross(m[0], m[1]);
    // inverse[x][a] = (reciprocal vector a)[x] = c_a[x] / det
    let mut inv = [[0.0; 3]; 3];
    for x in 0..3 {
        inv[x] = [c0[x] / det, c1[x] / det, c2[x] / det];
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_of_triclinic_cell_is_inverse() {
        let m = [[5.0, 0.0, 0.0], [2.0, 4.0, 0.0], [-1.0, 1.5, 6.0]];
        let inv = inverse(&m);
        for i in 0..3 {
            for j in 0..3 {
                let product: f64 = (0..3).map(|k| m[i][k] * inv[k][j]).sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((product - expected).abs() < 1e-14, "{i}{j}: {product}");
            }
        }
    }

    #[test]
    fn degenerate_and_non_finite_cells_are_refused() {
        let flat = [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
        assert!(matches!(
            Cell::new(flat, [true; 3]),
            Err(Error::BadCell { .. })
        ));
        // The same vectors are fine when the dependent pair is not periodic together.
        assert!(Cell::new(flat, [true, false, true]).is_ok());
        let zero = [[0.0; 3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        assert!(Cell::new(zero, [true, false, false]).is_err());
        assert!(Cell::new(zero, [false, true, true]).is_ok());
        let huge = [[1e300, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let err = Cell::new(huge, [true; 3]).unwrap_err().to_string();
        assert!(err.contains("longer than 1e10 Angstrom"), "{err}");
        assert!(Cell::new(huge, [false, true, true]).is_ok());
        let nan = [[f64::NAN, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        assert!(matches!(
            Cell::new(nan, [true; 3]),
            Err(Error::NonFinite { .. })
        ));
        assert!(Cell::from_optional(None, [false, false, true]).is_err());
    }

    #[test]
    fn binning_basis_completes_periodic_vectors_orthonormally() {
        let m = [[5.0, 0.0, 0.0], [2.0, 4.0, 0.0], [-1.0, 1.5, 6.0]];
        for mask in 0..8u8 {
            let pbc = [mask & 1 != 0, mask & 2 != 0, mask & 4 != 0];
            let basis = Cell::new(m, pbc).unwrap().binning_basis();
            assert!(determinant(&basis).abs() > 1e-6);
            for a in 0..3 {
                if pbc[a] {
                    assert_eq!(basis[a], m[a]);
                } else {
                    assert!((norm(basis[a]) - 1.0).abs() < 1e-12);
                    for b in 0..3 {
                        if b != a {
                            assert!(dot(basis[a], basis[b]).abs() < 1e-12);
                        }
                    }
                }
            }
        }
    }
}
