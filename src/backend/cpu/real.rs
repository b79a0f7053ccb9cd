//! The floating-point types the CPU engine runs in, and the dense-layer arithmetic on them.

use super::kernels;
use super::parallel;
use super::team;
use crate::model::Linear;

/// float32 or float64.
pub trait Real:
    num_traits::Float
    + num_traits::FromPrimitive
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::iter::Sum
    + Default
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;

    /// C (m x n) = alpha A (m x k) B (k x n) + beta C, arbitrary strides.
    ///
    /// # Safety
    /// The pointers and strides must describe valid, non-aliasing matrices.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

impl Real for f32 {
    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn f64(self) -> f64 {
        self as f64
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: *const f32,
        rsa: isize,
        csa: isize,
        b: *const f32,
        rsb: isize,
        csb: isize,
        beta: f32,
        c: *mut f32,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

impl Real for f64 {
    #[inline]
    fn of(x: f64) -> Self {
        x
    }
    #[inline]
    fn f64(self) -> f64 {
        self
    }
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: f64,
        a: *const f64,
        rsa: isize,
        csa: isize,
        b: *const f64,
        rsb: isize,
        csb: isize,
        beta: f64,
        c: *mut f64,
        rsc: isize,
        csc: isize,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            matrixmultiply::dgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

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
const PAIR_BLOCK_COLUMNS: usize = 2 * kernels::TILE_COLUMNS;

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
    /// threads of a molecule's [`team`], in blocks of [`PAIR_BLOCK_COLUMNS`]: only when it
    /// is large enough to pay for the hand-off (about a microsecond). Columns, not rows: a
    /// block reads only its columns of the weights, and reading the weights (from the
    /// shared cache) is what bounds these products.
    fn pair_splits(&self, m: usize, n: usize) -> bool {
        m < SMALL_ROWS
            && n >= 2 * PAIR_BLOCK_COLUMNS
            && m * self.n_in * self.n_out >= PAIR_MIN_PRODUCT
            && team::active()
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
            kernels::small_forward(self.n_in, self.n_out, &self.weight_t, bias, x, y);
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
            kernels::small_backward(self.n_in, self.n_out, &self.weight, gy, gx, accumulate);
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
    pub fn forward(&self, x: &[T], y: &mut [T]) {
        let m = x.len() / self.n_in;
        if self.pair_splits(m, self.n_out) {
            let start = kernels::Start::Row(&self.bias);
            paired_product(m, self.n_in, self.n_out, x, &self.weight_t, start, y);
            return;
        }
        let per_task = rows_per_task(x.len() / self.n_in);
        parallel::for_each_chunk_into(x, per_task * self.n_in, y, per_task * self.n_out, |x, y| {
            self.forward_rows(x, y)
        });
    }

    /// [`backward_rows`](Self::backward_rows) over all rows, in parallel.
    pub fn backward(&self, gy: &[T], gx: &mut [T], accumulate: bool) {
        let m = gy.len() / self.n_out;
        if self.pair_splits(m, self.n_in) {
            let start = if accumulate {
                kernels::Start::Accumulate
            } else {
                kernels::Start::Zero
            };
            paired_product(m, self.n_out, self.n_in, gy, &self.weight, start, gx);
            return;
        }
        let per_task = rows_per_task(gy.len() / self.n_out);
        parallel::for_each_chunk_into(
            gy,
            per_task * self.n_out,
            gx,
            per_task * self.n_in,
            |gy, gx| self.backward_rows(gy, gx, accumulate),
        );
    }
}

/// `c[m][n] = start + a[m][k] b[k][n]` ([`kernels::small_product`]) on both threads of the
/// molecule's team, in blocks of [`PAIR_BLOCK_COLUMNS`] output columns.
#[allow(clippy::too_many_arguments)]
fn paired_product<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    b: &[T],
    start: kernels::Start<'_, T>,
    c: &mut [T],
) {
    let c = team::SharedSlice::new(&mut c[..m * n]);
    team::for_each_block(n.div_ceil(PAIR_BLOCK_COLUMNS), |block| {
        let columns = block * PAIR_BLOCK_COLUMNS..((block + 1) * PAIR_BLOCK_COLUMNS).min(n);
        // SAFETY: each block is run once, by one thread, on its own columns.
        unsafe { kernels::small_product_columns(m, k, n, a, b, start, &c, columns) };
    });
}

#[inline]
pub fn silu<T: Real>(x: T) -> T {
    x / (T::one() + (-x).exp())
}

#[inline]
pub fn silu_derivative<T: Real>(x: T) -> T {
    let sigmoid = T::one() / (T::one() + (-x).exp());
    sigmoid * (T::one() + x * (T::one() - sigmoid))
}
