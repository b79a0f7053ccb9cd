//! The CUDA kernels: embedded in the library, compiled at run time by NVRTC for the GPU's
//! own architecture, and cached on disk keyed by the source, the compile options,
//! architecture and NVRTC version. Building the crate needs no CUDA toolkit; running it needs
//! the driver (`libcuda.so`) and NVRTC (`libnvrtc.so`, from the toolkit or PyPI's
//! nvidia-cuda-nvrtc).
//!
//! Every number that both the host and the kernels use is defined once, in Rust, and handed
//! to NVRTC as a `-DNAME=value` option ([`defines`]); the `.cu` files refuse to compile
//! without them (`#ifndef NAME #error`).

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::PathBuf;

use super::grid::{
    GEMM_FEW_ROWS, GEMM_THREADS, GEMM_TILE, MAX_HIDDEN, MAX_REACH, REDUCE_THREADS, SCAN_BLOCK,
    SMALL_EDGE_PARTS, SMALL_MAX_HIDDEN, SMALL_MAX_LAYERS, SMALL_ROWS, SMALL_THREADS, SORT_WARPS,
};
use super::readout::{
    NO_CLOSE_EDGE, RESULTS_HEADER, STATUS_CLOSE_EDGE, STATUS_OVERFLOW, STATUS_WORDS,
};
use crate::backend::{GEOMETRY_WIDTH, NORM_ROUND_OFF_FACTOR, U_EPSILON};
use crate::error::{Error, Result};
use crate::model::filter::NODE_VECTORS;
use crate::neighbors::MINIMUM_DISTANCE_ANGSTROM;

/// The header and the kernel families, in the order they are concatenated.
const SOURCES: [(&str, &str); 11] = [
    ("common.cuh", include_str!("../../../cuda/common.cuh")),
    ("scan.cu", include_str!("../../../cuda/scan.cu")),
    ("neighbors.cu", include_str!("../../../cuda/neighbors.cu")),
    ("graph.cu", include_str!("../../../cuda/graph.cu")),
    ("message.cu", include_str!("../../../cuda/message.cu")),
    ("dense.cu", include_str!("../../../cuda/dense.cu")),
    ("update.cu", include_str!("../../../cuda/update.cu")),
    ("head.cu", include_str!("../../../cuda/head.cu")),
    ("readout.cu", include_str!("../../../cuda/readout.cu")),
    ("exchange.cu", include_str!("../../../cuda/exchange.cu")),
    ("small.cu", include_str!("../../../cuda/small.cu")),
];

/// A float64 constant as a C literal that reads back as the same double (Rust prints the
/// shortest such decimal).
fn double_literal(value: f64) -> String {
    format!("{value:e}")
}

/// The numbers shared by the host and the kernels, as `(NAME, C literal)`: each becomes
/// `-DNAME=value`.
pub fn defines() -> Vec<(&'static str, String)> {
    let integers = [
        ("GEOMETRY_WIDTH", GEOMETRY_WIDTH),
        ("NODE_VECTORS", NODE_VECTORS),
        ("STATUS_WORDS", STATUS_WORDS),
        ("STATUS_OVERFLOW", STATUS_OVERFLOW),
        ("STATUS_CLOSE_EDGE", STATUS_CLOSE_EDGE),
        ("NO_CLOSE_EDGE", NO_CLOSE_EDGE as usize),
        ("RESULTS_HEADER", RESULTS_HEADER),
        ("SCAN_BLOCK", SCAN_BLOCK),
        ("SORT_WARPS", SORT_WARPS as usize),
        ("REDUCE_THREADS", REDUCE_THREADS as usize),
        ("GEMM_TILE", GEMM_TILE as usize),
        ("GEMM_THREADS", GEMM_THREADS as usize),
        ("GEMM_FEW_ROWS", GEMM_FEW_ROWS),
        ("MAX_HIDDEN", MAX_HIDDEN),
        ("MAX_REACH", MAX_REACH as usize),
        ("SMALL_THREADS", SMALL_THREADS as usize),
        ("SMALL_ROWS", SMALL_ROWS),
        ("SMALL_MAX_LAYERS", SMALL_MAX_LAYERS),
        ("SMALL_MAX_HIDDEN", SMALL_MAX_HIDDEN),
        ("SMALL_EDGE_PARTS", SMALL_EDGE_PARTS),
    ];
    let doubles = [
        ("MINIMUM_DISTANCE", MINIMUM_DISTANCE_ANGSTROM),
        ("U_EPSILON", U_EPSILON),
        ("NORM_ROUND_OFF_FACTOR", NORM_ROUND_OFF_FACTOR),
        ("F32_EPSILON", f32::EPSILON as f64),
    ];
    integers
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
        .chain(
            doubles
                .into_iter()
                .map(|(name, value)| (name, double_literal(value))),
        )
        .collect()
}

