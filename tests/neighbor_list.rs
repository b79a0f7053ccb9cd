//! The neighbour list against an O(n^2 x images) brute force, on random triclinic cells
//! (including cells thinner than the cutoff and strongly skewed ones), every periodicity
//! mask and unwrapped positions; plus edge cases and the Verlet-skin check.

use std::collections::BTreeSet;

use painn::neighbors::{NeighborLimits, edge_vector};
use painn::{Cell, Error, NeighborList, NeighborListOptions};
use proptest::prelude::*;

type Edge = (usize, usize, [i32; 3]);

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Every edge with 0 < |(r_j - r_i) + n . cell| <= cutoff, by enumerating, for each pair,
/// every image n the cell heights allow. `lattice` must be non-singular (the open axes'
/// vectors only serve to express positions in fractional coordinates).
fn brute_force(
    positions: &[[f64; 3]],
    lattice: [[f64; 3]; 3],
    pbc: [bool; 3],
    cutoff: f64,
) -> (BTreeSet<Edge>, f64) {
    let volume = dot(lattice[0], cross(lattice[1], lattice[2]));
    let reciprocal = [
        cross(lattice[1], lattice[2]),
        cross(lattice[2], lattice[0]),
        cross(lattice[0], lattice[1]),
    ];
    let heights: Vec<f64> = reciprocal
        .iter()
        .map(|r| volume.abs() / dot(*r, *r).sqrt())
        .collect();
    let fractional = |r: [f64; 3]| -> [f64; 3] {
        [
            dot(r, reciprocal[0]) / volume,
            dot(r, reciprocal[1]) / volume,
            dot(r, reciprocal[2]) / volume,
        ]
    };
    let mut edges = BTreeSet::new();
    let mut closest = f64::INFINITY;
    for (i, ri) in positions.iter().enumerate() {
        for (j, rj) in positions.iter().enumerate() {
            let d = [rj[0] - ri[0], rj[1] - ri[1], rj[2] - ri[2]];
            let df = fractional(d);
            let mut ranges = [(0i64, 0i64); 3];
            for a in 0..3 {
                if pbc[a] {
                    let reach = cutoff / heights[a];
                    ranges[a] = (
                        (-df[a] - reach).ceil() as i64 - 1,
                        (-df[a] + reach).floor() as i64 + 1,
                    );
                }
            }
            for n0 in ranges[0].0..=ranges[0].1 {
                for n1 in ranges[1].0..=ranges[1].1 {
                    for n2 in ranges[2].0..=ranges[2].1 {
                        let n = [n0 as f64, n1 as f64, n2 as f64];
                        let mut r = [0.0; 3];
                        for x in 0..3 {
                            let s =
                                n[0] * lattice[0][x] + n[1] * lattice[1][x] + n[2] * lattice[2][x];
                            r[x] = d[x] + s;
                        }
                        let d2 = dot(r, r);
                        if d2 == 0.0 && i == j {
                            continue;
                        }
                        if d2 <= cutoff * cutoff {
                            closest = closest.min(d2.sqrt());
                            edges.insert((i, j, [n0 as i32, n1 as i32, n2 as i32]));
                        }
                    }
                }
            }
        }
    }
    (edges, closest)
}

fn edges_of(list: &NeighborList) -> Vec<Edge> {
    list.edges().collect()
}

/// The first few edges missing from and extra in `found`, for failure messages.
fn differences(expected: &BTreeSet<Edge>, found: &BTreeSet<Edge>) -> String {
    format!(
        "{} expected, missing {:?} extra {:?}",
        expected.len(),
        expected.difference(found).take(5).collect::<Vec<_>>(),
        found.difference(expected).take(5).collect::<Vec<_>>()
    )
}

