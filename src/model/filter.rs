//! The radial filter `w(d)` of every layer, tabulated for cubic Hermite interpolation.
//!
//! The filter (Linear(K,H), SiLU, Linear(H,3H) of the radial features) depends on the
//! distance alone, yet costs 3H^2 multiply-adds per edge and layer, and as much again in
//! the backward pass: 97% of the model's arithmetic. Tabulating `w` and `dw/dd` at grid
//! nodes (values exact, computed in float64) and interpolating with cubic Hermite
//! polynomials costs ~12 operations per output instead, with an interpolation error that
//! the build measures and keeps far below float32 round-off. The float32 engines (CPU and
//! GPU) use the table; the float64 engine evaluates the filter exactly.
//!
//! The interpolant is C1 and its derivative is used for the forces, so forces are the
//! exact gradient of the interpolated energy (energy conservation holds in MD).
//!
//! Each node stores `v_k`, `delta_k = v_(k+1) - v_k` and `h m_k` (`m = dw/dd`) in float32,
//! and the interpolant is written `v_k + h01 delta_k + h10 h m_k + h11 h m_(k+1)`: the
//! derivative `(g01 delta_k + g10 h m_k + g11 h m_(k+1)) / h` then never subtracts two
//! rounded values, whose rounding the 1/h would amplify (to 1e-5 of the forces).

use super::Model;

/// Interpolation error the table must reach, relative to the largest |w| of its layer.
const TARGET_RELATIVE_ERROR: f64 = 1e-8;
const FIRST_INTERVALS: usize = 512;
const MAX_INTERVALS: usize = 16384;

/// Vectors stored per node: value, difference to the next node, derivative times h.
pub const NODE_VECTORS: usize = 3;

/// Per-layer tables of `w(d)` at `d_k = k h`, `k = 0..=n_intervals`.
#[derive(Clone, Debug)]
pub struct FilterTable {
    /// Node spacing h, Angstrom.
    pub spacing_angstrom: f64,
    pub n_intervals: usize,
    /// 3H, the filter's width.
    pub width: usize,
    /// `[layers][n_intervals + 1][NODE_VECTORS][width]`: `v_k`, `v_(k+1) - v_k` (0 for the
    /// last node) and `h dw/dd` at the node.
    pub nodes: Vec<f32>,
    /// Largest interpolation error measured at interval midpoints (float64 arithmetic on
    /// the unrounded nodes), relative to the largest |w| of the layer, over all layers.
    pub max_relative_error: f64,
}

impl FilterTable {
    pub(super) fn build(model: &Model) -> FilterTable {
        let rc = model.cutoff_angstrom();
        let width = 3 * model.hidden_features();
        let layers = model.layers();
        let mut n_intervals = FIRST_INTERVALS;
        loop {
            let h = rc / n_intervals as f64;
            // Nodes in float64, [layer][k][2][width].
            let mut nodes = vec![0.0f64; layers * (n_intervals + 1) * 2 * width];
            let node_distances: Vec<f64> = (0..=n_intervals).map(|k| k as f64 * h).collect();
            let midpoints: Vec<f64> = (0..n_intervals).map(|k| (k as f64 + 0.5) * h).collect();
            for layer in 0..layers {
                let (w, dw) = model.filter_exact_batch(layer, &node_distances);
                for k in 0..=n_intervals {
                    let base = ((layer * (n_intervals + 1)) + k) * 2 * width;
                    nodes[base..base + width].copy_from_slice(&w[k * width..(k + 1) * width]);
                    for (node, derivative) in nodes[base + width..base + 2 * width]
                        .iter_mut()
                        .zip(&dw[k * width..(k + 1) * width])
                    {
                        *node = derivative * h;
                    }
                }
            }
            // Error at the midpoints, where the cubic's error peaks.
            let mut worst: f64 = 0.0;
            let mut interpolated = vec![0.0; width];
            let mut interpolated_derivative = vec![0.0; width];
            for layer in 0..layers {
                let layer_nodes = &nodes[layer * (n_intervals + 1) * 2 * width
                    ..(layer + 1) * (n_intervals + 1) * 2 * width];
                let scale = layer_nodes
                    .chunks(width)
                    .step_by(2)
                    .flatten()
                    .fold(1e-300f64, |m, v| m.max(v.abs()));
                let (exact_w, exact_dw) = model.filter_exact_batch(layer, &midpoints);
                for (k, &d) in midpoints.iter().enumerate() {
                    let w = &exact_w[k * width..(k + 1) * width];
                    let dw = &exact_dw[k * width..(k + 1) * width];
                    hermite(
                        layer_nodes,
                        width,
                        h,
                        d,
                        &mut interpolated,
                        &mut interpolated_derivative,
                    );
                    for o in 0..width {
                        worst = worst.max((interpolated[o] - w[o]).abs() / scale);
                        // Derivatives are compared on the scale of w over one Angstrom.
                        worst =
                            worst.max((interpolated_derivative[o] - dw[o]).abs() / scale * 1e-2);
                    }
                }
            }
            if worst <= TARGET_RELATIVE_ERROR || n_intervals >= MAX_INTERVALS {
                let mut table =
                    Vec::with_capacity(layers * (n_intervals + 1) * NODE_VECTORS * width);
                for layer in 0..layers {
                    for k in 0..=n_intervals {
                        let at = |k: usize| ((layer * (n_intervals + 1)) + k) * 2 * width;
                        let node = &nodes[at(k)..at(k) + 2 * width];
                        table.extend(node[..width].iter().map(|&v| v as f32));
                        if k < n_intervals {
                            let next = &nodes[at(k + 1)..at(k + 1) + width];
                            table.extend(
                                next.iter().zip(&node[..width]).map(|(b, a)| (b - a) as f32),
                            );
                        } else {
                            table.extend(std::iter::repeat_n(0.0f32, width));
                        }
                        table.extend(node[width..].iter().map(|&v| v as f32));
                    }
                }
                return FilterTable {
                    spacing_angstrom: h,
                    n_intervals,
                    width,
                    nodes: table,
                    max_relative_error: worst,
                };
            }
            n_intervals *= 2;
        }
    }

