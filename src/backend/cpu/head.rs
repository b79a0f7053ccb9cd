//! Stages `head_energy` and `head_backward` on the CPU (mirror `cuda/head.rs` and
//! `cuda/head.cu`): the energy head `E_i = W3 silu(W2 silu(W1 s_i + b1) + b2) + b3` on each
//! atom's final scalar features, and its gradient.

use super::dense::Dense;
use super::real::Real;
use super::schedule::Schedule;
use super::update::{silu_derivative_from, silu_keeping_sigmoid};

/// The head's activations, kept for its backward pass, and its gradients.
#[derive(Default)]
pub struct HeadState<T> {
    /// Pre-activations `[n][H/2]`, `[n][H/4]`, their sigmoids and activations.
    pre: [Vec<T>; 2],
    sigmoid: [Vec<T>; 2],
    act: [Vec<T>; 2],
    /// Gradients of the pre-activations.
    g: [Vec<T>; 2],
}

/// Per-atom energies `energies [n]` from the final scalar features `s_final [n][H]`.
pub fn head_energy<T: Real>(
    schedule: Schedule,
    head: &[Dense<T>; 3],
    s_final: &[T],
    state: &mut HeadState<T>,
    energies: &mut Vec<T>,
) {
    let n = s_final.len() / head[0].n_in;
    let HeadState {
        pre, sigmoid, act, ..
    } = state;
    pre[0].resize(n * head[0].n_out, T::zero());
    head[0].forward(schedule, s_final, &mut pre[0]);
    silu_keeping_sigmoid(&pre[0], &mut sigmoid[0], &mut act[0]);
    pre[1].resize(n * head[1].n_out, T::zero());
    head[1].forward(schedule, &act[0], &mut pre[1]);
    silu_keeping_sigmoid(&pre[1], &mut sigmoid[1], &mut act[1]);
    energies.resize(n, T::zero());
    head[2].forward(schedule, &act[1], energies);
}

/// `gs [n][H] = dE/ds_final`, where `E` sums the energies of atoms `0..n_energy_atoms`
/// (the others, ghosts, have `dE/dE_i = 0`).
pub fn head_backward<T: Real>(
    schedule: Schedule,
    head: &[Dense<T>; 3],
    n_atoms: usize,
    n_energy_atoms: usize,
    state: &mut HeadState<T>,
    gs: &mut Vec<T>,
) {
    let n = n_atoms;
    let (q, p) = (head[2].n_in, head[1].n_in);
    let HeadState {
        pre, sigmoid, g, ..
    } = state;
    g[1].resize(n * q, T::zero());
    let (pre1, sigmoid1) = (&pre[1], &sigmoid[1]);
    schedule.for_each_chunk(&mut g[1], q, |i, g| {
        let weight = if i < n_energy_atoms {
            T::one()
        } else {
            T::zero()
        };
        for c in 0..q {
            let k = i * q + c;
            g[c] = weight * head[2].weight[c] * silu_derivative_from(pre1[k], sigmoid1[k]);
        }
    });
    g[0].resize(n * p, T::zero());
    let [g0, g1] = g;
    head[1].backward(schedule, g1, g0, false);
    for ((g, &pre), &sigmoid) in g0.iter_mut().zip(&pre[0]).zip(&sigmoid[0]) {
        *g *= silu_derivative_from(pre, sigmoid);
    }
    gs.resize(n * head[0].n_in, T::zero());
    head[0].backward(schedule, g0, gs, false);
}
