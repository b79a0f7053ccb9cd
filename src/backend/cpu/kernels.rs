//! The CPU engine's inner loops, compiled twice (portable, and AVX2+FMA chosen at run time).
//!
//! Reductions over features run in 8 fixed lanes and are combined in a fixed order: that
//! lets the compiler vectorise them (a plain running sum is a sequential dependency it may
//! not reorder) and keeps the result identical from call to call.

use multiversion::multiversion;

use super::real::Real;
use super::team::SharedSlice;
use crate::model::filter::NODE_VECTORS;

/// Lanes of the vectorisable reductions.
const LANES: usize = 8;

/// Per-edge geometry: `[d, u_x, u_y, u_z, r_x, r_y, r_z, k, t]`, where `k` (an integer
/// value) and `t` locate `d` in the filter table. They are computed from the float64
/// distance: in float32, `d / h` would lose up to 6e-5 of `t` and, through the steep
/// filter, about 1e-6 of `w`.
pub type EdgeGeometry<T> = [T; 9];

/// Message of one receiver row: `s_out = s_i + sum_e s_j * ws`, `v_out = v_i + sum_e (v_j *
/// wv1 + u (x) wv2)`. `w` is `[rows][3H]`, edge `e` reading row `filter_rows[e]`. In the first layer `v_in` is zero and skipped.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
pub fn message_row<T: Real>(
    h: usize,
    receiver: usize,
    sources: &[u32],
    edges: &[EdgeGeometry<T>],
    w: &[T],
    filter_rows: &[u32],
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
        let w = &w[filter_rows[e] as usize * 3 * h..][..3 * h];
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
    filter_rows: &[u32],
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
        let filter_row = filter_rows[e] as usize;
        let w = &w[filter_row * 3 * h..][..3 * h];
        let dw = &dw[filter_row * 3 * h..][..3 * h];
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

/// Rows and columns of the register tile of [`small_product`]: 6 x 16 accumulators are
/// twelve AVX registers in float32 (enough independent fused multiply-adds to hide their
/// latency), and each B row loaded serves six rows of A.
const TILE_ROWS: usize = 6;
pub(super) const TILE_COLUMNS: usize = 16;

/// Leftover rows (below [`TILE_ROWS`]) from which a zero-padded tile beats the remainder
/// loop (instructions per call under callgrind, 13 to 17 atoms).
const PADDED_TILE_ROWS: usize = 4;

/// What `c` starts from in [`small_product`].
#[derive(Clone, Copy, Debug)]
pub enum Start<'a, T> {
    Zero,
    /// Every row starts as this vector (`[n]`), a bias.
    Row(&'a [T]),
    /// `c` keeps its values and the product is added.
    Accumulate,
}

/// `c[m][n] = start + a[m][k] b[k][n]` for few rows `m`, row-major, by register tiles of
/// 6 x 16 outputs that stay in registers over the whole sum: each element of `b` is loaded
/// once per six rows, and `c` once in all. Every output is summed in the same order
/// (`start`, then `k = 0, 1, ...`, one fused multiply-add each) whatever tile it falls in,
/// so the bits do not depend on how rows or columns are split between threads. Fused
/// multiply-adds (one rounding each) halve the arithmetic; the portable build calls the C
/// library's `fma` for the same bits, slowly.
pub fn small_product<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    b: &[T],
    start: Start<'_, T>,
    c: &mut [T],
) {
    let c = SharedSlice::new(&mut c[..m * n]);
    // SAFETY: `c` is borrowed mutably for the whole product, by this thread alone.
    unsafe { small_product_columns(m, k, n, a, b, start, &c, 0..n) };
}