/// Random periodic problem: a triclinic cell (possibly thinner than the cutoff, possibly
/// strongly skewed), a periodicity mask, and unwrapped positions.
#[derive(Debug, Clone)]
struct Case {
    lattice: [[f64; 3]; 3],
    pbc: [bool; 3],
    cutoff: f64,
    positions: Vec<[f64; 3]>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1.0f64..6.0,                         // cutoff
        prop::array::uniform3(0.3f64..4.0),  // lengths as multiples of the cutoff
        prop::array::uniform3(-2.0f64..2.0), // skews (b along a, c along a and b)
        prop::array::uniform3(-1.0f64..1.0), // rotation (axis-angle)
        0u8..8,                              // periodicity mask
        0usize..=300,                        // requested atom count
        any::<u64>(),                        // seed for positions
    )
        .prop_map(
            |(cutoff, lengths, skew, rotation, mask, n_requested, seed)| {
                let (la, lb, lc) = (
                    lengths[0] * cutoff,
                    lengths[1] * cutoff,
                    lengths[2] * cutoff,
                );
                let upper = [
                    [la, 0.0, 0.0],
                    [skew[0] * la, lb, 0.0],
                    [skew[1] * la, skew[2] * lb, lc],
                ];
                let lattice = rotate(upper, rotation);
                let pbc = [mask & 1 != 0, mask & 2 != 0, mask & 4 != 0];
                // Keep the expected number of edges (and the brute force) bounded.
                let volume = la * lb * lc;
                let per_pair = 4.19 * cutoff.powi(3) / volume;
                let n_max = ((3e5 / per_pair.max(1e-9)).sqrt() as usize).max(1);
                let n = n_requested.min(n_max);
                let mut rng = painn::structures::SplitMix64::new(seed);
                let far = rng.uniform() < 0.1;
                let positions = (0..n)
                    .map(|_| {
                        let mut f = [rng.uniform(), rng.uniform(), rng.uniform()];
                        for (a, f_a) in f.iter_mut().enumerate() {
                            if pbc[a] {
                                // Unwrapped: a few cells away, sometimes very many.
                                let reach = if far { 1000.0 } else { 3.0 };
                                *f_a += rng.range(-reach, reach).round();
                            } else {
                                *f_a = rng.range(-0.5, 1.5);
                            }
                        }
                        let mut r = [0.0; 3];
                        for x in 0..3 {
                            r[x] =
                                f[0] * lattice[0][x] + f[1] * lattice[1][x] + f[2] * lattice[2][x];
                        }
                        r
                    })
                    .collect();
                Case {
                    lattice,
                    pbc,
                    cutoff,
                    positions,
                }
            },
        )
}

