//! The C ABI (`include/painn.h`, generated from this module by cbindgen).
//!
//! Every function returns a `painn_status_t`; on failure a message naming the argument, the
//! atom or the file is kept per thread and read with `painn_last_error()`. NULL pointers,
//! negative counts, non-finite coordinates, unknown elements, impossible cells and broken
//! model files are errors, never crashes; panics are caught at this boundary.
//!
//! Thread safety: a `painn_model_t` is immutable and may be shared by any number of
//! calculators and threads; a `painn_calculator_t` holds mutable state and must be used by
//! one thread at a time. Every calculator function marks the calculator in use for its
//! duration (an atomic flag): a call that overlaps another on the same calculator fails with
//! `PAINN_INVALID_ARGUMENT` ("in use by another thread") instead of corrupting it. A
//! calculator keeps its model alive: the model may be freed first.
//!
//! Sizes: counts are checked (negative, or more than `MAX_ATOMS`) before anything is
//! allocated or any array is read, and the array lengths derived from them are computed with
//! checked arithmetic.

#![allow(non_camel_case_types)]

mod status;

use std::ffi::{CStr, c_char, c_void};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::{Request, Results};
use crate::calculator::{Calculator, CalculatorOptions, Device, Precision};
use crate::cell::Cell;
use crate::error::Error;
use crate::io::elements::atomic_number;
use crate::model::Model;

pub use status::{
    PAINN_CUDA_ERROR, PAINN_INTERNAL_ERROR, PAINN_INVALID_ARGUMENT, PAINN_IO_ERROR,
    PAINN_MODEL_ERROR, PAINN_SUCCESS, PAINN_UNSUPPORTED, painn_last_error, painn_status_t,
};
use status::{catch, invalid};

/// Version of this C ABI. Incremented on every incompatible change of `painn.h`.
pub const PAINN_ABI_VERSION: u32 = 1;

/// A loaded model: immutable, shareable between threads and calculators.
pub struct painn_model_t {
    model: Arc<Model>,
}

/// A model bound to a device and a precision, with its work buffers. One thread at a time:
/// every function taking a calculator marks it in use for the duration of the call, and a
/// call that overlaps another on the same calculator fails at once with
/// `PAINN_INVALID_ARGUMENT` ("calculator ... is in use by another thread"), computing and
/// writing nothing (it is never waited for; serialise the calls, or give each thread its own
/// calculator). Undefined: using a calculator after `painn_calculator_free` returned success
/// for it, or freeing it while another thread may still pass it to a function.
pub struct painn_calculator_t {
    calculator: Calculator,
    /// Set for the duration of every call on this calculator.
    in_use: AtomicBool,
}

/// The most atoms one call takes: LAMMPS counts atoms in 32-bit integers and the engine's
/// graph indexes them with 32-bit integers.
const MAX_ATOMS: usize = i32::MAX as usize;

/// The calculator behind `pointer`, marked in use until the returned guard is dropped.
struct InUse<'a> {
    calculator: &'a mut Calculator,
    flag: &'a AtomicBool,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.flag.store(false, Ordering::Release);
    }
}

/// Marks the calculator in use, or fails if another call holds it.
///
/// # Safety
/// `pointer` is NULL or a live calculator.
unsafe fn acquire<'a>(pointer: *mut painn_calculator_t) -> Result<InUse<'a>, Error> {
    if pointer.is_null() {
        return Err(invalid("calculator", "is NULL"));
    }
    // SAFETY: a live calculator per the contract; only the flag is shared between threads.
    let flag = unsafe { &(*pointer).in_use };
    if flag
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return Err(invalid(
            "calculator",
            "is in use by another thread (one calculator serves one call at a time: give each \
             thread its own calculator, or serialise the calls)",
        ));
    }
    // SAFETY: the flag makes this call the calculator's only user until the guard drops;
    // the field is disjoint from the flag that other threads read.
    let calculator = unsafe { &mut (*pointer).calculator };
    Ok(InUse { calculator, flag })
}

/// The library version, "major.minor.patch" (a static string).
#[unsafe(no_mangle)]
pub extern "C" fn painn_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The C ABI version this library implements (`PAINN_ABI_VERSION` of its header).
#[unsafe(no_mangle)]
pub extern "C" fn painn_abi_version() -> u32 {
    PAINN_ABI_VERSION
}

