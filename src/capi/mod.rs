//! The C ABI (`include/painn.h`, generated from this module by cbindgen).
//!
//! Every function returns a `painn_status_t`; on failure a message naming the argument, the
//! atom or the file is kept per thread and read with `painn_last_error()`. NULL pointers,
//! negative counts, non-finite coordinates, unknown elements, impossible cells and broken
//! model files are errors, never crashes; panics are caught at this boundary.
//!
//! Thread safety: a `painn_model_t` is immutable and may be shared by any number of
//! calculators and threads; a `painn_calculator_t` holds mutable state and must be used by
//! one thread at a time. A calculator keeps its model alive: the model may be freed first.

#![allow(non_camel_case_types)]

mod status;

use std::ffi::{CStr, c_char};
use std::sync::Arc;

use crate::backend::{Request, Results};
use crate::calculator::{Calculator, CalculatorOptions, Device, Precision};
use crate::cell::Cell;
use crate::error::Error;
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

/// A model bound to a device and a precision, with its work buffers. One thread at a time.
pub struct painn_calculator_t {
    calculator: Calculator,
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
    value: impl FnOnce(&Model) -> T,
) -> painn_status_t {
    catch(|| {
        check_output(out, name)?;
        // SAFETY: per the contract.
        let model = unsafe { model_ref(model) }?;
        // SAFETY: checked non-null.
        unsafe { *out = value(model) };
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
    unsafe { query(model, cutoff, "cutoff", Model::cutoff_angstrom) }
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
    unsafe { query(model, layers, "layers", |m| m.layers() as i32) }
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
    unsafe { query(model, max_z, "max_z", |m| m.max_z() as i32) }
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
            }))
        };
        Ok(())
    })
}

/// Releases a calculator (NULL is ignored).
///
/// # Safety
/// `calculator` is NULL or a pointer from `painn_calculator_create`, not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn painn_calculator_free(
    calculator: *mut painn_calculator_t,
) -> painn_status_t {
    catch(|| {
        if !calculator.is_null() {
            // SAFETY: per the contract.
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
        if calculator.is_null() {
            return Err(invalid("calculator", "is NULL"));
        }
        if size == 0 {
            return Err(invalid("size", "is 0"));
        }
        // SAFETY: a live calculator used by this thread only, per the contract.
        let calculator = unsafe { &mut (*calculator).calculator };
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
            if !self.energy.is_null() {
                *self.energy = results.energy;
            }
            if !self.forces.is_null() {
                std::ptr::copy_nonoverlapping(
                    results.forces.as_flattened().as_ptr(),
                    self.forces,
                    3 * n,
                );
            }
            if !self.virial.is_null() {
                std::ptr::copy_nonoverlapping(
                    results.virial.as_flattened().as_ptr(),
                    self.virial,
                    9,
                );
            }
            if !self.energies.is_null() {
                std::ptr::copy_nonoverlapping(results.energies.as_ptr(), self.energies, n);
            }
            if !self.atom_virials.is_null() {
                let flat: Vec<f64> = results
                    .atom_virials
                    .iter()
                    .flat_map(|w| w.iter().flatten().copied())
                    .collect();
                std::ptr::copy_nonoverlapping(flat.as_ptr(), self.atom_virials, 9 * n);
            }
        }
    }
}

fn atom_count(n_atoms: i64) -> Result<usize, Error> {
    usize::try_from(n_atoms).map_err(|_| invalid("n_atoms", format!("is negative ({n_atoms})")))
}

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
    // SAFETY: per the contract.
    Ok(unsafe { std::slice::from_raw_parts(pointer, len) })
}

/// # Safety
/// `pbc` is NULL or holds 3 values.
unsafe fn cell_argument(cell: Option<[f64; 9]>, pbc: *const i32) -> Result<Cell, Error> {
    let flags = if pbc.is_null() {
        [false; 3]
    } else {
        // SAFETY: per the contract.
        let p = unsafe { std::slice::from_raw_parts(pbc, 3) };
        [p[0] != 0, p[1] != 0, p[2] != 0]
    };
    match cell {
        None => Cell::from_optional(None, flags)
            .map_err(|_| invalid("cell", "is NULL but pbc declares a periodic axis")),
        Some(c) => Cell::new(
            [[c[0], c[1], c[2]], [c[3], c[4], c[5]], [c[6], c[7], c[8]]],
            flags,
        ),
    }
}

