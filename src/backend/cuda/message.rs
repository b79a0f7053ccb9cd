//! Stages `message_forward` and `message_backward` on the GPU (mirror `cpu/message.rs`;
//! kernels in `cuda/message.cu`): one block per receiver, one thread per feature, the radial
//! filter interpolated from the layer's part of the filter table, every row summed in order.

use super::Gpu;
use super::buffers::{DeviceBuffer, DevicePtr, Gradients, GraphBuffers, LayerBuffers};
use super::launch::per_row;
use crate::error::Result;

/// One layer's message: `(s_in, v_in)` to `(s_mid, v_mid)` of `layer`, with `table` the
/// layer's filter table (the first layer's `v_in` is zero and skipped), and `v_mid`'s
/// round-off estimate in the norm half of `concat` (`edge_round_off_angstrom`: that of the
/// edge vectors).
#[allow(clippy::too_many_arguments)]
pub fn message_forward(
    gpu: &Gpu,
    n: usize,
    h: usize,
    graph: &GraphBuffers,
    table: DevicePtr<f32>,
    layer: &LayerBuffers,
    first_layer: bool,
    edge_round_off_angstrom: f32,
    concat: &DeviceBuffer<f32>,
) -> Result<()> {
    gpu.kernels.message_forward(
        per_row(n, h),
        h as i32,
        &graph.offsets,
        &graph.sources,
        &graph.geometry,
        table,
        &layer.s_in,
        &layer.v_in,
        first_layer as i32,
        edge_round_off_angstrom,
        &layer.s_mid,
        &layer.v_mid,
        concat,
    )
}

/// Backward of one layer's message: from `(gs_mid, gv_mid)` of `gradients`, adds each edge's
/// `dE/dr_ij` to `de_dr` and, when `need_inputs` (layers above 0), writes the gradient of the
/// layer's input to `(gs, gv)`. `spacing_angstrom` is the table's node spacing.
#[allow(clippy::too_many_arguments)]
pub fn message_backward(
    gpu: &Gpu,
    n: usize,
    h: usize,
    graph: &GraphBuffers,
    table: DevicePtr<f32>,
    spacing_angstrom: f32,
    layer: &LayerBuffers,
    gradients: &Gradients,
    need_inputs: bool,
) -> Result<()> {
    let g = gradients;
    gpu.kernels.message_backward(
        per_row(n, h),
        h as i32,
        &graph.offsets,
        &graph.sources,
        &graph.geometry,
        table,
        spacing_angstrom,
        &layer.s_in,
        &layer.v_in,
        &g.gs_mid,
        &g.gv_mid,
        need_inputs as i32,
        &g.gs,
        &g.gv,
        &g.de_dr,
    )
}