/// [`small_product`] for the output columns `columns` of `c` (`[m][n]`) only: its other
/// columns are neither read nor written, so threads may share `c` with disjoint column
/// ranges. Splitting by columns splits the weight traffic (each column reads its own part
/// of `b`), which bounds these products; splitting by rows would not.
///
/// # Safety
/// No other thread reads or writes `c`'s columns `columns` during the call.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
pub unsafe fn small_product_columns<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    b: &[T],
    start: Start<'_, T>,
    c: &SharedSlice<'_, T>,
    columns: std::ops::Range<usize>,
) {
    let (a, b) = (&a[..m * k], &b[..k * n]);
    assert!(c.len() == m * n && columns.end <= n);
    // `count` values of `c` from `offset`, all in this call's columns.
    // SAFETY: the columns are this call's alone (the function's contract).
    let values = |offset: usize, count: usize| unsafe { c.part(offset..offset + count) };
    let width = columns.len();
    match start {
        Start::Zero => {
            for r in 0..m {
                values(r * n + columns.start, width).fill(T::zero());
            }
        }
        Start::Row(row) => {
            let row = &row[columns.clone()];
            for r in 0..m {
                values(r * n + columns.start, width).copy_from_slice(row);
            }
        }
        Start::Accumulate => {}
    }
    // The float32 intrinsic tile, decided once per call (not per tile).
    let f32_tile = f32_tile().filter(|_| as_f32(a).is_some());
    let mut r0 = 0;
    while r0 + TILE_ROWS <= m {
        let mut j0 = columns.start;
        while j0 + TILE_COLUMNS <= columns.end {
            if let Some(tile) = f32_tile
                && let (Some(a), Some(b)) = (as_f32(a), as_f32(b))
            {
                // The tile's corner; its six rows of 16 lie inside c (r0 + 6 <= m,
                // j0 + 16 <= n) and in this thread's columns.
                let corner = values(r0 * n + j0, (TILE_ROWS - 1) * n + TILE_COLUMNS);
                // SAFETY: a, b and the tile are in bounds (a is m x k, b is k x n,
                // checked above; the corner slice spans the tile).
                unsafe {
                    tile(
                        k,
                        n,
                        n,
                        a[r0 * k..].as_ptr(),
                        b[j0..].as_ptr(),
                        corner.as_mut_ptr() as *mut f32,
                    )
                };
                j0 += TILE_COLUMNS;
                continue;
            }
            let mut tile = [[T::zero(); TILE_COLUMNS]; TILE_ROWS];
            for (r, tile_row) in tile.iter_mut().enumerate() {
                tile_row.copy_from_slice(values((r0 + r) * n + j0, TILE_COLUMNS));
            }
            let a_rows: [&[T]; TILE_ROWS] =
                std::array::from_fn(|r| &a[(r0 + r) * k..(r0 + r + 1) * k]);
            for (kk, b_row) in b.chunks_exact(n).enumerate() {
                let b_row: &[T; TILE_COLUMNS] = b_row[j0..j0 + TILE_COLUMNS]
                    .try_into()
                    .expect("a full tile");
                for (tile_row, a_row) in tile.iter_mut().zip(&a_rows) {
                    let a_rk = a_row[kk];
                    for j in 0..TILE_COLUMNS {
                        tile_row[j] = a_rk.mul_add(b_row[j], tile_row[j]);
                    }
                }
            }
            for (r, tile_row) in tile.iter().enumerate() {
                values((r0 + r) * n + j0, TILE_COLUMNS).copy_from_slice(tile_row);
            }
            j0 += TILE_COLUMNS;
        }
        if j0 < columns.end {
            // SAFETY: the same columns, the same contract.
            unsafe {
                product_remainder(r0..r0 + TILE_ROWS, j0..columns.end, k, n, a, b, c);
            }
        }
        r0 += TILE_ROWS;
    }
    if r0 < m {
        let mut j0 = columns.start;
        let rows = m - r0;
        if let (Some(tile), Some(a), Some(b), true) =
            (f32_tile, as_f32(a), as_f32(b), rows >= PADDED_TILE_ROWS)
        {
            // The last rows, fewer than a tile but not few: a full tile over rows padded with
            // zeros (the padding's outputs are dropped) costs fewer instructions than the
            // remainder loop, which loads and stores its outputs at every step of the sum.
            // The same operations in the same order, so the same bits.
            let mut a_padded = vec![0.0f32; TILE_ROWS * k];
            a_padded[..rows * k].copy_from_slice(&a[r0 * k..m * k]);
            while j0 + TILE_COLUMNS <= columns.end {
                let mut c_tile = [[0.0f32; TILE_COLUMNS]; TILE_ROWS];
                for (r, c_row) in c_tile.iter_mut().enumerate().take(rows) {
                    let values = values((r0 + r) * n + j0, TILE_COLUMNS);
                    // SAFETY: T is f32 (as_f32 succeeded for a): same layout.
                    let values = unsafe { &*(values as *const [T] as *const [f32]) };
                    c_row.copy_from_slice(values);
                }
                // SAFETY: a_padded holds six rows of k values, b's columns j0..j0 + 16 lie
                // inside its rows of n, and c_tile is six rows of 16.
                unsafe {
                    tile(
                        k,
                        n,
                        TILE_COLUMNS,
                        a_padded.as_ptr(),
                        b[j0..].as_ptr(),
                        c_tile.as_mut_ptr() as *mut f32,
                    )
                };
                for (r, c_row) in c_tile.iter().enumerate().take(rows) {
                    let values = values((r0 + r) * n + j0, TILE_COLUMNS);
                    // SAFETY: as above.
                    let values = unsafe { &mut *(values as *mut [T] as *mut [f32]) };
                    values.copy_from_slice(c_row);
                }
                j0 += TILE_COLUMNS;
            }
        }
        if j0 < columns.end {
            // SAFETY: the same columns, the same contract.
            unsafe {
                product_remainder(r0..m, j0..columns.end, k, n, a, b, c);
            }
        }
    }
}

