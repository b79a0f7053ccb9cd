//! Device memory: typed buffers that grow geometrically and are reused from call to call
//! (once sizes have settled, an evaluation allocates nothing), typed device pointers for
//! kernel arguments, and the [`Registry`] every allocation goes through, which keeps the
//! running total of bytes held ([`DeviceFacts::bytes_held`](crate::backend::DeviceFacts)).
//! Then the backend's buffers, grouped by the stage that writes them.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use cudarc::driver::{DeviceRepr, result, sys};

use super::device::Device;
use super::readout::RESULTS_HEADER;
use crate::backend::GEOMETRY_WIDTH;
use crate::error::{Error, Result};
use crate::model::filter::NODE_VECTORS;
use crate::model::{Linear, Model};

/// Growth factor when a buffer is too small.
const GROWTH: f64 = 1.5;

/// The byte count of every live allocation of one backend. Allocations go through
/// [`Registry::reserve`]; a buffer hands its bytes back when it is freed.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    bytes: Arc<AtomicUsize>,
    allocations: Arc<AtomicU64>,
}

impl Registry {
    /// How many allocations this registry has made: it changes whenever a buffer moves, which
    /// invalidates recorded CUDA graphs (they hold device addresses).
    pub fn generation(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Bytes of device memory held by the buffers allocated through this registry.
    pub fn bytes_held(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Makes room in `buffer` for at least `len` elements, growing it geometrically
    /// (contents are not preserved when it grows).
    pub fn reserve<T>(&self, buffer: &mut DeviceBuffer<T>, len: usize) -> Result<()> {
        if buffer.holds(len) {
            return Ok(());
        }
        let capacity = if buffer.capacity == 0 {
            len.max(1)
        } else {
            len.max((buffer.capacity as f64 * GROWTH) as usize)
        };
        self.allocate(buffer, capacity)
    }

    /// Makes room for exactly `len` elements when `buffer` is smaller (for the edge arrays,
    /// whose size is known ahead, headroom included).
    pub fn reserve_exact<T>(&self, buffer: &mut DeviceBuffer<T>, len: usize) -> Result<()> {
        if buffer.holds(len) {
            return Ok(());
        }
        self.allocate(buffer, len.max(1))
    }

    fn allocate<T>(&self, buffer: &mut DeviceBuffer<T>, capacity: usize) -> Result<()> {
        buffer.release();
        let bytes = capacity
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| Error::Cuda(format!("a GPU buffer of {capacity} elements")))?;
        // SAFETY: a plain allocation; the pointer is owned by the buffer from here on.
        let pointer =
            unsafe { result::malloc_sync(bytes) }.map_err(|e| self.out_of_memory(bytes, e))?;
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.allocations.fetch_add(1, Ordering::Relaxed);
        buffer.pointer = pointer;
        buffer.capacity = capacity;
        buffer.registry = Some(self.clone());
        Ok(())
    }
}

impl Registry {
    /// The error of a failed allocation of `bytes`: how much was asked for, how much the GPU
    /// had free and how much this backend already held.
    fn out_of_memory(&self, bytes: usize, error: result::DriverError) -> Error {
        const GIB: f64 = (1u64 << 30) as f64;
        let free = match result::mem_get_info() {
            Ok((free, total)) => format!(
                "{:.2} GiB of the GPU's {:.2} GiB were free",
                free as f64 / GIB,
                total as f64 / GIB
            ),
            Err(_) => "the GPU's free memory is unknown".into(),
        };
        Error::Cuda(format!(
            "out of GPU memory: allocating {:.2} GiB more failed ({error}); {free}, and this \
             calculator already held {:.2} GiB. The system is too large for this GPU: use \
             fewer atoms per GPU (several MPI ranks and GPUs) or the CPU",
            bytes as f64 / GIB,
            self.bytes_held() as f64 / GIB
        ))
    }
}

/// A typed device address, as a kernel receives it (`T*`): a whole buffer or a position
/// inside one. Null only where a kernel accepts null ([`DevicePtr::null`]).
#[repr(transparent)]
pub struct DevicePtr<T> {
    address: sys::CUdeviceptr,
    marker: PhantomData<T>,
}

impl<T> Clone for DevicePtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DevicePtr<T> {}

// SAFETY: a device address is a plain 64-bit integer, passed to kernels by value like `T*`.
unsafe impl<T> DeviceRepr for DevicePtr<T> {}

impl<T> DevicePtr<T> {
    /// The null pointer, for a kernel's optional output.
    pub fn null() -> Self {
        DevicePtr {
            address: 0,
            marker: PhantomData,
        }
    }

