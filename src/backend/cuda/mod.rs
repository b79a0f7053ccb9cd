//! The CUDA backend: neighbour list, graph, float32 forward and analytic backward on the GPU,
//! mirroring the CPU engine stage by stage (src/backend/cpu). State stays on the GPU between
//! calls: buffers grow geometrically and are reused; a call uploads the positions once and
//! downloads the results once (plus the atomic numbers or the cell when they change).
//!
//! Deterministic: no floating-point atomics; every reduction runs in a fixed order over
//! CSR rows sorted by (source, image), or in fixed trees.

pub mod grid;
pub mod kernels;
mod memory;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg, result};

use super::{Request, Results};
use crate::cell::Cell;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::filter::NODE_VECTORS;
use grid::{Grid, blocks, gemm_grid, scan_levels, stride_blocks};
use memory::{DeviceBuffer, driver};

/// Results header: status words, energy, virial (cuda/readout.cu).
const STATUS_WORDS: usize = 4;
const RESULTS_HEADER: usize = STATUS_WORDS + 10;
const SCAN_BLOCK: usize = 1024;
/// Floats of geometry per edge (cuda/common.cuh).
const GEOMETRY_WIDTH: usize = 9;
/// Threads per block of the one-thread-per-atom kernels.
const ATOM_THREADS: u32 = 128;
/// Threads per block of the grid-stride element-wise kernels.
const STRIDE_THREADS: u32 = 256;
/// Rows per block of nl_sort_rows (one warp each).
const SORT_WARPS: u32 = 4;
/// Headroom on the edge arrays when they are sized.
const EDGE_HEADROOM: f64 = 1.25;

/// Weights of one layer on the device.
#[derive(Default)]
struct LayerWeights {
    update_hidden_weight: DeviceBuffer<f32>,
    update_hidden_bias: DeviceBuffer<f32>,
    update_out_weight: DeviceBuffer<f32>,
    update_out_bias: DeviceBuffer<f32>,
    /// 3H, or H for the last layer (its vector gates never reach the energy).
    update_width: usize,
    mixing: DeviceBuffer<f32>,
}

/// Activations of one layer.
#[derive(Default)]
struct LayerBuffers {
    s_in: DeviceBuffer<f32>,
    v_in: DeviceBuffer<f32>,
    s_mid: DeviceBuffer<f32>,
    v_mid: DeviceBuffer<f32>,
    norm: DeviceBuffer<f32>,
    update_pre: DeviceBuffer<f32>,
    update_out: DeviceBuffer<f32>,
}

#[derive(Default)]
struct Buffers {
    positions: DeviceBuffer<f64>,
    lattice: DeviceBuffer<f64>,
    atomic_numbers: DeviceBuffer<i32>,
    status: DeviceBuffer<i32>,
    scan_scratch: DeviceBuffer<i64>,
    // Neighbour list.
    wraps: DeviceBuffer<i32>,
    bins: DeviceBuffer<i32>,
    bin_start: DeviceBuffer<i64>,
    bin_cursor: DeviceBuffer<i64>,
    sorted: DeviceBuffer<i32>,
    list_offsets: DeviceBuffer<i64>,
    keys: DeviceBuffer<u64>,
    list_sources: DeviceBuffer<i32>,
    list_shifts: DeviceBuffer<i32>,
    // Graph within the cutoff.
    graph_offsets: DeviceBuffer<i64>,
    graph_sources: DeviceBuffer<i32>,
    graph_shifts: DeviceBuffer<i32>,
    geometry: DeviceBuffer<f32>,
    reverse: DeviceBuffer<i32>,
    de_dr: DeviceBuffer<f32>,
    // Model.
    layers: Vec<LayerBuffers>,
    s_final: DeviceBuffer<f32>,
    concat: DeviceBuffer<f32>,
    hidden: DeviceBuffer<f32>,
    head_pre: [DeviceBuffer<f32>; 2],
    head_act: [DeviceBuffer<f32>; 2],
    energies: DeviceBuffer<f32>,
    gs: DeviceBuffer<f32>,
    gv: DeviceBuffer<f32>,
    gs_mid: DeviceBuffer<f32>,
    gv_mid: DeviceBuffer<f32>,
    g_update: DeviceBuffer<f32>,
    g_hidden: DeviceBuffer<f32>,
    g_concat: DeviceBuffer<f32>,
    g_head: [DeviceBuffer<f32>; 2],
    row_virials: DeviceBuffer<f64>,
    results: DeviceBuffer<f64>,
}

/// How many CUDA GPUs this process can use (0 without a driver).
pub fn device_count() -> usize {
    if kernels::check_driver().is_err() {
        return 0;
    }
    std::panic::catch_unwind(|| {
        result::init().ok()?;
        result::device::get_count().ok()
    })
    .ok()
    .flatten()
    .map_or(0, |count| count.max(0) as usize)
}

/// The model on one GPU.
pub struct CudaBackend {
    model: Arc<Model>,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    device_name: String,
    skin_angstrom: f64,
    hidden: usize,
    embedding: DeviceBuffer<f32>,
    table: DeviceBuffer<f32>,
    table_intervals: i32,
    table_spacing: f32,
    layer_weights: Vec<LayerWeights>,
    head_weights: [DeviceBuffer<f32>; 6],
    buffers: Buffers,
    /// Edge capacity of the list and graph arrays (0: not sized yet).
    edge_capacity: usize,
    /// Host copies deciding what to upload or rebuild.
    reference_positions: Vec<[f64; 3]>,
    reference_cell: Option<Cell>,
    uploaded_atomic_numbers: Vec<i32>,
    uploaded_cell: Option<Cell>,
    results_host: Vec<f64>,
    rebuilds: usize,
}