/// A UTF-8 C string argument, or an error naming it.
///
/// # Safety
/// `pointer` is NULL or a NUL-terminated string.
unsafe fn string_argument<'a>(
    pointer: *const c_char,
    name: &'static str,
) -> Result<&'a str, Error> {
    if pointer.is_null() {
        return Err(invalid(name, "is NULL"));
    }
    // SAFETY: non-null and NUL-terminated per the contract.
    unsafe { CStr::from_ptr(pointer) }
        .to_str()
        .map_err(|_| invalid(name, "is not valid UTF-8"))
}

fn check_output<T>(pointer: *mut T, name: &'static str) -> Result<(), Error> {
    if pointer.is_null() {
        Err(invalid(name, "is NULL"))
    } else {
        Ok(())
    }
}

/// Loads a model file (`.safetensors` from painn-convert). On success `*model` owns it;
/// release it with `painn_model_free`.
///
/// # Safety
/// `path` is a NUL-terminated string; `model` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_load(
    path: *const c_char,
    model: *mut *mut painn_model_t,
) -> painn_status_t {
    catch(|| {
        check_output(model, "model")?;
        // SAFETY: per the contract.
        let path = unsafe { string_argument(path, "path") }?;
        let loaded = Model::from_file(path)?;
        let boxed = Box::new(painn_model_t {
            model: Arc::new(loaded),
        });
        // SAFETY: checked non-null above.
        unsafe { *model = Box::into_raw(boxed) };
        Ok(())
    })
}

/// Loads a model from the bytes of a model file in memory (read by one MPI rank and
/// broadcast). `name` names it in error messages (may be NULL).
///
/// # Safety
/// `data` points to `size` readable bytes; `name` is NULL or NUL-terminated; `model` points
/// to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_load_buffer(
    data: *const u8,
    size: usize,
    name: *const c_char,
    model: *mut *mut painn_model_t,
) -> painn_status_t {
    catch(|| {
        check_output(model, "model")?;
        if data.is_null() {
            return Err(invalid("data", "is NULL"));
        }
        if size > isize::MAX as usize {
            return Err(invalid(
                "size",
                format!("is {size}, more than any buffer can hold"),
            ));
        }
        let name = if name.is_null() {
            "model buffer"
        } else {
            // SAFETY: per the contract.
            unsafe { string_argument(name, "name") }?
        };
        // SAFETY: `data` holds `size` bytes per the contract.
        let bytes = unsafe { std::slice::from_raw_parts(data, size) };
        let loaded = Model::from_bytes(bytes, name)?;
        // SAFETY: checked non-null above.
        unsafe {
            *model = Box::into_raw(Box::new(painn_model_t {
                model: Arc::new(loaded),
            }))
        };
        Ok(())
    })
}

/// Releases a model (NULL is ignored). Calculators created from it stay valid.
///
/// # Safety
/// `model` is NULL or a pointer from `painn_model_load*`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_free(model: *mut painn_model_t) -> painn_status_t {
    catch(|| {
        if !model.is_null() {
            // SAFETY: per the contract, owned by the caller until now.
            drop(unsafe { Box::from_raw(model) });
        }
        Ok(())
    })
}

/// # Safety
/// `model` is NULL or a live model.
unsafe fn model_ref<'a>(model: *const painn_model_t) -> Result<&'a Model, Error> {
    if model.is_null() {
        return Err(invalid("model", "is NULL"));
    }
    // SAFETY: a live model per the contract.
    Ok(unsafe { &(*model).model })
}

/// Writes `value(model)` to `out` (the model queries below).
///
/// # Safety
/// `model` is NULL or a live model; `out` is NULL or writable.
unsafe fn query<T>(
    model: *const painn_model_t,
    out: *mut T,
    name: &'static str,
    value: impl FnOnce(&Model) -> Result<T, Error>,
) -> painn_status_t {
    catch(|| {
        check_output(out, name)?;
        // SAFETY: per the contract.
        let model = unsafe { model_ref(model) }?;
        let value = value(model)?;
        // SAFETY: checked non-null.
        unsafe { *out = value };
        Ok(())
    })
}

