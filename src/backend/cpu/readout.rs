//! Stage `readout` on the CPU (mirrors `cuda/readout.rs` and `cuda/readout.cu`): the energy,
//! and forces and virials from `dE/dr_ij` and each edge's reverse (a gather, no atomics),
//! accumulated in float64.

use super::graph::Graph;
use super::real::Real;
use super::schedule::Schedule;
use crate::backend::{Request, Results};

/// The requested results from per-atom energies `[n]` and `de_dr [n_edges][3]`.
pub fn readout<T: Real>(
    schedule: Schedule,
    graph: &Graph<T>,
    n_energy_atoms: usize,
    energies: &[T],
    de_dr: &[[T; 3]],
    request: Request,
) -> Results {
    let mut results = Results {
        energy: energies[..n_energy_atoms].iter().map(|e| e.f64()).sum(),
        ..Results::default()
    };
    if request.energies {
        results.energies = energies
            .iter()
            .enumerate()
            .map(|(i, e)| if i < n_energy_atoms { e.f64() } else { 0.0 })
            .collect();
    }
    if request.needs_backward() {
        forces_virials(schedule, graph, de_dr, request, &mut results);
    }
    results
}

/// Forces, virial and per-atom virials from `dE/dr_ij` (float64 accumulation).
fn forces_virials<T: Real>(
    schedule: Schedule,
    graph: &Graph<T>,
    de_dr: &[[T; 3]],
    request: Request,
    results: &mut Results,
) {
    let n = graph.n_atoms();
    let vectors = &graph.vectors;
    let gradient = |e: usize| -> [f64; 3] { de_dr[e].map(|v| v.f64()) };
    if request.forces {
        results.forces = schedule.map_indices(n, |i| {
            let mut f = [0.0; 3];
            for e in graph.row(i) {
                let (g, g_reverse) = (gradient(e), gradient(graph.reverse[e] as usize));
                for x in 0..3 {
                    f[x] += g[x] - g_reverse[x];
                }
            }
            f
        });
    }
    // Per-atom virial: each edge's r_ij (x) f_ij split half to each end, f_ij = -dE/dr_ij.
    if request.atom_virials {
        results.atom_virials = schedule.map_indices(n, |i| {
            let mut w = [[0.0; 3]; 3];
            for e in graph.row(i) {
                let (g, g_reverse) = (gradient(e), gradient(graph.reverse[e] as usize));
                let r = vectors[e];
                for a in 0..3 {
                    for b in 0..3 {
                        w[a][b] -= 0.5 * r[a] * (g[b] - g_reverse[b]);
                    }
                }
            }
            w
        });
    }
    if request.virial {
        // Summed edge by edge in row order, not from the per-atom halves, so that the
        // virial is exactly sum over edges of r_ij (x) f_ij.
        let mut w = [[0.0; 3]; 3];
        for (e, r) in vectors.iter().enumerate() {
            let g = gradient(e);
            for a in 0..3 {
                for b in 0..3 {
                    w[a][b] -= r[a] * g[b];
                }
            }
        }
        results.virial = w;
    }
}
