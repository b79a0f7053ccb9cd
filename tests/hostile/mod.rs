//! Hostile inputs shared by `tests/robustness.rs` and `tests/fuzz_pass.rs`: a model file's
//! safetensors header and `painn` config edited in place, the seed structures, and an
//! allocator that refuses absurd allocations.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Map, Value};

use crate::common::repository;

/// The committed tiny model (H=32, L=2, K=8, max_z=10, cutoff 4 A, elements H..Ne).
pub fn tiny_model_bytes() -> Vec<u8> {
    std::fs::read(repository().join("tests/data/tiny_model.safetensors")).unwrap()
}

/// A safetensors file: its JSON header and the data after it.
pub fn split(bytes: &[u8]) -> Option<(Value, &[u8])> {
    let length = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(length)?)?;
    let data = &bytes[8 + length..];
    Some((serde_json::from_slice(header).ok()?, data))
}

/// The file with `header` before `data` (padded to 8 bytes, as safetensors writes it).
pub fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut text = serde_json::to_string(header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// `bytes` (a model file) with its safetensors header edited.
pub fn with_header(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let (mut header, data) = split(bytes).expect("a safetensors file");
    edit(&mut header);
    join(&header, data)
}

/// `bytes` (a model file) with its `painn` config edited.
pub fn with_config(bytes: &[u8], edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    with_header(bytes, |header| {
        let entry = &mut header["__metadata__"]["painn"];
        let mut config: Value = serde_json::from_str(entry.as_str().unwrap()).unwrap();
        edit(config.as_object_mut().unwrap());
        *entry = Value::String(config.to_string());
    })
}

/// A periodic water box of 2 x 2 x 2 molecules in extended XYZ (24 atoms; a 6.2 A cell,
/// so the tiny model's 4 A cutoff plus the 1 A skin reaches into images).
pub fn water_xyz() -> String {
    let water = painn::structures::water_box(2, 3);
    let lattice = water.cell.unwrap();
    let mut text = format!(
        "{}\nLattice=\"{}\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n",
        water.len(),
        lattice
            .iter()
            .flatten()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for (z, r) in water.atomic_numbers.iter().zip(&water.positions) {
        let symbol = painn::io::elements::symbol(*z).unwrap();
        text += &format!("{symbol} {:.4} {:.4} {:.4}\n", r[0], r[1], r[2]);
    }
    text
}

/// A small molecule with atomic numbers in a `Z:I:1` column and an extra column.
pub const MOLECULE_XYZ: &str = "5\n\
Properties=Z:I:1:pos:R:3:charge:R:1 energy=-1.5 pbc=\"F F F\"\n\
6 0.0 0.0 0.0 0.1\n\
1 1.09 0.0 0.0 0.0\n\
1 -0.36 1.03 0.0 0.0\n\
1 -0.36 -0.51 0.89 0.0\n\
8 -0.36 -0.51 -1.2 -0.2\n";

/// The system allocator with caps, for a test binary's `#[global_allocator]`: it refuses a
/// single allocation above `largest` bytes or one that would take the live total above
/// `most_live` (a fallible allocation then fails; an infallible one aborts the binary,
/// after a line on standard error naming the size and [`CASE`]), and keeps the peak of
/// live bytes in [`PEAK`].
pub struct Capped {
    pub largest: usize,
    pub most_live: usize,
}

pub static LIVE: AtomicUsize = AtomicUsize::new(0);
pub static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The case running now (a fuzz case's number), for the refusal's message.
pub static CASE: AtomicUsize = AtomicUsize::new(usize::MAX);

// SAFETY: forwards to the system allocator; refusing is returning null, which the
// `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        if size > self.largest || live > self.most_live {
            LIVE.fetch_sub(size, Ordering::Relaxed);
            report_refusal(size);
            return std::ptr::null_mut();
        }
        // SAFETY: as the caller's contract.
        let pointer = unsafe { System.alloc(layout) };
        if pointer.is_null() {
            LIVE.fetch_sub(size, Ordering::Relaxed);
        } else {
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(pointer, layout) }
    }
}

/// Writes "refused an allocation of N bytes in case K" to standard error, with a buffer
/// on the stack (the allocator must not allocate).
fn report_refusal(size: usize) {
    let mut line = [0u8; 96];
    let mut length = 0;
    for part in [
        Part::Text(b"refused an allocation of "),
        Part::Number(size),
        Part::Text(b" bytes in case "),
        Part::Number(CASE.load(Ordering::Relaxed)),
        Part::Text(b"\n"),
    ] {
        let mut digits = [0u8; 20];
        let bytes: &[u8] = match part {
            Part::Text(text) => text,
            Part::Number(mut value) => {
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (value % 10) as u8;
                    value /= 10;
                    if value == 0 {
                        break;
                    }
                }
                &digits[at..]
            }
        };
        line[length..length + bytes.len()].copy_from_slice(bytes);
        length += bytes.len();
    }
    // SAFETY: writes `length` initialised bytes to standard error.
    unsafe { libc::write(2, line.as_ptr() as *const libc::c_void, length) };
}

enum Part {
    Text(&'static [u8]),
    Number(usize),
}