/// The model's interaction cutoff in Angstrom.
///
/// # Safety
/// `model` is a live model; `cutoff` points to a writable double.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_cutoff(
    model: *const painn_model_t,
    cutoff: *mut f64,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe { query(model, cutoff, "cutoff", |m| Ok(m.cutoff_angstrom())) }
}

/// The number of interaction layers L: an atom's energy depends on atoms up to L cutoffs
/// away, which sets the ghost shell a domain-decomposed caller must provide.
///
/// # Safety
/// `model` is a live model; `layers` points to a writable int32.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_layers(
    model: *const painn_model_t,
    layers: *mut i32,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe { query(model, layers, "layers", |m| Ok(m.layers() as i32)) }
}

/// The width of the rows a ghost exchange (`painn_compute_exchanging`) passes: 4 H (the
/// scalar and the three vector components of H features per atom), for sizing
/// communication buffers ahead.
///
/// # Safety
/// `model` is a live model; `width` points to a writable int32.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_exchange_width(
    model: *const painn_model_t,
    width: *mut i32,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe {
        query(model, width, "width", |m| {
            i32::try_from(4 * m.hidden_features())
                .map_err(|_| Error::invalid("model", "its feature width does not fit 32 bits"))
        })
    }
}

/// The largest atomic number the model accepts (atomic numbers run 1..=max_z).
///
/// # Safety
/// `model` is a live model; `max_z` points to a writable int32.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_max_z(
    model: *const painn_model_t,
    max_z: *mut i32,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe { query(model, max_z, "max_z", |m| Ok(m.max_z() as i32)) }
}

/// The atomic numbers a model accepts, ascending: those of its element list (the symbols it
/// was trained on) up to max_z, or every one of 1..=max_z for a model file without a list.
fn accepted_elements(model: &Model) -> Result<Vec<i32>, Error> {
    let max_z = model.max_z() as i32;
    let Some(symbols) = &model.config().elements else {
        return Ok((1..=max_z).collect());
    };
    let mut numbers = symbols
        .iter()
        .map(|symbol| {
            atomic_number(symbol).ok_or_else(|| Error::Model {
                source_name: model.source_name().to_string(),
                reason: format!("its element list names `{symbol}`, not an element symbol"),
            })
        })
        .collect::<Result<Vec<i32>, Error>>()?;
    numbers.retain(|&z| z <= max_z);
    numbers.sort_unstable();
    numbers.dedup();
    Ok(numbers)
}

/// The number of elements the model accepts: those of the element list in its file (the
/// elements it was trained on), or max_z for a model file without a list (then every atomic
/// number 1..=max_z). `painn_model_element` reads them; a host checks its element names
/// against them before any atom is computed.
///
/// # Safety
/// `model` is a live model; `count` points to a writable int32.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_element_count(
    model: *const painn_model_t,
    count: *mut i32,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe {
        query(model, count, "count", |m| {
            Ok(accepted_elements(m)?.len() as i32)
        })
    }
}

/// The atomic number of the model's `index`-th accepted element (0 <= index <
/// `painn_model_element_count`), in increasing order of atomic number.
///
/// # Safety
/// `model` is a live model; `atomic_number` points to a writable int32.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_model_element(
    model: *const painn_model_t,
    index: i32,
    atomic_number: *mut i32,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe {
        query(model, atomic_number, "atomic_number", |m| {
            let elements = accepted_elements(m)?;
            usize::try_from(index)
                .ok()
                .and_then(|i| elements.get(i).copied())
                .ok_or_else(|| {
                    invalid(
                        "index",
                        format!(
                            "is {index}, not in 0..{} (the model's elements)",
                            elements.len()
                        ),
                    )
                })
        })
    }
}

