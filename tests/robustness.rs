//! Hostile and careless input, one test per class of the robustness issue: every case is an
//! error that names what is wrong, quickly, never a panic, an abort or an absurd allocation.
//!
//! 1. size arithmetic that wrapped (image boxes of a tiny cell, a huge skin or cutoff);
//! 2. sizes read from input and allocated before any check (an XYZ header, model configs);
//! 3. neighbour lists of absurd density (units mistakes), refused before their memory;
//! 6. inputs that were accepted but should not be (unlisted elements, a cutoff that cuts
//!    off the radial basis);
//! 9. misleading messages (a huge coordinate, a byte-order mark, `--device cuda`).
//!
//! This binary's allocator refuses any single allocation above 4 GiB and records the peak
//! of live bytes, so that an unchecked size aborts the test and "refused before the list's
//! memory" is measured, not assumed.

mod common;
mod hostile;

use std::ffi::CStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use hostile::*;
use painn::capi::*;
use painn::io::xyz;
use painn::neighbors::NeighborLimits;
use painn::structures::SplitMix64;
use painn::{
    Calculator, CalculatorOptions, Cell, Device, Error, Model, NeighborList, NeighborListOptions,
    Precision, Request,
};

#[global_allocator]
static ALLOCATOR: Capped = Capped {
    largest: 4 << 30,
    most_live: usize::MAX,
};

/// `body`'s result, its time, and the most memory live during it beyond what was live
/// before (other tests of this binary run alongside and add a little).
fn measured<T>(body: impl FnOnce() -> T) -> (T, Duration, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = Instant::now();
    let result = body();
    let elapsed = start.elapsed();
    (
        result,
        elapsed,
        PEAK.load(Ordering::Relaxed).saturating_sub(before),
    )
}

/// The error of `result`, checked to have come quickly.
fn quick_error<T: std::fmt::Debug>(what: &str, body: impl FnOnce() -> painn::Result<T>) -> Error {
    let (result, elapsed, _) = measured(body);
    assert!(elapsed < Duration::from_secs(5), "{what} took {elapsed:?}");
    result.expect_err(what)
}

fn tiny() -> Arc<Model> {
    Arc::new(tiny_model())
}

fn cubic(side: f64) -> Cell {
    Cell::new(
        [[side, 0.0, 0.0], [0.0, side, 0.0], [0.0, 0.0, side]],
        [true; 3],
    )
    .unwrap()
}