/// A float32 6 x 16 tile of [`small_product`] written with AVX2/FMA intrinsics: `c[r][j] =
/// fma(a[r][kk], b[kk][j], c[r][j])` for `kk = 0, 1, ...`, the generic loop's operations in
/// the generic loop's order (so the same bits), with the loop overhead the compiler leaves
/// in the generic version gone. `a` points at row `r0` (row stride `k`), `b` at column `j0`
/// (row stride `n`), `c` at `(r0, j0)` (row stride `n`).
type F32Tile = unsafe fn(usize, usize, usize, *const f32, *const f32, *mut f32);

/// The intrinsic float32 tile when the processor has AVX2 and FMA.
fn f32_tile() -> Option<F32Tile> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Some(tile_f32_avx2);
        }
    }
    None
}

fn as_f32<T: Real>(values: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()).then(|| {
        // SAFETY: T is f32 (checked above): same layout, same length.
        unsafe { std::slice::from_raw_parts(values.as_ptr() as *const f32, values.len()) }
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_f32_avx2(
    k: usize,
    b_stride: usize,
    c_stride: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees six rows of k values at `a`, k rows of 16
    // values at `b` and six rows of 16 values at `c`, with the strides given.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
        for (r, row) in acc.iter_mut().enumerate() {
            row[0] = _mm256_loadu_ps(c.add(r * c_stride));
            row[1] = _mm256_loadu_ps(c.add(r * c_stride + 8));
        }
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(b.add(kk * b_stride));
            let b1 = _mm256_loadu_ps(b.add(kk * b_stride + 8));
            for (r, row) in acc.iter_mut().enumerate() {
                let a_rk = _mm256_broadcast_ss(&*a.add(r * k + kk));
                row[0] = _mm256_fmadd_ps(a_rk, b0, row[0]);
                row[1] = _mm256_fmadd_ps(a_rk, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * c_stride), row[0]);
            _mm256_storeu_ps(c.add(r * c_stride + 8), row[1]);
        }
    }
}

/// The outputs of [`small_product`] outside full tiles, summed in the same order.
#[inline(always)]
///
/// # Safety
/// As [`small_product_columns`]: `c`'s columns `columns` are this thread's alone.
unsafe fn product_remainder<T: Real>(
    rows: std::ops::Range<usize>,
    columns: std::ops::Range<usize>,
    k: usize,
    n: usize,
    a: &[T],
    b: &[T],
    c: &SharedSlice<'_, T>,
) {
    for r in rows {
        // SAFETY: in this call's columns (the function's contract).
        let c_part = unsafe { c.part(r * n + columns.start..r * n + columns.end) };
        for kk in 0..k {
            let a_rk = a[r * k + kk];
            let b_part = &b[kk * n + columns.start..][..columns.len()];
            for (c_rj, &b_kj) in c_part.iter_mut().zip(b_part) {
                *c_rj = a_rk.mul_add(b_kj, *c_rj);
            }
        }
    }
}