/// Creates a calculator for `model` on `device` ("cpu", "cuda", "cuda:N" or "auto": the
/// first GPU when one is usable, else the CPU) in `precision` ("f64" or "f32"; the GPU runs
/// f32). `skin_angstrom` is the neighbour-list skin (negative: the default, 1 Angstrom).
///
/// # Safety
/// `model` is a live model; `device` and `precision` are NUL-terminated strings;
/// `calculator` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_calculator_create(
    model: *const painn_model_t,
    device: *const c_char,
    precision: *const c_char,
    skin_angstrom: f64,
    calculator: *mut *mut painn_calculator_t,
) -> painn_status_t {
    catch(|| {
        check_output(calculator, "calculator")?;
        if model.is_null() {
            return Err(invalid("model", "is NULL"));
        }
        // SAFETY: per the contract.
        let model = unsafe { (*model).model.clone() };
        // SAFETY: per the contract.
        let device: Device = unsafe { string_argument(device, "device") }?.parse()?;
        // SAFETY: per the contract.
        let precision: Precision = unsafe { string_argument(precision, "precision") }?.parse()?;
        let mut options = CalculatorOptions::default();
        if skin_angstrom >= 0.0 {
            options.skin_angstrom = skin_angstrom;
        } else if skin_angstrom.is_nan() {
            return Err(invalid("skin_angstrom", "is NaN"));
        }
        let created = Calculator::with_options(model, device, precision, options)?;
        // SAFETY: checked non-null.
        unsafe {
            *calculator = Box::into_raw(Box::new(painn_calculator_t {
                calculator: created,
                in_use: AtomicBool::new(false),
            }))
        };
        Ok(())
    })
}

/// Releases a calculator (NULL is ignored). A calculator that another thread is using is
/// not released (`PAINN_INVALID_ARGUMENT`); freeing one that another thread may still call
/// afterwards is undefined.
///
/// # Safety
/// `calculator` is NULL or a pointer from `painn_calculator_create`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_calculator_free(
    calculator: *mut painn_calculator_t,
) -> painn_status_t {
    catch(|| {
        if !calculator.is_null() {
            // SAFETY: per the contract; the guard proves no other call is running.
            std::mem::forget(unsafe { acquire(calculator) }?);
            // SAFETY: per the contract, owned by the caller until now.
            drop(unsafe { Box::from_raw(calculator) });
        }
        Ok(())
    })
}

/// Writes the device the calculator runs on ("cpu", or the GPU's name and architecture) as a
/// NUL-terminated string into `buffer` of `size` bytes (truncated to fit).
///
/// # Safety
/// `calculator` is a live calculator; `buffer` points to `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_calculator_device(
    calculator: *mut painn_calculator_t,
    buffer: *mut c_char,
    size: usize,
) -> painn_status_t {
    catch(|| {
        check_output(buffer, "buffer")?;
        if size == 0 {
            return Err(invalid("size", "is 0"));
        }
        // SAFETY: a live calculator, per the contract.
        let guard = unsafe { acquire(calculator) }?;
        let calculator = &*guard.calculator;
        let name = match calculator.device() {
            Device::Cuda(ordinal) => format!("cuda:{ordinal} {}", calculator.facts().name),
            other => other.to_string(),
        };
        let bytes = name.as_bytes();
        let length = bytes.len().min(size - 1);
        // SAFETY: `buffer` holds `size` bytes and length < size.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer as *mut u8, length);
            *buffer.add(length) = 0;
        }
        Ok(())
    })
}

/// The number of CUDA GPUs usable by this process (0 without a driver or a GPU; never an
/// error), so that an MPI code can give each rank of a node its own GPU.
///
/// # Safety
/// `count` points to a writable int32.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_cuda_device_count(count: *mut i32) -> painn_status_t {
    catch(|| {
        check_output(count, "count")?;
        let found = crate::backend::cuda::device_count();
        // SAFETY: checked non-null.
        unsafe { *count = found as i32 };
        Ok(())
    })
}

/// Where the results go; NULL means "not wanted".
struct Outputs {
    energy: *mut f64,
    forces: *mut f64,
    virial: *mut f64,
    energies: *mut f64,
    atom_virials: *mut f64,
}

impl Outputs {
    fn new(
        energy: *mut f64,
        forces: *mut f64,
        virial: *mut f64,
        energies: *mut f64,
        atom_virials: *mut f64,
    ) -> Outputs {
        Outputs {
            energy,
            forces,
            virial,
            energies,
            atom_virials,
        }
    }

    fn request(&self) -> Request {
        Request {
            energies: !self.energies.is_null(),
            forces: !self.forces.is_null(),
            virial: !self.virial.is_null(),
            atom_virials: !self.atom_virials.is_null(),
        }
    }

