//! The small-system path (kernels in `cuda/small.cu`): the whole forward pass in one launch
//! and the whole backward pass in another, each one thread-block cluster whose stages are
//! separated by cluster barriers. A benzene call is bound by the chain of about 40 dependent
//! kernels of the staged path (`docs/gpu-bounds.md`); these two launches compute the same
//! values (some sums in another fixed order: equal to float32 round-off) into the same
//! buffers, so the readout, the stage inspection and the staged backward pass work after
//! either forward pass.

use cudarc::driver::DeviceRepr;

use super::Gpu;
use super::buffers::{Buffers, DevicePtr, Weights};
use super::grid::{SMALL_EDGE_PARTS, SMALL_MAX_HIDDEN, SMALL_MAX_LAYERS};
use crate::error::Result;

/// Systems of at most this many atoms (owned and ghost) take the small-system path. On an
/// H200 it was faster for benzene (12 atoms: 157-160 us per call against 185-186 staged) and
/// slower for a 48-atom cluster (449-454 against 410-416 us): a few lanes walk every row's
/// edges, and the dense layers reload their weights per group of rows. The limit stays below
/// the crossing of the two (about 27 atoms if both grow linearly; `docs/gpu-bounds.md`).
pub(crate) const SMALL_SYSTEM_MAX_ATOMS: usize = 16;

/// One layer's weights and buffers, as `struct SmallLayer` of cuda/small.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct SmallLayer {
    table: DevicePtr<f32>,
    hidden_weight: DevicePtr<f32>,
    hidden_bias: DevicePtr<f32>,
    out_weight: DevicePtr<f32>,
    out_bias: DevicePtr<f32>,
    mixing: DevicePtr<f32>,
    s_in: DevicePtr<f32>,
    v_in: DevicePtr<f32>,
    s_mid: DevicePtr<f32>,
    v_mid: DevicePtr<f32>,
    norm: DevicePtr<f32>,
    update_pre: DevicePtr<f32>,
    update_out: DevicePtr<f32>,
}

impl SmallLayer {
    fn null() -> SmallLayer {
        let null = DevicePtr::null();
        SmallLayer {
            table: null,
            hidden_weight: null,
            hidden_bias: null,
            out_weight: null,
            out_bias: null,
            mixing: null,
            s_in: null,
            v_in: null,
            s_mid: null,
            v_mid: null,
            norm: null,
            update_pre: null,
            update_out: null,
        }
    }
}

/// Everything the two kernels read and write, passed by value: `struct SmallModel` of
/// cuda/small.cu, field for field.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SmallModel {
    n: i32,
    n_energy: i32,
    h: i32,
    n_layers: i32,
    edge_round_off: f32,
    spacing: f32,
    offsets: DevicePtr<i64>,
    sources: DevicePtr<i32>,
    geometry: DevicePtr<f32>,
    atomic_numbers: DevicePtr<i32>,
    embedding: DevicePtr<f32>,
    concat: DevicePtr<f32>,
    hidden: DevicePtr<f32>,
    s_final: DevicePtr<f32>,
    head_weight: [DevicePtr<f32>; 3],
    head_bias: [DevicePtr<f32>; 3],
    head_pre: [DevicePtr<f32>; 2],
    head_act: [DevicePtr<f32>; 2],
    head_g: [DevicePtr<f32>; 2],
    energies: DevicePtr<f32>,
    gs: DevicePtr<f32>,
    gv: DevicePtr<f32>,
    gs_mid: DevicePtr<f32>,
    gv_mid: DevicePtr<f32>,
    g_update: DevicePtr<f32>,
    g_hidden: DevicePtr<f32>,
    de_dr: DevicePtr<f32>,
    edge_partials: DevicePtr<f32>,
    layers: [SmallLayer; SMALL_MAX_LAYERS],
}

// SAFETY: plain integers, floats and device addresses in the C layout of the kernels' struct.
unsafe impl DeviceRepr for SmallModel {}

/// Whether a system of `n_atoms` takes the small-system path with these weights on a GPU
/// that runs the kernels as clusters of `cluster_blocks` blocks (0: it cannot): at most
/// [`SMALL_SYSTEM_MAX_ATOMS`] atoms, at most `SMALL_MAX_LAYERS` layers and
/// `SMALL_MAX_HIDDEN` features, update widths those the kernels assume (3H, and H for the
/// last layer).
pub fn takes_small_path(
    cluster_blocks: u32,
    weights: &Weights,
    n_atoms: usize,
    hidden: usize,
) -> bool {
    let layers = &weights.layers;
    let widths_fit = layers.iter().enumerate().all(|(l, layer)| {
        let expected = if l + 1 == layers.len() {
            hidden
        } else {
            3 * hidden
        };
        layer.update_width == expected
    });
    cluster_blocks >= 2
        && (1..=SMALL_SYSTEM_MAX_ATOMS).contains(&n_atoms)
        && (1..=SMALL_MAX_LAYERS).contains(&layers.len())
        && hidden <= SMALL_MAX_HIDDEN
        && widths_fit
}

