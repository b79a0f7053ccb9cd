//! The model: hyper-parameters and trained weights of the student PaiNN network, loaded from
//! one `.safetensors` file (tensors under the spec's names, a JSON config in the metadata).
//!
//! A `Model` is immutable and shared read-only by any number of calculators and threads.

mod file;
pub mod filter;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use filter::FilterTable;

/// Model file format version this build reads.
pub const FORMAT_VERSION: u32 = 1;
/// Architecture identifier in the model file.
pub const ARCHITECTURE: &str = "painn-student";
/// Name of the metadata entry that holds [`ModelConfig`] as JSON.
pub const METADATA_KEY: &str = "painn";

/// Hyper-parameters and provenance, stored as JSON in the model file's metadata.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub format_version: u32,
    pub architecture: String,
    /// H: features per atom.
    pub hidden_features: usize,
    /// L: interaction layers.
    pub layers: usize,
    /// K: radial basis functions.
    pub radial_basis: usize,
    /// rc: interaction cutoff, Angstrom.
    pub cutoff_angstrom: f64,
    /// Largest atomic number the embedding covers.
    pub max_z: usize,
    pub units: Units,
    /// Optional element symbols the model was trained on: when present, atoms of any other
    /// element are refused ([`Model::check_atomic_numbers`]).
    #[serde(default)]
    pub elements: Option<Vec<String>>,
    /// Where the weights came from (free-form).
    #[serde(default)]
    pub provenance: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Units {
    pub energy: String,
    pub length: String,
}

/// A dense layer `y = W x + b` with `W` stored `[out][in]` (PyTorch's `Linear`).
#[derive(Clone, Debug)]
pub struct Linear {
    pub n_in: usize,
    pub n_out: usize,
    /// `[n_out][n_in]`, row-major.
    pub weight: Vec<f64>,
    /// `[n_out]`.
    pub bias: Vec<f64>,
}

impl Linear {
    /// The layer restricted to its first `n` outputs.
    pub fn first_outputs(&self, n: usize) -> Linear {
        Linear {
            n_in: self.n_in,
            n_out: n,
            weight: self.weight[..n * self.n_in].to_vec(),
            bias: self.bias[..n].to_vec(),
        }
    }
}

/// Weights of one interaction layer.
#[derive(Clone, Debug)]
pub struct InteractionWeights {
    /// Filter: Linear(K, H) then SiLU then Linear(H, 3H), a function of distance only.
    pub filter_hidden: Linear,
    pub filter_out: Linear,
    /// Update: Linear(2H, H) then SiLU then Linear(H, 3H) on concat(s, |v|).
    pub update_hidden: Linear,
    pub update_out: Linear,
    /// M, mixing the x, y, z components of v. Absent only in the last layer, whose vector
    /// output never reaches the energy.
    pub mixing: Option<[[f64; 3]; 3]>,
}

/// The student PaiNN model (see `../shared/spec/student-painn.md`).
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    /// Where the model came from, for messages.
    source_name: String,
    /// `[max_z + 1][H]`.
    pub(crate) embedding: Vec<f64>,
    /// `[K]` each.
    pub(crate) rbf_centers: Vec<f64>,
    pub(crate) rbf_widths: Vec<f64>,
    pub(crate) interactions: Vec<InteractionWeights>,
    /// Linear(H, H/2), Linear(H/2, H/4), Linear(H/4, 1), SiLU between.
    pub(crate) energy_head: [Linear; 3],
    /// By atomic number `0..=max_z`, whether `elements` lists it (`None`: no list).
    allowed_elements: Option<Vec<bool>>,
    filter_table: OnceLock<FilterTable>,
}