/// `y[m][n_out] = x[m][n_in] W^T (+ b)` for few rows, from the transposed weights
/// `weight_t` (`[n_in][n_out]`).
pub fn small_forward<T: Real>(
    n_in: usize,
    n_out: usize,
    weight_t: &[T],
    bias: Option<&[T]>,
    x: &[T],
    y: &mut [T],
) {
    let m = x.len() / n_in;
    let start = bias.map_or(Start::Zero, Start::Row);
    small_product(m, n_in, n_out, x, weight_t, start, y);
}

/// `gx[m][n_in] (+)= gy[m][n_out] W` for few rows.
pub fn small_backward<T: Real>(
    n_in: usize,
    n_out: usize,
    weight: &[T],
    gy: &[T],
    gx: &mut [T],
    accumulate: bool,
) {
    let m = gy.len() / n_out;
    let start = if accumulate {
        Start::Accumulate
    } else {
        Start::Zero
    };
    small_product(m, n_out, n_in, gy, weight, start, gx);
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
        // Sizes off the 6 x 16 tiles exercise the remainder loops.
        for (m, n_in, n_out) in [
            (1, 4, 8),
            (3, 7, 5),
            (12, 20, 13),
            (5, 2, 3),
            (8, 33, 40),
            (9, 16, 17),
        ] {
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

    #[test]
    fn float32_tiles_give_the_bits_of_the_sum_in_order() {
        // Full 6 x 16 tiles (the intrinsic kernel where the processor has AVX2 and FMA) and
        // remainders must both equal the fused multiply-adds taken in order, bit for bit.
        // Leftover rows 1 (loop), 4 and 5 (zero-padded tile), and leftover columns.
        for (m, k, n) in [
            (12, 20, 32),
            (7, 33, 40),
            (6, 16, 16),
            (13, 5, 17),
            (10, 9, 40),
            (11, 20, 33),
        ] {
            let a: Vec<f32> = values(m * k, 7).iter().map(|&v| v as f32).collect();
            let b: Vec<f32> = values(k * n, 8).iter().map(|&v| v as f32).collect();
            let bias: Vec<f32> = values(n, 9).iter().map(|&v| v as f32).collect();
            let mut c = vec![0.0f32; m * n];
            small_product(m, k, n, &a, &b, Start::Row(&bias), &mut c);
            for r in 0..m {
                for j in 0..n {
                    let mut expected = bias[j];
                    for kk in 0..k {
                        expected = a[r * k + kk].mul_add(b[kk * n + j], expected);
                    }
                    assert_eq!(
                        c[r * n + j].to_bits(),
                        expected.to_bits(),
                        "{m}x{k}x{n} at {r},{j}"
                    );
                }
            }
        }
    }

    #[test]
    fn products_split_by_columns_give_the_bits_of_the_whole() {
        // Two threads of a molecule each compute a column range of one product: the halves
        // together must be the whole product bit for bit, at tile boundaries and off them.
        for (m, k, n) in [(12, 64, 128), (7, 20, 40), (13, 9, 33), (17, 12, 48)] {
            let a: Vec<f32> = values(m * k, 10).iter().map(|&v| v as f32).collect();
            let b: Vec<f32> = values(k * n, 11).iter().map(|&v| v as f32).collect();
            let bias: Vec<f32> = values(n, 12).iter().map(|&v| v as f32).collect();
            let mut whole = vec![0.0f32; m * n];
            small_product(m, k, n, &a, &b, Start::Row(&bias), &mut whole);
            for split in [0, 5, 16, n / 2, n - 1, n] {
                let mut parts = vec![f32::NAN; m * n];
                let c = SharedSlice::new(&mut parts);
                // SAFETY: one thread, one range at a time.
                unsafe {
                    small_product_columns(m, k, n, &a, &b, Start::Row(&bias), &c, 0..split);
                    small_product_columns(m, k, n, &a, &b, Start::Row(&bias), &c, split..n);
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&parts), bits(&whole), "{m}x{k}x{n} split at {split}");
            }
        }
    }
}