fn rotate(m: [[f64; 3]; 3], axis_angle: [f64; 3]) -> [[f64; 3]; 3] {
    let angle = dot(axis_angle, axis_angle).sqrt() * std::f64::consts::PI;
    if angle == 0.0 {
        return m;
    }
    let norm = dot(axis_angle, axis_angle).sqrt();
    let k = [
        axis_angle[0] / norm,
        axis_angle[1] / norm,
        axis_angle[2] / norm,
    ];
    let (s, c) = angle.sin_cos();
    let mut out = m;
    for (row, v) in m.iter().enumerate() {
        let kxv = cross(k, *v);
        let kdv = dot(k, *v);
        for x in 0..3 {
            out[row][x] = v[x] * c + kxv[x] * s + k[x] * kdv * (1.0 - c);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn matches_brute_force(case in case_strategy()) {
        let cell = Cell::new(case.lattice, case.pbc).unwrap();
        let (expected, closest) = brute_force(&case.positions, case.lattice, case.pbc, case.cutoff);
        // The geometry is unit-free and often far denser than matter: no neighbour limit.
        let options = NeighborListOptions::new(case.cutoff).with_limits(NeighborLimits::unlimited());
        match NeighborList::build(&case.positions, &cell, options) {
            Ok(list) => {
                let edges = edges_of(&list);
                // Sorted by (receiver, source, image), no duplicates.
                prop_assert!(edges.windows(2).all(|w| w[0] < w[1]));
                prop_assert_eq!(list.offsets().len(), case.positions.len() + 1);
                let found: BTreeSet<Edge> = edges.into_iter().collect();
                prop_assert_eq!(found.len(), expected.len());
                prop_assert!(found == expected, "{}", differences(&expected, &found));
                // Symmetry: (i <- j, n) exactly when (j <- i, -n).
                for &(i, j, n) in &found {
                    prop_assert!(found.contains(&(j, i, [-n[0], -n[1], -n[2]])));
                }
            }
            Err(Error::AtomsTooClose { .. }) => prop_assert!(closest < 1e-4),
            Err(other) => prop_assert!(false, "unexpected error {}", other),
        }
    }
}

#[test]
fn no_atoms() {
    let cell = Cell::new(
        [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]],
        [true; 3],
    )
    .unwrap();
    let list = NeighborList::build(&[], &cell, NeighborListOptions::new(5.0)).unwrap();
    assert_eq!(list.offsets(), &[0]);
    assert_eq!(list.n_edges(), 0);
}

#[test]
fn single_atom_sees_its_own_images() {
    // A 2 x 3 x 10 Angstrom box with cutoff 4.5: images of the atom itself at distance
    // |n . cell| <= 4.5, and none at zero shift.
    let lattice = [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 10.0]];
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let positions = [[123.4, -56.7, 8.9]];
    let list = NeighborList::build(&positions, &cell, NeighborListOptions::new(4.5)).unwrap();
    let mut expected = Vec::new();
    for n0 in -3i32..=3 {
        for n1 in -2i32..=2 {
            let d2 = (2.0 * n0 as f64).powi(2) + (3.0 * n1 as f64).powi(2);
            if d2 > 0.0 && d2 <= 4.5 * 4.5 {
                expected.push((0usize, 0usize, [n0, n1, 0]));
            }
        }
    }
    assert_eq!(edges_of(&list), expected);
    assert_eq!(list.n_edges(), 10);
}

#[test]
fn skin_list_is_reused_until_half_skin_is_crossed() {
    let water = painn::structures::water_box(4, 3);
    let cell = Cell::new(water.cell.unwrap(), [true; 3]).unwrap();
    let options = NeighborListOptions::new(5.0).with_skin(1.0);
    let list = NeighborList::build(&water.positions, &cell, options).unwrap();
    assert!(list.is_valid_for(&water.positions, &cell));

    let mut moved = water.positions.clone();
    moved[5][1] += 0.49;
    assert!(list.is_valid_for(&moved, &cell));
    // The skin list still holds every pair within the bare cutoff for the moved atoms.
    let fresh = NeighborList::build(&moved, &cell, NeighborListOptions::new(5.0)).unwrap();
    let skin_edges: BTreeSet<Edge> = edges_of(&list).into_iter().collect();
    for edge in edges_of(&fresh) {
        assert!(
            skin_edges.contains(&edge),
            "{edge:?} missing from the skin list"
        );
    }

    moved[5][1] += 0.02;
    assert!(
        !list.is_valid_for(&moved, &cell),
        "0.51 > skin/2 must force a rebuild"
    );
    moved[5][1] -= 0.02;
    moved[7][0] = f64::NAN;
    assert!(!list.is_valid_for(&moved, &cell));
    let other_cell = Cell::new(water.cell.unwrap(), [true, true, false]).unwrap();
    assert!(!list.is_valid_for(&water.positions, &other_cell));
    assert!(!list.is_valid_for(&water.positions[1..], &cell));
}