macro_rules! launch {
    ($self:expr, $name:expr, $grid:expr, $block:expr $(, $arg:expr)* $(,)?) => {{
        let function = &$self.functions[$name];
        let mut builder = $self.stream.launch_builder(function);
        $(
            let value = $arg;
            builder.arg(&value);
        )*
        let config = LaunchConfig {
            grid_dim: $grid,
            block_dim: $block,
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameters (checked by the tests on a GPU)
        // and every pointer is a live device buffer of the required size.
        unsafe { builder.launch(config) }.map_err(|e| driver($name, e))?;
    }};
}

fn upload<T: Copy>(stream: &CudaStream, buffer: &mut DeviceBuffer<T>, values: &[T]) -> Result<()> {
    buffer.reserve(values.len())?;
    if values.is_empty() {
        return Ok(());
    }
    // SAFETY: the buffer holds at least values.len() elements; the stream is synchronised
    // before `values` can go away (every call ends with a synchronising download).
    unsafe { result::memcpy_htod_async(buffer.pointer(), values, stream.cu_stream()) }
        .map_err(|e| driver("copy to the GPU", e))
}

fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles (or loads from the cache) the kernels for its
    /// architecture and uploads the model.
    pub fn new(model: Arc<Model>, ordinal: usize, skin_angstrom: f64) -> Result<CudaBackend> {
        kernels::check_driver()?;
        kernels::check_nvrtc()?;
        let h = model.hidden_features();
        if !h.is_multiple_of(32) || h > 1024 {
            return Err(Error::Unsupported(format!(
                "the CUDA kernels need a hidden size that is a multiple of 32 and at most 1024; \
                 this model has H = {h}: use device cpu"
            )));
        }
        // cudarc panics where the driver misbehaves in ways the checks above cannot see;
        // such a panic becomes an error here.
        let opened = std::panic::catch_unwind(|| -> Result<_> {
            result::init().map_err(|e| driver("cuInit", e))?;
            let count = result::device::get_count().map_err(|e| driver("cuDeviceGetCount", e))?;
            if count <= 0 {
                return Err(Error::Cuda(
                    "no CUDA GPU on this machine: use device cpu".into(),
                ));
            }
            if ordinal >= count as usize {
                return Err(Error::Cuda(format!(
                    "device cuda:{ordinal} does not exist: this machine has {count} GPU(s)"
                )));
            }
            let context = CudaContext::new(ordinal).map_err(|e| driver("cuCtxCreate", e))?;
            Ok(context)
        });
        let context = match opened {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Cuda(
                    "the CUDA driver could not be initialised".into(),
                ));
            }
        };
        // One stream, used in order: cudarc's cross-stream event tracking is not needed.
        // SAFETY: every buffer of this backend is used on `stream` only.
        unsafe { context.disable_event_tracking() };
        let stream = context
            .new_stream()
            .map_err(|e| driver("cuStreamCreate", e))?;
        let (major, minor) = context
            .compute_capability()
            .map_err(|e| driver("compute capability", e))?;
        let device_name = context.name().unwrap_or_else(|_| "CUDA GPU".into());
        let arch = format!("sm_{major}{minor}");
        let cubin = kernels::cubin_for(&arch)?;
        let module = context
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(|e| driver("loading the kernels", e))?;
        let mut functions = HashMap::new();
        for name in kernels::KERNEL_NAMES {
            let function = module
                .load_function(name)
                .map_err(|e| driver(&format!("kernel {name}"), e))?;
            functions.insert(name, function);
        }

        let table = model.filter_table();
        let mut backend = CudaBackend {
            context,
            stream,
            functions,
            device_name: format!("{device_name} ({arch})"),
            skin_angstrom,
            hidden: h,
            embedding: DeviceBuffer::default(),
            table: DeviceBuffer::default(),
            table_intervals: table.n_intervals as i32,
            table_spacing: table.spacing_angstrom as f32,
            layer_weights: Vec::new(),
            head_weights: Default::default(),
            buffers: Buffers::default(),
            edge_capacity: 0,
            reference_positions: Vec::new(),
            reference_cell: None,
            uploaded_atomic_numbers: Vec::new(),
            uploaded_cell: None,
            results_host: Vec::new(),
            rebuilds: 0,
            model: model.clone(),
        };
        backend.bind()?;
        let stream = backend.stream.clone();
        upload(&stream, &mut backend.embedding, &to_f32(&model.embedding))?;
        upload(&stream, &mut backend.table, &table.nodes)?;
        let n_layers = model.interactions.len();
        for (l, layer) in model.interactions.iter().enumerate() {
            let out = if l + 1 == n_layers {
                layer.update_out.first_outputs(h)
            } else {
                layer.update_out.clone()
            };
            let mut weights = LayerWeights {
                update_width: out.n_out,
                ..LayerWeights::default()
            };
            upload(
                &stream,
                &mut weights.update_hidden_weight,
                &to_f32(&layer.update_hidden.weight),
            )?;
            upload(
                &stream,
                &mut weights.update_hidden_bias,
                &to_f32(&layer.update_hidden.bias),
            )?;
            upload(
                &stream,
                &mut weights.update_out_weight,
                &to_f32(&out.weight),
            )?;
            upload(&stream, &mut weights.update_out_bias, &to_f32(&out.bias))?;
            let mixing: Vec<f32> = layer
                .mixing
                .map(|m| m.iter().flatten().map(|&v| v as f32).collect())
                .unwrap_or_else(|| vec![0.0; 9]);
            upload(&stream, &mut weights.mixing, &mixing)?;
            backend.layer_weights.push(weights);
        }
        for (index, linear) in model.energy_head.iter().enumerate() {
            upload(
                &stream,
                &mut backend.head_weights[2 * index],
                &to_f32(&linear.weight),
            )?;
            upload(
                &stream,
                &mut backend.head_weights[2 * index + 1],
                &to_f32(&linear.bias),
            )?;
        }
        backend.buffers.layers = (0..n_layers).map(|_| LayerBuffers::default()).collect();
        upload(&stream, &mut backend.buffers.status, &[0i32; STATUS_WORDS])?;
        backend.synchronize()?;
        Ok(backend)
    }

    /// The GPU's name and architecture.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Bytes of GPU memory held by this backend's buffers.
    pub fn allocated_bytes(&self) -> usize {
        let b = &self.buffers;
        let mut total = self.embedding.bytes() + self.table.bytes();
        for w in &self.layer_weights {
            total += w.update_hidden_weight.bytes()
                + w.update_hidden_bias.bytes()
                + w.update_out_weight.bytes()
                + w.update_out_bias.bytes()
                + w.mixing.bytes();
        }
        total += self
            .head_weights
            .iter()
            .map(DeviceBuffer::bytes)
            .sum::<usize>();
        total +=
            b.positions.bytes() + b.lattice.bytes() + b.atomic_numbers.bytes() + b.status.bytes();
        total += b.scan_scratch.bytes() + b.wraps.bytes() + b.bins.bytes() + b.bin_start.bytes();
        total += b.bin_cursor.bytes() + b.sorted.bytes() + b.list_offsets.bytes() + b.keys.bytes();
        total += b.list_sources.bytes() + b.list_shifts.bytes() + b.graph_offsets.bytes();
        total += b.graph_sources.bytes() + b.graph_shifts.bytes() + b.geometry.bytes();
        total += b.reverse.bytes() + b.de_dr.bytes();
        for l in &b.layers {
            total += l.s_in.bytes() + l.v_in.bytes() + l.s_mid.bytes() + l.v_mid.bytes();
            total += l.norm.bytes() + l.update_pre.bytes() + l.update_out.bytes();
        }
        total += b.s_final.bytes() + b.concat.bytes() + b.hidden.bytes() + b.energies.bytes();
        total += b
            .head_pre
            .iter()
            .chain(&b.head_act)
            .chain(&b.g_head)
            .map(DeviceBuffer::bytes)
            .sum::<usize>();
        total += b.gs.bytes() + b.gv.bytes() + b.gs_mid.bytes() + b.gv_mid.bytes();
        total += b.g_update.bytes() + b.g_hidden.bytes() + b.g_concat.bytes();
        total += b.row_virials.bytes() + b.results.bytes();
        total
    }

    /// How many times the neighbour list was built.
    pub fn rebuilds(&self) -> usize {
        self.rebuilds
    }

    fn bind(&self) -> Result<()> {
        self.context
            .bind_to_thread()
            .map_err(|e| driver("cuCtxSetCurrent", e))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver("kernel execution", e))
    }

    fn memset_zero<T>(&self, buffer: &DeviceBuffer<T>, offset: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range lies within the buffer (callers reserve first).
        unsafe {
            result::memset_d8_async(
                buffer.at(offset),
                0,
                len * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| driver("memset", e))
    }

    /// Exclusive prefix sum, in place, of `count` 64-bit integers at `data`.
    fn scan(&mut self, data: u64, count: usize) -> Result<()> {
        let levels = scan_levels(count, SCAN_BLOCK);
        let scratch_len: usize = levels[1..].iter().sum::<usize>() + 1;
        self.buffers.scan_scratch.reserve(scratch_len)?;
        let mut arrays = vec![(data, count)];
        let mut offset = 0;
        for &size in &levels[1..] {
            arrays.push((self.buffers.scan_scratch.at(offset), size));
            offset += size;
        }
        let spare = self.buffers.scan_scratch.at(offset);
        for (level, &(pointer, size)) in arrays.iter().enumerate() {
            let sums = arrays.get(level + 1).map_or(spare, |next| next.0);
            launch!(
                self,
                "scan_blocks",
                (blocks(size, SCAN_BLOCK as u32), 1, 1),
                (SCAN_BLOCK as u32, 1, 1),
                pointer,
                size as i64,
                sums
            );
        }
        for level in (0..arrays.len() - 1).rev() {
            let (pointer, size) = arrays[level];
            launch!(
                self,
                "scan_add",
                (blocks(size, SCAN_BLOCK as u32), 1, 1),
                (SCAN_BLOCK as u32, 1, 1),
                pointer,
                size as i64,
                arrays[level + 1].0
            );
        }
        Ok(())
    }

    /// Energy, forces and virials of `positions` (`[n][3]`, Angstrom) in `cell`; atoms
    /// `0..n_energy_atoms` count towards the energy.
    pub fn compute(
        &mut self,
        atomic_numbers: &[i32],
        positions: &[[f64; 3]],
        cell: &Cell,
        n_energy_atoms: usize,
        request: Request,
    ) -> Result<Results> {
        let n = positions.len();
        if n == 0 {
            return Ok(Results::default());
        }
        if n >= i32::MAX as usize / 3 {
            return Err(Error::invalid(
                "positions",
                format!("{n} atoms are too many for the GPU backend"),
            ));
        }
        crate::neighbors::check_positions(positions)?;
        self.bind()?;
        let mut rebuild = self.needs_rebuild(positions, cell);
        loop {
            match self.run(
                atomic_numbers,
                positions,
                cell,
                n_energy_atoms,
                request,
                rebuild,
            )? {
                Some(results) => return Ok(results),
                // The edge arrays were too small: they have grown; build again.
                None => rebuild = true,
            }
        }
    }

    fn needs_rebuild(&self, positions: &[[f64; 3]], cell: &Cell) -> bool {
        if positions.len() != self.reference_positions.len() || self.reference_cell != Some(*cell) {
            return true;
        }
        let half_skin = 0.5 * self.skin_angstrom;
        let limit = half_skin * half_skin;
        !positions
            .iter()
            .zip(&self.reference_positions)
            .all(|(now, then)| {
                let d = [now[0] - then[0], now[1] - then[1], now[2] - then[2]];
                d[0] * d[0] + d[1] * d[1] + d[2] * d[2] < limit
            })
    }

    /// One attempt; `None` when the edge arrays overflowed (they have grown since).
    fn run(
        &mut self,
        atomic_numbers: &[i32],
        positions: &[[f64; 3]],
        cell: &Cell,
        n_energy_atoms: usize,
        request: Request,
        rebuild: bool,
    ) -> Result<Option<Results>> {
        let n = positions.len();
        let stream = self.stream.clone();
        self.reserve_atoms(n)?;
        let flat: &[f64] = positions.as_flattened();
        upload(&stream, &mut self.buffers.positions, flat)?;
        if self.uploaded_atomic_numbers != atomic_numbers {
            upload(&stream, &mut self.buffers.atomic_numbers, atomic_numbers)?;
            self.uploaded_atomic_numbers = atomic_numbers.to_vec();
        }
        if self.uploaded_cell != Some(*cell) {
            upload(
                &stream,
                &mut self.buffers.lattice,
                cell.vectors().as_flattened(),
            )?;
            self.uploaded_cell = Some(*cell);
        }
        let status = self.buffers.status.pointer();
        launch!(self, "status_reset", (1, 1, 1), (32, 1, 1), status);

        let cutoff = self.model.cutoff_angstrom();
        if rebuild {
            self.build_list(positions, cell, cutoff + self.skin_angstrom)?;
        }
        self.build_graph(n, cutoff)?;
        self.forward(n)?;
        if request.needs_backward() {
            self.backward(n, n_energy_atoms)?;
        }
        let results = self.readout(n, n_energy_atoms, request)?;
        let overflowed = self.results_host[0] != 0.0;
        if overflowed {
            // Size the edge arrays from the count the list needed, then build again.
            let mut needed = [0i64];
            // SAFETY: list_offsets holds n + 1 elements.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut needed,
                    self.buffers.list_offsets.at(n),
                    stream.cu_stream(),
                )
            }
            .map_err(|e| driver("copy from the GPU", e))?;
            self.synchronize()?;
            self.reserve_edges((needed[0] as f64 * EDGE_HEADROOM) as usize + 1024)?;
            return Ok(None);
        }
        let close_edge = self.results_host[1];
        if close_edge < i32::MAX as f64 {
            return Err(self.too_close(positions, cell, close_edge as usize)?);
        }
        if rebuild {
            self.reference_positions.clear();
            self.reference_positions.extend_from_slice(positions);
            self.reference_cell = Some(*cell);
            self.rebuilds += 1;
        }
        Ok(Some(results))
    }

    /// The error naming the two atoms of the lowest edge closer than the minimum distance.
    fn too_close(&self, positions: &[[f64; 3]], cell: &Cell, edge: usize) -> Result<Error> {
        let n = positions.len();
        let mut offsets = vec![0i64; n + 1];
        let mut source = [0i32];
        let mut shift = [0i32; 3];
        // SAFETY: the list arrays hold n + 1 offsets and more than `edge` edges.
        unsafe {
            result::memcpy_dtoh_async(
                &mut offsets,
                self.buffers.list_offsets.pointer(),
                self.stream.cu_stream(),
            )
            .and_then(|()| {
                result::memcpy_dtoh_async(
                    &mut source,
                    self.buffers.list_sources.at(edge),
                    self.stream.cu_stream(),
                )
            })
            .and_then(|()| {
                result::memcpy_dtoh_async(
                    &mut shift,
                    self.buffers.list_shifts.at(3 * edge),
                    self.stream.cu_stream(),
                )
            })
        }
        .map_err(|e| driver("copy from the GPU", e))?;
        self.synchronize()?;
        let receiver = offsets.partition_point(|&o| o <= edge as i64) - 1;
        let r = crate::neighbors::edge_vector(positions, cell, receiver, source[0] as usize, shift);
        Ok(Error::AtomsTooClose {
            first: receiver,
            second: source[0] as usize,
            shift,
            distance_angstrom: (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt(),
            minimum_angstrom: crate::neighbors::MINIMUM_DISTANCE_ANGSTROM,
        })
    }

    fn reserve_atoms(&mut self, n: usize) -> Result<()> {
        let h = self.hidden;
        let b = &mut self.buffers;
        b.atomic_numbers.reserve(n)?;
        b.wraps.reserve(3 * n)?;
        b.bins.reserve(n)?;
        b.sorted.reserve(n)?;
        b.list_offsets.reserve(n + 1)?;
        b.graph_offsets.reserve(n + 1)?;
        for (layer, weights) in b.layers.iter_mut().zip(&self.layer_weights) {
            layer.s_in.reserve(n * h)?;
            layer.v_in.reserve(3 * n * h)?;
            layer.s_mid.reserve(n * h)?;
            layer.v_mid.reserve(3 * n * h)?;
            layer.norm.reserve(n * h)?;
            layer.update_pre.reserve(n * h)?;
            layer.update_out.reserve(n * weights.update_width)?;
        }
        b.s_final.reserve(n * h)?;
        b.concat.reserve(2 * n * h)?;
        b.hidden.reserve(n * h)?;
        b.head_pre[0].reserve(n * h / 2)?;
        b.head_act[0].reserve(n * h / 2)?;
        b.head_pre[1].reserve(n * h / 4)?;
        b.head_act[1].reserve(n * h / 4)?;
        b.g_head[0].reserve(n * h / 2)?;
        b.g_head[1].reserve(n * h / 4)?;
        b.energies.reserve(n)?;
        b.gs.reserve(n * h)?;
        b.gv.reserve(3 * n * h)?;
        b.gs_mid.reserve(n * h)?;
        b.gv_mid.reserve(3 * n * h)?;
        b.g_update.reserve(3 * n * h)?;
        b.g_hidden.reserve(n * h)?;
        b.g_concat.reserve(2 * n * h)?;
        b.row_virials.reserve(9 * n)?;
        b.results.reserve(RESULTS_HEADER + 13 * n)?;
        Ok(())
    }

    fn reserve_edges(&mut self, capacity: usize) -> Result<()> {
        if capacity >= i32::MAX as usize {
            return Err(Error::Unsupported(format!(
                "{capacity} edges exceed the GPU backend's limit of 2^31"
            )));
        }
        let b = &mut self.buffers;
        b.keys.reserve_exact(capacity)?;
        b.list_sources.reserve_exact(capacity)?;
        b.list_shifts.reserve_exact(3 * capacity)?;
        b.graph_sources.reserve_exact(capacity)?;
        b.graph_shifts.reserve_exact(3 * capacity)?;
        b.geometry.reserve_exact(GEOMETRY_WIDTH * capacity)?;
        b.reverse.reserve_exact(capacity)?;
        b.de_dr.reserve_exact(3 * capacity)?;
        self.edge_capacity = capacity;
        Ok(())
    }

    fn build_list(&mut self, positions: &[[f64; 3]], cell: &Cell, radius: f64) -> Result<()> {
        let n = positions.len();
        let grid = Grid::new(positions, cell, radius)?;
        let n_bins = grid.n_bins as usize;
        self.buffers.bin_start.reserve(n_bins + 1)?;
        self.buffers.bin_cursor.reserve(n_bins)?;
        let b = &self.buffers;
        let (positions_d, wraps, bins, bin_start, bin_cursor, sorted, offsets) = (
            b.positions.pointer(),
            b.wraps.pointer(),
            b.bins.pointer(),
            b.bin_start.pointer(),
            b.bin_cursor.pointer(),
            b.sorted.pointer(),
            b.list_offsets.pointer(),
        );
        self.memset_zero(&self.buffers.bin_start, 0, n_bins + 1)?;
        let atom_grid = (blocks(n, ATOM_THREADS), 1, 1);
        let atom_block = (ATOM_THREADS, 1, 1);
        launch!(
            self,
            "nl_bin",
            atom_grid,
            atom_block,
            n as i32,
            positions_d,
            grid,
            wraps,
            bins,
            bin_start
        );
        self.scan(bin_start, n_bins + 1)?;
        // SAFETY: both buffers hold at least n_bins elements.
        unsafe {
            result::memcpy_dtod_async(bin_cursor, bin_start, n_bins * 8, self.stream.cu_stream())
        }
        .map_err(|e| driver("copy on the GPU", e))?;
        launch!(
            self,
            "nl_scatter",
            atom_grid,
            atom_block,
            n as i32,
            bins,
            bin_cursor,
            sorted
        );
        let radius2 = radius * radius;
        self.memset_zero(&self.buffers.list_offsets, n, 1)?;
        launch!(
            self,
            "nl_count",
            atom_grid,
            atom_block,
            n as i32,
            positions_d,
            grid,
            wraps,
            bins,
            bin_start,
            sorted,
            radius2,
            offsets
        );
        self.scan(offsets, n + 1)?;
        if self.edge_capacity == 0 {
            // First build: size the edge arrays from the exact count (one small download).
            let mut needed = [0i64];
            // SAFETY: list_offsets holds n + 1 elements.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut needed,
                    self.buffers.list_offsets.at(n),
                    self.stream.cu_stream(),
                )
            }
            .map_err(|e| driver("copy from the GPU", e))?;
            self.synchronize()?;
            self.reserve_edges((needed[0] as f64 * EDGE_HEADROOM) as usize + 1024)?;
        }
        let b = &self.buffers;
        let (keys, sources, shifts, status) = (
            b.keys.pointer(),
            b.list_sources.pointer(),
            b.list_shifts.pointer(),
            b.status.pointer(),
        );
        let capacity = self.edge_capacity as i64;
        launch!(
            self,
            "nl_fill",
            atom_grid,
            atom_block,
            n as i32,
            positions_d,
            grid,
            wraps,
            bins,
            bin_start,
            sorted,
            radius2,
            offsets,
            capacity,
            keys,
            status
        );
        launch!(
            self,
            "nl_sort_rows",
            (blocks(n, SORT_WARPS), 1, 1),
            (32 * SORT_WARPS, 1, 1),
            n as i32,
            offsets,
            keys,
            status
        );
        launch!(
            self,
            "nl_decode",
            atom_grid,
            atom_block,
            n as i32,
            offsets,
            keys,
            wraps,
            sources,
            shifts,
            status
        );
        Ok(())
    }

    fn build_graph(&mut self, n: usize, cutoff: f64) -> Result<()> {
        let b = &self.buffers;
        let args = (
            b.positions.pointer(),
            b.lattice.pointer(),
            b.list_offsets.pointer(),
            b.list_sources.pointer(),
            b.list_shifts.pointer(),
            b.graph_offsets.pointer(),
            b.status.pointer(),
        );
        let (positions, lattice, list_offsets, list_sources, list_shifts, graph_offsets, status) =
            args;
        let cutoff2 = cutoff * cutoff;
        let atom_grid = (blocks(n, ATOM_THREADS), 1, 1);
        let atom_block = (ATOM_THREADS, 1, 1);
        self.memset_zero(&self.buffers.graph_offsets, n, 1)?;
        launch!(
            self,
            "graph_count",
            atom_grid,
            atom_block,
            n as i32,
            positions,
            lattice,
            list_offsets,
            list_sources,
            list_shifts,
            cutoff2,
            graph_offsets,
            status
        );
        self.scan(graph_offsets, n + 1)?;
        let b = &self.buffers;
        let (graph_sources, graph_shifts, geometry, reverse) = (
            b.graph_sources.pointer(),
            b.graph_shifts.pointer(),
            b.geometry.pointer(),
            b.reverse.pointer(),
        );
        launch!(
            self,
            "graph_fill",
            atom_grid,
            atom_block,
            n as i32,
            positions,
            lattice,
            list_offsets,
            list_sources,
            list_shifts,
            cutoff2,
            graph_offsets,
            graph_sources,
            graph_shifts,
            geometry,
            self.model.filter_table().spacing_angstrom,
            self.table_intervals,
            status
        );
        launch!(
            self,
            "graph_reverse",
            atom_grid,
            atom_block,
            n as i32,
            graph_offsets,
            graph_sources,
            graph_shifts,
            reverse
        );
        Ok(())
    }

    fn stride(&self, count: usize) -> ((u32, u32, u32), (u32, u32, u32)) {
        (
            (stride_blocks(count, STRIDE_THREADS), 1, 1),
            (STRIDE_THREADS, 1, 1),
        )
    }

    /// `c[m][n_cols] = a[m][k] W^T + bias` (W stored `[n_cols][k]`).
    #[allow(clippy::too_many_arguments)]
    fn gemm_nt(
        &self,
        m: usize,
        n_cols: usize,
        k: usize,
        a: u64,
        w: u64,
        bias: u64,
        c: u64,
    ) -> Result<()> {
        let (gx, gy) = gemm_grid(m, n_cols);
        launch!(
            self,
            "gemm_nt",
            (gx, gy, 1),
            (256, 1, 1),
            m as i32,
            n_cols as i32,
            k as i32,
            a,
            w,
            bias,
            0i32,
            c
        );
        Ok(())
    }

    /// `c[m][n_cols] = a[m][k] W` (W stored `[k][n_cols]`).
    fn gemm_nn(&self, m: usize, n_cols: usize, k: usize, a: u64, w: u64, c: u64) -> Result<()> {
        let (gx, gy) = gemm_grid(m, n_cols);
        launch!(
            self,
            "gemm_nn",
            (gx, gy, 1),
            (256, 1, 1),
            m as i32,
            n_cols as i32,
            k as i32,
            a,
            w,
            0i32,
            c
        );
        Ok(())
    }

    fn forward(&mut self, n: usize) -> Result<()> {
        let h = self.hidden;
        let n_layers = self.layer_weights.len();
        let b = &self.buffers;
        let (geometry, offsets, sources) = (
            b.geometry.pointer(),
            b.graph_offsets.pointer(),
            b.graph_sources.pointer(),
        );
        let (g, t) = self.stride(n * h);
        launch!(
            self,
            "embed",
            g,
            t,
            n as i32,
            h as i32,
            b.atomic_numbers.pointer(),
            self.embedding.pointer(),
            b.layers[0].s_in.pointer()
        );
        self.memset_zero(&self.buffers.layers[0].v_in, 0, 3 * n * h)?;
        let table_layer = self.table_intervals as usize + 1;
        for l in 0..n_layers {
            let b = &self.buffers;
            let layer = &b.layers[l];
            let w = &self.layer_weights[l];
            let table = self.table.at(l * table_layer * NODE_VECTORS * 3 * h);
            launch!(
                self,
                "message_forward",
                (n as u32, 1, 1),
                (h as u32, 1, 1),
                h as i32,
                offsets,
                sources,
                geometry,
                table,
                layer.s_in.pointer(),
                layer.v_in.pointer(),
                (l == 0) as i32,
                layer.s_mid.pointer(),
                layer.v_mid.pointer()
            );
            let (g, t) = self.stride(n * h);
            launch!(
                self,
                "norm_concat",
                g,
                t,
                n as i32,
                h as i32,
                layer.s_mid.pointer(),
                layer.v_mid.pointer(),
                layer.norm.pointer(),
                b.concat.pointer()
            );
            self.gemm_nt(
                n,
                h,
                2 * h,
                b.concat.pointer(),
                w.update_hidden_weight.pointer(),
                w.update_hidden_bias.pointer(),
                layer.update_pre.pointer(),
            )?;
            let (g, t) = self.stride(n * h);
            launch!(
                self,
                "silu_forward",
                g,
                t,
                (n * h) as i64,
                layer.update_pre.pointer(),
                b.hidden.pointer()
            );
            self.gemm_nt(
                n,
                w.update_width,
                h,
                b.hidden.pointer(),
                w.update_out_weight.pointer(),
                w.update_out_bias.pointer(),
                layer.update_out.pointer(),
            )?;
            let (s_next, v_next) = if l + 1 == n_layers {
                (b.s_final.pointer(), 0u64)
            } else {
                (
                    b.layers[l + 1].s_in.pointer(),
                    b.layers[l + 1].v_in.pointer(),
                )
            };
            launch!(
                self,
                "gate_forward",
                g,
                t,
                n as i32,
                h as i32,
                w.update_width as i32,
                layer.s_mid.pointer(),
                layer.v_mid.pointer(),
                layer.update_out.pointer(),
                w.mixing.pointer(),
                s_next,
                v_next
            );
        }
        let b = &self.buffers;
        let hw = &self.head_weights;
        let (half, quarter) = (h / 2, h / 4);
        self.gemm_nt(
            n,
            half,
            h,
            b.s_final.pointer(),
            hw[0].pointer(),
            hw[1].pointer(),
            b.head_pre[0].pointer(),
        )?;
        let (g, t) = self.stride(n * half);
        launch!(
            self,
            "silu_forward",
            g,
            t,
            (n * half) as i64,
            b.head_pre[0].pointer(),
            b.head_act[0].pointer()
        );
        self.gemm_nt(
            n,
            quarter,
            half,
            b.head_act[0].pointer(),
            hw[2].pointer(),
            hw[3].pointer(),
            b.head_pre[1].pointer(),
        )?;
        let (g, t) = self.stride(n * quarter);
        launch!(
            self,
            "silu_forward",
            g,
            t,
            (n * quarter) as i64,
            b.head_pre[1].pointer(),
            b.head_act[1].pointer()
        );
        launch!(
            self,
            "head_energy",
            (blocks(n, ATOM_THREADS), 1, 1),
            (ATOM_THREADS, 1, 1),
            n as i32,
            quarter as i32,
            b.head_act[1].pointer(),
            hw[4].pointer(),
            hw[5].pointer(),
            b.energies.pointer()
        );
        Ok(())
    }

    fn backward(&mut self, n: usize, n_energy: usize) -> Result<()> {
        let h = self.hidden;
        let n_layers = self.layer_weights.len();
        let b = &self.buffers;
        let hw = &self.head_weights;
        let (half, quarter) = (h / 2, h / 4);
        let (g, t) = self.stride(n * quarter);
        launch!(
            self,
            "head_backward",
            g,
            t,
            n as i32,
            n_energy as i32,
            quarter as i32,
            hw[4].pointer(),
            b.head_pre[1].pointer(),
            b.g_head[1].pointer()
        );
        self.gemm_nn(
            n,
            half,
            quarter,
            b.g_head[1].pointer(),
            hw[2].pointer(),
            b.g_head[0].pointer(),
        )?;
        let (g, t) = self.stride(n * half);
        launch!(
            self,
            "silu_backward",
            g,
            t,
            (n * half) as i64,
            b.head_pre[0].pointer(),
            b.g_head[0].pointer()
        );
        self.gemm_nn(
            n,
            h,
            half,
            b.g_head[0].pointer(),
            hw[0].pointer(),
            b.gs.pointer(),
        )?;
        self.memset_zero(&self.buffers.gv, 0, 3 * n * h)?;
        self.memset_zero(&self.buffers.de_dr, 0, 3 * self.edge_capacity)?;
        let table_layer = self.table_intervals as usize + 1;
        for l in (0..n_layers).rev() {
            let b = &self.buffers;
            let layer = &b.layers[l];
            let w = &self.layer_weights[l];
            let (g, t) = self.stride(n * h);
            launch!(
                self,
                "gate_backward",
                g,
                t,
                n as i32,
                h as i32,
                w.update_width as i32,
                (l + 1 == n_layers) as i32,
                layer.v_mid.pointer(),
                layer.update_out.pointer(),
                w.mixing.pointer(),
                b.gs.pointer(),
                b.gv.pointer(),
                b.g_update.pointer(),
                b.gv_mid.pointer()
            );
            self.gemm_nn(
                n,
                h,
                w.update_width,
                b.g_update.pointer(),
                w.update_out_weight.pointer(),
                b.g_hidden.pointer(),
            )?;
            launch!(
                self,
                "silu_backward",
                g,
                t,
                (n * h) as i64,
                layer.update_pre.pointer(),
                b.g_hidden.pointer()
            );
            self.gemm_nn(
                n,
                2 * h,
                h,
                b.g_hidden.pointer(),
                w.update_hidden_weight.pointer(),
                b.g_concat.pointer(),
            )?;
            launch!(
                self,
                "norm_backward",
                g,
                t,
                n as i32,
                h as i32,
                b.gs.pointer(),
                b.g_concat.pointer(),
                layer.norm.pointer(),
                layer.v_mid.pointer(),
                b.gs_mid.pointer(),
                b.gv_mid.pointer()
            );
            let table = self.table.at(l * table_layer * NODE_VECTORS * 3 * h);
            launch!(
                self,
                "message_backward",
                (n as u32, 1, 1),
                (h as u32, 1, 1),
                h as i32,
                b.graph_offsets.pointer(),
                b.graph_sources.pointer(),
                b.geometry.pointer(),
                table,
                self.table_spacing,
                layer.s_in.pointer(),
                layer.v_in.pointer(),
                b.gs_mid.pointer(),
                b.gv_mid.pointer(),
                (l > 0) as i32,
                b.gs.pointer(),
                b.gv.pointer(),
                b.de_dr.pointer()
            );
        }
        Ok(())
    }

    fn readout(&mut self, n: usize, n_energy: usize, request: Request) -> Result<Results> {
        let b = &self.buffers;
        let atom_grid = (blocks(n, ATOM_THREADS), 1, 1);
        let atom_block = (ATOM_THREADS, 1, 1);
        if request.needs_backward() {
            launch!(
                self,
                "forces_virials",
                atom_grid,
                atom_block,
                n as i32,
                b.graph_offsets.pointer(),
                b.reverse.pointer(),
                b.geometry.pointer(),
                b.de_dr.pointer(),
                request.atom_virials as i32,
                b.results.pointer(),
                b.row_virials.pointer()
            );
        } else {
            self.memset_zero(&self.buffers.row_virials, 0, 9 * n)?;
        }
        let b = &self.buffers;
        launch!(
            self,
            "energies_out",
            atom_grid,
            atom_block,
            n as i32,
            n_energy as i32,
            b.energies.pointer(),
            b.results.pointer()
        );
        launch!(
            self,
            "reduce_results",
            (1, 1, 1),
            (256, 1, 1),
            n as i32,
            n_energy as i32,
            b.energies.pointer(),
            b.row_virials.pointer(),
            b.status.pointer(),
            b.results.pointer()
        );
        let length = RESULTS_HEADER + 4 * n + if request.atom_virials { 9 * n } else { 0 };
        self.results_host.resize(length, 0.0);
        // SAFETY: the results buffer holds RESULTS_HEADER + 13 n values.
        unsafe {
            result::memcpy_dtoh_async(
                &mut self.results_host,
                self.buffers.results.pointer(),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| driver("copy from the GPU", e))?;
        self.synchronize()?;
        let host = &self.results_host;
        let header = &host[STATUS_WORDS..RESULTS_HEADER];
        let mut results = Results {
            energy: header[0],
            ..Results::default()
        };
        if request.virial {
            for a in 0..3 {
                for c in 0..3 {
                    results.virial[a][c] = header[1 + 3 * a + c];
                }
            }
        }
        let forces = &host[RESULTS_HEADER..RESULTS_HEADER + 3 * n];
        if request.forces {
            results.forces = forces.chunks_exact(3).map(|f| [f[0], f[1], f[2]]).collect();
        }
        if request.energies {
            results.energies = host[RESULTS_HEADER + 3 * n..RESULTS_HEADER + 4 * n].to_vec();
        }
        if request.atom_virials {
            results.atom_virials = host[RESULTS_HEADER + 4 * n..RESULTS_HEADER + 13 * n]
                .chunks_exact(9)
                .map(|w| [[w[0], w[1], w[2]], [w[3], w[4], w[5]], [w[6], w[7], w[8]]])
                .collect();
        }
        Ok(results)
    }

    /// The neighbour list as built on the GPU (offsets, sources, shifts), for stage-by-stage
    /// comparison with the CPU list.
    pub fn neighbor_list(
        &mut self,
        positions: &[[f64; 3]],
        cell: &Cell,
    ) -> Result<GpuNeighborList> {
        let n = positions.len();
        self.bind()?;
        let stream = self.stream.clone();
        self.reserve_atoms(n)?;
        upload(
            &stream,
            &mut self.buffers.positions,
            positions.as_flattened(),
        )?;
        upload(
            &stream,
            &mut self.buffers.lattice,
            cell.vectors().as_flattened(),
        )?;
        self.uploaded_cell = Some(*cell);
        let status = self.buffers.status.pointer();
        launch!(self, "status_reset", (1, 1, 1), (32, 1, 1), status);
        loop {
            self.build_list(
                positions,
                cell,
                self.model.cutoff_angstrom() + self.skin_angstrom,
            )?;
            let mut offsets = vec![0i64; n + 1];
            let mut flags = [0i32; STATUS_WORDS];
            // SAFETY: sizes as reserved above.
            unsafe {
                result::memcpy_dtoh_async(
                    &mut offsets,
                    self.buffers.list_offsets.pointer(),
                    stream.cu_stream(),
                )
                .and_then(|()| result::memcpy_dtoh_async(&mut flags, status, stream.cu_stream()))
            }
            .map_err(|e| driver("copy from the GPU", e))?;
            self.synchronize()?;
            let total = offsets[n] as usize;
            if flags[0] != 0 {
                self.reserve_edges((total as f64 * EDGE_HEADROOM) as usize + 1024)?;
                launch!(self, "status_reset", (1, 1, 1), (32, 1, 1), status);
                continue;
            }
            let mut sources = vec![0i32; total];
            let mut shifts = vec![[0i32; 3]; total];
            if total > 0 {
                // SAFETY: the list arrays hold at least `total` edges.
                unsafe {
                    result::memcpy_dtoh_async(
                        &mut sources,
                        self.buffers.list_sources.pointer(),
                        stream.cu_stream(),
                    )
                    .and_then(|()| {
                        result::memcpy_dtoh_async(
                            shifts.as_flattened_mut(),
                            self.buffers.list_shifts.pointer(),
                            stream.cu_stream(),
                        )
                    })
                }
                .map_err(|e| driver("copy from the GPU", e))?;
                self.synchronize()?;
            }
            // The next compute must rebuild with its own positions.
            self.reference_positions.clear();
            return Ok(GpuNeighborList {
                offsets,
                sources,
                shifts,
            });
        }
    }
}