/// The last error message of the C ABI on this thread.
fn last_error() -> String {
    // SAFETY: a NUL-terminated string owned by the library.
    unsafe { CStr::from_ptr(painn_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// `painn_model_load_buffer` on `bytes`: the status and the model (null on failure).
fn load_through_c(bytes: &[u8]) -> (painn_status_t, *mut painn_model_t) {
    let mut model = std::ptr::null_mut();
    // SAFETY: a valid buffer, a NUL-terminated name and an output pointer.
    let status = unsafe {
        painn_model_load_buffer(
            bytes.as_ptr(),
            bytes.len(),
            c"edited.safetensors".as_ptr(),
            &mut model,
        )
    };
    (status, model)
}

/// `painn_compute` of a periodic system through a fresh calculator (`skin` as the C ABI
/// takes it); the status.
fn compute_through_c(
    bytes: &[u8],
    skin: f64,
    atomic_numbers: &[i32],
    positions: &[[f64; 3]],
    cell: &Cell,
) -> painn_status_t {
    let (status, model) = load_through_c(bytes);
    assert_eq!(status, PAINN_SUCCESS, "{}", last_error());
    let mut calculator = std::ptr::null_mut();
    let pbc = cell.pbc().map(i32::from);
    let mut energy = 0.0;
    let mut forces = vec![0.0; 3 * positions.len()];
    // SAFETY: live handles, arrays of the sizes painn.h gives.
    unsafe {
        assert_eq!(
            painn_calculator_create(
                model,
                c"cpu".as_ptr(),
                c"f64".as_ptr(),
                skin,
                &mut calculator
            ),
            PAINN_SUCCESS,
            "{}",
            last_error()
        );
        let status = painn_compute(
            calculator,
            positions.len() as i64,
            atomic_numbers.as_ptr(),
            positions.as_flattened().as_ptr(),
            cell.vectors().as_flattened().as_ptr(),
            pbc.as_ptr(),
            &mut energy,
            forces.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        painn_calculator_free(calculator);
        painn_model_free(model);
        status
    }
}

// ---------------------------------------------------------------------------------------
// 1. Size arithmetic that wraps.

#[test]
fn class1_image_box_counts_are_checked_not_wrapped() {
    // One atom in a cell of 5e-6 A: 10^6 cells on each side, 8e18 image boxes, which
    // wrapped past the old limit in a release build.
    let err = quick_error("a 5e-6 A cell", || {
        NeighborList::build(&[[0.0; 3]], &cubic(5e-6), NeighborListOptions::new(5.0))
    });
    assert!(
        matches!(err, Error::BadCell { .. }) && err.to_string().contains("images of the cell"),
        "{err}"
    );

    // A skin of 1e8 A (through the Rust API and through the C ABI).
    let water = painn::structures::water_box(2, 3);
    let cell = cubic(water.cell.unwrap()[0][0]);
    let options = CalculatorOptions {
        skin_angstrom: 1e8,
        ..CalculatorOptions::default()
    };
    let mut calculator =
        Calculator::with_options(tiny(), Device::Cpu, Precision::F64, options).unwrap();
    let err = quick_error("a skin of 1e8 A", || {
        calculator.compute(&water.atomic_numbers, &water.positions, &cell, Request::ALL)
    });
    assert!(matches!(err, Error::BadCell { .. }), "{err}");
    let status = compute_through_c(
        &tiny_model_bytes(),
        1e8,
        &water.atomic_numbers,
        &water.positions,
        &cell,
    );
    assert_eq!(status, PAINN_INVALID_ARGUMENT, "{}", last_error());
    assert!(last_error().contains("too small"), "{}", last_error());

    // A model whose cutoff is 1e300: refused when it loads (it lies far beyond its radial
    // basis, class 6), and the search radius itself cannot wrap the neighbour list's sizes.
    let huge_cutoff = with_config(&tiny_model_bytes(), |config| {
        config["cutoff_angstrom"] = 1e300.into();
    });
    let err = Model::from_bytes(&huge_cutoff, "huge cutoff").unwrap_err();
    assert!(err.to_string().contains("beyond the radial basis"), "{err}");
    let err = quick_error("a radius of 1e300 A", || {
        NeighborList::build(&water.positions, &cell, NeighborListOptions::new(1e300))
    });
    assert!(matches!(err, Error::BadCell { .. }), "{err}");
    let (result, elapsed, _) = measured(|| {
        NeighborList::build(
            &water.positions[..6],
            &Cell::open(),
            NeighborListOptions::new(1e300),
        )
    });
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(result.unwrap().n_edges(), 30);
}

// ---------------------------------------------------------------------------------------
// 2. Sizes from input allocated before any check.

#[test]
fn class2_declared_atom_counts_size_nothing_the_file_cannot_hold() {
    for (count, expected) in [
        ("2000000000", "file ends after 3 of 2000000000 atoms"),
        (
            "4611686018427387904",
            "file ends after 3 of 4611686018427387904",
        ),
        ("18446744073709551615", "file ends after 3 of"),
        ("-5", "negative"),
        ("99999999999999999999999", "beyond any file"),
    ] {
        let text = format!("{count}\ncomment\nH 0 0 0\nH 0 0 1\nH 0 0 2\n");
        let (result, elapsed, peak) = measured(|| xyz::parse(&text, "huge.xyz"));
        let err = result.unwrap_err().to_string();
        assert!(err.contains(expected), "{count}: {err}");
        assert!(elapsed < Duration::from_secs(1), "{count}: {elapsed:?}");
        assert!(peak < 64 << 20, "{count}: {peak} bytes allocated");
    }
    // A column count that wrapped the column numbers around (and indexed past a line), and
    // one that is merely huge: neither sizes anything.
    let text = "1\nProperties=species:S:1:pos:R:3:junk:R:18446744073709551615\nH 0 0 0\n";
    let err = xyz::parse(text, "columns.xyz").unwrap_err().to_string();
    assert!(err.contains("too large"), "{err}");
    let text = "1\nProperties=species:S:1:pos:R:3:junk:R:1000000000000\nH 0 0 0\n";
    let (result, _, peak) = measured(|| xyz::parse(text, "columns.xyz"));
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("expected 1000000000004 columns, found 4"),
        "{err}"
    );
    assert!(peak < 1 << 20, "{peak} bytes allocated");
}

#[test]
fn class2_model_sizes_must_agree_with_the_file() {
    let bytes = tiny_model_bytes();
    for (key, value, needle) in [
        (
            "layers",
            serde_json::json!(1_000_000_000u64),
            "layers = 1000000000",
        ),
        (
            "layers",
            serde_json::json!(u64::MAX),
            "layers = 18446744073709551615",
        ),
        (
            "hidden_features",
            serde_json::json!(1u64 << 62),
            "hidden_features",
        ),
        (
            "radial_basis",
            serde_json::json!(1u64 << 40),
            "radial_basis = 1099511627776",
        ),
    ] {
        let edited = with_config(&bytes, |config| {
            config[key] = value.clone();
        });
        let (result, elapsed, peak) = measured(|| Model::from_bytes(&edited, "edited"));
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Model { .. })
                && err.to_string().contains(needle)
                && err.to_string().contains("does not describe these tensors"),
            "{key} = {value}: {err}"
        );
        assert!(elapsed < Duration::from_secs(1), "{key}: {elapsed:?}");
        assert!(peak < 64 << 20, "{key}: {peak} bytes allocated");
        // The C ABI (and LAMMPS through it) reports a model error, not an internal one.
        let (status, model) = load_through_c(&edited);
        assert_eq!(status, PAINN_MODEL_ERROR, "{key}: {}", last_error());
        assert!(model.is_null());
    }
}

// ---------------------------------------------------------------------------------------
// 3. No bound on the neighbour count.

/// Face-centred cubic copper of lattice constant `a` (Angstrom), `cells`^3 unit cells.
fn copper(a: f64, cells: usize) -> (Vec<i32>, Vec<[f64; 3]>, Cell) {
    let basis = [
        [0.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
        [0.5, 0.0, 0.5],
        [0.0, 0.5, 0.5],
    ];
    let mut positions = Vec::new();
    for i in 0..cells {
        for j in 0..cells {
            for k in 0..cells {
                for b in basis {
                    positions.push([
                        a * (i as f64 + b[0]),
                        a * (j as f64 + b[1]),
                        a * (k as f64 + b[2]),
                    ]);
                }
            }
        }
    }
    // Copper is element 29, beyond the tiny model: neon (10) stands in for it.
    (
        vec![10; positions.len()],
        positions,
        cubic(a * cells as f64),
    )
}

#[test]
fn class3_units_mistakes_are_refused_before_the_list_is_allocated() {
    // 10^5 atoms packed into 3 nm: ~3.7 atoms per cubic Angstrom, ~3,300 neighbours each
    // within 6 A; the list would take 5 GB.
    let mut rng = SplitMix64::new(17);
    let packed: Vec<[f64; 3]> = (0..100_000)
        .map(|_| [0.0; 3].map(|_: f64| rng.range(0.0, 30.0)))
        .collect();
    let options = NeighborListOptions::new(5.0).with_skin(1.0);
    let (result, elapsed, peak) = measured(|| NeighborList::build(&packed, &Cell::open(), options));
    let err = result.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::InvalidArgument { .. })
            && text.contains("neighbours within 6 Angstrom")
            && text.contains("atoms per cubic Angstrom")
            && text.contains("x liquid water")
            && text.contains("are the positions and the cell in Angstrom?"),
        "{text}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(peak < 512 << 20, "{peak} bytes live before the refusal");
    println!("10^5 atoms in 3 nm: refused in {elapsed:?}, {peak} bytes at most: {text}");

    // Copper written in nanometres (a = 0.3615): in float32 this returned 2.6e8 eV.
    let (z, positions, cell) = copper(0.3615, 4);
    for precision in [Precision::F32, Precision::F64] {
        let mut calculator = Calculator::new(tiny(), Device::Cpu, precision).unwrap();
        let err = quick_error("copper in nanometres", || {
            calculator.compute(&z, &positions, &cell, Request::ALL)
        });
        assert!(
            err.to_string().contains("liquid water"),
            "{precision}: {err}"
        );
    }
    // The same copper in Angstrom is fine.
    let (z, positions, cell) = copper(3.615, 2);
    let mut calculator = Calculator::new(tiny(), Device::Cpu, Precision::F32).unwrap();
    calculator
        .compute(&z, &positions, &cell, Request::ALL)
        .unwrap();
}

#[test]
fn class3_limits_are_settable_and_validated() {
    let water = painn::structures::water_box(4, 3);
    let cell = cubic(water.cell.unwrap()[0][0]);
    let limited = |limits| NeighborListOptions::new(5.0).with_limits(limits);
    let few = NeighborLimits {
        max_neighbors: Some(10),
        ..NeighborLimits::default()
    };
    let err = NeighborList::build(&water.positions, &cell, limited(few)).unwrap_err();
    assert!(err.to_string().contains("(the limit is 10;"), "{err}");
    let small = NeighborLimits {
        max_bytes: Some(1000),
        ..NeighborLimits::default()
    };
    let err = NeighborList::build(&water.positions, &cell, limited(small)).unwrap_err();
    assert!(
        err.to_string().contains("more than the limit of 1.0 kB"),
        "{err}"
    );
    let list = NeighborList::build(
        &water.positions,
        &cell,
        limited(NeighborLimits::unlimited()),
    )
    .unwrap();
    let defaults = NeighborList::build(&water.positions, &cell, NeighborListOptions::new(5.0));
    assert_eq!(list.sources(), defaults.unwrap().sources());
    for limits in [
        NeighborLimits {
            max_neighbors: Some(0),
            ..NeighborLimits::default()
        },
        NeighborLimits {
            max_bytes: Some(0),
            ..NeighborLimits::default()
        },
    ] {
        let options = CalculatorOptions {
            neighbor_limits: limits,
            ..CalculatorOptions::default()
        };
        let err = Calculator::with_options(tiny(), Device::Cpu, Precision::F64, options)
            .err()
            .expect("a zero limit is refused");
        assert!(err.to_string().contains("must be at least 1"), "{err}");
        assert!(NeighborList::build(&water.positions, &cell, limited(limits)).is_err());
    }
    // Through a calculator: its own limit applies.
    let options = CalculatorOptions {
        neighbor_limits: few,
        ..CalculatorOptions::default()
    };
    let mut calculator =
        Calculator::with_options(tiny(), Device::Cpu, Precision::F64, options).unwrap();
    let err = calculator
        .compute(&water.atomic_numbers, &water.positions, &cell, Request::ALL)
        .unwrap_err();
    assert!(err.to_string().contains("(the limit is 10;"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 6. Inputs accepted that should not be.

#[test]
fn class6_elements_the_model_does_not_list_are_refused_everywhere() {
    // The tiny model (max_z = 10) trained on carbon alone: a hydrogen atom is an error
    // naming the atom and the element, in Rust and through the C ABI.
    let carbon_only = with_config(&tiny_model_bytes(), |config| {
        config["elements"] = serde_json::json!(["C"]);
    });
    let model = Arc::new(Model::from_bytes(&carbon_only, "carbon.safetensors").unwrap());
    let positions = [[0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [2.1, 1.0, 0.0]];
    let mut calculator = Calculator::new(model.clone(), Device::Cpu, Precision::F64).unwrap();
    let err = calculator
        .compute(&[6, 6, 1], &positions, &Cell::open(), Request::ALL)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument `atomic_numbers`: atom 2 is H (Z = 1), an element model \
         carbon.safetensors was not trained on (its elements: C)"
    );
    assert!(
        calculator
            .compute(&[6, 6, 6], &positions, &Cell::open(), Request::ALL)
            .is_ok()
    );
    // Beyond max_z stays the range error.
    assert!(matches!(
        model.check_atomic_numbers(&[6, 11]),
        Err(Error::UnknownElement { atom: 1, z: 11, .. })
    ));
    let (status, c_model) = load_through_c(&carbon_only);
    assert_eq!(status, PAINN_SUCCESS);
    let mut c_calculator = std::ptr::null_mut();
    let mut energy = 0.0;
    // SAFETY: live handles, arrays of the sizes painn.h gives.
    unsafe {
        painn_calculator_create(
            c_model,
            c"cpu".as_ptr(),
            c"f64".as_ptr(),
            -1.0,
            &mut c_calculator,
        );
        let status = painn_compute(
            c_calculator,
            3,
            [6, 1, 6].as_ptr(),
            positions.as_flattened().as_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            &mut energy,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        assert_eq!(status, PAINN_INVALID_ARGUMENT);
        assert!(
            last_error().contains("atom 1 is H (Z = 1)"),
            "{}",
            last_error()
        );
        painn_calculator_free(c_calculator);
        painn_model_free(c_model);
    }
    // Lists the model cannot mean are refused when it loads.
    for (elements, needle) in [
        (serde_json::json!(["Cu"]), "Cu (Z = 29), beyond max_z = 10"),
        (serde_json::json!(["Xx"]), "`Xx`, not a chemical symbol"),
        (serde_json::json!([]), "empty list"),
    ] {
        let edited = with_config(&tiny_model_bytes(), |config| {
            config["elements"] = elements.clone();
        });
        let err = Model::from_bytes(&edited, "edited")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{elements}: {err}");
    }
}

/// The tiny model with another `cutoff_angstrom`, loaded.
fn with_cutoff(cutoff: f64) -> painn::Result<Model> {
    let edited = with_config(&tiny_model_bytes(), |config| {
        config["cutoff_angstrom"] = cutoff.into();
    });
    Model::from_bytes(&edited, "edited")
}

#[test]
fn class6_a_cutoff_outside_the_radial_basis_is_refused() {
    // The tiny model's centres run from 0 to 4 A; beyond the last centre plus 4 widths of
    // 0.75 A every radial feature vanishes (a 64 A cutoff made a 24-atom box take 20 s).
    for (cutoff, needle) in [
        (
            3.0,
            "cutoff_angstrom = 3 is below the last radial basis centre, rbf.centers[7] = 4",
        ),
        (
            64.0,
            "cutoff_angstrom = 64 lies beyond the radial basis, which ends near 7",
        ),
    ] {
        let err = with_cutoff(cutoff).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    // In between: `painn-convert --cutoff`, and the stated cutoff is the one used.
    assert_eq!(with_cutoff(4.5).unwrap().cutoff_angstrom(), 4.5);
}

// ---------------------------------------------------------------------------------------
// 9. Messages that mislead.

#[test]
fn class9_messages_name_what_is_wrong() {
    // A coordinate of 1e30 (it said "9223372036854776000 lattice vectors outside").
    let positions = [[1e30, 0.0, 0.0], [1.0, 0.0, 0.0]];
    let err = NeighborList::build(&positions, &cubic(10.0), NeighborListOptions::new(3.0))
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("9223372036854776000") && err.contains("atom 0") && err.contains("Angstrom"),
        "{err}"
    );
    // In range, but very many lattice vectors of a tiny cell away: the count is shown.
    let positions = [[1e7, 0.0, 0.0], [0.0, 0.0, 0.0]];
    let tiny_cell = Cell::new(
        [[1e-3, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]],
        [true, false, false],
    )
    .unwrap();
    let err = NeighborList::build(&positions, &tiny_cell, NeighborListOptions::new(3.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1.000e10 lattice vectors outside"), "{err}");

    // A byte-order mark is named, not shown as an invisible character; so are control
    // characters, and a coordinate that overflows is not a number.
    for (text, needle) in [
        (
            "\u{feff}1\ncomment\nH 0 0 0\n",
            "bad.xyz:1: expected the number of atoms, found \
          `<byte-order mark U+FEFF>1`: a byte-order mark",
        ),
        (
            "1\ncomment\nH 0 0\u{7} 0\n",
            "bad.xyz:3: invalid coordinate `0<U+0007>`",
        ),
        (
            "1\ncomment\nH 0 1e999 0\n",
            "invalid coordinate `1e999`: not a finite number",
        ),
    ] {
        let err = xyz::parse(text, "bad.xyz").unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn class9_cli_device_errors_come_in_the_right_order() {
    let model = repository().join("tests/data/tiny_model.safetensors");
    let structure = std::env::temp_dir().join(format!("painn-robust-{}.xyz", std::process::id()));
    std::fs::write(&structure, MOLECULE_XYZ).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_painn"))
        .args(["eval", "--device", "cuda", "--model"])
        .arg(&model)
        .arg(&structure)
        .output()
        .unwrap();
    std::fs::remove_file(&structure).ok();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    if painn::backend::cuda::device_count() == 0 {
        // No GPU: that first, then the precision it would also need.
        let (gpu, precision) = (
            stderr.find("no CUDA GPU was found"),
            stderr.find("--precision f32"),
        );
        assert!(
            gpu.is_some() && precision.is_some() && gpu < precision,
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains("computes in float32: add --precision f32")
                && stderr.contains("default precision of this command is f64"),
            "{stderr}"
        );
    }
}