    /// # Safety
    /// Each non-null pointer has room for its array for `n` atoms.
    unsafe fn write(&self, results: &Results, n: usize) {
        // SAFETY (whole function): sizes per the contract.
        unsafe {
            copy_out(self.energy, std::slice::from_ref(&results.energy), 1);
            copy_out(self.forces, results.forces.as_flattened(), 3 * n);
            copy_out(self.virial, results.virial.as_flattened(), 9);
            copy_out(self.energies, &results.energies, n);
            let atom_virials = results.atom_virials.as_flattened().as_flattened();
            copy_out(self.atom_virials, atom_virials, 9 * n);
        }
    }
}

/// Copies `values` to `destination` unless it is NULL; a result of the wrong length (a bug
/// in painn) panics, which the boundary reports, rather than overrunning the caller's array.
///
/// # Safety
/// `destination` is NULL or holds `len` values.
unsafe fn copy_out(destination: *mut f64, values: &[f64], len: usize) {
    if destination.is_null() {
        return;
    }
    assert_eq!(values.len(), len, "an output has the wrong length");
    // SAFETY: `destination` holds `len` values per the contract.
    unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), destination, len) };
}

/// A count of atoms from the caller: not negative and at most `MAX_ATOMS`.
fn atom_count(value: i64, name: &'static str) -> Result<usize, Error> {
    let n = usize::try_from(value).map_err(|_| invalid(name, format!("is negative ({value})")))?;
    if n > MAX_ATOMS {
        return Err(invalid(
            name,
            format!("is {value}, more than the {MAX_ATOMS} atoms one call can take"),
        ));
    }
    Ok(n)
}

/// An input array of `len` elements (empty when `len` is 0, whatever the pointer).
///
/// # Safety
/// Non-null pointers hold `len` elements.
unsafe fn input<'a, T>(
    pointer: *const T,
    len: usize,
    name: &'static str,
) -> Result<&'a [T], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if pointer.is_null() {
        return Err(invalid(name, "is NULL"));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(invalid(
            name,
            format!("{len} elements do not fit in memory"),
        ));
    }
    // SAFETY: per the contract, and the size is within isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(pointer, len) })
}

/// `[n][3]` positions in single or double precision, as double.
///
/// # Safety
/// `pointer` is NULL or holds `3 n` values.
unsafe fn positions_argument<T: Copy + Into<f64>>(
    pointer: *const T,
    n: usize,
) -> Result<Vec<[f64; 3]>, Error> {
    let len = n
        .checked_mul(3)
        .ok_or_else(|| invalid("n_atoms", format!("{n} atoms x 3 coordinates overflow")))?;
    // SAFETY: per the contract.
    let flat = unsafe { input(pointer, len, "positions") }?;
    Ok(flat
        .chunks_exact(3)
        .map(|p| [p[0].into(), p[1].into(), p[2].into()])
        .collect())
}

/// # Safety
/// `cell` is NULL or holds 9 values; `pbc` is NULL or holds 3 values.
unsafe fn cell_argument<T: Copy + Into<f64>>(
    cell: *const T,
    pbc: *const i32,
) -> Result<Cell, Error> {
    let flags = if pbc.is_null() {
        [false; 3]
    } else {
        // SAFETY: per the contract.
        let p = unsafe { std::slice::from_raw_parts(pbc, 3) };
        [p[0] != 0, p[1] != 0, p[2] != 0]
    };
    if cell.is_null() {
        return Cell::from_optional(None, flags)
            .map_err(|_| invalid("cell", "is NULL but pbc declares a periodic axis"));
    }
    // SAFETY: per the contract.
    let c = unsafe { std::slice::from_raw_parts(cell, 9) };
    let row = |r: usize| [c[3 * r].into(), c[3 * r + 1].into(), c[3 * r + 2].into()];
    Cell::new([row(0), row(1), row(2)], flags)
}

/// Evaluates on a calculator held by this call and writes the wanted outputs.
///
/// # Safety
/// Every non-null output of `outputs` holds its array for `atomic_numbers.len()` atoms.
unsafe fn evaluate(
    calculator: &mut Calculator,
    atomic_numbers: &[i32],
    positions: &[[f64; 3]],
    geometry: Geometry,
    outputs: Outputs,
) -> Result<(), Error> {
    let request = outputs.request();
    let results = match geometry {
        Geometry::Cell(cell) => calculator.compute(atomic_numbers, positions, &cell, request),
        Geometry::Local {
            owned,
            exchange: None,
        } => calculator.compute_local(atomic_numbers, positions, owned, request),
        Geometry::Local {
            owned,
            exchange: Some(mut exchange),
        } => calculator.compute_local_exchanging(
            atomic_numbers,
            positions,
            owned,
            request,
            &mut exchange,
        ),
    }?;
    // SAFETY: output sizes per the contract.
    unsafe { outputs.write(&results, atomic_numbers.len()) };
    Ok(())
}