impl Model {
    /// Loads and validates a model file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Model> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        file::parse(&bytes, &path.display().to_string())
    }

    /// Loads and validates a model from the bytes of a model file (as read by one MPI rank
    /// and broadcast to the others). `source_name` names it in error messages.
    pub fn from_bytes(bytes: &[u8], source_name: &str) -> Result<Model> {
        file::parse(bytes, source_name)
    }

    /// Serialises to the bytes of a model file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        file::serialize(self)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    pub fn hidden_features(&self) -> usize {
        self.config.hidden_features
    }

    pub fn layers(&self) -> usize {
        self.config.layers
    }

    pub fn radial_basis(&self) -> usize {
        self.config.radial_basis
    }

    pub fn cutoff_angstrom(&self) -> f64 {
        self.config.cutoff_angstrom
    }

    pub fn max_z(&self) -> usize {
        self.config.max_z
    }

    /// Checks that every atomic number is one the model can embed (1..=max_z) and, when
    /// the model file lists the elements it was trained on, one of those: an atom of
    /// another element would get an embedding row the training never touched. Every
    /// interface (CLI, C ABI, LAMMPS, Python) goes through this check.
    pub fn check_atomic_numbers(&self, atomic_numbers: &[i32]) -> Result<()> {
        let max_z = self.config.max_z;
        let accepted = |z: i32| match &self.allowed_elements {
            Some(allowed) => usize::try_from(z).is_ok_and(|z| allowed.get(z) == Some(&true)),
            None => z >= 1 && z as usize <= max_z,
        };
        let Some((atom, &z)) = atomic_numbers
            .iter()
            .enumerate()
            .find(|&(_, &z)| !accepted(z))
        else {
            return Ok(());
        };
        if z < 1 || z as usize > max_z {
            return Err(Error::UnknownElement {
                atom,
                z: z as i64,
                max_z,
            });
        }
        let symbol = crate::io::elements::symbol(z).unwrap_or("?");
        let listed = self
            .config
            .elements
            .as_deref()
            .unwrap_or_default()
            .join(", ");
        Err(Error::invalid(
            "atomic_numbers",
            format!(
                "atom {atom} is {symbol} (Z = {z}), an element model {} was not trained on \
                 (its elements: {listed})",
                self.source_name
            ),
        ))
    }

    /// The tabulated filter (built on first use, then shared): the per-layer radial filter
    /// `w(d)` and its derivative on a grid fine enough that cubic Hermite interpolation is
    /// exact to float32 round-off.
    pub fn filter_table(&self) -> &FilterTable {
        self.filter_table.get_or_init(|| FilterTable::build(self))
    }

    /// Radial features `e_k(d) = exp(-(d - c_k)^2 / w_k^2) fc(d)` and their derivatives
    /// with respect to `d`, each `[K]`.
    pub fn radial_features(&self, d: f64, e: &mut [f64], de_dd: &mut [f64]) {
        let rc = self.config.cutoff_angstrom;
        let (fc, dfc) = if d < rc {
            let x = std::f64::consts::PI * d / rc;
            (
                0.5 * (x.cos() + 1.0),
                -0.5 * std::f64::consts::PI / rc * x.sin(),
            )
        } else {
            (0.0, 0.0)
        };
        for k in 0..self.rbf_centers.len() {
            let (c, w) = (self.rbf_centers[k], self.rbf_widths[k]);
            let delta = d - c;
            let phi = (-(delta * delta) / (w * w)).exp();
            let dphi = phi * (-2.0 * delta / (w * w));
            e[k] = phi * fc;
            de_dd[k] = dphi * fc + phi * dfc;
        }
    }

    /// The exact filter `w(d)` (`[3H]`) and `dw/dd` (`[3H]`) of one layer, in float64.
    pub fn filter_exact(&self, layer: usize, d: f64, w: &mut [f64], dw_dd: &mut [f64]) {
        let k_count = self.rbf_centers.len();
        let mut e = vec![0.0; k_count];
        let mut de = vec![0.0; k_count];
        self.radial_features(d, &mut e, &mut de);
        let weights = &self.interactions[layer];
        let (hidden, out) = (&weights.filter_hidden, &weights.filter_out);
        let mut activation = vec![0.0; hidden.n_out];
        let mut dactivation = vec![0.0; hidden.n_out];
        for h in 0..hidden.n_out {
            let row = &hidden.weight[h * k_count..(h + 1) * k_count];
            let pre: f64 = hidden.bias[h] + row.iter().zip(&e).map(|(a, b)| a * b).sum::<f64>();
            let dpre: f64 = row.iter().zip(&de).map(|(a, b)| a * b).sum();
            activation[h] = silu(pre);
            dactivation[h] = silu_derivative(pre) * dpre;
        }
        for o in 0..out.n_out {
            let row = &out.weight[o * out.n_in..(o + 1) * out.n_in];
            w[o] = out.bias[o] + row.iter().zip(&activation).map(|(a, b)| a * b).sum::<f64>();
            dw_dd[o] = row.iter().zip(&dactivation).map(|(a, b)| a * b).sum();
        }
    }
}

impl Model {
    /// [`filter_exact`](Self::filter_exact) for many distances at once (two GEMMs), as
    /// `([m][3H] w, [m][3H] dw/dd)`.
    pub fn filter_exact_batch(&self, layer: usize, distances: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (m, k) = (distances.len(), self.radial_basis());
        let weights = &self.interactions[layer];
        let (hidden, out) = (&weights.filter_hidden, &weights.filter_out);
        let mut e = vec![0.0; m * k];
        let mut de = vec![0.0; m * k];
        for (row, &d) in distances.iter().enumerate() {
            self.radial_features(
                d,
                &mut e[row * k..(row + 1) * k],
                &mut de[row * k..(row + 1) * k],
            );
        }
        let mut pre = vec![0.0; m * hidden.n_out];
        let mut dpre = vec![0.0; m * hidden.n_out];
        for row in pre.chunks_exact_mut(hidden.n_out) {
            row.copy_from_slice(&hidden.bias);
        }
        gemm_transposed(m, hidden, &e, 1.0, &mut pre);
        gemm_transposed(m, hidden, &de, 0.0, &mut dpre);
        for (dp, p) in dpre.iter_mut().zip(pre.iter_mut()) {
            *dp *= silu_derivative(*p);
            *p = silu(*p);
        }
        let mut w = vec![0.0; m * out.n_out];
        let mut dw = vec![0.0; m * out.n_out];
        for row in w.chunks_exact_mut(out.n_out) {
            row.copy_from_slice(&out.bias);
        }
        gemm_transposed(m, out, &pre, 1.0, &mut w);
        gemm_transposed(m, out, &dpre, 0.0, &mut dw);
        (w, dw)
    }
}

/// `y = x W^T + beta y` for `x` `[m][n_in]` (float64).
fn gemm_transposed(m: usize, linear: &Linear, x: &[f64], beta: f64, y: &mut [f64]) {
    if m == 0 {
        return;
    }
    // SAFETY: x is m x n_in, W is n_out x n_in (read transposed), y is m x n_out, all
    // row-major and disjoint.
    unsafe {
        matrixmultiply::dgemm(
            m,
            linear.n_in,
            linear.n_out,
            1.0,
            x.as_ptr(),
            linear.n_in as isize,
            1,
            linear.weight.as_ptr(),
            1,
            linear.n_in as isize,
            beta,
            y.as_mut_ptr(),
            linear.n_out as isize,
            1,
        )
    }
}

#[inline]
pub(crate) fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[inline]
pub(crate) fn silu_derivative(x: f64) -> f64 {
    let sigmoid = 1.0 / (1.0 + (-x).exp());
    sigmoid * (1.0 + x * (1.0 - sigmoid))
}