/// Shared body of `painn_compute` and `painn_compute_float`.
///
/// # Safety
/// As `painn_compute`; `positions` holds `3 n` values, `cell` is None or 9 values.
unsafe fn compute_periodic(
    calculator: *mut painn_calculator_t,
    n: usize,
    atomic_numbers: *const i32,
    positions: &[f64],
    cell: Option<[f64; 9]>,
    pbc: *const i32,
    outputs: Outputs,
) -> Result<(), Error> {
    if calculator.is_null() {
        return Err(invalid("calculator", "is NULL"));
    }
    // SAFETY (these two): per the contract.
    let z = unsafe { input(atomic_numbers, n, "atomic_numbers") }?;
    let cell = unsafe { cell_argument(cell, pbc) }?;
    let positions: Vec<[f64; 3]> = positions
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    // SAFETY: a live calculator, per the contract.
    let calculator = unsafe { &mut (*calculator).calculator };
    let results = calculator.compute(z, &positions, &cell, outputs.request())?;
    // SAFETY: output sizes per the contract.
    unsafe { outputs.write(&results, n) };
    Ok(())
}

/// Energy, forces and virials of `n_atoms` atoms: `atomic_numbers` `[n]`, `positions`
/// `[n][3]` (Angstrom, wrapped or not), `cell` `[3][3]` (lattice vectors as rows, Angstrom;
/// NULL for none), `pbc` `[3]` (non-zero = periodic; NULL = no axis periodic). Outputs
/// (NULL = not wanted): `energy` (eV), `forces` `[n][3]` (eV/A), `virial` `[3][3]` (eV,
/// W[a][b] = sum over edges r_ij[a] f_ij[b]), `energies` `[n]` (eV), `atom_virials`
/// `[n][3][3]` (eV; each edge's share split half to each end).
///
/// # Safety
/// `calculator` is a live calculator used by this thread only; every non-NULL pointer holds
/// the number of elements given above.
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
    catch(|| {
        let n = atom_count(n_atoms)?;
        // SAFETY (these two): per the contract.
        let positions = unsafe { input(positions, 3 * n, "positions") }?;
        let cell = (!cell.is_null()).then(|| unsafe { std::ptr::read(cell as *const [f64; 9]) });
        let outputs = Outputs {
            energy,
            forces,
            virial,
            energies,
            atom_virials,
        };
        // SAFETY: per the contract.
        unsafe { compute_periodic(calculator, n, atomic_numbers, positions, cell, pbc, outputs) }
    })
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
    catch(|| {
        let n = atom_count(n_atoms)?;
        // SAFETY (these two): per the contract.
        let positions: Vec<f64> = unsafe { input(positions, 3 * n, "positions") }?
            .iter()
            .map(|&x| x as f64)
            .collect();
        let cell = (!cell.is_null())
            .then(|| unsafe { std::ptr::read(cell as *const [f32; 9]) }.map(|x| x as f64));
        let outputs = Outputs {
            energy,
            forces,
            virial,
            energies,
            atom_virials,
        };
        // SAFETY: per the contract.
        unsafe {
            compute_periodic(
                calculator,
                n,
                atomic_numbers,
                &positions,
                cell,
                pbc,
                outputs,
            )
        }
    })
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
    catch(|| {
        if calculator.is_null() {
            return Err(invalid("calculator", "is NULL"));
        }
        let n = atom_count(n_atoms)?;
        let owned = usize::try_from(n_owned)
            .map_err(|_| invalid("n_owned", format!("is negative ({n_owned})")))?;
        // SAFETY (these two): per the contract.
        let z = unsafe { input(atomic_numbers, n, "atomic_numbers") }?;
        let flat = unsafe { input(positions, 3 * n, "positions") }?;
        let positions: Vec<[f64; 3]> = flat.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        let outputs = Outputs {
            energy,
            forces,
            virial,
            energies,
            atom_virials,
        };
        // SAFETY: a live calculator, per the contract.
        let calculator = unsafe { &mut (*calculator).calculator };
        let results = calculator.compute_local(z, &positions, owned, outputs.request())?;
        // SAFETY: output sizes per the contract.
        unsafe { outputs.write(&results, n) };
        Ok(())
    })
}