    pub fn address(self) -> sys::CUdeviceptr {
        self.address
    }
}

/// A typed device allocation of `capacity` elements of `T`, freed on drop.
pub struct DeviceBuffer<T> {
    pointer: sys::CUdeviceptr,
    capacity: usize,
    /// The registry that counted this allocation (none while unallocated).
    registry: Option<Registry>,
    marker: PhantomData<T>,
}

// SAFETY: the buffer is plain device memory owned by this value; the context that owns it is
// made current by the backend on whichever thread uses it.
unsafe impl<T> Send for DeviceBuffer<T> {}

impl<T> Default for DeviceBuffer<T> {
    fn default() -> Self {
        DeviceBuffer {
            pointer: 0,
            capacity: 0,
            registry: None,
            marker: PhantomData,
        }
    }
}

impl<T> DeviceBuffer<T> {
    fn holds(&self, len: usize) -> bool {
        len <= self.capacity && self.pointer != 0
    }

    /// The whole buffer as a kernel argument (null when unallocated).
    pub fn ptr(&self) -> DevicePtr<T> {
        self.offset(0)
    }

    /// The address of element `index` (at most the capacity: one past the end is allowed).
    pub fn offset(&self, index: usize) -> DevicePtr<T> {
        debug_assert!(
            index <= self.capacity,
            "offset {index} of {}",
            self.capacity
        );
        DevicePtr {
            address: self.pointer + (index * std::mem::size_of::<T>()) as u64,
            marker: PhantomData,
        }
    }