/// One function of a caller's ghost exchange: called with the caller's `context`, the rows
/// `[n_atoms][width]` (float64, the first `n_owned` owned) and their shape; returns 0 on
/// success. It must not throw (C++) or unwind.
pub type painn_exchange_fn = Option<
    unsafe extern "C" fn(context: *mut c_void, rows: *mut f64, n_atoms: i64, width: i64) -> i32,
>;

/// A caller's per-layer ghost exchange (domain decomposition, `painn_compute_exchanging`):
/// `forward` fills the ghost rows of `rows` from the rows of their owners (after each layer:
/// the next layer's features); `reverse` adds the ghost rows into the rows of their owners
/// (in the backward pass: gradients; the engine clears the ghost rows afterwards). Both run
/// on the thread that called the engine.
///
/// `sent_rows` (optional, NULL with `n_sent_rows` 0 for none) lists the owned rows other
/// ranks read, the union of the caller's send lists: ascending, without repeats, each below
/// `n_owned`. With it, `forward` is given meaningful values only in these rows and the ghost
/// rows, and `reverse` may add only into these rows; on a GPU only these rows and the ghost
/// rows then travel between the GPU and the host. Without it every owned row travels.
#[repr(C)]
pub struct painn_ghost_exchange_t {
    pub context: *mut c_void,
    pub forward: painn_exchange_fn,
    pub reverse: painn_exchange_fn,
    pub sent_rows: *const i64,
    pub n_sent_rows: i64,
}

/// The C caller's exchange as the engine's, with its sent rows checked and converted.
struct CallerExchange<'a> {
    exchange: &'a painn_ghost_exchange_t,
    sent_rows: Option<Vec<usize>>,
}

impl<'a> CallerExchange<'a> {
    /// Reads `exchange.sent_rows` (checked against `n_owned` before it is read).
    ///
    /// # Safety
    /// A non-null `exchange.sent_rows` holds `exchange.n_sent_rows` values.
    unsafe fn new(exchange: &'a painn_ghost_exchange_t, n_owned: usize) -> Result<Self, Error> {
        let count = exchange.n_sent_rows;
        let name = "exchange.n_sent_rows";
        let count = usize::try_from(count).map_err(|_| invalid(name, format!("is {count}")))?;
        if count > n_owned {
            return Err(invalid(
                name,
                format!("is {count}, more than the {n_owned} owned atoms"),
            ));
        }
        let sent_rows = if exchange.sent_rows.is_null() {
            if count > 0 {
                return Err(invalid(
                    "exchange.sent_rows",
                    format!("is NULL ({count} rows)"),
                ));
            }
            None
        } else {
            // SAFETY: per the contract.
            let rows = unsafe { input(exchange.sent_rows, count, "exchange.sent_rows") }?;
            let rows = rows
                .iter()
                .map(|&row| {
                    usize::try_from(row)
                        .map_err(|_| invalid("exchange.sent_rows", format!("holds {row}")))
                })
                .collect::<Result<Vec<usize>, Error>>()?;
            Some(rows)
        };
        Ok(CallerExchange {
            exchange,
            sent_rows,
        })
    }
}

impl CallerExchange<'_> {
    fn call(
        &self,
        which: &str,
        function: painn_exchange_fn,
        rows: &mut [f64],
        width: usize,
    ) -> crate::Result<()> {
        let function = function
            .ok_or_else(|| Error::invalid("exchange", format!("its {which} function is NULL")))?;
        let n_atoms = (rows.len() / width.max(1)) as i64;
        // SAFETY: the caller's function, with its own context and a buffer of
        // n_atoms x width doubles that lives through the call.
        let status = unsafe {
            function(
                self.exchange.context,
                rows.as_mut_ptr(),
                n_atoms,
                width as i64,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(Error::invalid(
                "exchange",
                format!("the caller's {which} ghost exchange returned {status}"),
            ))
        }
    }
}

