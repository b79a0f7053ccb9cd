//! The C ABI end to end: the header is what cbindgen generates now; a C program and a C++
//! program, compiled and linked against the static library, compute the fixtures (and the
//! training project's references when present) bit for bit as the Rust library does, and
//! exercise every error path; the C program runs clean under valgrind memcheck.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use painn::{Precision, Results};

#[test]
fn header_is_what_cbindgen_generates() {
    let repository = repository();
    let config = cbindgen::Config::from_file(repository.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(&repository)
        .with_config(config)
        .generate()
        .expect("cbindgen");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = repository.join("include/painn.h");
    if std::env::var_os("PAINN_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap();
    assert!(
        committed == generated,
        "include/painn.h is stale: regenerate it with `cbindgen --output include/painn.h` \
         or `PAINN_UPDATE_HEADER=1 cargo test --test c_api`"
    );
}

/// The static library this test was built with, checked to be newer than the sources.
fn static_library() -> PathBuf {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let library = repository().join(format!("target/{profile}/libpainn.a"));
    let built = std::fs::metadata(&library)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: run `cargo build --{profile}` first",
                library.display()
            )
        });
    let newest_source = walk(&repository().join("src"))
        .into_iter()
        .chain(walk(&repository().join("cuda")))
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
        .unwrap();
    assert!(
        built >= newest_source,
        "{} is older than the sources: run `cargo build --{profile}` first",
        library.display()
    );
    library
}

fn walk(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

const LINK: [&str; 6] = ["-lpthread", "-ldl", "-lm", "-lrt", "-lutil", "-lgcc_s"];

fn compile(compiler: &str, standard: &str, source: &str, output: &Path) {
    let repository = repository();
    let status = Command::new(compiler)
        .args([standard, "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{}", repository.join("include").display()))
        .arg(repository.join(source))
        .arg(static_library())
        .args(LINK)
        .arg("-o")
        .arg(output)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(status.success(), "{compiler} failed on {source}");
}

/// The cases as the C programs read them; full precision (Rust's `{:?}` round-trips).
fn write_cases(cases: &[Case], path: &Path) {
    let mut text = format!("cases {}\n", cases.len());
    for case in cases {
        let pbc = case.cell.pbc();
        let periodic = case.cell.is_periodic();
        text += &format!(
            "case {} {} {} {} {} {}\n",
            case.name,
            case.atomic_numbers.len(),
            pbc[0] as i32,
            pbc[1] as i32,
            pbc[2] as i32,
            periodic as i32
        );
        if periodic {
            let values: Vec<String> = case
                .cell
                .vectors()
                .iter()
                .flatten()
                .map(|v| format!("{v:?}"))
                .collect();
            text += &format!("cell {}\n", values.join(" "));
        }
        let z: Vec<String> = case.atomic_numbers.iter().map(|z| z.to_string()).collect();
        text += &format!("Z {}\npositions", z.join(" "));
        for r in &case.positions {
            text += &format!(" {:?} {:?} {:?}", r[0], r[1], r[2]);
        }
        text += "\n";
    }
    std::fs::write(path, text).unwrap();
}

/// Parses a program's output: per case, the named arrays.
fn read_results(path: &Path) -> Vec<(String, Results)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut all: Vec<(String, Results)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let key = words.next().unwrap();
        if key == "case" {
            all.push((words.next().unwrap().to_string(), Results::default()));
            continue;
        }
        let values: Vec<f64> = words.map(|w| w.parse().unwrap()).collect();
        let results = &mut all.last_mut().unwrap().1;
        match key {
            "energy" => results.energy = values[0],
            "forces" => results.forces = values.chunks(3).map(|f| [f[0], f[1], f[2]]).collect(),
            "virial" => {
                results.virial = [
                    [values[0], values[1], values[2]],
                    [values[3], values[4], values[5]],
                    [values[6], values[7], values[8]],
                ]
            }
            "energies" => results.energies = values,
            "atom_virials" => {
                results.atom_virials = values
                    .chunks(9)
                    .map(|w| [[w[0], w[1], w[2]], [w[3], w[4], w[5]], [w[6], w[7], w[8]]])
                    .collect()
            }
            other => panic!("unexpected line {other}"),
        }
    }
    all
}