    fn release(&mut self) {
        if self.pointer != 0 {
            // SAFETY: allocated by malloc_sync and not freed since.
            unsafe {
                let _ = result::free_sync(self.pointer);
            }
            if let Some(registry) = self.registry.take() {
                registry
                    .bytes
                    .fetch_sub(self.capacity * std::mem::size_of::<T>(), Ordering::Relaxed);
            }
            self.pointer = 0;
            self.capacity = 0;
        }
    }
}

impl<T> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Weights of one interaction layer on the device (the radial filter is the shared table,
/// [`Weights::filter_table`]).
#[derive(Default)]
pub struct LayerWeights {
    /// `[H][2H]`.
    pub update_hidden: LinearWeights,
    /// `[update_width][H]`.
    pub update_out: LinearWeights,
    /// 3H, or H for the last layer (its vector gates never reach the energy).
    pub update_width: usize,
    /// M, `[3][3]`; zero for the last layer.
    pub mixing: DeviceBuffer<f32>,
}

/// A Linear layer on the device: `weight [n_out][n_in]`, `bias [n_out]`.
#[derive(Default)]
pub struct LinearWeights {
    pub weight: DeviceBuffer<f32>,
    pub bias: DeviceBuffer<f32>,
}

/// The model on the device, in float32.
#[derive(Default)]
pub struct Weights {
    /// `[max_z + 1][H]`.
    pub embedding: DeviceBuffer<f32>,
    /// The filter table, `[layers][intervals + 1][NODE_VECTORS][3H]` (crate::model::filter).
    pub filter_table: DeviceBuffer<f32>,
    /// Elements of one layer's part of the table.
    pub filter_layer_len: usize,
    /// Node spacing h of the table, Angstrom, and its number of intervals.
    pub filter_spacing_angstrom: f64,
    pub filter_intervals: usize,
    pub layers: Vec<LayerWeights>,
    /// The energy head's three Linear layers: `[H/2][H]`, `[H/4][H/2]`, `[1][H/4]`.
    pub head: [LinearWeights; 3],
}

impl Weights {
    /// Layer `layer`'s part of the filter table.
    pub fn filter_table(&self, layer: usize) -> DevicePtr<f32> {
        self.filter_table.offset(layer * self.filter_layer_len)
    }
}

/// The loaded system on the device.
#[derive(Default)]
pub struct SystemBuffers {
    /// `[n][3]`, Angstrom.
    pub positions: DeviceBuffer<f64>,
    /// `[3][3]`, Angstrom, rows the lattice vectors.
    pub lattice: DeviceBuffer<f64>,
    pub atomic_numbers: DeviceBuffer<i32>,
    /// `[STATUS_WORDS]`, reset by each `load_system`, read back by `readout`.
    pub status: DeviceBuffer<i32>,
}

/// The neighbour list (cutoff + skin) and its cell-list scratch.
#[derive(Default)]
pub struct ListBuffers {
    /// Per atom: lattice wraps `[n][3]`, bin, and the atoms sorted by bin.
    pub wraps: DeviceBuffer<i32>,
    pub bins: DeviceBuffer<i32>,
    pub sorted: DeviceBuffer<i32>,
    /// Per bin: first slot of its atoms `[bins + 1]`, and the scatter cursor.
    pub bin_start: DeviceBuffer<i64>,
    pub bin_cursor: DeviceBuffer<i64>,
    /// CSR by receiver: `[n + 1]`; per edge the sort keys, sources and shifts `[E][3]`.
    pub offsets: DeviceBuffer<i64>,
    pub keys: DeviceBuffer<u64>,
    pub sources: DeviceBuffer<i32>,
    pub shifts: DeviceBuffer<i32>,
}

/// The graph within the cutoff.
#[derive(Default)]
pub struct GraphBuffers {
    /// `[n + 1]`; per edge the source, shift `[E][3]`, geometry `[E][GEOMETRY_WIDTH]` and
    /// reverse edge.
    pub offsets: DeviceBuffer<i64>,
    pub sources: DeviceBuffer<i32>,
    pub shifts: DeviceBuffer<i32>,
    pub geometry: DeviceBuffer<f32>,
    pub reverse: DeviceBuffer<i32>,
}

/// Activations of one layer, kept for the backward pass.
#[derive(Default)]
pub struct LayerBuffers {
    /// Input of the message, `[n][H]`, `[n][3][H]`.
    pub s_in: DeviceBuffer<f32>,
    pub v_in: DeviceBuffer<f32>,
    /// After the message.
    pub s_mid: DeviceBuffer<f32>,
    pub v_mid: DeviceBuffer<f32>,
    /// `|v_mid|`, `[n][H]`.
    pub norm: DeviceBuffer<f32>,
    /// The update MLP's pre-activation `[n][H]` and output `[n][update_width]`.
    pub update_pre: DeviceBuffer<f32>,
    pub update_out: DeviceBuffer<f32>,
}

/// The energy head's activations and gradients.
#[derive(Default)]
pub struct HeadBuffers {
    /// Pre-activations and activations `[n][H/2]`, `[n][H/4]`, and the gradients of the
    /// pre-activations.
    pub pre: [DeviceBuffer<f32>; 2],
    pub act: [DeviceBuffer<f32>; 2],
    pub g: [DeviceBuffer<f32>; 2],
    /// Per-atom energies `[n]`.
    pub energies: DeviceBuffer<f32>,
}

/// The backward pass's buffers, overwritten layer by layer.
#[derive(Default)]
pub struct Gradients {
    /// Of the current layer's outputs `[n][H]`, `[n][3][H]` (then of its inputs).
    pub gs: DeviceBuffer<f32>,
    pub gv: DeviceBuffer<f32>,
    /// Of its message outputs.
    pub gs_mid: DeviceBuffer<f32>,
    pub gv_mid: DeviceBuffer<f32>,
    /// Of the update MLP's output `[n][3H]`, hidden layer `[n][H]` and input `[n][2H]`.
    pub g_update: DeviceBuffer<f32>,
    pub g_hidden: DeviceBuffer<f32>,
    pub g_concat: DeviceBuffer<f32>,
    /// `dE/dr_ij` per edge, `[E][3]`.
    pub de_dr: DeviceBuffer<f32>,
}

/// The backward pass's per-layer gradients, copied aside for `inspect` while
/// `keep_stage_outputs` is on.
#[derive(Default)]
pub struct KeptGradients {
    /// The atom count of the backward pass they were kept from.
    pub atoms: Option<usize>,
    pub head_gs: DeviceBuffer<f32>,
    /// Per layer `(gs_mid, gv_mid)`.
    pub update: Vec<(DeviceBuffer<f32>, DeviceBuffer<f32>)>,
    /// Per layer `(gs_in, gv_in)` (layers above 0).
    pub message: Vec<(DeviceBuffer<f32>, DeviceBuffer<f32>)>,
}

/// Every work buffer of the backend.
#[derive(Default)]
pub struct Buffers {
    pub system: SystemBuffers,
    /// Block sums of the multi-level scan.
    pub scan_scratch: DeviceBuffer<i64>,
    pub list: ListBuffers,
    pub graph: GraphBuffers,
    /// Edges the list, graph and `de_dr` arrays hold (0: not sized yet).
    pub edge_capacity: usize,
    pub layers: Vec<LayerBuffers>,
    /// The last layer's scalar output `[n][H]`.
    pub s_final: DeviceBuffer<f32>,
    /// The update MLP's input `[n][2H]` and hidden activation `[n][H]`.
    pub concat: DeviceBuffer<f32>,
    pub hidden: DeviceBuffer<f32>,
    pub head: HeadBuffers,
    pub gradients: Gradients,
    /// The small-system backward pass's per-edge sums `[edges][4][H SMALL_EDGE_PARTS / 32]`
    /// (cuda/small.cu); allocated only when that path runs.
    pub edge_partials: DeviceBuffer<f32>,
    /// Per-atom virial rows `[n][9]`, float64.
    pub row_virials: DeviceBuffer<f64>,
    /// The packed results, `[RESULTS_HEADER + 13 n]`, float64 (cuda/readout.cu).
    pub results: DeviceBuffer<f64>,
}

impl Buffers {
    /// Sizes every per-atom buffer for `n` atoms of `hidden` features.
    pub fn reserve_atoms(
        &mut self,
        registry: &Registry,
        n: usize,
        hidden: usize,
        weights: &Weights,
    ) -> Result<()> {
        let h = hidden;
        let r = registry;
        r.reserve(&mut self.system.atomic_numbers, n)?;
        let list = &mut self.list;
        r.reserve(&mut list.wraps, 3 * n)?;
        r.reserve(&mut list.bins, n)?;
        r.reserve(&mut list.sorted, n)?;
        r.reserve(&mut list.offsets, n + 1)?;
        r.reserve(&mut self.graph.offsets, n + 1)?;
        for (layer, layer_weights) in self.layers.iter_mut().zip(&weights.layers) {
            r.reserve(&mut layer.s_in, n * h)?;
            r.reserve(&mut layer.v_in, 3 * n * h)?;
            r.reserve(&mut layer.s_mid, n * h)?;
            r.reserve(&mut layer.v_mid, 3 * n * h)?;
            r.reserve(&mut layer.norm, n * h)?;
            r.reserve(&mut layer.update_pre, n * h)?;
            r.reserve(&mut layer.update_out, n * layer_weights.update_width)?;
        }
        r.reserve(&mut self.s_final, n * h)?;
        r.reserve(&mut self.concat, 2 * n * h)?;
        r.reserve(&mut self.hidden, n * h)?;
        let head = &mut self.head;
        for (index, width) in [h / 2, h / 4].into_iter().enumerate() {
            r.reserve(&mut head.pre[index], n * width)?;
            r.reserve(&mut head.act[index], n * width)?;
            r.reserve(&mut head.g[index], n * width)?;
        }
        r.reserve(&mut head.energies, n)?;
        let g = &mut self.gradients;
        r.reserve(&mut g.gs, n * h)?;
        r.reserve(&mut g.gv, 3 * n * h)?;
        r.reserve(&mut g.gs_mid, n * h)?;
        r.reserve(&mut g.gv_mid, 3 * n * h)?;
        r.reserve(&mut g.g_update, 3 * n * h)?;
        r.reserve(&mut g.g_hidden, n * h)?;
        r.reserve(&mut g.g_concat, 2 * n * h)?;
        r.reserve(&mut self.row_virials, 9 * n)?;
        r.reserve(&mut self.results, RESULTS_HEADER + 13 * n)?;
        Ok(())
    }

    /// Sizes the per-edge arrays (list, graph, `de_dr`) for exactly `capacity` edges when
    /// they hold fewer.
    pub fn reserve_edges(&mut self, registry: &Registry, capacity: usize) -> Result<()> {
        if capacity >= i32::MAX as usize {
            return Err(Error::Unsupported(format!(
                "{capacity} edges exceed the GPU backend's limit of 2^31"
            )));
        }
        let r = registry;
        r.reserve_exact(&mut self.list.keys, capacity)?;
        r.reserve_exact(&mut self.list.sources, capacity)?;
        r.reserve_exact(&mut self.list.shifts, 3 * capacity)?;
        let graph = &mut self.graph;
        r.reserve_exact(&mut graph.sources, capacity)?;
        r.reserve_exact(&mut graph.shifts, 3 * capacity)?;
        r.reserve_exact(&mut graph.geometry, GEOMETRY_WIDTH * capacity)?;
        r.reserve_exact(&mut graph.reverse, capacity)?;
        r.reserve_exact(&mut self.gradients.de_dr, 3 * capacity)?;
        self.edge_capacity = capacity;
        Ok(())
    }
}

impl KeptGradients {
    /// Sizes the kept gradients for `n` atoms of `hidden` features in `n_layers` layers.
    pub fn reserve(
        &mut self,
        registry: &Registry,
        n: usize,
        hidden: usize,
        n_layers: usize,
    ) -> Result<()> {
        let r = registry;
        r.reserve(&mut self.head_gs, n * hidden)?;
        self.update.resize_with(n_layers, Default::default);
        self.message.resize_with(n_layers, Default::default);
        for (gs, gv) in self
            .update
            .iter_mut()
            .chain(self.message.iter_mut().skip(1))
        {
            r.reserve(gs, n * hidden)?;
            r.reserve(gv, 3 * n * hidden)?;
        }
        Ok(())
    }
}

fn to_f32(values: &[f64]) -> Vec<f32> {
    values.iter().map(|&v| v as f32).collect()
}

impl Weights {
    /// Uploads `model` in float32: the embedding, the filter table, each layer's update MLP
    /// (the last layer's cut to its first H outputs) and mixing matrix, and the energy head.
    pub fn upload(device: &Device, registry: &Registry, model: &Model) -> Result<Weights> {
        let h = model.hidden_features();
        let table = model.filter_table();
        let mut weights = Weights {
            filter_layer_len: (table.n_intervals + 1) * NODE_VECTORS * table.width,
            filter_spacing_angstrom: table.spacing_angstrom,
            filter_intervals: table.n_intervals,
            ..Weights::default()
        };
        device.upload(registry, &mut weights.embedding, &to_f32(&model.embedding))?;
        device.upload(registry, &mut weights.filter_table, &table.nodes)?;
        let linear = |target: &mut LinearWeights, source: &Linear| -> Result<()> {
            device.upload(registry, &mut target.weight, &to_f32(&source.weight))?;
            device.upload(registry, &mut target.bias, &to_f32(&source.bias))
        };
        let n_layers = model.interactions.len();
        for (l, layer) in model.interactions.iter().enumerate() {
            let out = if l + 1 == n_layers {
                layer.update_out.first_outputs(h)
            } else {
                layer.update_out.clone()
            };
            let mut layer_weights = LayerWeights {
                update_width: out.n_out,
                ..LayerWeights::default()
            };
            linear(&mut layer_weights.update_hidden, &layer.update_hidden)?;
            linear(&mut layer_weights.update_out, &out)?;
            let mixing: Vec<f32> = layer
                .mixing
                .map(|m| m.iter().flatten().map(|&v| v as f32).collect())
                .unwrap_or_else(|| vec![0.0; 9]);
            device.upload(registry, &mut layer_weights.mixing, &mixing)?;
            weights.layers.push(layer_weights);
        }
        for (target, source) in weights.head.iter_mut().zip(&model.energy_head) {
            linear(target, source)?;
        }
        Ok(weights)
    }
}
