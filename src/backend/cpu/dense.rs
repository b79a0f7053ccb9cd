//! Dense layers on the CPU: `y = W x + b` and its backward, as GEMMs over fixed row blocks
//! (matrixmultiply) for many rows and as register-tiled products for the few rows of a
//! molecule, which may be split by columns between the two threads of its team.

use multiversion::multiversion;

use super::real::Real;
use super::schedule::Schedule;
use super::team::Team;
use crate::disjoint::DisjointParts;
use crate::model::Linear;

/// A dense layer in the engine's precision: `y = W x + b`, `W` `[n_out][n_in]`.
#[derive(Debug)]
pub struct Dense<T> {
    pub n_in: usize,
    pub n_out: usize,
    /// `[n_out][n_in]`.
    pub weight: CacheAligned<T>,
    /// `[n_in][n_out]`, for the few-rows kernel.
    pub weight_t: CacheAligned<T>,
    pub bias: Vec<T>,
}

/// Bytes of a cache line.
const CACHE_LINE: usize = 64;

/// Values whose first element starts a cache line. The few-rows kernel reads a weight
/// matrix in row segments of 16 float32 values (64 bytes) at cache-line multiples from its
/// start: aligned, each segment is one cache line, not parts of two (the allocator aligns
/// large buffers to 16 bytes only). Not `Clone`: a copied vector may start elsewhere in a
/// cache line.
#[derive(Debug)]
pub struct CacheAligned<T> {
    storage: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> CacheAligned<T> {
    pub fn from_slice(values: &[T]) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let mut storage = vec![T::default(); values.len() + CACHE_LINE / size];
        // The allocation never moves (the vector never grows), so its alignment holds.
        let misalignment = storage.as_ptr() as usize % CACHE_LINE;
        let start = (CACHE_LINE - misalignment) % CACHE_LINE / size;
        storage[start..start + values.len()].copy_from_slice(values);
        CacheAligned {
            storage,
            start,
            len: values.len(),
        }
    }
}

impl<T> std::ops::Deref for CacheAligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.storage[self.start..self.start + self.len]
    }
}

/// Rows per GEMM call: a function of the row count only, so that results do not depend on
/// the thread count.
fn rows_per_task(rows: usize) -> usize {
    if rows < SMALL_ROWS {
        // One register-tiled call (the small systems that get here run on one thread).
        return rows.max(1);
    }
    (rows / 8).clamp(4, 64)
}

/// Below this many rows a dot-product kernel beats packing the weights for a GEMM.
const SMALL_ROWS: usize = 32;

/// Smallest product (multiply-adds) that a molecule splits between its two threads.
const PAIR_MIN_PRODUCT: usize = 16 * 1024;

/// Output columns per block of a product split between two threads: two register tiles
/// (about a microsecond of work for a molecule's hidden layers).
const PAIR_BLOCK_COLUMNS: usize = 2 * TILE_COLUMNS;

impl<T: Real> Dense<T> {
    pub fn from_model(linear: &Linear) -> Self {
        let weight: Vec<T> = linear.weight.iter().map(|&v| T::of(v)).collect();
        let mut weight_t = vec![T::zero(); weight.len()];
        for o in 0..linear.n_out {
            for c in 0..linear.n_in {
                weight_t[c * linear.n_out + o] = weight[o * linear.n_in + c];
            }
        }
        Dense {
            n_in: linear.n_in,
            n_out: linear.n_out,
            weight: CacheAligned::from_slice(&weight),
            weight_t: CacheAligned::from_slice(&weight_t),
            bias: linear.bias.iter().map(|&v| T::of(v)).collect(),
        }
    }

    /// Whether a product over `m` rows with `n` output columns splits between the two
    /// threads of a molecule's [`Team`], in blocks of [`PAIR_BLOCK_COLUMNS`]: only when it
    /// is large enough to pay for the hand-off (about a microsecond). Columns, not rows: a
    /// block reads only its columns of the weights, and reading the weights (from the
    /// shared cache) is what bounds these products.
    fn pair_splits(&self, schedule: Schedule, m: usize, n: usize) -> bool {
        m < SMALL_ROWS
            && n >= 2 * PAIR_BLOCK_COLUMNS
            && m * self.n_in * self.n_out >= PAIR_MIN_PRODUCT
            && schedule.has_team()
    }

    /// `y[m][n_out] = x[m][n_in] W^T + b` for one block of rows (single-threaded).
    pub fn forward_rows(&self, x: &[T], y: &mut [T]) {
        self.transposed_product(x, Some(&self.bias), y);
    }

    /// `y[m][n_out] = x[m][n_in] W^T`, the linear part alone (a derivative through the layer).
    pub fn linear_rows(&self, x: &[T], y: &mut [T]) {
        self.transposed_product(x, None, y);
    }