/// NVRTC's options for `arch`: the architecture, the language standard and [`defines`].
pub fn options(arch: &str) -> Vec<String> {
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    options.extend(
        defines()
            .into_iter()
            .map(|(name, value)| format!("-D{name}={value}")),
    );
    options
}

/// The whole program as one translation unit (`#line` directives keep compiler messages
/// pointing at the right file).
pub fn program_source() -> String {
    let mut source = String::new();
    for (name, text) in SOURCES {
        source.push_str(&format!("#line 1 \"{name}\"\n"));
        source.push_str(&text.replace("#pragma once", ""));
        source.push('\n');
    }
    source
}

/// FNV-1a, 64 bits: a stable hash of the source and options for the cache key.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

const NVRTC_NAMES: [&str; 4] = [
    "libnvrtc.so",
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    "nvrtc64_130_0.dll",
];
const DRIVER_NAMES: [&str; 3] = ["libcuda.so", "libcuda.so.1", "nvcuda.dll"];

/// Whether one of `names` can be loaded; cudarc would panic where this returns false.
fn loadable(names: &[&str]) -> bool {
    names.iter().any(|name| {
        // SAFETY: loading a system library runs its initialisers; the CUDA libraries' are
        // benign, and the handle is dropped (the library stays loaded for cudarc).
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

/// Checks that NVRTC can be loaded, with a message saying how to get it otherwise.
pub fn check_nvrtc() -> Result<()> {
    if loadable(&NVRTC_NAMES) {
        Ok(())
    } else {
        Err(Error::Cuda(
            "NVRTC (libnvrtc.so) not found: install the CUDA toolkit, or `pip install \
             nvidia-cuda-nvrtc` and add its lib folder to LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// Checks that the CUDA driver can be loaded.
pub fn check_driver() -> Result<()> {
    if loadable(&DRIVER_NAMES) {
        Ok(())
    } else {
        Err(Error::Cuda(
            "no CUDA driver (libcuda.so) on this machine: use device cpu".into(),
        ))
    }
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    check_nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: plain out-parameters.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    nvrtc_ok(status, "nvrtcVersion")?;
    Ok((major, minor))
}

fn nvrtc_ok(status: cudarc::nvrtc::sys::nvrtcResult, call: &str) -> Result<()> {
    if status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda(format!("{call} failed: {status:?}")))
    }
}

/// Compiles the program to a CUBIN for `arch` (e.g. `sm_90`), or fails with NVRTC's log.
pub fn compile(arch: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::sys;
    check_nvrtc()?;
    let source = CString::new(program_source()).expect("no NUL in the sources");
    let name = CString::new("painn.cu").expect("no NUL");
    let options: Vec<CString> = options(arch)
        .into_iter()
        .map(|o| CString::new(o).expect("no NUL"))
        .collect();
    let option_pointers: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    let mut program: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is to a live NUL-terminated string; the program is destroyed below.
    unsafe {
        nvrtc_ok(
            sys::nvrtcCreateProgram(
                &mut program,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
            "nvrtcCreateProgram",
        )?;
        let compiled = sys::nvrtcCompileProgram(
            program,
            option_pointers.len() as c_int,
            option_pointers.as_ptr(),
        );
        let result = if compiled == sys::nvrtcResult::NVRTC_SUCCESS {
            let mut size = 0usize;
            nvrtc_ok(
                sys::nvrtcGetCUBINSize(program, &mut size),
                "nvrtcGetCUBINSize",
            )
            .and_then(|()| {
                let mut cubin = vec![0u8; size];
                nvrtc_ok(
                    sys::nvrtcGetCUBIN(program, cubin.as_mut_ptr() as *mut c_char),
                    "nvrtcGetCUBIN",
                )
                .map(|()| cubin)
            })
        } else {
            let mut size = 0usize;
            sys::nvrtcGetProgramLogSize(program, &mut size);
            let mut log = vec![0u8; size.max(1)];
            sys::nvrtcGetProgramLog(program, log.as_mut_ptr() as *mut c_char);
            let log = CStr::from_bytes_until_nul(&log)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(Error::Cuda(format!(
                "NVRTC could not compile the kernels for {arch} ({compiled:?}):\n{log}"
            )))
        };
        sys::nvrtcDestroyProgram(&mut program);
        result
    }
}

/// Where compiled kernels are cached: `$PAINN_CACHE_DIR`, else `$XDG_CACHE_HOME/painn`, else
/// `~/.cache/painn`.
fn cache_directory() -> Option<PathBuf> {
    if let Some(directory) = std::env::var_os("PAINN_CACHE_DIR") {
        return Some(PathBuf::from(directory));
    }
    if let Some(directory) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(directory).join("painn"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/painn"))
}

/// What the cached CUBIN for `arch` is compiled from: the program and every option.
fn cache_text(arch: &str) -> String {
    let mut text = program_source();
    for option in options(arch) {
        text.push('\0');
        text.push_str(&option);
    }
    text
}

/// The CUBIN for `arch`, from the cache when present, else compiled (and cached; a cache that
/// cannot be written is not an error).
pub fn cubin_for(arch: &str) -> Result<Vec<u8>> {
    let (major, minor) = nvrtc_version()?;
    let key = format!(
        "kernels-{:016x}-{arch}-nvrtc{major}.{minor}.cubin",
        fnv1a(cache_text(arch).as_bytes())
    );
    let path = cache_directory().map(|directory| directory.join(key));
    if let Some(path) = &path
        && let Ok(cubin) = std::fs::read(path)
    {
        return Ok(cubin);
    }
    let cubin = compile(arch)?;
    if let Some(path) = &path {
        if let Some(directory) = path.parent() {
            let _ = std::fs::create_dir_all(directory);
        }
        // Write then rename, so a concurrent reader never sees half a file.
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&temporary, &cubin).is_ok() {
            let _ = std::fs::rename(&temporary, path);
        }
    }
    Ok(cubin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shared number comes from the host: the sources guard each one and define none.
    #[test]
    fn shared_numbers_are_defined_by_the_host_only() {
        let source = program_source();
        for (name, value) in defines() {
            assert!(
                source.contains(&format!("#ifndef {name}\n#error")),
                "{name} has no #ifndef guard"
            );
            assert!(
                !source.contains(&format!("#define {name} ")),
                "{name} is defined in the sources too"
            );
            assert!(!value.is_empty() && !value.contains(' '), "{name}={value}");
        }
    }

    #[test]
    fn double_literals_read_back_exactly() {
        for value in [MINIMUM_DISTANCE_ANGSTROM, U_EPSILON, 0.1, 1.0 / 3.0] {
            assert_eq!(double_literal(value).parse::<f64>().unwrap(), value);
        }
        assert_eq!(double_literal(1e-4), "1e-4");
    }

    #[test]
    fn the_cache_key_covers_the_options() {
        let text = cache_text("sm_90");
        assert!(text.starts_with(&program_source()));
        for option in options("sm_90") {
            assert!(text.contains(&option), "{option}");
        }
        assert_ne!(
            fnv1a(text.as_bytes()),
            fnv1a(cache_text("sm_80").as_bytes())
        );
    }

    #[test]
    fn cache_key_hash_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
