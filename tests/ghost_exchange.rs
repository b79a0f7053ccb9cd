//! Per-layer ghost exchange (`Calculator::compute_local_exchanging`), checked the way an MD
//! code would use it: a periodic system split into slabs, one "rank" (thread) per slab with
//! its owned atoms and, as ghosts, every periodic image within one cutoff of them (not L
//! cutoffs); the ranks exchange ghost rows after each layer through shared memory. The
//! total energy, the forces (ghost forces added to their owners) and the virial equal one
//! periodic evaluation to round-off in float64 (to float32's tolerance on float32 and the
//! GPU, where the ranks share one GPU), also with a rank that owns no atoms, and with each
//! rank saying which of its owned rows other ranks read (`GhostExchange::sent_rows`).

#[macro_use]
mod common;

use std::sync::{Arc, Barrier, Mutex};

use common::*;
use painn::structures::water_box;
use painn::{Calculator, Cell, Device, GhostExchange, Model, Precision, Request, Results};

on_every_platform!(
    split_evaluation_equals_one_periodic_evaluation_tiny_model,
    split_evaluation_equals_one_periodic_evaluation_student_model,
);

/// One rank's atoms: owned first, then ghosts with their owner `(rank, owned index)`.
struct Domain {
    numbers: Vec<i32>,
    positions: Vec<[f64; 3]>,
    n_owned: usize,
    /// For each atom: its owner.
    owner: Vec<(usize, usize)>,
}

/// Fractional coordinate along the first lattice vector (lower-triangular-free solve of
/// r = f . lattice by Cramer's rule).
fn first_fraction(r: [f64; 3], l: [[f64; 3]; 3]) -> f64 {
    let det = |a: [f64; 3], b: [f64; 3], c: [f64; 3]| {
        a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
            + a[2] * (b[0] * c[1] - b[1] * c[0])
    };
    (det(r, l[1], l[2]) / det(l[0], l[1], l[2])).rem_euclid(1.0)
}

/// Splits `positions` by the fractional coordinate along the first lattice vector at
/// `bounds` (rank r owns `bounds[r] <= f < bounds[r + 1]`); ghosts: the images within
/// `reach` of an owned atom.
fn domains(
    numbers: &[i32],
    positions: &[[f64; 3]],
    lattice: [[f64; 3]; 3],
    bounds: &[f64],
    reach: f64,
) -> Vec<Domain> {
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let ranks = bounds.len() - 1;
    let mut owned: Vec<Vec<usize>> = vec![Vec::new(); ranks];
    let mut place = vec![(0, 0); positions.len()];
    for (i, &r) in positions.iter().enumerate() {
        let f = first_fraction(r, lattice);
        let rank = (0..ranks)
            .find(|&k| bounds[k] <= f && f < bounds[k + 1])
            .unwrap();
        place[i] = (rank, owned[rank].len());
        owned[rank].push(i);
    }
    (0..ranks)
        .map(|rank| {
            let mut domain = Domain {
                numbers: owned[rank].iter().map(|&i| numbers[i]).collect(),
                positions: owned[rank].iter().map(|&i| positions[i]).collect(),
                n_owned: owned[rank].len(),
                owner: owned[rank].iter().map(|&i| place[i]).collect(),
            };
            for (j, &r) in positions.iter().enumerate() {
                for a in -2i32..=2 {
                    for b in -2i32..=2 {
                        for c in -2i32..=2 {
                            if place[j].0 == rank && (a, b, c) == (0, 0, 0) {
                                continue;
                            }
                            let shift = cell.shift_vector([a, b, c]);
                            let image = [r[0] + shift[0], r[1] + shift[1], r[2] + shift[2]];
                            let near = domain.positions[..domain.n_owned].iter().any(|p| {
                                (0..3).map(|x| (p[x] - image[x]).powi(2)).sum::<f64>()
                                    <= reach * reach
                            });
                            if near {
                                domain.numbers.push(numbers[j]);
                                domain.positions.push(image);
                                domain.owner.push(place[j]);
                            }
                        }
                    }
                }
            }
            domain
        })
        .collect()
}

