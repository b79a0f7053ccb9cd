//! Reading, validating and writing model files (`.safetensors` with a JSON config).
//!
//! Every failure names the model and, where one is at fault, the tensor: a user converting
//! their own checkpoint must be able to tell what is wrong from the message alone.

use std::collections::{BTreeSet, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{
    ARCHITECTURE, FORMAT_VERSION, InteractionWeights, Linear, METADATA_KEY, Model, ModelConfig,
};
use crate::error::{Error, Result, bytes_text, grouped, try_reserve};
use crate::io::elements::atomic_number;

/// Bytes of the smallest element type a tensor may have (F16, BF16).
const SMALLEST_ELEMENT_BYTES: usize = 2;

/// How far below the last radial basis centre the stated cutoff may lie, relative: the
/// centres may be stored in 16-bit floats, whose rounding is below 0.4%.
const CUTOFF_TOLERANCE: f64 = 5e-3;

/// The radial basis ends this many widths beyond its last centre: every Gaussian there is
/// below exp(-16) = 1e-7.
const BASIS_REACH_WIDTHS: f64 = 4.0;

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
    validate_config(&config).map_err(&fail)?;
    // Every size below is allocated from: it must agree with the file before anything is.
    check_sizes(&config, bytes.len()).map_err(&fail)?;
    let allowed_elements = allowed_elements(&config).map_err(&fail)?;

    let (h, k, layers) = (config.hidden_features, config.radial_basis, config.layers);
    let mut reader = Reader {
        tensors: &tensors,
        used: BTreeSet::new(),
        fail: &fail,
        source_name,
    };
    let embedding = reader.take("embedding.weight", &[config.max_z + 1, h])?;
    let rbf_centers = reader.take("rbf.centers", &[k])?;
    let rbf_widths = reader.take("rbf.widths", &[k])?;
    if let Some(position) = rbf_widths.iter().position(|&w| w == 0.0) {
        return Err(fail(format!(
            "tensor `rbf.widths`: element {position} is zero"
        )));
    }
    check_cutoff(config.cutoff_angstrom, &rbf_centers, &rbf_widths).map_err(&fail)?;
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
        allowed_elements,
        filter_table: Default::default(),
    })
}

/// Refuses a config whose sizes the file cannot hold: the tensors they imply would take at
/// least [`SMALLEST_ELEMENT_BYTES`] per parameter. Every product is checked, so that
/// absurd sizes (`layers = 1e9`, `hidden_features = 2^63`) are refused here, before any
/// allocation sized by them.
fn check_sizes(config: &ModelConfig, file_bytes: usize) -> std::result::Result<(), String> {
    let (h, k, l) = (config.hidden_features, config.radial_basis, config.layers);
    let parameters = (|| {
        let per_layer = [
            h.checked_mul(k)?.checked_add(h)?, // filter, first layer
            h.checked_mul(h)?.checked_mul(3)?.checked_add(3 * h)?, // filter, second layer
            h.checked_mul(h)?.checked_mul(2)?.checked_add(h)?, // update, first layer
            h.checked_mul(h)?.checked_mul(3)?.checked_add(3 * h)?, // update, second layer
        ]
        .into_iter()
        .try_fold(0usize, usize::checked_add)?;
        let head = (h / 2) * h + h / 2 + (h / 4) * (h / 2) + h / 4 + h / 4 + 1;
        (config.max_z + 1)
            .checked_mul(h)?
            .checked_add(k.checked_mul(2)?)?
            .checked_add(per_layer.checked_mul(l)?)?
            .checked_add(head)
    })();
    let fits = parameters
        .and_then(|p| p.checked_mul(SMALLEST_ELEMENT_BYTES))
        .is_some_and(|needed| needed <= file_bytes);
    if !fits {
        let described = format!(
            "hidden_features = {h}, layers = {l}, radial_basis = {k}, max_z = {}",
            config.max_z
        );
        return Err(match parameters {
            Some(p) => format!(
                "the config ({described}) implies {} parameters, at least {} even in 16-bit \
                 floats, but the file holds {}: the config does not describe these tensors",
                grouped(p),
                bytes_text(p.saturating_mul(SMALLEST_ELEMENT_BYTES)),
                bytes_text(file_bytes)
            ),
            None => format!(
                "the config ({described}) implies more parameters than can be counted: the \
                 config does not describe these tensors"
            ),
        });
    }
    Ok(())
}

