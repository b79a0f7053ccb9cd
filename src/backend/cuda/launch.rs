//! Typed kernel launches: one method of [`Kernels`] per kernel, with the kernel's parameters
//! in the kernel's order and of the kernel's types, so that a wrong buffer or scalar type
//! does not compile. A pointer parameter `T*` takes a whole `&DeviceBuffer<T>` or a
//! [`DevicePtr<T>`] (a position inside a buffer: one layer of the filter table, a level of the
//! scan); a scalar parameter takes exactly its type (`int` is `i32`, `i64` is `i64`, `double`
//! is `f64`, `float` is `f32`).
//!
//! The table below is written from the kernels' declarations, parameter names included; the
//! test `signatures_match_the_sources` checks every name and type against the `.cu` sources,
//! so the host and the kernels cannot disagree on the order or type of an argument. Launch
//! shapes ([`per_atom`], [`grid_stride`], ...) are the block sizes each kernel is written
//! for (grid.rs).
//!
//! Each function is looked up once, when the backend opens; a launch only queues the kernel
//! on the backend's stream.

use std::sync::Arc;

use cudarc::driver::sys::{self, CUfunction_attribute};
use cudarc::driver::{
    CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};

use super::buffers::{DeviceBuffer, DevicePtr, Registry};
use super::device::driver;
use super::grid::{
    ATOM_THREADS, GEMM_FEW_ROWS, GEMM_FEW_ROWS_MAX, GEMM_THREADS, Grid, REDUCE_THREADS, SCAN_BLOCK,
    SMALL_CLUSTER_BLOCKS, SMALL_THREADS, SORT_WARPS, STRIDE_THREADS, blocks, gemm_grid,
    scan_levels, stride_blocks,
};
use super::small::SmallModel;
use crate::error::Result;

/// A type a kernel parameter can have, with its spelling in the `.cu` sources (for the
/// signature test).
pub trait KernelParam: DeviceRepr + Copy {
    #[cfg_attr(not(test), allow(dead_code))]
    fn c_type() -> String;
}

macro_rules! c_types {
    ($($rust:ty => $c:literal),* $(,)?) => {$(
        impl KernelParam for $rust {
            fn c_type() -> String {
                $c.into()
            }
        }
        impl KernelParam for DevicePtr<$rust> {
            fn c_type() -> String {
                concat!($c, "*").into()
            }
        }
    )*};
}

c_types!(i32 => "int", i64 => "i64", u64 => "u64", f32 => "float", f64 => "double");

impl KernelParam for SmallModel {
    fn c_type() -> String {
        "SmallModel".into()
    }
}

impl KernelParam for Grid {
    fn c_type() -> String {
        "Grid".into()
    }
}

/// What a parameter of type `P` accepts: a `P`, or for a pointer parameter a whole buffer of
/// the pointer's element type.
pub trait KernelArg<P> {
    fn into_param(self) -> P;
}

impl<P: KernelParam> KernelArg<P> for P {
    fn into_param(self) -> P {
        self
    }
}

impl<T> KernelArg<DevicePtr<T>> for &DeviceBuffer<T> {
    fn into_param(self) -> DevicePtr<T> {
        self.ptr()
    }
}