/// Every rank's rows and ghost owners, shared; barriers between publishing and reading.
struct Shared {
    rows: Mutex<Vec<Vec<f64>>>,
    owners: Vec<Vec<(usize, usize)>>,
    n_owned: Vec<usize>,
    barrier: Barrier,
}

struct RankExchange {
    rank: usize,
    shared: Arc<Shared>,
    calls: usize,
    /// The owned rows some rank's ghost copies, when the exchange says which.
    sent_rows: Option<Vec<usize>>,
}

impl RankExchange {
    fn publish(&self, rows: &[f64]) -> Vec<Vec<f64>> {
        self.shared.rows.lock().unwrap()[self.rank] = rows.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.rows.lock().unwrap().clone();
        self.shared.barrier.wait();
        all
    }
}

impl GhostExchange for RankExchange {
    fn forward(&mut self, rows: &mut [f64], width: usize) -> painn::Result<()> {
        let all = self.publish(rows);
        let owners = &self.shared.owners[self.rank];
        for i in self.shared.n_owned[self.rank]..owners.len() {
            let (rank, index) = owners[i];
            rows[i * width..(i + 1) * width]
                .copy_from_slice(&all[rank][index * width..(index + 1) * width]);
        }
        self.calls += 1;
        Ok(())
    }

    fn reverse(&mut self, rows: &mut [f64], width: usize) -> painn::Result<()> {
        let all = self.publish(rows);
        // Every rank's ghost rows owned by this rank, added in a fixed order.
        for (k, owners) in self.shared.owners.iter().enumerate() {
            for g in self.shared.n_owned[k]..owners.len() {
                let (rank, index) = owners[g];
                if rank == self.rank {
                    for x in 0..width {
                        rows[index * width + x] += all[k][g * width + x];
                    }
                }
            }
        }
        self.calls += 1;
        Ok(())
    }

    fn sent_rows(&self) -> Option<&[usize]> {
        self.sent_rows.as_deref()
    }
}