    /// Nodes of one layer, `[n_intervals + 1][NODE_VECTORS][width]`.
    pub fn layer(&self, layer: usize) -> &[f32] {
        let size = (self.n_intervals + 1) * NODE_VECTORS * self.width;
        &self.nodes[layer * size..(layer + 1) * size]
    }

    /// Interval index and position within it, `(k, t)` with `d = (k + t) h`, for a
    /// distance `d` in Angstrom (float64, clamped to the table).
    #[inline]
    pub fn locate(&self, d: f64) -> (f64, f64) {
        let x = d / self.spacing_angstrom;
        let k = x.floor().clamp(0.0, (self.n_intervals - 1) as f64);
        (k, x - k)
    }
}

/// Cubic Hermite interpolation of one layer's nodes at `d` (float64; used to measure the
/// table's error). `out` gets `w`, `out_derivative` gets `dw/dd`.
fn hermite(
    nodes: &[f64],
    width: usize,
    h: f64,
    d: f64,
    out: &mut [f64],
    out_derivative: &mut [f64],
) {
    let x = d / h;
    let k = (x as usize).min(nodes.len() / (2 * width) - 2);
    let t = x - k as f64;
    let [h00, h10, h01, h11] = hermite_basis(t);
    let [g00, g10, g01, g11] = hermite_basis_derivative(t);
    let (a, b) = (&nodes[k * 2 * width..], &nodes[(k + 1) * 2 * width..]);
    for o in 0..width {
        let (v0, m0, v1, m1) = (a[o], a[width + o], b[o], b[width + o]);
        out[o] = h00 * v0 + h10 * m0 + h01 * v1 + h11 * m1;
        out_derivative[o] = (g00 * v0 + g10 * m0 + g01 * v1 + g11 * m1) / h;
    }
}

/// Cubic Hermite basis at `t` in [0, 1]: weights of v0, h m0, v1, h m1.
#[inline]
pub fn hermite_basis<T: num_traits::Float>(t: T) -> [T; 4] {
    let one = T::one();
    let two = one + one;
    let three = two + one;
    let s = one - t;
    [
        (one + two * t) * s * s,
        t * s * s,
        t * t * (three - two * t),
        t * t * (t - one),
    ]
}

/// Derivatives of [`hermite_basis`] with respect to `t`.
#[inline]
pub fn hermite_basis_derivative<T: num_traits::Float>(t: T) -> [T; 4] {
    let one = T::one();
    let two = one + one;
    let three = two + one;
    let four = two + two;
    let six = three + three;
    [
        six * t * t - six * t,
        three * t * t - four * t + one,
        six * t - six * t * t,
        three * t * t - two * t,
    ]
}
