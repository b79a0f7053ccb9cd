//! Deterministic test and benchmark structures: benzene, water clusters and periodic water
//! boxes. The same generator serves the tests, the criterion benches and `painn bench`, so
//! that numbers from all three describe the same atoms.

use crate::cell::Matrix3;

/// Atomic numbers, positions (`[n][3]`, Angstrom) and, for periodic boxes, the cell.
#[derive(Clone, Debug)]
pub struct Structure {
    pub atomic_numbers: Vec<i32>,
    pub positions: Vec<[f64; 3]>,
    /// Lattice vectors as rows (Angstrom) for a fully periodic box, `None` for a molecule.
    pub cell: Option<Matrix3>,
}

impl Structure {
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// Grid spacing that gives liquid-water density (0.1 atoms per cubic Angstrom).
pub const WATER_GRID_ANGSTROM: f64 = 3.1;

/// Small deterministic generator (SplitMix64); no dependency, same numbers everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
}

/// Benzene, planar in z = 0 (C-C 1.39 Angstrom, C-H 1.09 Angstrom).
pub fn benzene() -> Structure {
    let mut atomic_numbers = Vec::new();
    let mut positions = Vec::new();
    for (z, radius) in [(6, 1.39), (1, 1.39 + 1.09)] {
        for k in 0..6 {
            let angle = std::f64::consts::PI / 3.0 * k as f64;
            atomic_numbers.push(z);
            positions.push([radius * angle.cos(), radius * angle.sin(), 0.0]);
        }
    }
    Structure {
        atomic_numbers,
        positions,
        cell: None,
    }
}

/// One water molecule at `center` with a uniformly random orientation.
fn push_water(rng: &mut SplitMix64, center: [f64; 3], structure: &mut Structure) {
    const OH: f64 = 0.9572;
    let half_angle = 104.52f64.to_radians() / 2.0;
    let local = [
        [0.0, 0.0, 0.0],
        [OH * half_angle.sin(), OH * half_angle.cos(), 0.0],
        [-OH * half_angle.sin(), OH * half_angle.cos(), 0.0],
    ];
    // Uniform random rotation from a uniform unit quaternion (Shoemake).
    let (u1, u2, u3) = (rng.uniform(), rng.uniform(), rng.uniform());
    let tau = std::f64::consts::TAU;
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let (w, x, y, z) = (
        a * (tau * u2).sin(),
        a * (tau * u2).cos(),
        b * (tau * u3).sin(),
        b * (tau * u3).cos(),
    );
    let rotation = [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - w * z),
            2.0 * (x * z + w * y),
        ],
        [
            2.0 * (x * y + w * z),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - w * x),
        ],
        [
            2.0 * (x * z - w * y),
            2.0 * (y * z + w * x),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ];
    for (atom, p) in local.iter().enumerate() {
        let mut r = center;
        for (row, r_row) in rotation.iter().zip(r.iter_mut()) {
            *r_row += row[0] * p[0] + row[1] * p[1] + row[2] * p[2];
        }
        structure.atomic_numbers.push(if atom == 0 { 8 } else { 1 });
        structure.positions.push(r);
    }
}

/// A roughly spherical water cluster of `n_molecules` molecules: the grid points of a
/// 3.1 Angstrom cubic grid nearest its centre, random orientations, 0.2 Angstrom jitter.
pub fn water_cluster(n_molecules: usize, seed: u64) -> Structure {
    let side = (n_molecules as f64).cbrt().ceil() as usize + 1;
    let middle = (side as f64 - 1.0) / 2.0;
    let mut points: Vec<[usize; 3]> = (0..side * side * side)
        .map(|index| [index % side, (index / side) % side, index / (side * side)])
        .collect();
    let distance = |p: &[usize; 3]| -> f64 { p.iter().map(|&c| (c as f64 - middle).powi(2)).sum() };
    points.sort_by(|a, b| distance(a).total_cmp(&distance(b)).then(a.cmp(b)));
    points.truncate(n_molecules);
    points.sort();
    let mut rng = SplitMix64::new(seed);
    let mut structure = Structure {
        atomic_numbers: Vec::new(),
        positions: Vec::new(),
        cell: None,
    };
    for p in points {
        let mut center = [0.0; 3];
        for a in 0..3 {
            center[a] = WATER_GRID_ANGSTROM * p[a] as f64 + rng.range(-0.2, 0.2);
        }
        push_water(&mut rng, center, &mut structure);
    }
    structure
}

/// A periodic cubic water box of `side^3` molecules on a 3.1 Angstrom grid (0.1 atoms per
/// cubic Angstrom), random orientations, 0.2 Angstrom jitter; atoms stay inside the box.
pub fn water_box(side: usize, seed: u64) -> Structure {
    let length = WATER_GRID_ANGSTROM * side as f64;
    let mut rng = SplitMix64::new(seed);
    let mut structure = Structure {
        atomic_numbers: Vec::with_capacity(3 * side * side * side),
        positions: Vec::with_capacity(3 * side * side * side),
        cell: Some([[length, 0.0, 0.0], [0.0, length, 0.0], [0.0, 0.0, length]]),
    };
    for k in 0..side {
        for j in 0..side {
            for i in 0..side {
                let mut center = [0.0; 3];
                for (a, index) in [i, j, k].into_iter().enumerate() {
                    center[a] = WATER_GRID_ANGSTROM * (index as f64 + 0.5) + rng.range(-0.2, 0.2);
                }
                push_water(&mut rng, center, &mut structure);
            }
        }
    }
    structure
}

/// The box side (molecules per edge) whose atom count is nearest `n_atoms`.
pub fn water_box_side_for_atoms(n_atoms: usize) -> usize {
    ((n_atoms as f64 / 3.0).cbrt().round() as usize).max(1)
}
