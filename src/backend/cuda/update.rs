//! Stages `embed`, `norm_concat`, `update_mlp`, `gate_forward` and backward `gate_backward`,
//! `update_mlp_backward`, `norm_backward` on the GPU (mirror `cpu/update.rs`; kernels in
//! `cuda/update.cu`, the MLP's products and activations in `cuda/dense.cu`): the per-atom
//! work of each layer, one thread per (atom, feature) in grid-stride loops.

use super::Gpu;
use super::buffers::{DeviceBuffer, DevicePtr, Gradients, LayerBuffers, LayerWeights};
use super::launch::grid_stride;
use crate::error::Result;

/// `s[i] = embedding[z_i]`, `[n][H]`.
pub fn embed(
    gpu: &Gpu,
    n: usize,
    h: usize,
    atomic_numbers: &DeviceBuffer<i32>,
    embedding: &DeviceBuffer<f32>,
    s: &DeviceBuffer<f32>,
) -> Result<()> {
    let (n_i32, h_i32) = (n as i32, h as i32);
    gpu.kernels.embed(
        grid_stride(n * h),
        n_i32,
        h_i32,
        atomic_numbers,
        embedding,
        s,
    )
}

/// `norm = |v_mid|` and the update MLP's input `concat = [s_mid, norm]`, `[n][2H]`; features
/// of `v_mid` zero to round-off (`NORM_ROUND_OFF_FACTOR`) are set to 0 first.
pub fn norm_concat(
    gpu: &Gpu,
    n: usize,
    h: usize,
    layer: &LayerBuffers,
    concat: &DeviceBuffer<f32>,
) -> Result<()> {
    let (n_i32, h_i32) = (n as i32, h as i32);
    gpu.kernels.norm_concat(
        grid_stride(n * h),
        n_i32,
        h_i32,
        &layer.s_mid,
        &layer.v_mid,
        &layer.norm,
        concat,
    )
}

/// The update MLP: `update_out = W2 silu(W1 concat + b1) + b2`, keeping the pre-activation
/// in `update_pre` (`hidden` receives the activation, from the first product's epilogue).
pub fn update_mlp(
    gpu: &Gpu,
    n: usize,
    h: usize,
    weights: &LayerWeights,
    concat: &DeviceBuffer<f32>,
    layer: &LayerBuffers,
    hidden: &DeviceBuffer<f32>,
) -> Result<()> {
    let (k, w) = (&gpu.kernels, weights);
    k.linear(
        n,
        h,
        2 * h,
        concat,
        &w.update_hidden.weight,
        &w.update_hidden.bias,
        &layer.update_pre,
        Some(hidden),
    )?;
    k.linear(
        n,
        w.update_width,
        h,
        hidden,
        &w.update_out.weight,
        &w.update_out.bias,
        &layer.update_out,
        None,
    )
}

/// The gates into the next layer's input `(s_next, v_next)`; `v_next` is null after the last
/// layer, whose vector output is unused.
pub fn gate_forward(
    gpu: &Gpu,
    n: usize,
    h: usize,
    weights: &LayerWeights,
    layer: &LayerBuffers,
    s_next: DevicePtr<f32>,
    v_next: DevicePtr<f32>,
) -> Result<()> {
    let (n_i32, h_i32) = (n as i32, h as i32);
    gpu.kernels.gate_forward(
        grid_stride(n * h),
        n_i32,
        h_i32,
        weights.update_width as i32,
        &layer.s_mid,
        &layer.v_mid,
        &layer.update_out,
        &weights.mixing,
        s_next,
        v_next,
    )
}

/// Backward of the gates: from `(gs, gv)`, the gradient of the MLP output `g_update` and
/// the gates' share of `gv_mid`.
pub fn gate_backward(
    gpu: &Gpu,
    n: usize,
    h: usize,
    weights: &LayerWeights,
    layer: &LayerBuffers,
    last: bool,
    gradients: &Gradients,
) -> Result<()> {
    let g = gradients;
    let (n_i32, h_i32) = (n as i32, h as i32);
    gpu.kernels.gate_backward(
        grid_stride(n * h),
        n_i32,
        h_i32,
        weights.update_width as i32,
        last as i32,
        &layer.v_mid,
        &layer.update_out,
        &weights.mixing,
        &g.gs,
        &g.gv,
        &g.g_update,
        &g.gv_mid,
    )
}

/// Backward of the update MLP: `g_update` to `g_concat` through `g_hidden` (the activation's
/// derivative applied in the first product's epilogue).
pub fn update_mlp_backward(
    gpu: &Gpu,
    n: usize,
    h: usize,
    weights: &LayerWeights,
    layer: &LayerBuffers,
    gradients: &Gradients,
) -> Result<()> {
    let (k, w, g) = (&gpu.kernels, weights, gradients);
    k.linear_backward(
        n,
        h,
        w.update_width,
        &g.g_update,
        &w.update_out.weight,
        &g.g_hidden,
        Some(&layer.update_pre),
    )?;
    k.linear_backward(
        n,
        2 * h,
        h,
        &g.g_hidden,
        &w.update_hidden.weight,
        &g.g_concat,
        None,
    )
}

/// Backward of `norm_concat`: `gs_mid = gs + g_concat[:, :H]`, and the norm's share added to
/// `gv_mid`.
pub fn norm_backward(
    gpu: &Gpu,
    n: usize,
    h: usize,
    layer: &LayerBuffers,
    gradients: &Gradients,
) -> Result<()> {
    let g = gradients;
    let (n_i32, h_i32) = (n as i32, h as i32);
    gpu.kernels.norm_backward(
        grid_stride(n * h),
        n_i32,
        h_i32,
        &g.gs,
        &g.g_concat,
        &layer.norm,
        &layer.v_mid,
        &g.gs_mid,
        &g.gv_mid,
    )
}
