//! The per-layer ghost exchange of a domain-decomposed evaluation (kernels in
//! `cuda/exchange.cu`). It runs between the stages, outside the CUDA graphs, through host
//! memory: only the rows that travel cross, packed on the GPU into one array per direction.
//! Forward: the owned rows other ranks read go to the host, the ghost rows come back.
//! Reverse: the ghost rows and the owned rows that receive go to the host, those owned rows
//! come back, and the ghost rows are cleared. Without the caller's list of sent rows
//! ([`GhostExchange::sent_rows`]) every owned row counts as sent.

use super::Gpu;
use super::buffers::{DeviceBuffer, DevicePtr};
use super::device::PinnedBuffer;
use super::launch::grid_stride;
use crate::backend::GhostExchange;
use crate::error::Result;

/// Which way a ghost exchange goes.
#[derive(Clone, Copy, PartialEq)]
pub enum Direction {
    /// Fill the ghost rows of a layer's input from their owners.
    Forward,
    /// Add the ghost rows of a layer's input gradient into their owners and clear them.
    Reverse,
}

/// What an exchange stages, kept between exchanges and calls.
#[derive(Default)]
pub struct ExchangeStaging {
    /// The sent rows' atom indices on the GPU, and on the host.
    sent_rows: DeviceBuffer<i32>,
    sent_rows_host: Vec<i32>,
    /// The travelling rows packed `[k][4H]` on the GPU, and on the host (page-locked).
    packed: DeviceBuffer<f32>,
    packed_host: PinnedBuffer<f32>,
    /// The `[n][4H]` float64 rows handed to the exchange (rows that do not travel hold
    /// whatever an earlier exchange left there).
    rows: Vec<f64>,
}

/// Atoms given as a list on the GPU or as a range `first..first + count`.
#[derive(Clone, Copy)]
struct Atoms {
    list: DevicePtr<i32>,
    first: usize,
    count: usize,
}

impl Atoms {
    fn range(first: usize, count: usize) -> Atoms {
        Atoms {
            list: DevicePtr::null(),
            first,
            count,
        }
    }
}

/// Which way [`move_rows`] copies.
#[derive(Clone, Copy, PartialEq)]
enum Move {
    /// The rows of the atoms into the packed array.
    Gather,
    /// The packed array into the rows of the atoms.
    Scatter,
}

/// Copies the rows of `atoms` of `(s [n][H], v [n][3][H])` to or from `packed`.
fn move_rows(
    gpu: &Gpu,
    h: usize,
    atoms: Atoms,
    way: Move,
    (s, v): (&DeviceBuffer<f32>, &DeviceBuffer<f32>),
    packed: DevicePtr<f32>,
) -> Result<()> {
    if atoms.count == 0 {
        return Ok(());
    }
    gpu.kernels.exchange_rows(
        grid_stride(atoms.count * 4 * h),
        h as i32,
        atoms.count as i32,
        atoms.list,
        atoms.first as i32,
        i32::from(way == Move::Gather),
        s,
        v,
        packed,
    )
}

/// One ghost exchange of the rows `(s [n][H], v [n][3][H])` (atoms `0..owned` owned): the
/// travelling rows through the host, float32 on the GPU, float64 for `exchange`.
#[allow(clippy::too_many_arguments)]
pub fn exchange_rows(
    gpu: &Gpu,
    exchange: &mut dyn GhostExchange,
    direction: Direction,
    n: usize,
    owned: usize,
    h: usize,
    (s, v): (&DeviceBuffer<f32>, &DeviceBuffer<f32>),
    staging: &mut ExchangeStaging,
) -> Result<()> {
    let device = &gpu.device;
    let width = 4 * h;
    let ghosts = n - owned;
    let ExchangeStaging {
        sent_rows,
        sent_rows_host,
        packed,
        packed_host,
        rows,
    } = staging;
    // The owned rows that travel; the calculator checked the caller's list (ascending,
    // below `owned`) and keeps it for the evaluation, so it is uploaded once.
    let list = exchange.sent_rows().map(<[usize]>::to_vec);
    let sent = match &list {
        Some(list) => {
            let uploaded = sent_rows_host.len() == list.len()
                && sent_rows_host
                    .iter()
                    .zip(list)
                    .all(|(&a, &b)| a as usize == b);
            if !uploaded {
                sent_rows_host.clear();
                sent_rows_host.extend(list.iter().map(|&i| i as i32));
                if let Err(error) = device.upload(&gpu.registry, sent_rows, sent_rows_host) {
                    // Not on the GPU: the next exchange uploads again.
                    sent_rows_host.clear();
                    return Err(error);
                }
            }
            Atoms {
                list: sent_rows.ptr(),
                first: 0,
                count: list.len(),
            }
        }
        None => Atoms::range(0, owned),
    };
    let sent_atom = |k: usize| list.as_ref().map_or(k, |list| list[k]);
    let ghost_rows = Atoms::range(owned, ghosts);
    gpu.registry
        .reserve(packed, (sent.count + ghosts) * width)?;
    rows.resize(n * width, 0.0);

    // To the host: the sent rows, and (reverse) the ghost rows after them.
    let arriving = match direction {
        Direction::Forward => sent.count,
        Direction::Reverse => sent.count + ghosts,
    };
    move_rows(gpu, h, sent, Move::Gather, (s, v), packed.ptr())?;
    if direction == Direction::Reverse {
        let after_sent = packed.offset(sent.count * width);
        move_rows(gpu, h, ghost_rows, Move::Gather, (s, v), after_sent)?;
    }
    let arrived = packed_host.slice(device, arriving * width)?;
    device.download(packed.ptr(), arrived)?;
    for (k, row) in arrived.chunks_exact(width).enumerate() {
        let atom = if k < sent.count {
            sent_atom(k)
        } else {
            owned + (k - sent.count)
        };
        for (to, &x) in rows[atom * width..(atom + 1) * width].iter_mut().zip(row) {
            *to = f64::from(x);
        }
    }

    match direction {
        Direction::Forward => exchange.forward(rows, width)?,
        Direction::Reverse => exchange.reverse(rows, width)?,
    }

    // Back to the GPU: the ghost rows (forward) or the sent rows (reverse).
    let returning = match direction {
        Direction::Forward => ghost_rows,
        Direction::Reverse => sent,
    };
    let leaving = packed_host.slice(device, returning.count * width)?;
    for (k, out) in leaving.chunks_exact_mut(width).enumerate() {
        let atom = match direction {
            Direction::Forward => owned + k,
            Direction::Reverse => sent_atom(k),
        };
        for (to, &x) in out.iter_mut().zip(&rows[atom * width..(atom + 1) * width]) {
            *to = x as f32;
        }
    }
    device.write(packed.ptr(), leaving)?;
    move_rows(gpu, h, returning, Move::Scatter, (s, v), packed.ptr())?;
    if direction == Direction::Reverse {
        // The ghosts' share has moved to their owners.
        device.fill_zero(s.offset(owned * h), ghosts * h)?;
        device.fill_zero(v.offset(3 * owned * h), 3 * ghosts * h)?;
    }
    Ok(())
}
