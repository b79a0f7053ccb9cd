//! The CPU engine's inner loops, compiled twice (portable, and AVX2+FMA chosen at run time).
//!
//! Reductions over features run in 8 fixed lanes and are combined in a fixed order: that
//! lets the compiler vectorise them (a plain running sum is a sequential dependency it may
//! not reorder) and keeps the result identical from call to call.

use multiversion::multiversion;

use super::real::Real;
use crate::model::filter::NODE_VECTORS;

/// Lanes of the vectorisable reductions.
const LANES: usize = 8;

/// Per-edge geometry: `[d, u_x, u_y, u_z, r_x, r_y, r_z, k, t]`, where `k` (an integer
/// value) and `t` locate `d` in the filter table. They are computed from the float64
/// distance: in float32, `d / h` would lose up to 6e-5 of `t` and, through the steep
/// filter, about 1e-6 of `w`.
pub type EdgeGeometry<T> = [T; 9];

/// Message of one receiver row: `s_out = s_i + sum_e s_j * ws`, `v_out = v_i + sum_e (v_j *
/// wv1 + u (x) wv2)`. `w` is `[edges][3H]`. In the first layer `v_in` is zero and skipped.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
pub fn message_row<T: Real>(
    h: usize,
    receiver: usize,
    sources: &[u32],
    edges: &[EdgeGeometry<T>],
    w: &[T],
    s_in: &[T],
    v_in: &[T],
    first_layer: bool,
    s_out: &mut [T],
    v_out: &mut [T],
) {
    let s_out = &mut s_out[..h];
    let v_out = &mut v_out[..3 * h];
    s_out.copy_from_slice(&s_in[receiver * h..][..h]);
    v_out.copy_from_slice(&v_in[receiver * 3 * h..][..3 * h]);
    for (e, &j) in sources.iter().enumerate() {
        let j = j as usize;
        let w = &w[e * 3 * h..][..3 * h];
        let (ws, wv1, wv2) = (&w[..h], &w[h..2 * h], &w[2 * h..3 * h]);
        let s_j = &s_in[j * h..][..h];
        for c in 0..h {
            s_out[c] += s_j[c] * ws[c];
        }
        let u = [edges[e][1], edges[e][2], edges[e][3]];
        for x in 0..3 {
            let v_o = &mut v_out[x * h..][..h];
            let ux = u[x];
            if first_layer {
                for c in 0..h {
                    v_o[c] += ux * wv2[c];
                }
            } else {
                let v_j = &v_in[(j * 3 + x) * h..][..h];
                for c in 0..h {
                    v_o[c] += v_j[c] * wv1[c] + ux * wv2[c];
                }
            }
        }
    }
}