/// Declares the kernels: a field of [`Functions`] and a typed launch method of [`Kernels`]
/// each, their names ([`KERNEL_NAMES`]) and, for the tests, their signatures.
macro_rules! kernels {
    ($(
        $(#[$attribute:meta])*
        fn $name:ident($($param:ident: $type:ty),* $(,)?);
    )*) => {
        /// Every kernel of the program, loaded from the module once.
        struct Functions {
            $($name: CudaFunction,)*
        }

        /// The name of every kernel the backend launches.
        #[cfg_attr(not(test), allow(dead_code))]
        pub const KERNEL_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl Kernels {
            /// Looks every kernel up in `module`; launches go to `stream`.
            pub fn load(module: &Arc<CudaModule>, stream: Arc<CudaStream>) -> Result<Kernels> {
                let function = |name: &str| {
                    module
                        .load_function(name)
                        .map_err(|e| driver(&format!("kernel {name}"), e))
                };
                Ok(Kernels {
                    stream,
                    functions: Functions {
                        $($name: function(stringify!($name))?,)*
                    },
                })
            }

            $(
                $(#[$attribute])*
                #[allow(clippy::too_many_arguments)]
                pub fn $name(
                    &self,
                    config: LaunchConfig,
                    $($param: impl KernelArg<$type>,)*
                ) -> Result<()> {
                    $(let $param: $type = $param.into_param();)*
                    let mut builder = self.stream.launch_builder(&self.functions.$name);
                    $(builder.arg(&$param);)*
                    // SAFETY: the arguments have the kernel's parameter types in its order
                    // (`signatures_match_the_sources`); the caller passes live device buffers
                    // of the sizes the kernel reads and writes.
                    unsafe { builder.launch(config) }.map_err(|e| driver(stringify!($name), e))?;
                    Ok(())
                }
            )*
        }

        /// `(kernel, [(parameter, C type)])` of every kernel, as declared above.
        #[cfg(test)]
        fn signatures() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
            vec![$(
                (stringify!($name), vec![$((stringify!($param), <$type as KernelParam>::c_type())),*]),
            )*]
        }
    };
}

/// The loaded kernels and the stream they are launched on.
pub struct Kernels {
    stream: Arc<CudaStream>,
    functions: Functions,
}

kernels! {
    // scan.cu
    /// Exclusive scan of each block of [`SCAN_BLOCK`] elements; block totals to `block_sums`.
    fn scan_blocks(data: DevicePtr<i64>, count: i64, block_sums: DevicePtr<i64>);
    /// Adds each block's scanned offset to its elements.
    fn scan_add(data: DevicePtr<i64>, count: i64, block_offsets: DevicePtr<i64>);

    // neighbors.cu
    /// Wraps and bins every atom, counting atoms per bin.
    fn nl_bin(
        n: i32,
        positions: DevicePtr<f64>,
        grid: Grid,
        wraps: DevicePtr<i32>,
        bins: DevicePtr<i32>,
        bin_counts: DevicePtr<i64>,
    );
    /// Sorts the atoms by bin.
    fn nl_scatter(n: i32, bins: DevicePtr<i32>, cursor: DevicePtr<i64>, sorted: DevicePtr<i32>);
    /// Counts each receiver's neighbours.
    fn nl_count(
        n: i32,
        positions: DevicePtr<f64>,
        grid: Grid,
        wraps: DevicePtr<i32>,
        bins: DevicePtr<i32>,
        bin_start: DevicePtr<i64>,
        sorted: DevicePtr<i32>,
        radius2: f64,
        counts: DevicePtr<i64>,
    );
    /// Writes each row's edges as sort keys.
    fn nl_fill(
        n: i32,
        positions: DevicePtr<f64>,
        grid: Grid,
        wraps: DevicePtr<i32>,
        bins: DevicePtr<i32>,
        bin_start: DevicePtr<i64>,
        sorted: DevicePtr<i32>,
        radius2: f64,
        offsets: DevicePtr<i64>,
        capacity: i64,
        keys: DevicePtr<u64>,
        status: DevicePtr<i32>,
    );
    /// Sorts each row's keys.
    fn nl_sort_rows(n: i32, offsets: DevicePtr<i64>, keys: DevicePtr<u64>, status: DevicePtr<i32>);
    /// Keys to sources and image shifts.
    fn nl_decode(
        n: i32,
        offsets: DevicePtr<i64>,
        keys: DevicePtr<u64>,
        wraps: DevicePtr<i32>,
        sources: DevicePtr<i32>,
        shifts: DevicePtr<i32>,
        status: DevicePtr<i32>,
    );

    // graph.cu
    /// Counts each receiver's edges within the cutoff; flags pairs closer than the minimum.
    fn graph_count(
        n: i32,
        positions: DevicePtr<f64>,
        lattice: DevicePtr<f64>,
        offsets: DevicePtr<i64>,
        sources: DevicePtr<i32>,
        shifts: DevicePtr<i32>,
        cutoff2: f64,
        first_ghost: i32,
        counts: DevicePtr<i64>,
        status: DevicePtr<i32>,
    );
    /// Writes the graph's edges and their geometry.
    fn graph_fill(
        n: i32,
        positions: DevicePtr<f64>,
        lattice: DevicePtr<f64>,
        offsets: DevicePtr<i64>,
        sources: DevicePtr<i32>,
        shifts: DevicePtr<i32>,
        cutoff2: f64,
        first_ghost: i32,
        graph_offsets: DevicePtr<i64>,
        graph_sources: DevicePtr<i32>,
        graph_shifts: DevicePtr<i32>,
        geometry: DevicePtr<f32>,
        spacing: f64,
        intervals: i32,
        status: DevicePtr<i32>,
    );
    /// Finds each edge's reverse edge, a warp per row.
    fn graph_reverse(
        n: i32,
        offsets: DevicePtr<i64>,
        sources: DevicePtr<i32>,
        shifts: DevicePtr<i32>,
        reverse: DevicePtr<i32>,
    );

    // message.cu
    /// One layer's message, one block per receiver; `v_mid`'s round-off estimate left in the
    /// norm half of `concat`.
    fn message_forward(
        h: i32,
        offsets: DevicePtr<i64>,
        sources: DevicePtr<i32>,
        geometry: DevicePtr<f32>,
        table: DevicePtr<f32>,
        s_in: DevicePtr<f32>,
        v_in: DevicePtr<f32>,
        first_layer: i32,
        edge_round_off: f32,
        s_mid: DevicePtr<f32>,
        v_mid: DevicePtr<f32>,
        concat: DevicePtr<f32>,
    );
    /// Backward of one layer's message: input gradients and `dE/dr_ij`.
    fn message_backward(
        h: i32,
        offsets: DevicePtr<i64>,
        sources: DevicePtr<i32>,
        geometry: DevicePtr<f32>,
        table: DevicePtr<f32>,
        spacing: f32,
        s_in: DevicePtr<f32>,
        v_in: DevicePtr<f32>,
        gs_mid: DevicePtr<f32>,
        gv_mid: DevicePtr<f32>,
        need_inputs: i32,
        gs_in: DevicePtr<f32>,
        gv_in: DevicePtr<f32>,
        de_dr: DevicePtr<f32>,
    );

    // dense.cu
    /// `c = a b^T + bias` (b stored `[n_cols][k_depth]`: a Linear layer's weight), and
    /// `activated = silu(c)` unless null.
    fn gemm_nt(
        m_rows: i32,
        n_cols: i32,
        k_depth: i32,
        a: DevicePtr<f32>,
        b: DevicePtr<f32>,
        bias: DevicePtr<f32>,
        accumulate: i32,
        c: DevicePtr<f32>,
        activated: DevicePtr<f32>,
    );
    /// `gemm_nt` for at most `GEMM_FEW_ROWS_MAX` rows.
    fn gemm_nt_few_rows(
        m_rows: i32,
        n_cols: i32,
        k_depth: i32,
        a: DevicePtr<f32>,
        b: DevicePtr<f32>,
        bias: DevicePtr<f32>,
        accumulate: i32,
        c: DevicePtr<f32>,
        activated: DevicePtr<f32>,
    );
    /// `gemm_nn` for at most `GEMM_FEW_ROWS_MAX` rows.
    fn gemm_nn_few_rows(
        m_rows: i32,
        n_cols: i32,
        k_depth: i32,
        a: DevicePtr<f32>,
        b: DevicePtr<f32>,
        silu_pre: DevicePtr<f32>,
        accumulate: i32,
        c: DevicePtr<f32>,
    );
    /// `c = a b` (b stored `[k_depth][n_cols]`: backward through a Linear layer), times
    /// `silu'(silu_pre)` unless null.
    fn gemm_nn(
        m_rows: i32,
        n_cols: i32,
        k_depth: i32,
        a: DevicePtr<f32>,
        b: DevicePtr<f32>,
        silu_pre: DevicePtr<f32>,
        accumulate: i32,
        c: DevicePtr<f32>,
    );

    // update.cu
    /// The embedding of each atom's atomic number.
    fn embed(
        n: i32,
        h: i32,
        atomic_numbers: DevicePtr<i32>,
        embedding: DevicePtr<f32>,
        s: DevicePtr<f32>,
    );
    /// The update MLP's input `[s_mid, |v_mid|]` and `|v_mid|`, features of `v_mid` zero to
    /// round-off set to 0.
    fn norm_concat(
        n: i32,
        h: i32,
        s_mid: DevicePtr<f32>,
        v_mid: DevicePtr<f32>,
        norm: DevicePtr<f32>,
        concat: DevicePtr<f32>,
    );
    /// The gates into the next layer's input (`v_next` null: the last layer).
    fn gate_forward(
        n: i32,
        h: i32,
        a_width: i32,
        s_mid: DevicePtr<f32>,
        v_mid: DevicePtr<f32>,
        update_out: DevicePtr<f32>,
        mixing: DevicePtr<f32>,
        s_next: DevicePtr<f32>,
        v_next: DevicePtr<f32>,
    );
    /// Backward of the gates.
    fn gate_backward(
        n: i32,
        h: i32,
        a_width: i32,
        last: i32,
        v_mid: DevicePtr<f32>,
        update_out: DevicePtr<f32>,
        mixing: DevicePtr<f32>,
        gs: DevicePtr<f32>,
        gv: DevicePtr<f32>,
        g_update: DevicePtr<f32>,
        gv_mid: DevicePtr<f32>,
    );
    /// Backward of `norm_concat`.
    fn norm_backward(
        n: i32,
        h: i32,
        gs: DevicePtr<f32>,
        g_concat: DevicePtr<f32>,
        norm: DevicePtr<f32>,
        v_mid: DevicePtr<f32>,
        gs_mid: DevicePtr<f32>,
        gv_mid: DevicePtr<f32>,
    );

    // head.cu
    /// Per-atom energies from the head's last activation.
    fn head_energy(
        n: i32,
        q: i32,
        act: DevicePtr<f32>,
        weight: DevicePtr<f32>,
        bias: DevicePtr<f32>,
        energies: DevicePtr<f32>,
    );
    /// `dE/dpre` of the head's second activation (0 for ghosts).
    fn head_backward(
        n: i32,
        n_energy: i32,
        q: i32,
        weight: DevicePtr<f32>,
        pre: DevicePtr<f32>,
        gradient: DevicePtr<f32>,
    );

    // readout.cu
    /// Forces, per-row virials and per-atom virials.
    fn forces_virials(
        n: i32,
        offsets: DevicePtr<i64>,
        reverse: DevicePtr<i32>,
        geometry: DevicePtr<f32>,
        de_dr: DevicePtr<f32>,
        atom_virials: i32,
        results: DevicePtr<f64>,
        row_virials: DevicePtr<f64>,
    );
    /// Per-atom energies into the results.
    fn energies_out(n: i32, n_energy: i32, energies: DevicePtr<f32>, results: DevicePtr<f64>);
    /// Total energy and virial, and the status words, into the results.
    fn reduce_results(
        n: i32,
        n_energy: i32,
        energies: DevicePtr<f32>,
        row_virials: DevicePtr<f64>,
        status: DevicePtr<i32>,
        results: DevicePtr<f64>,
    );
    /// Resets the status words.
    fn status_reset(status: DevicePtr<i32>);

    // exchange.cu
    /// Rows of `s`, `v` (atoms `rows[..count]`, or `first..first + count` with `rows` null)
    /// into `packed [count][4H]` (`gather` 1), or back (0).
    fn exchange_rows(
        h: i32,
        count: i32,
        rows: DevicePtr<i32>,
        first: i32,
        gather: i32,
        s: DevicePtr<f32>,
        v: DevicePtr<f32>,
        packed: DevicePtr<f32>,
    );

    // small.cu (launched as one cluster by `Kernels::launch_small`)
    /// The whole forward pass of a small system.
    #[allow(dead_code)]
    fn small_forward(m: SmallModel);
    /// The whole backward pass of a small system, to `de_dr`.
    #[allow(dead_code)]
    fn small_backward(m: SmallModel);
}

fn shape(grid: (u32, u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per atom, [`ATOM_THREADS`] per block.
pub fn per_atom(n: usize) -> LaunchConfig {
    shape((blocks(n, ATOM_THREADS), 1, 1), ATOM_THREADS)
}

/// A warp per atom, [`ATOM_THREADS`] threads per block.
pub fn warp_per_atom(n: usize) -> LaunchConfig {
    shape(
        (blocks(n.saturating_mul(32), ATOM_THREADS), 1, 1),
        ATOM_THREADS,
    )
}

/// A grid-stride loop over `count` elements, [`STRIDE_THREADS`] per block.
pub fn grid_stride(count: usize) -> LaunchConfig {
    shape((stride_blocks(count, STRIDE_THREADS), 1, 1), STRIDE_THREADS)
}

/// One block per receiver row, one thread per feature (the message kernels).
pub fn per_row(n: usize, h: usize) -> LaunchConfig {
    shape((n as u32, 1, 1), h as u32)
}

/// The tiled GEMM of a `[rows][columns]` output.
pub fn gemm(rows: usize, columns: usize) -> LaunchConfig {
    let (x, y) = gemm_grid(rows, columns);
    shape((x, y, 1), GEMM_THREADS)
}

/// `gemm_nt_few_rows` of a `[rows][columns]` output: a warp per column and
/// [`GEMM_FEW_ROWS`] rows.
fn gemm_nt_few_rows_shape(rows: usize, columns: usize) -> LaunchConfig {
    let warps = rows.div_ceil(GEMM_FEW_ROWS) * columns;
    shape((blocks(warps * 32, STRIDE_THREADS), 1, 1), STRIDE_THREADS)
}

/// `gemm_nn_few_rows` of a `[rows][columns]` output: a block of [`GEMM_THREADS`] per 32
/// columns (x) and [`GEMM_FEW_ROWS`] rows (y; rows are at most [`GEMM_FEW_ROWS_MAX`]).
fn gemm_nn_few_rows_shape(rows: usize, columns: usize) -> LaunchConfig {
    let groups = rows.div_ceil(GEMM_FEW_ROWS) as u32;
    shape((blocks(columns, 32), groups, 1), GEMM_THREADS)
}

/// One scan level of `count` elements.
fn scan_level(count: usize) -> LaunchConfig {
    shape((blocks(count, SCAN_BLOCK as u32), 1, 1), SCAN_BLOCK as u32)
}

/// One warp per row, [`SORT_WARPS`] rows per block.
pub fn sort_rows(n: usize) -> LaunchConfig {
    shape((blocks(n, SORT_WARPS), 1, 1), 32 * SORT_WARPS)
}

/// The one block of `reduce_results`.
pub fn reduce() -> LaunchConfig {
    shape((1, 1, 1), REDUCE_THREADS)
}

/// The one warp of `status_reset`.
pub fn status() -> LaunchConfig {
    shape((1, 1, 1), 32)
}

impl Kernels {
    /// Exclusive prefix sum, in place, of `count` 64-bit integers at `data` (counts to
    /// offsets): `scan_blocks` over each level of block sums, then `scan_add` back down.
    /// The block sums live in `scratch`, grown through `registry`.
    pub fn scan(
        &self,
        registry: &Registry,
        scratch: &mut DeviceBuffer<i64>,
        data: DevicePtr<i64>,
        count: usize,
    ) -> Result<()> {
        let levels = scan_levels(count, SCAN_BLOCK);
        registry.reserve(scratch, levels[1..].iter().sum::<usize>() + 1)?;
        let mut arrays = vec![(data, count)];
        let mut offset = 0;
        for &size in &levels[1..] {
            arrays.push((scratch.offset(offset), size));
            offset += size;
        }
        let spare = scratch.offset(offset);
        for (level, &(values, size)) in arrays.iter().enumerate() {
            let sums = arrays.get(level + 1).map_or(spare, |next| next.0);
            self.scan_blocks(scan_level(size), values, size as i64, sums)?;
        }
        for level in (0..arrays.len() - 1).rev() {
            let (values, size) = arrays[level];
            self.scan_add(scan_level(size), values, size as i64, arrays[level + 1].0)?;
        }
        Ok(())
    }
}

impl Kernels {
    /// Readies the small-system kernels for clusters of up to [`SMALL_CLUSTER_BLOCKS`]
    /// blocks (allowing the non-portable size) and returns the largest cluster both can run
    /// as on this GPU (0: none).
    pub fn small_cluster_blocks(&self) -> Result<u32> {
        let mut blocks = SMALL_CLUSTER_BLOCKS;
        for function in [
            &self.functions.small_forward,
            &self.functions.small_backward,
        ] {
            let allow = CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED;
            function
                .set_attribute(allow, 1)
                .map_err(|e| driver("allowing 16-block clusters", e))?;
            let config = shape((SMALL_CLUSTER_BLOCKS, 1, 1), SMALL_THREADS);
            let largest = function
                .occupancy_max_potential_cluster_size(config, &self.stream)
                .map_err(|e| driver("cluster size", e))?;
            blocks = blocks.min(largest);
        }
        Ok(blocks)
    }

    /// `small_forward` (or `small_backward`) as one cluster of `blocks` blocks: the cluster
    /// size is a launch attribute (cuLaunchKernelEx), not part of the kernel.
    pub fn launch_small(&self, backward: bool, blocks: u32, m: SmallModel) -> Result<()> {
        let (function, name) = match backward {
            false => (&self.functions.small_forward, "small_forward"),
            true => (&self.functions.small_backward, "small_backward"),
        };
        // SAFETY: a plain-data union; the cluster dimension is the member the id names.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attribute.value.clusterDim.x = blocks;
        attribute.value.clusterDim.y = 1;
        attribute.value.clusterDim.z = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: blocks,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: SMALL_THREADS,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: self.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: 1,
        };
        let mut m = m;
        let mut parameters = [(&mut m as *mut SmallModel).cast::<std::ffi::c_void>()];
        // SAFETY: the kernel's one parameter is a `SmallModel` by value (same layout, tested);
        // `config` and `parameters` outlive the call, which copies them.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                function.cu_function(),
                parameters.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| driver(name, e))
    }

    /// A Linear layer: `output[rows][n_out] = input[rows][n_in] weight^T + bias` (weight
    /// stored `[n_out][n_in]`), and `activated = silu(output)` when given; one `gemm_nt`
    /// (`gemm_nt_few_rows` up to [`GEMM_FEW_ROWS_MAX`] rows).
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        rows: usize,
        n_out: usize,
        n_in: usize,
        input: &DeviceBuffer<f32>,
        weight: &DeviceBuffer<f32>,
        bias: &DeviceBuffer<f32>,
        output: &DeviceBuffer<f32>,
        activated: Option<&DeviceBuffer<f32>>,
    ) -> Result<()> {
        let (m, n, k) = (rows as i32, n_out as i32, n_in as i32);
        let activated = activated.map_or(DevicePtr::null(), DeviceBuffer::ptr);
        if rows <= GEMM_FEW_ROWS_MAX {
            let shape = gemm_nt_few_rows_shape(rows, n_out);
            return self
                .gemm_nt_few_rows(shape, m, n, k, input, weight, bias, 0i32, output, activated);
        }
        let shape = gemm(rows, n_out);
        self.gemm_nt(shape, m, n, k, input, weight, bias, 0i32, output, activated)
    }

    /// Backward through a Linear layer's weight: `g_input[rows][n_in] = g_output[rows][n_out]
    /// weight`, times `silu'(silu_pre)` when given (the layer's input was an activation);
    /// one `gemm_nn` (`gemm_nn_few_rows` up to [`GEMM_FEW_ROWS_MAX`] rows).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward(
        &self,
        rows: usize,
        n_in: usize,
        n_out: usize,
        g_output: &DeviceBuffer<f32>,
        weight: &DeviceBuffer<f32>,
        g_input: &DeviceBuffer<f32>,
        silu_pre: Option<&DeviceBuffer<f32>>,
    ) -> Result<()> {
        let (m, n, k) = (rows as i32, n_in as i32, n_out as i32);
        let silu_pre = silu_pre.map_or(DevicePtr::null(), DeviceBuffer::ptr);
        if rows <= GEMM_FEW_ROWS_MAX {
            let shape = gemm_nn_few_rows_shape(rows, n_in);
            return self
                .gemm_nn_few_rows(shape, m, n, k, g_output, weight, silu_pre, 0i32, g_input);
        }
        self.gemm_nn(
            gemm(rows, n_in),
            m,
            n,
            k,
            g_output,
            weight,
            silu_pre,
            0i32,
            g_input,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::compile::program_source;

    #[test]
    fn every_kernel_name_is_defined_once_in_the_sources() {
        let source = program_source();
        for name in KERNEL_NAMES {
            let definition = format!("__global__ void {name}(");
            assert_eq!(source.matches(&definition).count(), 1, "{name}");
        }
        assert_eq!(
            source.matches("__global__ void").count(),
            KERNEL_NAMES.len()
        );
    }

    /// A kernel's parameters as the sources declare them: `(name, type)` with qualifiers
    /// dropped (`const float* __restrict__ table` is `("table", "float*")`).
    fn declared_parameters(source: &str, kernel: &str) -> Vec<(String, String)> {
        let start = source
            .find(&format!("__global__ void {kernel}("))
            .unwrap_or_else(|| panic!("{kernel} is not in the sources"));
        let declaration = &source[start..];
        let open = declaration.find('(').unwrap() + 1;
        let close = declaration.find(')').unwrap();
        declaration[open..close]
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|parameter| {
                let words: Vec<&str> = parameter
                    .split_whitespace()
                    .filter(|w| *w != "const" && *w != "__restrict__")
                    .collect();
                let (name, type_words) = words.split_last().expect("a named parameter");
                (name.to_string(), type_words.concat())
            })
            .collect()
    }

    /// Every launch method takes its kernel's parameters: same names, same C types, same
    /// order (a mismatch would only show on a GPU, as garbage).
    #[test]
    fn signatures_match_the_sources() {
        let source = program_source();
        let signatures = signatures();
        assert_eq!(signatures.len(), KERNEL_NAMES.len());
        for (kernel, parameters) in signatures {
            let declared = declared_parameters(&source, kernel);
            let expected: Vec<(String, String)> = parameters
                .into_iter()
                .map(|(name, c_type)| (name.to_string(), c_type))
                .collect();
            assert_eq!(expected, declared, "parameters of {kernel}");
        }
    }
}