/// The config's `elements` as a table by atomic number (`None` when absent: every element
/// up to max_z is accepted).
fn allowed_elements(config: &ModelConfig) -> std::result::Result<Option<Vec<bool>>, String> {
    let Some(elements) = &config.elements else {
        return Ok(None);
    };
    if elements.is_empty() {
        return Err("`elements` is an empty list (leave it out when unknown)".into());
    }
    let mut allowed = vec![false; config.max_z + 1];
    for symbol in elements {
        let z = atomic_number(symbol)
            .ok_or_else(|| format!("`elements` lists `{symbol}`, not a chemical symbol"))?;
        match allowed.get_mut(z as usize) {
            Some(slot) => *slot = true,
            None => {
                return Err(format!(
                    "`elements` lists {symbol} (Z = {z}), beyond max_z = {}",
                    config.max_z
                ));
            }
        }
    }
    Ok(Some(allowed))
}

/// The stated cutoff is authoritative (the graph, the cosine cutoff and every interface's
/// ghost shell use it), but it must be one the radial basis was made for: the spec's rc is
/// the last centre (centres are `linspace(0, rc, K)`). A cutoff below the last centre cuts
/// the basis off; one beyond the last centre plus [`BASIS_REACH_WIDTHS`] of its widths
/// adds edges on which every radial feature is below 1e-7, which the model cannot tell
/// apart (and which cost the cube of the cutoff). Either is a file whose config and
/// weights disagree. A cutoff in between is what `painn-convert --cutoff` may write.
fn check_cutoff(cutoff: f64, centers: &[f64], widths: &[f64]) -> std::result::Result<(), String> {
    let (last, center) =
        centers
            .iter()
            .copied()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (index, c)| {
                if c > best.1 { (index, c) } else { best }
            });
    let reach = center + BASIS_REACH_WIDTHS * widths[last].abs();
    let advice = format!(
        "convert the model again without --cutoff (the last centre, {center} Angstrom, is \
         the cutoff it was trained with)"
    );
    if cutoff < center - CUTOFF_TOLERANCE * center.abs() {
        return Err(format!(
            "cutoff_angstrom = {cutoff} is below the last radial basis centre, \
             rbf.centers[{last}] = {center} Angstrom: the basis is cut off and every energy \
             changes; {advice}"
        ));
    }
    if cutoff > reach {
        return Err(format!(
            "cutoff_angstrom = {cutoff} lies beyond the radial basis, which ends near \
             {reach} Angstrom (rbf.centers[{last}] = {center} plus {BASIS_REACH_WIDTHS} \
             widths of {}): every radial feature vanishes there; {advice}",
            widths[last].abs()
        ));
    }
    Ok(())
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
    source_name: &'a str,
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
        let elements: usize = shape.iter().product();
        let mut values: Vec<f64> = Vec::new();
        try_reserve(&mut values, elements, || {
            format!("tensor `{name}` of model {}", self.source_name)
        })?;
        let data = view.data();
        match view.dtype() {
            Dtype::F64 => values.extend(
                data.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap())),
            ),
            Dtype::F32 => values.extend(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64),
            ),
            // Half-precision exports (`model.half()`, bfloat16 training) widen exactly.
            Dtype::F16 => values.extend(
                data.chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f64()),
            ),
            Dtype::BF16 => values.extend(
                data.chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f64()),
            ),
            other => {
                return Err((self.fail)(format!(
                    "tensor `{name}` has dtype {other:?}; only F64, F32, F16 and BF16 are supported"
                )));
            }
        }
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