/// Backward of the message for one receiver row `i`.
///
/// With `need_inputs`, `gs_out`/`gv_out` get the gradient of the layer's inputs at `i`,
/// gathered over the row (the reverse edge has the same filter): `gs_mid_i + sum_e gs_mid_j *
/// ws`, `gv_mid_i + sum_e gv_mid_j * wv1`. Always, `de_dr[e]` gains this layer's `dE/dr_ij`.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
pub fn message_backward_row<T: Real>(
    h: usize,
    receiver: usize,
    sources: &[u32],
    edges: &[EdgeGeometry<T>],
    w: &[T],
    dw: &[T],
    s_in: &[T],
    v_in: &[T],
    gs_mid: &[T],
    gv_mid: &[T],
    need_inputs: bool,
    u_epsilon: T,
    gs_out: &mut [T],
    gv_out: &mut [T],
    de_dr: &mut [[T; 3]],
) {
    let gs_i = &gs_mid[receiver * h..][..h];
    let gv_i = &gv_mid[receiver * 3 * h..][..3 * h];
    if need_inputs {
        gs_out[..h].copy_from_slice(gs_i);
        gv_out[..3 * h].copy_from_slice(gv_i);
    }
    let lanes_end = h - h % LANES;
    for (e, &j) in sources.iter().enumerate() {
        let j = j as usize;
        let w = &w[e * 3 * h..][..3 * h];
        let dw = &dw[e * 3 * h..][..3 * h];
        let (ws, wv1, wv2) = (&w[..h], &w[h..2 * h], &w[2 * h..3 * h]);
        let (dws, dwv1, dwv2) = (&dw[..h], &dw[h..2 * h], &dw[2 * h..3 * h]);
        let s_j = &s_in[j * h..][..h];
        let v_j = &v_in[j * 3 * h..][..3 * h];
        if need_inputs {
            let gs_j = &gs_mid[j * h..][..h];
            let gv_j = &gv_mid[j * 3 * h..][..3 * h];
            let gs_out = &mut gs_out[..h];
            for c in 0..h {
                gs_out[c] += gs_j[c] * ws[c];
            }
            for x in 0..3 {
                let gv_o = &mut gv_out[x * h..][..h];
                let gv_jx = &gv_j[x * h..][..h];
                for c in 0..h {
                    gv_o[c] += gv_jx[c] * wv1[c];
                }
            }
        }
        // dE/dd = sum_c gs_i s_j dws + (sum_x gv_i v_j) dwv1 + (sum_x gv_i u_x) dwv2, and
        // dE/du_x = sum_c gv_i[x] wv2, in fixed lanes.
        let u = [edges[e][1], edges[e][2], edges[e][3]];
        let mut lane_dd = [T::zero(); LANES];
        let mut lane_u = [[T::zero(); LANES]; 3];
        let (gv0, gv1, gv2) = (&gv_i[..h], &gv_i[h..2 * h], &gv_i[2 * h..3 * h]);
        let (v0, v1, v2) = (&v_j[..h], &v_j[h..2 * h], &v_j[2 * h..3 * h]);
        let mut c0 = 0;
        while c0 < lanes_end {
            // Fixed-size views: no bounds checks inside, so the lanes vectorise.
            let gs_i = lanes_of(gs_i, c0);
            let s_j = lanes_of(s_j, c0);
            let (gv0, gv1, gv2) = (lanes_of(gv0, c0), lanes_of(gv1, c0), lanes_of(gv2, c0));
            let (v0, v1, v2) = (lanes_of(v0, c0), lanes_of(v1, c0), lanes_of(v2, c0));
            let (dws, dwv1, dwv2) = (lanes_of(dws, c0), lanes_of(dwv1, c0), lanes_of(dwv2, c0));
            let wv2 = lanes_of(wv2, c0);
            for lane in 0..LANES {
                let gw_s = gs_i[lane] * s_j[lane];
                let gw_v1 = gv0[lane] * v0[lane] + gv1[lane] * v1[lane] + gv2[lane] * v2[lane];
                let gw_v2 = gv0[lane] * u[0] + gv1[lane] * u[1] + gv2[lane] * u[2];
                lane_dd[lane] += gw_s * dws[lane] + gw_v1 * dwv1[lane] + gw_v2 * dwv2[lane];
                lane_u[0][lane] += gv0[lane] * wv2[lane];
                lane_u[1][lane] += gv1[lane] * wv2[lane];
                lane_u[2][lane] += gv2[lane] * wv2[lane];
            }
            c0 += LANES;
        }
        for c in lanes_end..h {
            let gw_s = gs_i[c] * s_j[c];
            let gw_v1 = gv0[c] * v0[c] + gv1[c] * v1[c] + gv2[c] * v2[c];
            let gw_v2 = gv0[c] * u[0] + gv1[c] * u[1] + gv2[c] * u[2];
            lane_dd[0] += gw_s * dws[c] + gw_v1 * dwv1[c] + gw_v2 * dwv2[c];
            lane_u[0][0] += gv0[c] * wv2[c];
            lane_u[1][0] += gv1[c] * wv2[c];
            lane_u[2][0] += gv2[c] * wv2[c];
        }
        let de_dd = sum_lanes(&lane_dd);
        let g_u = [
            sum_lanes(&lane_u[0]),
            sum_lanes(&lane_u[1]),
            sum_lanes(&lane_u[2]),
        ];
        // u = r / (d + eps): du_x/dr_y = delta_xy / (d + eps) - r_x r_y / (d (d + eps)^2).
        let d = edges[e][0];
        let r = [edges[e][4], edges[e][5], edges[e][6]];
        let d_eps = d + u_epsilon;
        let g_u_dot_r = g_u[0] * r[0] + g_u[1] * r[1] + g_u[2] * r[2];
        let radial = de_dd / d - g_u_dot_r / (d * d_eps * d_eps);
        for x in 0..3 {
            de_dr[e][x] += radial * r[x] + g_u[x] / d_eps;
        }
    }
}