#[test]
fn wrapping_by_lattice_vectors_only_changes_shifts() {
    let lattice = [[7.0, 0.0, 0.0], [3.5, 6.0, 0.0], [-2.0, 1.0, 6.5]];
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let mut rng = painn::structures::SplitMix64::new(11);
    let positions: Vec<[f64; 3]> = (0..40)
        .map(|_| {
            [
                rng.range(0.0, 7.0),
                rng.range(0.0, 6.0),
                rng.range(0.0, 6.5),
            ]
        })
        .collect();
    let options = NeighborListOptions::new(4.0);
    let list = NeighborList::build(&positions, &cell, options).unwrap();
    let mut moved = positions.clone();
    let offset = [3, -1000, 7];
    for r in moved.iter_mut().step_by(3) {
        for x in 0..3 {
            r[x] += offset[0] as f64 * lattice[0][x]
                + offset[1] as f64 * lattice[1][x]
                + offset[2] as f64 * lattice[2][x];
        }
    }
    let moved_list = NeighborList::build(&moved, &cell, options).unwrap();
    assert_eq!(list.n_edges(), moved_list.n_edges());
    let distances = |list: &NeighborList, positions: &[[f64; 3]], i: usize| {
        let (sources, shifts) = list.row(i);
        let mut row: Vec<(usize, f64)> = sources
            .iter()
            .zip(shifts)
            .map(|(&j, &n)| {
                (
                    j as usize,
                    dist(edge_vector(positions, &cell, i, j as usize, n)),
                )
            })
            .collect();
        row.sort_by(|a, b| a.partial_cmp(b).unwrap());
        row
    };
    for i in 0..positions.len() {
        let before = distances(&list, &positions, i);
        let after = distances(&moved_list, &moved, i);
        assert_eq!(before.len(), after.len());
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(a.0, b.0);
            assert!((a.1 - b.1).abs() < 1e-9);
        }
    }
}

fn dist(r: [f64; 3]) -> f64 {
    dot(r, r).sqrt()
}

#[test]
fn coincident_atoms_through_an_image_are_named() {
    let lattice = [[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]];
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    // Atom 2 sits on an image of atom 0.
    let positions = [[0.5, 0.5, 0.5], [2.0, 2.0, 2.0], [4.5, 0.5, 0.5]];
    let err = NeighborList::build(&positions, &cell, NeighborListOptions::new(3.0)).unwrap_err();
    match err {
        Error::AtomsTooClose { first, second, .. } => {
            assert_eq!((first.min(second), first.max(second)), (0, 2))
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err_text(&positions, &cell).contains("atoms 0 and 2"));
}

fn err_text(positions: &[[f64; 3]], cell: &Cell) -> String {
    NeighborList::build(positions, cell, NeighborListOptions::new(3.0))
        .unwrap_err()
        .to_string()
}

#[test]
fn absurdly_small_cell_is_refused_not_enumerated() {
    let lattice = [[1e-3, 0.0, 0.0], [0.0, 1e-3, 0.0], [0.0, 0.0, 1e-3]];
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let err = NeighborList::build(&[[0.0; 3]], &cell, NeighborListOptions::new(5.0)).unwrap_err();
    assert!(matches!(err, Error::BadCell { .. }), "{err}");
}

#[test]
fn pairs_exactly_at_the_cutoff_match_brute_force() {
    // A 4 x 4 x 4 grid of spacing 1.25 A in a 5 A periodic cube with a 2.5 A cutoff: many
    // pairs lie exactly at the cutoff (included) or a rounding away from it, the case the
    // f32 filter leaves to the exact f64 decision. Shifted far outside the cell (unwrapped
    // input), and in a skewed cell, the list must still equal the brute force on the
    // positions as given.
    for (lattice, offset) in [
        (
            [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]],
            [0.0, 0.0, 0.0],
        ),
        (
            [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]],
            [61725.0, -185.0, 0.3],
        ),
        (
            [[5.0, 0.0, 0.0], [2.5, 5.0, 0.0], [-1.25, 2.5, 5.0]],
            [-4.0e3, 17.5, 2.0e4],
        ),
    ] {
        let mut positions = Vec::new();
        for i in 0..4 {
            for j in 0..4 {
                for k in 0..4 {
                    let f = [i as f64 * 0.25, j as f64 * 0.25, k as f64 * 0.25];
                    let mut r = offset;
                    for x in 0..3 {
                        r[x] += f[0] * lattice[0][x] + f[1] * lattice[1][x] + f[2] * lattice[2][x];
                    }
                    positions.push(r);
                }
            }
        }
        let cell = Cell::new(lattice, [true; 3]).unwrap();
        // A nanometre-scale nudge of the cutoff moves pairs in or out of the list although
        // the f32 filter cannot tell them apart.
        for cutoff in [2.5, 2.5 - 1e-9, 2.5 + 1e-9] {
            let list =
                NeighborList::build(&positions, &cell, NeighborListOptions::new(cutoff)).unwrap();
            let (expected, _) = brute_force(&positions, lattice, [true; 3], cutoff);
            let found: BTreeSet<Edge> = edges_of(&list).into_iter().collect();
            assert!(
                found == expected,
                "offset {offset:?}, cutoff {cutoff}: {}",
                differences(&expected, &found)
            );
        }
    }
}

