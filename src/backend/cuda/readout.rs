//! Stage `readout` on the GPU (mirrors `cpu/readout.rs`; kernels in `cuda/readout.cu`): forces
//! and virials from `dE/dr_ij` and each edge's reverse (a gather, no atomics), the energy,
//! and the status words, packed in float64 and downloaded in one transfer:
//!
//! ```text
//! [status (STATUS_WORDS)] [energy] [virial (9)] [forces (3n)] [energies (n)] [atom virials (9n)]
//! ```

use super::Gpu;
use super::buffers::{Buffers, ListBuffers};
use super::device::PinnedBuffer;
use super::launch::{per_atom, reduce};
use crate::backend::{Request, Results};
use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::neighbors::{MINIMUM_DISTANCE_ANGSTROM, edge_vector};

/// Status words at the head of the results. Shared with the kernels.
pub(crate) const STATUS_WORDS: usize = 4;
/// Status word: an edge array was too small (cannot happen: the list's arrays are sized from
/// its count before they are filled). Shared with the kernels.
pub(crate) const STATUS_OVERFLOW: usize = 0;
/// Status word: the lowest list edge closer than the minimum distance, or [`NO_CLOSE_EDGE`].
/// Shared with the kernels.
pub(crate) const STATUS_CLOSE_EDGE: usize = 1;
/// [`STATUS_CLOSE_EDGE`] when no pair is too close. Shared with the kernels.
pub(crate) const NO_CLOSE_EDGE: i32 = i32::MAX;
/// Values before the forces: the status words, the energy and the virial. Shared with the
/// kernels.
pub(crate) const RESULTS_HEADER: usize = STATUS_WORDS + 10;

/// The readout's kernels: forces and virials (when `request` needs the backward pass), the
/// energies and the reductions, packed into `buffers.results` (queued, not waited for).
pub fn readout_kernels(
    gpu: &Gpu,
    buffers: &Buffers,
    n: usize,
    n_energy_atoms: usize,
    request: Request,
) -> Result<()> {
    let Gpu {
        device, kernels: k, ..
    } = gpu;
    let b = buffers;
    let atoms = per_atom(n);
    let (n_i32, n_energy) = (n as i32, n_energy_atoms as i32);
    if request.needs_backward() {
        k.forces_virials(
            atoms,
            n_i32,
            &b.graph.offsets,
            &b.graph.reverse,
            &b.graph.geometry,
            &b.gradients.de_dr,
            request.atom_virials as i32,
            &b.results,
            &b.row_virials,
        )?;
    } else {
        device.fill_zero(b.row_virials.ptr(), 9 * n)?;
    }
    k.energies_out(atoms, n_i32, n_energy, &b.head.energies, &b.results)?;
    k.reduce_results(
        reduce(),
        n_i32,
        n_energy,
        &b.head.energies,
        &b.row_virials,
        &b.system.status,
        &b.results,
    )
}

/// Downloads what [`readout_kernels`] packed (into `host`) and unpacks the results of
/// `request`. Fails when the status words report two atoms of the loaded `positions` in
/// `cell` closer than the minimum distance.
pub fn download_results(
    gpu: &Gpu,
    buffers: &Buffers,
    n: usize,
    request: Request,
    positions: &[[f64; 3]],
    cell: &Cell,
    host: &mut PinnedBuffer<f64>,
) -> Result<Results> {
    let b = buffers;
    let length = RESULTS_HEADER + 4 * n + if request.atom_virials { 9 * n } else { 0 };
    let host = host.slice(&gpu.device, length)?;
    gpu.device.download(b.results.ptr(), host)?;
    if host[STATUS_OVERFLOW] != 0.0 {
        return Err(Error::Cuda(
            "internal error: the neighbour list overflowed its edge arrays".into(),
        ));
    }
    let close_edge = host[STATUS_CLOSE_EDGE];
    if close_edge < NO_CLOSE_EDGE as f64 {
        return Err(too_close(
            gpu,
            &b.list,
            positions,
            cell,
            close_edge as usize,
        )?);
    }
    Ok(unpack(host, n, request))
}

fn unpack(host: &[f64], n: usize, request: Request) -> Results {
    let header = &host[STATUS_WORDS..RESULTS_HEADER];
    let mut results = Results {
        energy: header[0],
        ..Results::default()
    };
    if request.virial {
        for a in 0..3 {
            for c in 0..3 {
                results.virial[a][c] = header[1 + 3 * a + c];
            }
        }
    }
    let forces = &host[RESULTS_HEADER..RESULTS_HEADER + 3 * n];
    if request.forces {
        results.forces = forces.chunks_exact(3).map(|f| [f[0], f[1], f[2]]).collect();
    }
    if request.energies {
        results.energies = host[RESULTS_HEADER + 3 * n..RESULTS_HEADER + 4 * n].to_vec();
    }
    if request.atom_virials {
        results.atom_virials = host[RESULTS_HEADER + 4 * n..RESULTS_HEADER + 13 * n]
            .chunks_exact(9)
            .map(|w| [[w[0], w[1], w[2]], [w[3], w[4], w[5]], [w[6], w[7], w[8]]])
            .collect();
    }
    results
}

/// The error naming the two atoms of list edge `edge`, closer than the minimum distance.
fn too_close(
    gpu: &Gpu,
    list: &ListBuffers,
    positions: &[[f64; 3]],
    cell: &Cell,
    edge: usize,
) -> Result<Error> {
    let device = &gpu.device;
    let offsets = device.download_vec(list.offsets.ptr(), positions.len() + 1)?;
    let mut source = [0i32];
    let mut shift = [0i32; 3];
    device.download(list.sources.offset(edge), &mut source)?;
    device.download(list.shifts.offset(3 * edge), &mut shift)?;
    let receiver = offsets.partition_point(|&o: &i64| o <= edge as i64) - 1;
    let r = edge_vector(positions, cell, receiver, source[0] as usize, shift);
    Ok(Error::AtomsTooClose {
        first: receiver,
        second: source[0] as usize,
        shift,
        distance_angstrom: (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt(),
        minimum_angstrom: MINIMUM_DISTANCE_ANGSTROM,
    })
}