/// `values[start..start + LANES]` as a fixed-size array.
#[inline(always)]
fn lanes_of<T>(values: &[T], start: usize) -> &[T; LANES] {
    values[start..start + LANES]
        .try_into()
        .expect("LANES elements")
}

#[inline(always)]
fn sum_lanes<T: Real>(lanes: &[T; LANES]) -> T {
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// Cubic Hermite interpolation of a filter table for a row of edges: `w[e] = sum of the four
/// basis weights times the two nodes' values and scaled derivatives`, and `dw/dd` likewise
/// with the basis derivatives (when `dw` is given).
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn interpolate_rows<T: Real>(
    nodes: &[f32],
    width: usize,
    n_intervals: usize,
    spacing: f64,
    edges: &[EdgeGeometry<T>],
    w: &mut [T],
    mut dw: Option<&mut [T]>,
) {
    let inverse_h = T::of(1.0 / spacing);
    debug_assert!(n_intervals > 0);
    for (e, edge) in edges.iter().enumerate() {
        let k = edge[7].f64() as usize;
        let t = edge[8];
        let stride = NODE_VECTORS * width;
        let node = &nodes[k * stride..][..stride];
        let next = &nodes[(k + 1) * stride..][..stride];
        let (value, rest) = node.split_at(width);
        let (delta, slope) = rest.split_at(width);
        let next_slope = &next[2 * width..3 * width];
        let [_, h10, h01, h11] = crate::model::filter::hermite_basis(t);
        let out = &mut w[e * width..][..width];
        for o in 0..width {
            out[o] = T::of(value[o] as f64)
                + h01 * T::of(delta[o] as f64)
                + h10 * T::of(slope[o] as f64)
                + h11 * T::of(next_slope[o] as f64);
        }
        if let Some(dw) = dw.as_deref_mut() {
            let [_, g10, g01, g11] = crate::model::filter::hermite_basis_derivative(t);
            let (g10, g01, g11) = (g10 * inverse_h, g01 * inverse_h, g11 * inverse_h);
            let out = &mut dw[e * width..][..width];
            for o in 0..width {
                out[o] = g01 * T::of(delta[o] as f64)
                    + g10 * T::of(slope[o] as f64)
                    + g11 * T::of(next_slope[o] as f64);
            }
        }
    }
}

/// `y[m][n_out] = x[m][n_in] W^T (+ b)` for few rows, from the transposed weights
/// `weight_t` (`[n_in][n_out]`): each input feature adds a scaled weight row to every output
/// row, which vectorises over outputs and reads the weights once.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn small_forward<T: Real>(
    n_in: usize,
    n_out: usize,
    weight_t: &[T],
    bias: Option<&[T]>,
    x: &[T],
    y: &mut [T],
) {
    let m = x.len() / n_in;
    for r in 0..m {
        let y_row = &mut y[r * n_out..][..n_out];
        match bias {
            Some(b) => y_row.copy_from_slice(&b[..n_out]),
            None => y_row.fill(T::zero()),
        }
    }
    // Four input features per pass: each output is loaded and stored once per four
    // multiply-adds, not once per one (the one-feature loop was bound by those).
    let mut c = 0;
    while c + 4 <= n_in {
        let w0 = &weight_t[c * n_out..][..n_out];
        let w1 = &weight_t[(c + 1) * n_out..][..n_out];
        let w2 = &weight_t[(c + 2) * n_out..][..n_out];
        let w3 = &weight_t[(c + 3) * n_out..][..n_out];
        for r in 0..m {
            let s = &x[r * n_in + c..][..4];
            let (s0, s1, s2, s3) = (s[0], s[1], s[2], s[3]);
            let y_row = &mut y[r * n_out..][..n_out];
            for o in 0..n_out {
                y_row[o] += s0 * w0[o] + s1 * w1[o] + s2 * w2[o] + s3 * w3[o];
            }
        }
        c += 4;
    }
    for c in c..n_in {
        let w_row = &weight_t[c * n_out..][..n_out];
        for r in 0..m {
            let scale = x[r * n_in + c];
            let y_row = &mut y[r * n_out..][..n_out];
            for o in 0..n_out {
                y_row[o] += scale * w_row[o];
            }
        }
    }
}