#[test]
fn a_spatially_ordered_liquid_matches_brute_force() {
    // The benchmark's kind of input at a testable size: a periodic water box in molecule
    // order (5 bins per axis, so each bin's candidates come from 27 distinct bins through
    // periodic wraps, ranked by a bitmap over several words), half of it moved by lattice
    // vectors (unwrapped input), and the same atoms in a scrambled order.
    let water = painn::structures::water_box(9, 21);
    let lattice = water.cell.unwrap();
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let mut positions = water.positions.clone();
    for (index, r) in positions.iter_mut().enumerate().filter(|(i, _)| i % 2 == 1) {
        let n = [(index % 5) as f64 - 2.0, -3.0, (index % 3) as f64];
        for x in 0..3 {
            r[x] += n[0] * lattice[0][x] + n[1] * lattice[1][x] + n[2] * lattice[2][x];
        }
    }
    let mut scrambled_order: Vec<usize> = (0..positions.len()).collect();
    let mut rng = painn::structures::SplitMix64::new(4);
    for i in (1..scrambled_order.len()).rev() {
        scrambled_order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let scrambled: Vec<[f64; 3]> = scrambled_order.iter().map(|&i| positions[i]).collect();
    for positions in [positions, scrambled] {
        let list = NeighborList::build(&positions, &cell, NeighborListOptions::new(5.0)).unwrap();
        let (expected, _) = brute_force(&positions, lattice, [true; 3], 5.0);
        let found = edges_of(&list);
        let found_set: BTreeSet<Edge> = found.iter().copied().collect();
        assert_eq!(found.len(), found_set.len(), "no edge twice");
        assert!(
            found_set == expected,
            "{}",
            differences(&expected, &found_set)
        );
        // Rows come out sorted by (source, image).
        assert!(found.windows(2).all(|pair| pair[0] < pair[1]));
    }
}

#[test]
fn a_bins_run_that_spans_two_of_its_groups_runs_matches_brute_force() {
    // Found by a search over sparse grids: with an open first axis of 4 bins and 3 periodic
    // bins along y, a run of consecutive slots seen from one bin spans two of the runs seen
    // from its group of bins (which visits more bins in between), so the writing pass
    // copies that run's ranks from two places.
    let lattice = [[4.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0]];
    let pbc = [false, true, true];
    let positions = [
        [1.6, 1.5, 3.5],
        [3.6, 1.5, 0.5],
        [2.35, 0.5, 0.5],
        [1.35, 1.5, 3.5],
        [3.6, 0.5, 2.5],
        [0.35, 1.5, 0.5],
        [0.6, 1.5, 0.5],
        [1.35, 2.5, 3.5],
        [0.6, 0.5, 2.5],
        [1.1, 0.5, 0.5],
        [1.35, 0.5, 0.5],
        [0.85, 1.5, 1.5],
        [0.6, 1.5, 3.5],
        [2.6, 2.5, 2.5],
    ];
    let cell = Cell::new(lattice, pbc).unwrap();
    let list = NeighborList::build(&positions, &cell, NeighborListOptions::new(1.0)).unwrap();
    let (expected, _) = brute_force(&positions, lattice, pbc, 1.0);
    let found = edges_of(&list);
    assert!(found.windows(2).all(|pair| pair[0] < pair[1]));
    let found: BTreeSet<Edge> = found.into_iter().collect();
    assert!(found == expected, "{}", differences(&expected, &found));
}
