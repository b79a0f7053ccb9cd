//! The model loader refuses every kind of broken file with a message naming the file and,
//! where one is at fault, the tensor.

mod common;

use std::collections::HashMap;

use common::*;
use painn::Model;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// A tensor as (name, shape, little-endian bytes, dtype).
type Tensor = (String, Vec<usize>, Vec<u8>, Dtype);

/// The tiny model's tensors and config, to be edited and re-serialised.
fn parts() -> (Vec<Tensor>, String) {
    let bytes = std::fs::read(repository().join("tests/data/tiny_model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let config = metadata.metadata().as_ref().unwrap()["painn"].clone();
    let list = tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.shape().to_vec(),
                view.data().to_vec(),
                view.dtype(),
            )
        })
        .collect();
    (list, config)
}

fn serialize(tensors: &[Tensor], config: Option<&str>) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, data, dtype)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let metadata = config.map(|c| HashMap::from([("painn".to_string(), c.to_string())]));
    safetensors::tensor::serialize(views, metadata).unwrap()
}

fn error_of(bytes: &[u8]) -> String {
    Model::from_bytes(bytes, "edited.safetensors")
        .unwrap_err()
        .to_string()
}

#[test]
fn the_committed_model_round_trips() {
    let model = tiny_model();
    assert_eq!(model.hidden_features(), 32);
    assert_eq!(model.layers(), 2);
    assert_eq!(model.radial_basis(), 8);
    assert_eq!(model.cutoff_angstrom(), 4.0);
    let again = Model::from_bytes(&model.to_bytes().unwrap(), "again").unwrap();
    assert_eq!(again.config(), model.config());
}

#[test]
fn missing_unknown_misshapen_and_non_finite_tensors_are_named() {
    let (tensors, config) = parts();
    let without =
        |name: &str| -> Vec<_> { tensors.iter().filter(|t| t.0 != name).cloned().collect() };

    let err = error_of(&serialize(
        &without("interactions.1.update.update_mlp.2.bias"),
        Some(&config),
    ));
    assert!(
        err.contains("edited.safetensors")
            && err.contains("missing tensor `interactions.1.update.update_mlp.2.bias`"),
        "{err}"
    );

    // The last layer's mixing matrix may be absent; the first layer's may not.
    let err = error_of(&serialize(
        &without("interactions.0.update.mixing_matrix"),
        Some(&config),
    ));
    assert!(err.contains("interactions.0.update.mixing_matrix"), "{err}");

    let mut extra = tensors.clone();
    extra.push((
        "interactions.7.bogus".into(),
        vec![1],
        1.0f64.to_le_bytes().to_vec(),
        Dtype::F64,
    ));
    let err = error_of(&serialize(&extra, Some(&config)));
    assert!(
        err.contains("unknown tensors") && err.contains("interactions.7.bogus"),
        "{err}"
    );

    let mut misshapen = tensors.clone();
    let index = misshapen.iter().position(|t| t.0 == "rbf.centers").unwrap();
    misshapen[index].1 = vec![4, 2];
    let err = error_of(&serialize(&misshapen, Some(&config)));
    assert!(
        err.contains("`rbf.centers` has shape [4, 2], expected [8]"),
        "{err}"
    );

    let mut poisoned = tensors.clone();
    let index = poisoned
        .iter()
        .position(|t| t.0 == "energy_head.2.weight")
        .unwrap();
    poisoned[index].2[8..16].copy_from_slice(&f64::NAN.to_le_bytes());
    let err = error_of(&serialize(&poisoned, Some(&config)));
    assert!(
        err.contains("`energy_head.2.weight`: element 1 is not finite"),
        "{err}"
    );

    let mut integer = tensors.clone();
    let index = integer.iter().position(|t| t.0 == "rbf.widths").unwrap();
    integer[index].3 = Dtype::I64;
    let err = error_of(&serialize(&integer, Some(&config)));
    assert!(err.contains("`rbf.widths` has dtype I64"), "{err}");
}

#[test]
fn bad_configs_are_refused() {
    let (tensors, config) = parts();
    let err = error_of(&serialize(&tensors, None));
    assert!(err.contains("not a painn model file"), "{err}");
    for (from, to, needle) in [
        (
            "\"format_version\":1",
            "\"format_version\":9",
            "format version 9",
        ),
        (
            "\"architecture\":\"painn-student\"",
            "\"architecture\":\"schnet\"",
            "architecture",
        ),
        (
            "\"hidden_features\":32",
            "\"hidden_features\":30",
            "multiple of 4",
        ),
        (
            "\"cutoff_angstrom\":4.0",
            "\"cutoff_angstrom\":-4.0",
            "cutoff_angstrom",
        ),
        (
            "\"hidden_features\":32",
            "\"hidden_features\":64",
            "expected",
        ),
    ] {
        let compact: serde_json::Value = serde_json::from_str(&config).unwrap();
        let compact = serde_json::to_string(&compact).unwrap();
        assert!(compact.contains(from), "{compact}");
        let err = error_of(&serialize(&tensors, Some(&compact.replace(from, to))));
        assert!(err.contains(needle), "{from} -> {to}: {err}");
    }
    let err = error_of(&serialize(&tensors, Some("{not json")));
    assert!(err.contains("invalid `painn` config"), "{err}");
}

#[test]
fn truncated_and_garbage_files_are_errors() {
    let bytes = std::fs::read(repository().join("tests/data/tiny_model.safetensors")).unwrap();
    for length in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = error_of(&bytes[..length]);
        assert!(
            err.contains("not a readable safetensors file"),
            "{length}: {err}"
        );
    }
    let err = error_of(b"PK\x03\x04 this is a zip, not a model");
    assert!(err.contains("edited.safetensors"), "{err}");
    let err = Model::from_file("/nonexistent/model.safetensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model.safetensors"), "{err}");
}

#[test]
fn half_precision_tensors_widen_exactly() {
    // A model exported with `model.half()` or in bfloat16 loads; its values are the stored
    // half-precision numbers, widened without change.
    let (tensors, config) = parts();
    for (dtype, narrow) in [
        (
            Dtype::F16,
            (|x: f64| half::f16::from_f64(x).to_le_bytes().to_vec()) as fn(f64) -> Vec<u8>,
        ),
        (Dtype::BF16, |x: f64| {
            half::bf16::from_f64(x).to_le_bytes().to_vec()
        }),
    ] {
        let widen = |b: &[u8]| match dtype {
            Dtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
            _ => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        };
        let narrowed: Vec<Tensor> = tensors
            .iter()
            .map(|(name, shape, data, stored)| {
                let values: Vec<f64> = match stored {
                    Dtype::F64 => data
                        .chunks_exact(8)
                        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                        .collect(),
                    _ => data
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                        .collect(),
                };
                let bytes = values.into_iter().flat_map(narrow).collect();
                (name.clone(), shape.clone(), bytes, dtype)
            })
            .collect();
        let model = Model::from_bytes(&serialize(&narrowed, Some(&config)), "half.safetensors")
            .unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
        // The model's own serialisation (float64) holds exactly the widened values.
        let bytes = model.to_bytes().unwrap();
        let again = SafeTensors::deserialize(&bytes).unwrap();
        for (name, _, data, _) in &narrowed {
            let view = again.tensor(name).unwrap();
            let loaded: Vec<f64> = view
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let expected: Vec<f64> = data.chunks_exact(2).map(widen).collect();
            assert_eq!(loaded, expected, "{dtype:?} tensor {name}");
        }
    }
}