impl crate::GhostExchange for CallerExchange<'_> {
    fn forward(&mut self, rows: &mut [f64], width: usize) -> crate::Result<()> {
        self.call("forward", self.exchange.forward, rows, width)
    }

    fn reverse(&mut self, rows: &mut [f64], width: usize) -> crate::Result<()> {
        self.call("reverse", self.exchange.reverse, rows, width)
    }

    fn sent_rows(&self) -> Option<&[usize]> {
        self.sent_rows.as_deref()
    }
}

/// A whole system in a cell, or a domain-decomposed part of one.
enum Geometry<'a> {
    Cell(Cell),
    /// Owned atoms first, then ghosts; with a per-layer ghost exchange or without.
    Local {
        owned: usize,
        exchange: Option<CallerExchange<'a>>,
    },
}

/// Shared body of `painn_compute_local` and `painn_compute_exchanging`.
///
/// # Safety
/// As `painn_compute_local`; `exchange`, when given, as in `painn_compute_exchanging`.
unsafe fn compute_local(
    calculator: *mut painn_calculator_t,
    (n_atoms, n_owned): (i64, i64),
    atomic_numbers: *const i32,
    positions: *const f64,
    exchange: Option<*const painn_ghost_exchange_t>,
    outputs: Outputs,
) -> painn_status_t {
    catch(|| {
        let n = atom_count(n_atoms, "n_atoms")?;
        let owned = atom_count(n_owned, "n_owned")?;
        // SAFETY (all five): per the contract.
        let exchange = match exchange {
            Some(pointer) => {
                let exchange =
                    unsafe { pointer.as_ref() }.ok_or_else(|| invalid("exchange", "is NULL"))?;
                Some(unsafe { CallerExchange::new(exchange, owned) }?)
            }
            None => None,
        };
        let guard = unsafe { acquire(calculator) }?;
        let z = unsafe { input(atomic_numbers, n, "atomic_numbers") }?;
        let positions = unsafe { positions_argument(positions, n) }?;
        let geometry = Geometry::Local { owned, exchange };
        // SAFETY: output sizes per the contract.
        unsafe { evaluate(guard.calculator, z, &positions, geometry, outputs) }
    })
}

/// Shared body of `painn_compute` and `painn_compute_float`.
///
/// # Safety
/// As `painn_compute`, with positions and cell in `T`.
#[allow(clippy::too_many_arguments)]
unsafe fn compute_periodic<T: Copy + Into<f64>>(
    calculator: *mut painn_calculator_t,
    n_atoms: i64,
    atomic_numbers: *const i32,
    positions: *const T,
    cell: *const T,
    pbc: *const i32,
    outputs: Outputs,
) -> painn_status_t {
    catch(|| {
        let n = atom_count(n_atoms, "n_atoms")?;
        // SAFETY (all five): per the contract.
        let guard = unsafe { acquire(calculator) }?;
        let z = unsafe { input(atomic_numbers, n, "atomic_numbers") }?;
        let positions = unsafe { positions_argument(positions, n) }?;
        let cell = unsafe { cell_argument(cell, pbc) }?;
        // SAFETY: output sizes per the contract.
        unsafe {
            evaluate(
                guard.calculator,
                z,
                &positions,
                Geometry::Cell(cell),
                outputs,
            )
        }
    })
}