/// A neighbour list copied back from the GPU: CSR offsets `[n + 1]`, sources and image
/// shifts `[n_edges]`.
pub struct GpuNeighborList {
    pub offsets: Vec<i64>,
    pub sources: Vec<i32>,
    pub shifts: Vec<[i32; 3]>,
}

/// Opens GPU `ordinal` for the float32 engine.
pub(crate) fn open(
    model: &Arc<Model>,
    ordinal: usize,
    precision: crate::calculator::Precision,
) -> Result<Box<dyn super::Backend>> {
    if precision != crate::calculator::Precision::F32 {
        return Err(Error::Unsupported(format!(
            "the CUDA backend computes in float32; precision {precision} needs device cpu"
        )));
    }
    Ok(Box::new(Adapter {
        backend: CudaBackend::new(model.clone(), ordinal, 0.0)?,
        system: None,
    }))
}

/// Interim adapter (replaced by the staged CUDA backend).
#[allow(clippy::type_complexity)]
struct Adapter {
    backend: CudaBackend,
    system: Option<(Vec<i32>, Vec<[f64; 3]>, Cell, usize)>,
}

impl super::Backend for Adapter {
    fn facts(&self) -> super::DeviceFacts {
        super::DeviceFacts {
            name: self.backend.device_name().to_string(),
            bytes_held: self.backend.allocated_bytes(),
        }
    }
    fn load_system(&mut self, system: &super::System) -> Result<()> {
        self.system = Some((
            system.atomic_numbers.to_vec(),
            system.positions.to_vec(),
            *system.cell,
            system.n_energy_atoms,
        ));
        Ok(())
    }
    fn build_neighbor_list(&mut self, _radius: f64) -> Result<()> {
        Ok(())
    }
    fn build_graph(&mut self, _cutoff: f64) -> Result<()> {
        Ok(())
    }
    fn forward(&mut self, _backward_follows: bool) -> Result<()> {
        Ok(())
    }
    fn backward(&mut self) -> Result<()> {
        Ok(())
    }
    fn readout(&mut self, request: Request) -> Result<Results> {
        let (z, positions, cell, n_energy) = self.system.take().expect("loaded");
        self.backend
            .compute(&z, &positions, &cell, n_energy, request)
    }
    fn run_evaluation(
        &mut self,
        _n_atoms: usize,
        stages: &mut super::Stages<'_>,
    ) -> Result<Results> {
        stages(self)
    }
    fn inspect(&mut self, _stage: super::Stage) -> Result<super::StageOutput> {
        Err(Error::Unsupported("inspect".into()))
    }
    fn keep_stage_outputs(&mut self, _keep: bool) {}
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // The buffers free their memory when dropped next: the context must be current.
        let _ = self.bind();
        let _ = self.synchronize();
    }
}