/// Energy, forces (ghosts' added to their owners, in the global order) and virial of the
/// split system, and the exchanges each rank made (`None`: the platform is not here).
#[allow(clippy::type_complexity)]
fn split_evaluation(
    platform: Platform,
    model: &Arc<Model>,
    numbers: &[i32],
    positions: &[[f64; 3]],
    lattice: [[f64; 3]; 3],
    bounds: &[f64],
    with_sent_rows: bool,
) -> Option<(f64, Vec<[f64; 3]>, [[f64; 3]; 3], Vec<usize>)> {
    let reach = model.cutoff_angstrom() + 1.0;
    let split = domains(numbers, positions, lattice, bounds, reach);
    let ranks = split.len();
    let shared = Arc::new(Shared {
        rows: Mutex::new(vec![Vec::new(); ranks]),
        owners: split.iter().map(|d| d.owner.clone()).collect(),
        n_owned: split.iter().map(|d| d.n_owned).collect(),
        barrier: Barrier::new(ranks),
    });
    // Each rank's owned rows that some ghost copies (a rank's own periodic images too).
    let mut sent = vec![vec![false; 0]; ranks];
    for (rank, domain) in split.iter().enumerate() {
        sent[rank] = vec![false; domain.n_owned];
    }
    for domain in &split {
        for &(rank, index) in &domain.owner[domain.n_owned..] {
            sent[rank][index] = true;
        }
    }
    let sent_rows: Vec<Vec<usize>> = sent
        .iter()
        .map(|marks| (0..marks.len()).filter(|&i| marks[i]).collect())
        .collect();
    let calculators: Vec<Calculator> = (0..ranks)
        .map(|_| platform.calculator(model))
        .collect::<Option<_>>()?;
    let results: Vec<(Results, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = split
            .iter()
            .zip(calculators)
            .enumerate()
            .map(|(rank, (domain, mut calculator))| {
                let shared = Arc::clone(&shared);
                let sent_rows = with_sent_rows.then(|| sent_rows[rank].clone());
                scope.spawn(move || {
                    let mut exchange = RankExchange {
                        rank,
                        shared,
                        calls: 0,
                        sent_rows,
                    };
                    let results = calculator
                        .compute_local_exchanging(
                            &domain.numbers,
                            &domain.positions,
                            domain.n_owned,
                            Request::ENERGY_FORCES_VIRIAL,
                            &mut exchange,
                        )
                        .unwrap();
                    (results, exchange.calls)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Global index of each rank's owned atoms.
    let mut global = vec![Vec::new(); ranks];
    for (i, &r) in positions.iter().enumerate() {
        let f = first_fraction(r, lattice);
        let rank = (0..ranks)
            .find(|&k| bounds[k] <= f && f < bounds[k + 1])
            .unwrap();
        global[rank].push(i);
    }
    let mut energy = 0.0;
    let mut forces = vec![[0.0; 3]; positions.len()];
    let mut virial = [[0.0; 3]; 3];
    let mut calls = Vec::new();
    for (rank, (result, exchanges)) in results.iter().enumerate() {
        energy += result.energy;
        for (i, f) in result.forces.iter().enumerate() {
            let (owner_rank, index) = split[rank].owner[i];
            let target = global[owner_rank][index];
            for x in 0..3 {
                forces[target][x] += f[x];
            }
        }
        for a in 0..3 {
            for b in 0..3 {
                virial[a][b] += result.virial[a][b];
            }
        }
        calls.push(*exchanges);
    }
    Some((energy, forces, virial, calls))
}

fn check_against_periodic(
    platform: Platform,
    model: Model,
    numbers: &[i32],
    positions: &[[f64; 3]],
    lattice: [[f64; 3]; 3],
    with_sent_rows: bool,
) {
    let model = Arc::new(model);
    let cell = Cell::new(lattice, [true; 3]).unwrap();
    let mut calculator = Calculator::new(model.clone(), Device::Cpu, Precision::F64).unwrap();
    let reference = calculator
        .compute(numbers, positions, &cell, Request::ENERGY_FORCES_VIRIAL)
        .unwrap();
    let layers = model.layers();
    for bounds in [
        vec![0.0, 1.0],
        vec![0.0, 0.5, 1.0],
        vec![0.0, 0.3, 0.55, 1.0],
        vec![0.0, 0.0, 0.6, 1.0],
    ] {
        let Some((energy, forces, virial, calls)) = split_evaluation(
            platform,
            &model,
            numbers,
            positions,
            lattice,
            &bounds,
            with_sent_rows,
        ) else {
            return;
        };
        let scale = rms(&reference.forces);
        let force_error = max_abs_difference(&forces, &reference.forces);
        let energy_error = (energy - reference.energy).abs();
        let virial_error = max_abs_difference(&virial, &reference.virial);
        println!(
            "{platform:?}, {} ranks (bounds {bounds:?}), sent rows listed: {with_sent_rows}: |dE| = {energy_error:.1e} eV, max |dF| = \
             {force_error:.1e} eV/A, max |dW| = {virial_error:.1e} eV, exchanges {calls:?}",
            bounds.len() - 1
        );
        let tolerance = platform.tolerance();
        assert!(energy_error <= tolerance * reference.energy.abs().max(1.0));
        assert!(force_error <= tolerance * scale.max(1.0));
        assert!(virial_error <= tolerance * reference.energy.abs().max(1.0));
        // One forward exchange between layers, one reverse in the backward pass.
        assert!(calls.iter().all(|&c| c == 2 * (layers - 1)), "{calls:?}");
    }
}

fn split_evaluation_equals_one_periodic_evaluation_tiny_model(platform: Platform) {
    let (numbers, positions, lattice) = random_system(21, 40, 10);
    for with_sent_rows in [false, true] {
        check_against_periodic(
            platform,
            tiny_model(),
            &numbers,
            &positions,
            lattice,
            with_sent_rows,
        );
    }
}

fn split_evaluation_equals_one_periodic_evaluation_student_model(platform: Platform) {
    let Some(student) =
        student_model("split_evaluation_equals_one_periodic_evaluation_student_model")
    else {
        return;
    };
    let water = water_box(3, 5);
    check_against_periodic(
        platform,
        student,
        &water.atomic_numbers,
        &water.positions,
        water.cell.unwrap(),
        true,
    );
}