    fn transposed_product(&self, x: &[T], bias: Option<&[T]>, y: &mut [T]) {
        let m = x.len() / self.n_in;
        debug_assert_eq!(y.len(), m * self.n_out);
        if m < SMALL_ROWS {
            small_forward(self.n_in, self.n_out, &self.weight_t, bias, x, y);
            return;
        }
        let beta = match bias {
            Some(bias) => {
                for row in y.chunks_exact_mut(self.n_out) {
                    row.copy_from_slice(bias);
                }
                T::one()
            }
            None => T::zero(),
        };
        // SAFETY: x is m x n_in, W is n_out x n_in (read transposed), y is m x n_out.
        unsafe {
            T::gemm(
                m,
                self.n_in,
                self.n_out,
                T::one(),
                x.as_ptr(),
                self.n_in as isize,
                1,
                self.weight.as_ptr(),
                1,
                self.n_in as isize,
                beta,
                y.as_mut_ptr(),
                self.n_out as isize,
                1,
            )
        }
    }

    /// `gx[m][n_in] (+)= gy[m][n_out] W` for one block of rows (single-threaded).
    pub fn backward_rows(&self, gy: &[T], gx: &mut [T], accumulate: bool) {
        let m = gy.len() / self.n_out;
        debug_assert_eq!(gx.len(), m * self.n_in);
        if m < SMALL_ROWS {
            small_backward(self.n_in, self.n_out, &self.weight, gy, gx, accumulate);
            return;
        }
        let beta = if accumulate { T::one() } else { T::zero() };
        // SAFETY: gy is m x n_out, W is n_out x n_in, gx is m x n_in.
        unsafe {
            T::gemm(
                m,
                self.n_out,
                self.n_in,
                T::one(),
                gy.as_ptr(),
                self.n_out as isize,
                1,
                self.weight.as_ptr(),
                self.n_in as isize,
                1,
                beta,
                gx.as_mut_ptr(),
                self.n_in as isize,
                1,
            )
        }
    }

    /// [`forward_rows`](Self::forward_rows) over all rows, in parallel.
    pub fn forward(&self, schedule: Schedule, x: &[T], y: &mut [T]) {
        let m = x.len() / self.n_in;
        if let Schedule::Team(team) = schedule
            && self.pair_splits(schedule, m, self.n_out)
        {
            let start = Start::Row(&self.bias);
            paired_product(team, m, self.n_in, self.n_out, x, &self.weight_t, start, y);
            return;
        }
        let per_task = rows_per_task(x.len() / self.n_in);
        schedule.for_each_chunk_into(x, per_task * self.n_in, y, per_task * self.n_out, |x, y| {
            self.forward_rows(x, y)
        });
    }

    /// [`backward_rows`](Self::backward_rows) over all rows, in parallel.
    pub fn backward(&self, schedule: Schedule, gy: &[T], gx: &mut [T], accumulate: bool) {
        let m = gy.len() / self.n_out;
        if let Schedule::Team(team) = schedule
            && self.pair_splits(schedule, m, self.n_in)
        {
            let start = if accumulate {
                Start::Accumulate
            } else {
                Start::Zero
            };
            paired_product(team, m, self.n_out, self.n_in, gy, &self.weight, start, gx);
            return;
        }
        let per_task = rows_per_task(gy.len() / self.n_out);
        schedule.for_each_chunk_into(
            gy,
            per_task * self.n_out,
            gx,
            per_task * self.n_in,
            |gy, gx| self.backward_rows(gy, gx, accumulate),
        );
    }
}

/// `c[m][n] = start + a[m][k] b[k][n]` ([`small_product`]) on both threads of the
/// molecule's team, in blocks of [`PAIR_BLOCK_COLUMNS`] output columns.
#[allow(clippy::too_many_arguments)]
fn paired_product<T: Real>(
    team: &Team,
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    b: &[T],
    start: Start<'_, T>,
    c: &mut [T],
) {
    let c = DisjointParts::new(&mut c[..m * n]);
    team.for_each_block(n.div_ceil(PAIR_BLOCK_COLUMNS), |block| {
        let columns = block * PAIR_BLOCK_COLUMNS..((block + 1) * PAIR_BLOCK_COLUMNS).min(n);
        // SAFETY: each block is run once, by one thread, on its own columns.
        unsafe { small_product_columns(m, k, n, a, b, start, &c, columns) };
    });
}

/// Rows and columns of the register tile of [`small_product`]: 6 x 16 accumulators are
/// twelve AVX registers in float32 (enough independent fused multiply-adds to hide their
/// latency), and each B row loaded serves six rows of A.
const TILE_ROWS: usize = 6;
const TILE_COLUMNS: usize = 16;

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
    let c = DisjointParts::new(&mut c[..m * n]);
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
    c: &DisjointParts<'_, T>,
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
    c: &DisjointParts<'_, T>,
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
                let c = DisjointParts::new(&mut parts);
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