#[cfg(test)]
mod tests {
    /// Every `launch!` passes as many arguments as its kernel declares parameters (a
    /// mismatch would only show on a GPU, as garbage).
    #[test]
    fn launches_pass_every_kernel_parameter() {
        let host = include_str!("mod.rs");
        let source = super::kernels::program_source();
        let mut checked = 0;
        for (position, _) in host.match_indices("launch!(") {
            let body = &host[position + "launch!(".len()..];
            let (mut depth, mut end) = (1, 0);
            for (index, c) in body.char_indices() {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = index;
                    break;
                }
            }
            let mut arguments = Vec::new();
            let (mut depth, mut current) = (0, String::new());
            for c in body[..end].chars() {
                match c {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth -= 1,
                    _ => {}
                }
                if c == ',' && depth == 0 {
                    arguments.push(std::mem::take(&mut current));
                } else {
                    current.push(c);
                }
            }
            if !current.trim().is_empty() {
                arguments.push(current);
            }
            let Some(name) = arguments
                .get(1)
                .map(|a| a.trim().trim_matches('"').to_string())
            else {
                continue;
            };
            let Some(start) = source.find(&format!("__global__ void {name}(")) else {
                continue; // the macro's own definition
            };
            let declaration = &source[start..];
            let parameters =
                &declaration[declaration.find('(').unwrap() + 1..declaration.find(')').unwrap()];
            let expected = parameters
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .count();
            assert_eq!(arguments.len() - 4, expected, "launch of {name}");
            checked += 1;
        }
        assert!(checked >= 30, "{checked} launches checked");
    }
}