/// The kernels' view of `buffers` and `weights` for `n` atoms (`n_energy` of them owned),
/// for `Kernels::launch_small`: the forward pass (every layer's input, message, update and
/// gates, the head's activations and the per-atom energies) or the backward pass (from the
/// head's gradient to every edge's `dE/dr` in `de_dr`, cleared first), in the buffers the
/// staged path writes. `edge_round_off_angstrom` is read by the forward pass only.
pub fn kernel_view(
    buffers: &Buffers,
    weights: &Weights,
    n: usize,
    n_energy: usize,
    hidden: usize,
    edge_round_off_angstrom: f32,
) -> SmallModel {
    let b = buffers;
    let g = &b.gradients;
    let mut layers = [SmallLayer::null(); SMALL_MAX_LAYERS];
    for (l, (slot, (layer, lw))) in layers
        .iter_mut()
        .zip(b.layers.iter().zip(&weights.layers))
        .enumerate()
    {
        *slot = SmallLayer {
            table: weights.filter_table(l),
            hidden_weight: lw.update_hidden.weight.ptr(),
            hidden_bias: lw.update_hidden.bias.ptr(),
            out_weight: lw.update_out.weight.ptr(),
            out_bias: lw.update_out.bias.ptr(),
            mixing: lw.mixing.ptr(),
            s_in: layer.s_in.ptr(),
            v_in: layer.v_in.ptr(),
            s_mid: layer.s_mid.ptr(),
            v_mid: layer.v_mid.ptr(),
            norm: layer.norm.ptr(),
            update_pre: layer.update_pre.ptr(),
            update_out: layer.update_out.ptr(),
        };
    }
    let head = &weights.head;
    SmallModel {
        n: n as i32,
        n_energy: n_energy as i32,
        h: hidden as i32,
        n_layers: weights.layers.len() as i32,
        edge_round_off: edge_round_off_angstrom,
        spacing: weights.filter_spacing_angstrom as f32,
        offsets: b.graph.offsets.ptr(),
        sources: b.graph.sources.ptr(),
        geometry: b.graph.geometry.ptr(),
        atomic_numbers: b.system.atomic_numbers.ptr(),
        embedding: weights.embedding.ptr(),
        concat: b.concat.ptr(),
        hidden: b.hidden.ptr(),
        s_final: b.s_final.ptr(),
        head_weight: [0, 1, 2].map(|k| head[k].weight.ptr()),
        head_bias: [0, 1, 2].map(|k| head[k].bias.ptr()),
        head_pre: [0, 1].map(|k| b.head.pre[k].ptr()),
        head_act: [0, 1].map(|k| b.head.act[k].ptr()),
        head_g: [0, 1].map(|k| b.head.g[k].ptr()),
        energies: b.head.energies.ptr(),
        gs: g.gs.ptr(),
        gv: g.gv.ptr(),
        gs_mid: g.gs_mid.ptr(),
        gv_mid: g.gv_mid.ptr(),
        g_update: g.g_update.ptr(),
        g_hidden: g.g_hidden.ptr(),
        de_dr: g.de_dr.ptr(),
        edge_partials: b.edge_partials.ptr(),
        layers,
    }
}

/// Sizes the backward pass's per-edge sums for the graph's edge capacity (before a
/// recorded launch: a reallocation changes the registry's generation and so the record).
pub fn reserve_small_backward(gpu: &Gpu, buffers: &mut Buffers, hidden: usize) -> Result<()> {
    // Four sums per edge for each group of 32 / SMALL_EDGE_PARTS features.
    let length = 4 * (hidden * SMALL_EDGE_PARTS / 32) * buffers.edge_capacity.max(1);
    gpu.registry.reserve(&mut buffers.edge_partials, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of `struct SmallModel` in cuda/small.cu: 4 ints, 2 floats, then pointers.
    #[test]
    fn small_model_has_the_kernels_layout() {
        let pointers = 8 + 3 + 3 + 2 + 2 + 2 + 1 + 8;
        let layer = 13 * 8;
        assert_eq!(std::mem::size_of::<SmallLayer>(), layer);
        assert_eq!(
            std::mem::size_of::<SmallModel>(),
            24 + 8 * pointers + SMALL_MAX_LAYERS * layer
        );
        assert_eq!(std::mem::align_of::<SmallModel>(), 8);
    }
}
