//! Reading, validating and writing model files (`.safetensors` with a JSON config).
//!
//! Every failure names the model and, where one is at fault, the tensor: a user converting
//! their own checkpoint must be able to tell what is wrong from the message alone.

use std::collections::{BTreeSet, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{
    ARCHITECTURE, FORMAT_VERSION, InteractionWeights, Linear, METADATA_KEY, Model, ModelConfig,
};
use crate::error::{Error, Result};

pub(super) fn parse(bytes: &[u8], source_name: &str) -> Result<Model> {
    let fail = |reason: String| Error::Model {
        source_name: source_name.to_string(),
        reason,
    };
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| fail(format!("not a readable safetensors file ({e})")))?;
    let (_, metadata) = SafeTensors::read_metadata(bytes)
        .map_err(|e| fail(format!("not a readable safetensors file ({e})")))?;
    let config_json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| {
            fail(format!(
                "no `{METADATA_KEY}` entry in the metadata: not a painn model file \
                 (convert checkpoints with painn-convert)"
            ))
        })?;
    let config: ModelConfig = serde_json::from_str(config_json)
        .map_err(|e| fail(format!("invalid `{METADATA_KEY}` config: {e}")))?;
    validate_config(&config).map_err(fail)?;

    let (h, k, layers) = (config.hidden_features, config.radial_basis, config.layers);
    let mut reader = Reader {
        tensors: &tensors,
        used: BTreeSet::new(),
        fail: &fail,
    };
    let embedding = reader.take("embedding.weight", &[config.max_z + 1, h])?;
    let rbf_centers = reader.take("rbf.centers", &[k])?;
    let rbf_widths = reader.take("rbf.widths", &[k])?;
    if let Some(position) = rbf_widths.iter().position(|&w| w == 0.0) {
        return Err(fail(format!(
            "tensor `rbf.widths`: element {position} is zero"
        )));
    }
    let mut interactions = Vec::with_capacity(layers);
    for l in 0..layers {
        let prefix = format!("interactions.{l}");
        let filter_hidden = reader.linear(&format!("{prefix}.message.rbf_to_scalar.0"), k, h)?;
        let filter_out = reader.linear(&format!("{prefix}.message.rbf_to_scalar.2"), h, 3 * h)?;
        let update_hidden = reader.linear(&format!("{prefix}.update.update_mlp.0"), 2 * h, h)?;
        let update_out = reader.linear(&format!("{prefix}.update.update_mlp.2"), h, 3 * h)?;
        let mixing_name = format!("{prefix}.update.mixing_matrix");
        let mixing = if reader.tensors.tensor(&mixing_name).is_ok() || l + 1 < layers {
            let m = reader.take(&mixing_name, &[3, 3])?;
            Some([[m[0], m[1], m[2]], [m[3], m[4], m[5]], [m[6], m[7], m[8]]])
        } else {
            None
        };
        interactions.push(InteractionWeights {
            filter_hidden,
            filter_out,
            update_hidden,
            update_out,
            mixing,
        });
    }
    let energy_head = [
        reader.linear("energy_head.0", h, h / 2)?,
        reader.linear("energy_head.2", h / 2, h / 4)?,
        reader.linear("energy_head.4", h / 4, 1)?,
    ];
    let unknown: Vec<String> = tensors
        .names()
        .into_iter()
        .filter(|name| !reader.used.contains(*name))
        .map(str::to_string)
        .collect();
    if !unknown.is_empty() {
        return Err(fail(format!("unknown tensors {unknown:?}")));
    }
    Ok(Model {
        config,
        source_name: source_name.to_string(),
        embedding,
        rbf_centers,
        rbf_widths,
        interactions,
        energy_head,
        filter_table: Default::default(),
    })
}

fn validate_config(config: &ModelConfig) -> std::result::Result<(), String> {
    if config.format_version != FORMAT_VERSION {
        return Err(format!(
            "format version {} is not supported by this build (reads version {FORMAT_VERSION})",
            config.format_version
        ));
    }
    if config.architecture != ARCHITECTURE {
        return Err(format!(
            "architecture `{}` is not `{ARCHITECTURE}`",
            config.architecture
        ));
    }
    if config.hidden_features == 0 || !config.hidden_features.is_multiple_of(4) {
        return Err(format!(
            "hidden_features = {} must be a positive multiple of 4 (the energy head uses H/2 and H/4)",
            config.hidden_features
        ));
    }
    if config.layers == 0 {
        return Err("layers must be at least 1".into());
    }
    if config.radial_basis == 0 {
        return Err("radial_basis must be at least 1".into());
    }
    if !(config.cutoff_angstrom.is_finite() && config.cutoff_angstrom > 0.0) {
        return Err(format!(
            "cutoff_angstrom = {} must be finite and > 0",
            config.cutoff_angstrom
        ));
    }
    if config.max_z == 0 || config.max_z > 1000 {
        return Err(format!("max_z = {} is outside 1..=1000", config.max_z));
    }
    if config.units.energy != "eV" || !config.units.length.eq_ignore_ascii_case("angstrom") {
        return Err(format!(
            "units {:?} are not supported (eV and angstrom)",
            config.units
        ));
    }
    Ok(())
}

