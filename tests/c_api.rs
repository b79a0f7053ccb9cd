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