/// `gx[m][n_in] (+)= gy[m][n_out] W` for few rows.
#[multiversion(targets("x86_64+avx2+fma"))]
pub fn small_backward<T: Real>(
    n_in: usize,
    n_out: usize,
    weight: &[T],
    gy: &[T],
    gx: &mut [T],
    accumulate: bool,
) {
    let m = gy.len() / n_out;
    if !accumulate {
        gx[..m * n_in].fill(T::zero());
    }
    // Four outputs per pass, as in `small_forward`.
    let mut o = 0;
    while o + 4 <= n_out {
        let w0 = &weight[o * n_in..][..n_in];
        let w1 = &weight[(o + 1) * n_in..][..n_in];
        let w2 = &weight[(o + 2) * n_in..][..n_in];
        let w3 = &weight[(o + 3) * n_in..][..n_in];
        for r in 0..m {
            let g = &gy[r * n_out + o..][..4];
            let (g0, g1, g2, g3) = (g[0], g[1], g[2], g[3]);
            let gx_row = &mut gx[r * n_in..][..n_in];
            for c in 0..n_in {
                gx_row[c] += g0 * w0[c] + g1 * w1[c] + g2 * w2[c] + g3 * w3[c];
            }
        }
        o += 4;
    }
    for o in o..n_out {
        let w_row = &weight[o * n_in..][..n_in];
        for r in 0..m {
            let g = gy[r * n_out + o];
            let gx_row = &mut gx[r * n_in..][..n_in];
            for c in 0..n_in {
                gx_row[c] += g * w_row[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) without a random-number crate.
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    #[test]
    fn small_products_match_the_definition_with_and_without_remainders() {
        // n_in and n_out not multiples of four exercise the remainder loops.
        for (m, n_in, n_out) in [(1, 4, 8), (3, 7, 5), (12, 20, 13), (5, 2, 3)] {
            let weight = values(n_out * n_in, 1); // [n_out][n_in]
            let weight_t: Vec<f64> = (0..n_in * n_out)
                .map(|k| weight[(k % n_out) * n_in + k / n_out])
                .collect(); // [n_in][n_out]
            let bias = values(n_out, 2);
            let x = values(m * n_in, 3);
            let mut y = vec![0.0; m * n_out];
            small_forward(n_in, n_out, &weight_t, Some(&bias), &x, &mut y);
            for r in 0..m {
                for o in 0..n_out {
                    let exact: f64 = bias[o]
                        + (0..n_in)
                            .map(|c| x[r * n_in + c] * weight[o * n_in + c])
                            .sum::<f64>();
                    assert!(
                        (y[r * n_out + o] - exact).abs() < 1e-13,
                        "forward {m}x{n_in}x{n_out}"
                    );
                }
            }
            let gy = values(m * n_out, 4);
            let start = values(m * n_in, 5);
            for accumulate in [false, true] {
                let mut gx = start.clone();
                small_backward(n_in, n_out, &weight, &gy, &mut gx, accumulate);
                for r in 0..m {
                    for c in 0..n_in {
                        let base = if accumulate { start[r * n_in + c] } else { 0.0 };
                        let exact: f64 = base
                            + (0..n_out)
                                .map(|o| gy[r * n_out + o] * weight[o * n_in + c])
                                .sum::<f64>();
                        assert!(
                            (gx[r * n_in + c] - exact).abs() < 1e-13,
                            "backward {m}x{n_in}x{n_out}"
                        );
                    }
                }
            }
        }
    }
}