struct Reader<'a, F: Fn(String) -> Error> {
    tensors: &'a SafeTensors<'a>,
    used: BTreeSet<String>,
    fail: &'a F,
}

impl<F: Fn(String) -> Error> Reader<'_, F> {
    /// The tensor `name` as float64, checked for shape, dtype and finiteness.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        let view = self.tensors.tensor(name).map_err(|_| {
            (self.fail)(format!(
                "missing tensor `{name}` (expected shape {shape:?})"
            ))
        })?;
        if view.shape() != shape {
            return Err((self.fail)(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        let values: Vec<f64> = match view.dtype() {
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                .collect(),
            // Half-precision exports (`model.half()`, bfloat16 training) widen exactly.
            Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f64())
                .collect(),
            Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64())
                .collect(),
            other => {
                return Err((self.fail)(format!(
                    "tensor `{name}` has dtype {other:?}; only F64, F32, F16 and BF16 are supported"
                )));
            }
        };
        if let Some(position) = values.iter().position(|v| !v.is_finite()) {
            return Err((self.fail)(format!(
                "tensor `{name}`: element {position} is not finite ({})",
                values[position]
            )));
        }
        self.used.insert(name.to_string());
        Ok(values)
    }

    fn linear(&mut self, prefix: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        Ok(Linear {
            n_in,
            n_out,
            weight: self.take(&format!("{prefix}.weight"), &[n_out, n_in])?,
            bias: self.take(&format!("{prefix}.bias"), &[n_out])?,
        })
    }
}

pub(super) fn serialize(model: &Model) -> Result<Vec<u8>> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, values: &[f64]| {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        named.push((name, shape, bytes));
    };
    let (h, k) = (model.hidden_features(), model.radial_basis());
    add(
        "embedding.weight".into(),
        vec![model.max_z() + 1, h],
        &model.embedding,
    );
    add("rbf.centers".into(), vec![k], &model.rbf_centers);
    add("rbf.widths".into(), vec![k], &model.rbf_widths);
    let mut add_linear = |prefix: String, linear: &Linear| {
        add(
            format!("{prefix}.weight"),
            vec![linear.n_out, linear.n_in],
            &linear.weight,
        );
        add(format!("{prefix}.bias"), vec![linear.n_out], &linear.bias);
    };
    for (l, layer) in model.interactions.iter().enumerate() {
        let prefix = format!("interactions.{l}");
        add_linear(
            format!("{prefix}.message.rbf_to_scalar.0"),
            &layer.filter_hidden,
        );
        add_linear(
            format!("{prefix}.message.rbf_to_scalar.2"),
            &layer.filter_out,
        );
        add_linear(
            format!("{prefix}.update.update_mlp.0"),
            &layer.update_hidden,
        );
        add_linear(format!("{prefix}.update.update_mlp.2"), &layer.update_out);
    }
    for (index, linear) in model.energy_head.iter().enumerate() {
        add_linear(format!("energy_head.{}", 2 * index), linear);
    }
    for (l, layer) in model.interactions.iter().enumerate() {
        if let Some(m) = layer.mixing {
            let flat: Vec<f64> = m.iter().flatten().copied().collect();
            add(
                format!("interactions.{l}.update.mixing_matrix"),
                vec![3, 3],
                &flat,
            );
        }
    }
    let views: Vec<(String, TensorView)> = named
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F64, shape.clone(), bytes).expect("consistent shape"),
            )
        })
        .collect();
    let config = serde_json::to_string(model.config()).map_err(|e| Error::Model {
        source_name: model.source_name().to_string(),
        reason: e.to_string(),
    })?;
    let metadata = HashMap::from([(METADATA_KEY.to_string(), config)]);
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| Error::Model {
        source_name: model.source_name().to_string(),
        reason: e.to_string(),
    })
}
