//! `Backend::inspect` on the GPU (test support): downloads a stage's output and widens it to
//! float64, with the array names, shapes and layouts of the CPU backend's `inspect`.

use super::buffers::{DeviceBuffer, DevicePtr};
use super::device::Device;
use super::{CudaBackend, Progress};
use crate::backend::{GEOMETRY_WIDTH, Stage, StageOutput, inspected_layer, not_kept};
use crate::error::{Error, Result};

/// Copies `stage`'s output of the last evaluation to the host.
pub fn inspect(backend: &CudaBackend, stage: Stage) -> Result<StageOutput> {
    let n = backend.n_atoms();
    let h = backend.hidden;
    let b = &backend.buffers;
    let n_layers = b.layers.len();
    let device = &backend.gpu.device;
    let mut output = StageOutput::default();
    let layer_index = |layer: usize| inspected_layer(layer, n_layers);
    let missing = not_kept;
    let computed = |stage: Progress, what: &str| {
        backend
            .require(stage, what)
            .map_err(|_| Error::invalid("stage", format!("{what} was not computed")))
    };
    let kept = &backend.kept;
    let kept_for_this_evaluation = kept.atoms == Some(n) && backend.progress == Progress::Backward;
    let mut floats = |name, shape: &[usize], buffer: &DeviceBuffer<f32>| -> Result<()> {
        let values = device.download_vec(buffer.ptr(), shape.iter().product())?;
        output.push(name, shape, &values);
        Ok(())
    };
    match stage {
        Stage::NeighborList => {
            if backend.list_atoms != Some(n) {
                return Err(missing("no neighbour list"));
            }
            let list = &b.list;
            let offsets = download_offsets(device, list.offsets.ptr(), n)?;
            let edges = offsets[n];
            let sources: Vec<i32> = device.download_vec(list.sources.ptr(), edges)?;
            let shifts: Vec<i32> = device.download_vec(list.shifts.ptr(), 3 * edges)?;
            output.push_indices("offsets", &[n + 1], &offsets);
            output.push("sources", &[edges], &sources);
            output.push("shifts", &[edges, 3], &shifts);
        }
        Stage::Graph => {
            computed(Progress::Graph, "the graph")?;
            let graph = &b.graph;
            let offsets = download_offsets(device, graph.offsets.ptr(), n)?;
            let edges = offsets[n];
            let sources: Vec<i32> = device.download_vec(graph.sources.ptr(), edges)?;
            let reverse: Vec<i32> = device.download_vec(graph.reverse.ptr(), edges)?;
            let geometry: Vec<f32> =
                device.download_vec(graph.geometry.ptr(), GEOMETRY_WIDTH * edges)?;
            let rows = geometry.chunks_exact(GEOMETRY_WIDTH);
            let distances: Vec<f32> = rows.clone().map(|g| g[0]).collect();
            let directions: Vec<f32> = rows.flat_map(|g| [g[1], g[2], g[3]]).collect();
            output.push_indices("offsets", &[n + 1], &offsets);
            output.push("sources", &[edges], &sources);
            output.push("reverse", &[edges], &reverse);
            output.push("distances", &[edges], &distances);
            output.push("directions", &[edges, 3], &directions);
        }
        Stage::Embedding => {
            computed(Progress::Forward, "the embedding")?;
            floats("s", &[n, h], &b.layers[0].s_in)?;
        }
        Stage::Message { layer } => {
            computed(Progress::Forward, "the message")?;
            let state = &b.layers[layer_index(layer)?];
            floats("s_mid", &[n, h], &state.s_mid)?;
            floats("v_mid", &[n, 3, h], &state.v_mid)?;
        }
        Stage::Update { layer } => {
            computed(Progress::Forward, "the update")?;
            if layer_index(layer)? + 1 == n_layers {
                floats("s_out", &[n, h], &b.s_final)?;
            } else {
                let next = &b.layers[layer + 1];
                floats("s_out", &[n, h], &next.s_in)?;
                floats("v_out", &[n, 3, h], &next.v_in)?;
            }
        }
        Stage::Head => {
            computed(Progress::Forward, "the energy head")?;
            floats("energies", &[n], &b.head.energies)?;
        }
        Stage::HeadBackward => {
            if !kept_for_this_evaluation {
                return Err(missing("the head's gradient"));
            }
            floats("gs", &[n, h], &kept.head_gs)?;
        }
        Stage::UpdateBackward { layer } => {
            let layer = layer_index(layer)?;
            if !kept_for_this_evaluation {
                return Err(missing("the update's gradient"));
            }
            let (gs, gv) = &kept.update[layer];
            floats("gs_mid", &[n, h], gs)?;
            floats("gv_mid", &[n, 3, h], gv)?;
        }
        Stage::MessageBackward { layer } => {
            let layer = layer_index(layer)?;
            if !kept_for_this_evaluation || layer == 0 {
                return Err(missing("the message's input gradient (layers above 0)"));
            }
            let (gs, gv) = &kept.message[layer];
            floats("gs_in", &[n, h], gs)?;
            floats("gv_in", &[n, 3, h], gv)?;
        }
        Stage::EdgeGradients => {
            computed(Progress::Backward, "the edge gradients")?;
            let edges = download_offsets(device, b.graph.offsets.ptr(), n)?[n];
            floats("de_dr", &[edges, 3], &b.gradients.de_dr)?;
        }
    }
    Ok(output)
}

/// CSR offsets `[n + 1]` (no download for an empty system, whose buffers are not written).
fn download_offsets(device: &Device, offsets: DevicePtr<i64>, n: usize) -> Result<Vec<usize>> {
    if n == 0 {
        return Ok(vec![0]);
    }
    let values: Vec<i64> = device.download_vec(offsets, n + 1)?;
    Ok(values.into_iter().map(|o| o as usize).collect())
}