fn scratch() -> PathBuf {
    let directory = std::env::temp_dir().join(format!("painn-c-api-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    directory
}

fn run(program: &Path, model: &Path, cases: &Path, output: &Path, valgrind: bool) {
    let mut command = if valgrind {
        let mut c = Command::new("valgrind");
        c.args([
            "--tool=memcheck",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--error-exitcode=99",
            "--quiet",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    };
    // Few threads: valgrind serialises them anyway.
    let output_status = command
        .env("RAYON_NUM_THREADS", "2")
        .args([model, cases, output])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output_status.stdout);
    let stderr = String::from_utf8_lossy(&output_status.stderr);
    println!("{stdout}");
    assert!(
        output_status.status.success(),
        "{} failed ({:?}):\n{stderr}",
        program.display(),
        output_status.status.code()
    );
}

fn check_against_library(model: &Arc<painn::Model>, cases: &[Case], output: &Path, language: &str) {
    let printed = read_results(output);
    assert_eq!(printed.len(), cases.len());
    for (case, (name, results)) in cases.iter().zip(&printed) {
        assert_eq!(&case.name, name);
        let expected = compute(model, Precision::F64, case);
        assert!(
            results == &expected,
            "{language}: {name} differs from the Rust library"
        );
    }
    println!(
        "{language}: {} cases identical to the Rust library, bit for bit",
        cases.len()
    );
}

#[test]
fn c_and_cpp_programs_match_the_library_and_refuse_bad_input() {
    let directory = scratch();
    let mut all_cases = cases(&load_json(
        repository().join("tests/data/tiny_reference.json"),
    ));
    let tiny_model_path = repository().join("tests/data/tiny_model.safetensors");
    let tiny = Arc::new(tiny_model());
    let cases_path = directory.join("cases.txt");
    write_cases(&all_cases, &cases_path);

    let c_program = directory.join("test_c_api");
    compile("cc", "-std=c11", "tests/c/test_c_api.c", &c_program);
    let cpp_program = directory.join("test_cpp_api");
    compile(
        "c++",
        "-std=c++17",
        "tests/c/test_cpp_api.cpp",
        &cpp_program,
    );

    let c_output = directory.join("c.txt");
    run(&c_program, &tiny_model_path, &cases_path, &c_output, false);
    check_against_library(&tiny, &all_cases, &c_output, "C");
    let cpp_output = directory.join("cpp.txt");
    run(
        &cpp_program,
        &tiny_model_path,
        &cases_path,
        &cpp_output,
        false,
    );
    check_against_library(&tiny, &all_cases, &cpp_output, "C++");

    // The training project's structures with the trained model, when present.
    if let (Some(shared), Some(_)) = (
        shared_dir("C API on the seed reference"),
        student_model("C API on the seed reference"),
    ) {
        let student_path = std::env::var_os("PAINN_STUDENT_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| repository().join("target/models/student_427k.safetensors"));
        let student = Arc::new(painn::Model::from_file(&student_path).unwrap());
        all_cases = cases(&load_json(shared.join("reference/seed_reference_f64.json")));
        let seed_cases = directory.join("seed.txt");
        write_cases(&all_cases, &seed_cases);
        let seed_output = directory.join("seed-c.txt");
        run(&c_program, &student_path, &seed_cases, &seed_output, false);
        check_against_library(&student, &all_cases, &seed_output, "C (seed reference)");
        for (case, (_, results)) in all_cases.iter().zip(read_results(&seed_output)) {
            assert!(
                (results.energy - case.energy).abs() <= 1e-8,
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn c_program_is_clean_under_valgrind() {
    let available = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("PAINN_REQUIRE_VALGRIND").is_none(),
            "PAINN_REQUIRE_VALGRIND is set but valgrind is not installed"
        );
        skipped(
            "c_program_is_clean_under_valgrind",
            "valgrind is not installed",
        );
        return;
    }
    let directory = scratch().join("valgrind");
    std::fs::create_dir_all(&directory).unwrap();
    let fixtures = cases(&load_json(
        repository().join("tests/data/tiny_reference.json"),
    ));
    let cases_path = directory.join("cases.txt");
    write_cases(&fixtures, &cases_path);
    let program = directory.join("test_c_api");
    compile("cc", "-std=c11", "tests/c/test_c_api.c", &program);
    run(
        &program,
        &repository().join("tests/data/tiny_model.safetensors"),
        &cases_path,
        &directory.join("output.txt"),
        true,
    );
    println!("valgrind memcheck: no errors, no definite or indirect leaks");
}

/// The C functions called from Rust: a model and a CPU float64 calculator on the tiny model.
mod through_c {
    use std::ffi::{CStr, CString};
    use std::ptr::null_mut;

    use painn::capi::*;

    use super::repository;

    pub struct Handles {
        pub model: *mut painn_model_t,
        pub calculator: *mut painn_calculator_t,
    }

    impl Handles {
        pub fn tiny() -> Handles {
            let path = repository().join("tests/data/tiny_model.safetensors");
            let path = CString::new(path.to_str().unwrap()).unwrap();
            let mut model = null_mut();
            let mut calculator = null_mut();
            // SAFETY: valid strings and outputs.
            unsafe {
                assert_eq!(painn_model_load(path.as_ptr(), &mut model), PAINN_SUCCESS);
                assert_eq!(
                    painn_calculator_create(
                        model,
                        c"cpu".as_ptr(),
                        c"f64".as_ptr(),
                        -1.0,
                        &mut calculator
                    ),
                    PAINN_SUCCESS
                );
            }
            Handles { model, calculator }
        }
    }

    impl Drop for Handles {
        fn drop(&mut self) {
            // SAFETY: live handles, freed once.
            unsafe {
                assert_eq!(painn_calculator_free(self.calculator), PAINN_SUCCESS);
                assert_eq!(painn_model_free(self.model), PAINN_SUCCESS);
            }
        }
    }

    /// The status of a call and, on failure, the thread's last error.
    pub fn outcome(status: painn_status_t) -> (painn_status_t, String) {
        let message = if status == PAINN_SUCCESS {
            String::new()
        } else {
            // SAFETY: painn_last_error returns a valid C string.
            unsafe { CStr::from_ptr(painn_last_error()) }
                .to_string_lossy()
                .into_owned()
        };
        (status, message)
    }

    /// `painn_compute` of a periodic system: status, message, energy.
    ///
    /// # Safety
    /// `calculator` is live (it may be in use by another thread).
    pub unsafe fn energy(
        calculator: *mut painn_calculator_t,
        z: &[i32],
        positions: &[[f64; 3]],
        cell: &[[f64; 3]; 3],
    ) -> (painn_status_t, String, f64) {
        let mut energy = f64::NAN;
        let pbc = [1i32; 3];
        // SAFETY: arrays of the sizes given.
        let status = unsafe {
            painn_compute(
                calculator,
                z.len() as i64,
                z.as_ptr(),
                positions.as_flattened().as_ptr(),
                cell.as_flattened().as_ptr(),
                pbc.as_ptr(),
                &mut energy,
                null_mut(),
                null_mut(),
                null_mut(),
                null_mut(),
            )
        };
        let (status, message) = outcome(status);
        (status, message, energy)
    }
}

/// A periodic box of 216 atoms on a jittered simple-cubic grid (1.6 A apart), H to O.
fn grid_system() -> (Vec<i32>, Vec<[f64; 3]>, [[f64; 3]; 3]) {
    let mut rng = painn::structures::SplitMix64::new(17);
    let (side, spacing) = (6, 1.6);
    let mut z = Vec::new();
    let mut positions = Vec::new();
    for i in 0..side {
        for j in 0..side {
            for k in 0..side {
                z.push([1, 6, 7, 8][(i + j + k) % 4]);
                positions.push([i, j, k].map(|n| n as f64 * spacing + rng.range(-0.2, 0.2)));
            }
        }
    }
    let length = side as f64 * spacing;
    let cell = [[length, 0.0, 0.0], [0.0, length, 0.0], [0.0, 0.0, length]];
    (z, positions, cell)
}

#[test]
fn one_calculator_called_from_two_threads_at_once_refuses_the_overlapping_call() {
    use painn::capi::*;
    use std::sync::Barrier;

    let handles = through_c::Handles::tiny();
    let (z, positions, cell) = grid_system();
    // SAFETY: a live calculator used by this thread alone.
    let (status, _, expected) =
        unsafe { through_c::energy(handles.calculator, &z, &positions, &cell) };
    assert_eq!(status, PAINN_SUCCESS);

    // Two threads call the same calculator at the same moment, 60 times each.
    struct Shared(*mut painn_calculator_t);
    // SAFETY: the C ABI is what is tested here: it must refuse concurrent use, not race.
    unsafe impl Sync for Shared {}
    let shared = Shared(handles.calculator);
    let barrier = Barrier::new(2);
    let rounds = 60;
    let outcomes: Vec<(painn_status_t, String, f64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let shared = &shared;
                    (0..rounds)
                        .map(|_| {
                            barrier.wait();
                            // SAFETY: a live calculator; concurrent use is the point.
                            unsafe { through_c::energy(shared.0, &z, &positions, &cell) }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut refused = 0;
    for (status, message, energy) in &outcomes {
        if *status == PAINN_SUCCESS {
            assert_eq!(
                energy.to_bits(),
                expected.to_bits(),
                "a call returned a wrong energy"
            );
        } else {
            assert_eq!(*status, PAINN_INVALID_ARGUMENT, "{message}");
            assert!(message.contains("in use by another thread"), "{message}");
            refused += 1;
        }
    }
    println!(
        "{} calls from 2 threads at once: {} succeeded with the exact energy, {refused} refused \
         (calculator in use)",
        outcomes.len(),
        outcomes.len() - refused
    );
    assert!(
        refused > 0,
        "no call overlapped another: the test proves nothing"
    );
    assert!(refused < outcomes.len());
    // The calculator is free again and gives the same answer.
    // SAFETY: a live calculator used by this thread alone.
    let (status, _, again) =
        unsafe { through_c::energy(handles.calculator, &z, &positions, &cell) };
    assert_eq!(
        (status, again.to_bits()),
        (PAINN_SUCCESS, expected.to_bits())
    );
}

#[test]
fn sizes_are_checked_before_anything_is_read_or_allocated() {
    use painn::capi::*;
    use std::ptr::{null, null_mut};

    let handles = through_c::Handles::tiny();
    let c = handles.calculator;
    // Three atoms' worth of arrays; the counts claim far more, and must be refused before any
    // of it is read. Each call returns its status and message.
    let z = [8i32, 1, 1];
    let positions = [0.0f64, 0.0, 0.0, 0.96, 0.0, 0.0, -0.24, 0.93, 0.0];
    let positions_float = positions.map(|x| x as f32);
    let mut forces = [0.0f64; 9];
    let mut energy = 0.0f64;
    let (e, f) = (&mut energy as *mut f64, forces.as_mut_ptr());
    let (z, r, r32) = (z.as_ptr(), positions.as_ptr(), positions_float.as_ptr());
    let (none, no_pbc) = (null_mut::<f64>(), null_mut::<i32>());
    // SAFETY (the three closures): the arrays hold 3 atoms; other counts must be refused.
    let compute = |n| {
        through_c::outcome(unsafe {
            painn_compute(c, n, z, r, null(), no_pbc, e, f, none, none, none)
        })
    };
    let compute_float = |n| {
        through_c::outcome(unsafe {
            painn_compute_float(c, n, z, r32, null(), no_pbc, e, f, none, none, none)
        })
    };
    let compute_local = |n, owned| {
        through_c::outcome(unsafe {
            painn_compute_local(c, n, owned, z, r, e, f, none, none, none)
        })
    };
    for n in [i64::MAX, 1 << 40, i32::MAX as i64 + 1, -1, i64::MIN] {
        for (status, message) in [compute(n), compute_float(n), compute_local(n, 0)] {
            assert_eq!(status, PAINN_INVALID_ARGUMENT, "n_atoms = {n}");
            assert!(message.contains("`n_atoms`"), "{message}");
            if n > 0 {
                assert!(
                    message.contains("more than the 2147483647 atoms"),
                    "{message}"
                );
            }
        }
    }
    for owned in [i64::MIN, -1, i64::MAX] {
        let (status, message) = compute_local(3, owned);
        assert_eq!(status, PAINN_INVALID_ARGUMENT);
        assert!(message.contains("`n_owned`"), "{message}");
    }
    let mut model = null_mut();
    // SAFETY: the call must fail on the size alone.
    let status =
        unsafe { painn_model_load_buffer([0u8; 8].as_ptr(), usize::MAX, null(), &mut model) };
    let (status, message) = through_c::outcome(status);
    assert_eq!(status, PAINN_INVALID_ARGUMENT);
    assert!(message.contains("`size`") && model.is_null(), "{message}");
    // The calculator still computes the three atoms.
    assert_eq!(compute(3).0, PAINN_SUCCESS);
    assert_eq!(compute_local(3, 3).0, PAINN_SUCCESS);
    assert!(energy.is_finite() && energy != 0.0);
}

#[test]
fn model_elements_are_queried_through_the_c_abi() {
    use painn::capi::*;

    let handles = through_c::Handles::tiny();
    let mut count = 0;
    // SAFETY: live model, writable outputs.
    unsafe {
        assert_eq!(
            painn_model_element_count(handles.model, &mut count),
            PAINN_SUCCESS
        );
    }
    let numbers: Vec<i32> = (0..count)
        .map(|index| {
            let mut z = 0;
            // SAFETY: as above.
            assert_eq!(
                unsafe { painn_model_element(handles.model, index, &mut z) },
                PAINN_SUCCESS
            );
            z
        })
        .collect();
    // The tiny model's file lists H to Ne.
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
    for index in [-1, count, i32::MAX] {
        let mut z = 0;
        // SAFETY: as above.
        let (status, message) =
            through_c::outcome(unsafe { painn_model_element(handles.model, index, &mut z) });
        assert_eq!(status, PAINN_INVALID_ARGUMENT);
        assert!(
            message.contains("`index`") && message.contains("0..10"),
            "{message}"
        );
    }
    // SAFETY: NULL arguments are errors.
    unsafe {
        let (status, message) =
            through_c::outcome(painn_model_element_count(std::ptr::null(), &mut count));
        assert!(status == PAINN_INVALID_ARGUMENT && message.contains("`model`"));
        let (status, message) =
            through_c::outcome(painn_model_element(handles.model, 0, std::ptr::null_mut()));
        assert!(status == PAINN_INVALID_ARGUMENT && message.contains("`atomic_number`"));
    }
}

/// `painn_compute_exchanging` through the C ABI: with no ghosts it equals
/// `painn_compute_local`, the callbacks are called between layers (rows of the stated
/// width), a callback's failure and a NULL exchange or function are clear errors.
#[test]
fn ghost_exchange_through_the_c_abi() {
    use painn::capi::*;
    use std::ffi::c_void;
    use std::ptr::null_mut;

    struct Calls {
        forward: usize,
        reverse: usize,
        width: i64,
        fail_with: i32,
    }
    unsafe extern "C" fn forward(context: *mut c_void, _: *mut f64, _: i64, width: i64) -> i32 {
        // SAFETY: the test's own context.
        let calls = unsafe { &mut *(context as *mut Calls) };
        calls.forward += 1;
        calls.width = width;
        calls.fail_with
    }
    unsafe extern "C" fn reverse(context: *mut c_void, _: *mut f64, _: i64, _: i64) -> i32 {
        // SAFETY: the test's own context.
        let calls = unsafe { &mut *(context as *mut Calls) };
        calls.reverse += 1;
        0
    }
    let handles = through_c::Handles::tiny();
    let (z, positions, _) = grid_system();
    let n = z.len() as i64;
    let compute = |exchange: *const painn_ghost_exchange_t, forces: &mut Vec<f64>| {
        let mut energy = f64::NAN;
        forces.resize(3 * z.len(), 0.0);
        // SAFETY: arrays of the sizes given; a live calculator.
        let status = unsafe {
            if exchange.is_null() {
                painn_compute_local(
                    handles.calculator,
                    n,
                    n,
                    z.as_ptr(),
                    positions.as_flattened().as_ptr(),
                    &mut energy,
                    forces.as_mut_ptr(),
                    null_mut(),
                    null_mut(),
                    null_mut(),
                )
            } else {
                painn_compute_exchanging(
                    handles.calculator,
                    n,
                    n,
                    z.as_ptr(),
                    positions.as_flattened().as_ptr(),
                    exchange,
                    &mut energy,
                    forces.as_mut_ptr(),
                    null_mut(),
                    null_mut(),
                    null_mut(),
                )
            }
        };
        let (status, message) = through_c::outcome(status);
        (status, message, energy)
    };
    let mut reference_forces = Vec::new();
    let (status, _, reference) = compute(std::ptr::null(), &mut reference_forces);
    assert_eq!(status, PAINN_SUCCESS);

    let mut calls = Calls {
        forward: 0,
        reverse: 0,
        width: 0,
        fail_with: 0,
    };
    let exchange = painn_ghost_exchange_t {
        context: &mut calls as *mut Calls as *mut c_void,
        forward: Some(forward),
        reverse: Some(reverse),
        sent_rows: std::ptr::null(),
        n_sent_rows: 0,
    };
    let mut forces = Vec::new();
    let (status, message, energy) = compute(&exchange, &mut forces);
    assert_eq!(status, PAINN_SUCCESS, "{message}");
    assert_eq!(energy, reference);
    assert_eq!(forces, reference_forces);
    // The tiny model: 2 layers (one exchange each way), H = 32.
    assert_eq!((calls.forward, calls.reverse, calls.width), (1, 1, 4 * 32));

    calls.fail_with = 7;
    let (status, message, _) = compute(&exchange, &mut forces);
    assert_eq!(status, PAINN_INVALID_ARGUMENT);
    assert!(
        message.contains("forward ghost exchange returned 7"),
        "{message}"
    );

    // Sent rows: a valid list changes nothing here (no ghosts); bad lists are refused
    // with the field named, before anything is evaluated.
    let sent: Vec<i64> = (0..n).step_by(2).collect();
    let with_sent = painn_ghost_exchange_t {
        sent_rows: sent.as_ptr(),
        n_sent_rows: sent.len() as i64,
        ..exchange
    };
    calls.fail_with = 0;
    let (status, message, energy) = compute(&with_sent, &mut forces);
    assert_eq!(status, PAINN_SUCCESS, "{message}");
    assert_eq!(energy, reference);
    let descending: Vec<i64> = vec![3, 1];
    let out_of_range: Vec<i64> = vec![0, n];
    let negative: Vec<i64> = vec![-1];
    for (rows, count, expected) in [
        (descending.as_ptr(), 2, "ascending"),
        (out_of_range.as_ptr(), 2, "not an owned row"),
        (negative.as_ptr(), 1, "holds -1"),
        (std::ptr::null(), 3, "is NULL"),
        (sent.as_ptr(), -1, "n_sent_rows"),
        (sent.as_ptr(), n + 1, "more than"),
    ] {
        let bad = painn_ghost_exchange_t {
            sent_rows: rows,
            n_sent_rows: count,
            ..exchange
        };
        let (status, message, _) = compute(&bad, &mut forces);
        assert_eq!(status, PAINN_INVALID_ARGUMENT, "{expected}");
        assert!(
            message.contains("sent_rows") && message.contains(expected),
            "{message}"
        );
    }

    let missing = painn_ghost_exchange_t {
        context: null_mut(),
        forward: Some(forward),
        reverse: None,
        sent_rows: std::ptr::null(),
        n_sent_rows: 0,
    };
    calls.fail_with = 0;
    let missing = painn_ghost_exchange_t {
        context: &mut calls as *mut Calls as *mut c_void,
        ..missing
    };
    let (status, message, _) = compute(&missing, &mut forces);
    assert_eq!(status, PAINN_INVALID_ARGUMENT);
    assert!(message.contains("reverse function is NULL"), "{message}");
    // SAFETY: a NULL exchange is refused before anything is read.
    let status = unsafe {
        painn_compute_exchanging(
            handles.calculator,
            n,
            n,
            z.as_ptr(),
            positions.as_flattened().as_ptr(),
            std::ptr::null(),
            &mut 0.0,
            null_mut(),
            null_mut(),
            null_mut(),
            null_mut(),
        )
    };
    let (status, message) = through_c::outcome(status);
    assert_eq!(status, PAINN_INVALID_ARGUMENT);
    assert!(message.contains("exchange"), "{message}");
}