/// Energy, forces and virials of `n_atoms` atoms: `atomic_numbers` `[n]`, `positions`
/// `[n][3]` (Angstrom, wrapped or not), `cell` `[3][3]` (lattice vectors as rows, Angstrom;
/// NULL for none), `pbc` `[3]` (non-zero = periodic; NULL = no axis periodic). Outputs
/// (NULL = not wanted): `energy` (eV), `forces` `[n][3]` (eV/A), `virial` `[3][3]` (eV,
/// W[a][b] = sum over edges r_ij[a] f_ij[b]; not symmetric in general: a trained model
/// need not be rotation invariant), `energies` `[n]` (eV), `atom_virials` `[n][3][3]` (eV;
/// each edge's share split half to each end). `n_atoms` is at most 2^31 - 1.
///
/// A host whose cell is lower triangular with tilts (rows a = (lx, 0, 0), b = (xy, ly, 0),
/// c = (xz, yz, lz), as LAMMPS's) takes W[1][0], W[2][0], W[2][1] as its xy, xz, yz virial
/// components: those are conjugate to its tilts (the energy's derivatives under them).
///
/// # Safety
/// `calculator` is a live calculator; every non-NULL pointer holds the number of elements
/// given above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_compute(
    calculator: *mut painn_calculator_t,
    n_atoms: i64,
    atomic_numbers: *const i32,
    positions: *const f64,
    cell: *const f64,
    pbc: *const i32,
    energy: *mut f64,
    forces: *mut f64,
    virial: *mut f64,
    energies: *mut f64,
    atom_virials: *mut f64,
) -> painn_status_t {
    let outputs = Outputs::new(energy, forces, virial, energies, atom_virials);
    let z = atomic_numbers;
    // SAFETY: per the contract.
    unsafe { compute_periodic(calculator, n_atoms, z, positions, cell, pbc, outputs) }
}

/// As `painn_compute`, with single-precision positions and cell (results stay double).
///
/// # Safety
/// As `painn_compute`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_compute_float(
    calculator: *mut painn_calculator_t,
    n_atoms: i64,
    atomic_numbers: *const i32,
    positions: *const f32,
    cell: *const f32,
    pbc: *const i32,
    energy: *mut f64,
    forces: *mut f64,
    virial: *mut f64,
    energies: *mut f64,
    atom_virials: *mut f64,
) -> painn_status_t {
    let outputs = Outputs::new(energy, forces, virial, energies, atom_virials);
    let z = atomic_numbers;
    // SAFETY: per the contract.
    unsafe { compute_periodic(calculator, n_atoms, z, positions, cell, pbc, outputs) }
}

/// Domain-decomposed evaluation: the first `n_owned` of `n_atoms` atoms are owned, the rest
/// are ghosts (their neighbours within L cutoffs of any owned atom must be present). The
/// graph is built over all atoms without periodicity; `energy` and `energies` count owned
/// atoms only (ghost entries are 0); `forces` and `atom_virials` come back for every atom,
/// and the caller adds those of ghosts to their owners (LAMMPS's reverse communication).
///
/// # Safety
/// As `painn_compute`, with `[n_atoms]`-sized arrays.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_compute_local(
    calculator: *mut painn_calculator_t,
    n_atoms: i64,
    n_owned: i64,
    atomic_numbers: *const i32,
    positions: *const f64,
    energy: *mut f64,
    forces: *mut f64,
    virial: *mut f64,
    energies: *mut f64,
    atom_virials: *mut f64,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe {
        compute_local(
            calculator,
            (n_atoms, n_owned),
            atomic_numbers,
            positions,
            None,
            Outputs::new(energy, forces, virial, energies, atom_virials),
        )
    }
}

/// Domain-decomposed evaluation with per-layer ghost exchange: as `painn_compute_local`, but
/// ghosts are needed only within one cutoff (plus the neighbour-list skin) of the owned
/// atoms, not L cutoffs: after each layer the engine calls `exchange->forward` to fill the
/// ghost rows of the features from their owners, and in the backward pass
/// `exchange->reverse` to add the ghost rows' gradients into their owners. A nonzero return
/// from either stops the evaluation with PAINN_INVALID_ARGUMENT naming it. On a GPU each
/// exchange copies the rows through host memory.
///
/// # Safety
/// As `painn_compute_local`; `exchange` points to a valid `painn_ghost_exchange_t` whose
/// functions are valid for its context.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_compute_exchanging(
    calculator: *mut painn_calculator_t,
    n_atoms: i64,
    n_owned: i64,
    atomic_numbers: *const i32,
    positions: *const f64,
    exchange: *const painn_ghost_exchange_t,
    energy: *mut f64,
    forces: *mut f64,
    virial: *mut f64,
    energies: *mut f64,
    atom_virials: *mut f64,
) -> painn_status_t {
    // SAFETY: per the contract.
    unsafe {
        compute_local(
            calculator,
            (n_atoms, n_owned),
            atomic_numbers,
            positions,
            Some(exchange),
            Outputs::new(energy, forces, virial, energies, atom_virials),
        )
    }
}
