//! Stages `head_energy` and `head_backward` on the GPU (mirror `cpu/head.rs`; kernels in
//! `cuda/head.cu`, the head's products and activations in `cuda/dense.cu`): the energy head
//! `E_i = W3 silu(W2 silu(W1 s_i + b1) + b2) + b3` on each atom's final scalar features, and
//! its gradient.

use super::Gpu;
use super::buffers::{DeviceBuffer, HeadBuffers, LinearWeights};
use super::launch::{grid_stride, per_atom};
use crate::error::Result;

/// Per-atom energies `head.energies [n]` from the final scalar features `s_final [n][H]`.
pub fn head_energy(
    gpu: &Gpu,
    n: usize,
    h: usize,
    weights: &[LinearWeights; 3],
    s_final: &DeviceBuffer<f32>,
    head: &HeadBuffers,
) -> Result<()> {
    let k = &gpu.kernels;
    let (half, quarter) = (h / 2, h / 4);
    let [first, second, last] = weights;
    k.linear(
        n,
        half,
        h,
        s_final,
        &first.weight,
        &first.bias,
        &head.pre[0],
        Some(&head.act[0]),
    )?;
    k.linear(
        n,
        quarter,
        half,
        &head.act[0],
        &second.weight,
        &second.bias,
        &head.pre[1],
        Some(&head.act[1]),
    )?;
    k.head_energy(
        per_atom(n),
        n as i32,
        quarter as i32,
        &head.act[1],
        &last.weight,
        &last.bias,
        &head.energies,
    )
}

/// `gs = dE/ds_final [n][H]`, where atoms `n_energy_atoms..n` (ghosts) contribute nothing.
pub fn head_backward(
    gpu: &Gpu,
    n: usize,
    n_energy_atoms: usize,
    h: usize,
    weights: &[LinearWeights; 3],
    head: &HeadBuffers,
    gs: &DeviceBuffer<f32>,
) -> Result<()> {
    let k = &gpu.kernels;
    let (half, quarter) = (h / 2, h / 4);
    let [first, second, last] = weights;
    k.head_backward(
        grid_stride(n * quarter),
        n as i32,
        n_energy_atoms as i32,
        quarter as i32,
        &last.weight,
        &head.pre[1],
        &head.g[1],
    )?;
    let silu_pre = Some(&head.pre[0]);
    k.linear_backward(
        n,
        half,
        quarter,
        &head.g[1],
        &second.weight,
        &head.g[0],
        silu_pre,
    )?;
    k.linear_backward(n, h, half, &head.g[0], &first.weight, gs, None)
}
