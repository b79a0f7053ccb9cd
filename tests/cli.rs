//! `painn eval` end to end: extended XYZ in, JSON out, matching the library exactly; clear
//! errors with line numbers and atom indices.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::*;
use painn::Precision;
use painn::io::elements::symbol;
use serde_json::Value;

fn scratch(name: &str) -> PathBuf {
    let directory = std::env::temp_dir().join(format!("painn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    directory.join(name)
}

fn write_xyz(path: &PathBuf, case: &Case) {
    let mut text = format!("{}\n", case.atomic_numbers.len());
    let pbc = case.cell.pbc().map(|p| if p { "T" } else { "F" }).join(" ");
    if case.cell.is_periodic() {
        let lattice: Vec<String> = case
            .cell
            .vectors()
            .iter()
            .flatten()
            .map(|v| format!("{v:?}"))
            .collect();
        text += &format!(
            "Lattice=\"{}\" Properties=species:S:1:pos:R:3 pbc=\"{pbc}\"\n",
            lattice.join(" ")
        );
    } else {
        text += "Properties=species:S:1:pos:R:3 pbc=\"F F F\"\n";
    }
    for (z, r) in case.atomic_numbers.iter().zip(&case.positions) {
        text += &format!("{} {:?} {:?} {:?}\n", symbol(*z).unwrap(), r[0], r[1], r[2]);
    }
    std::fs::write(path, text).unwrap();
}

fn painn(arguments: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_painn"))
        .args(arguments)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn floats(value: &Value) -> Vec<f64> {
    match value {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap()],
        other => panic!("not numeric: {other}"),
    }
}

#[test]
fn eval_prints_what_the_library_computes() {
    let model_path = repository().join("tests/data/tiny_model.safetensors");
    let model = Arc::new(tiny_model());
    let reference = load_json(repository().join("tests/data/tiny_reference.json"));
    for case in cases(&reference) {
        let xyz = scratch(&format!("{}.xyz", case.name));
        write_xyz(&xyz, &case);
        let (code, stdout, stderr) = painn(&[
            "eval",
            "--model",
            model_path.to_str().unwrap(),
            "--per-atom",
            xyz.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        let json: Value = serde_json::from_str(&stdout).unwrap();
        let expected = compute(&model, Precision::F64, &case);
        assert_eq!(
            json["energy"].as_f64().unwrap(),
            expected.energy,
            "{}",
            case.name
        );
        assert_eq!(
            floats(&json["forces"]),
            expected
                .forces
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
        );
        assert_eq!(floats(&json["energies"]), expected.energies);
        assert_eq!(
            json.get("virial").is_some(),
            case.cell.is_periodic(),
            "{}",
            case.name
        );
        assert_eq!(
            json.get("stress").is_some(),
            case.cell.is_fully_periodic(),
            "{}",
            case.name
        );
        if case.cell.is_fully_periodic() {
            let stress = floats(&json["stress"]);
            let w = expected.virial;
            let volume = case.cell.volume();
            // ASE's convention: -W / V symmetrised, Voigt order xx yy zz yz xz xy.
            assert_eq!(stress[0], -w[0][0] / volume);
            assert!((stress[3] + 0.5 * (w[1][2] + w[2][1]) / volume).abs() < 1e-15);
            assert!((stress[5] + 0.5 * (w[0][1] + w[1][0]) / volume).abs() < 1e-15);
        }
    }
}

#[test]
fn malformed_files_and_unknown_elements_are_clear_errors() {
    let model = repository().join("tests/data/tiny_model.safetensors");
    let model = model.to_str().unwrap();
    let bad = scratch("bad.xyz");
    std::fs::write(&bad, "2\ncomment\nC 0 0 0\nH 0 zero 1.1\n").unwrap();
    let (code, _, stderr) = painn(&["eval", "--model", model, bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bad.xyz:4:") && stderr.contains("invalid coordinate"),
        "{stderr}"
    );

    let sodium = scratch("sodium.xyz");
    std::fs::write(&sodium, "2\ncomment\nC 0 0 0\nNa 0 0 2.1\n").unwrap();
    let (code, _, stderr) = painn(&["eval", "--model", model, sodium.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("atom 1 has atomic number 11"), "{stderr}");

    let (code, _, stderr) = painn(&[
        "eval",
        "--model",
        "/nonexistent.safetensors",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent.safetensors"), "{stderr}");
}
