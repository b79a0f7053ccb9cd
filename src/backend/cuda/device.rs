//! The GPU and its one stream: opening a device, and the transfers and fills between kernel
//! launches (uploads, downloads, device-to-device copies, zero fills), all queued in order on
//! that stream.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits, result, sys,
};

use super::buffers::{DeviceBuffer, DevicePtr, Registry};
use super::compile;
use crate::error::{Error, Result};

/// An error of the CUDA driver in `call`.
pub fn driver(call: &str, error: result::DriverError) -> Error {
    Error::Cuda(format!("{call}: {error}"))
}

/// How many CUDA GPUs this process can use (0 without a driver).
pub fn device_count() -> usize {
    if compile::check_driver().is_err() {
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

/// One GPU: its context and the stream every launch and transfer of the backend runs on.
pub struct Device {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The GPU's name and architecture, `NVIDIA H200 (sm_90)`.
    name: String,
    /// `sm_90`.
    arch: String,
    has_clusters: bool,
}

impl Device {
    /// Opens GPU `ordinal` (the driver and NVRTC must be loadable).
    pub fn open(ordinal: usize) -> Result<Device> {
        compile::check_driver()?;
        compile::check_nvrtc()?;
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
            CudaContext::new(ordinal).map_err(|e| driver("cuCtxCreate", e))
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
        let gpu_name = context.name().unwrap_or_else(|_| "CUDA GPU".into());
        let arch = format!("sm_{major}{minor}");
        Ok(Device {
            name: format!("{gpu_name} ({arch})"),
            arch,
            has_clusters: major >= 9,
            context,
            stream,
        })
    }

    /// The GPU's name and architecture, `NVIDIA H200 (sm_90)`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the GPU runs thread-block clusters (compute capability 9.0 and newer).
    pub fn has_clusters(&self) -> bool {
        self.has_clusters
    }

    /// The architecture the kernels are compiled for, `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Makes the context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.context
            .bind_to_thread()
            .map_err(|e| driver("cuCtxSetCurrent", e))
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver("kernel execution", e))
    }

    /// Copies `values` into `buffer`, growing it through `registry` when needed. The copy is
    /// queued in stream order: pageable `values` are staged by the driver before this
    /// returns; a [`PinnedBuffer`]'s are read later, and it waits for the stream before the
    /// host touches it again.
    pub fn upload<T: Copy>(
        &self,
        registry: &Registry,
        buffer: &mut DeviceBuffer<T>,
        values: &[T],
    ) -> Result<()> {
        registry.reserve(buffer, values.len())?;
        if values.is_empty() {
            return Ok(());
        }
        // SAFETY: the buffer holds at least values.len() elements; `values` is pageable, so
        // the driver copies it out before returning.
        unsafe {
            result::memcpy_htod_async(buffer.ptr().address(), values, self.stream.cu_stream())
        }
        .map_err(|e| driver("copy to the GPU", e))
    }

    /// Copies `values` to `destination`, which holds at least `values.len()` elements; queued
    /// in stream order (pageable memory staged by the driver before this returns; a
    /// [`PinnedBuffer`]'s read later, as in [`Device::upload`]).
    pub fn write<T: Copy>(&self, destination: DevicePtr<T>, values: &[T]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller reserved the range; `values` is pageable, so the driver copies it
        // out before returning.
        unsafe { result::memcpy_htod_async(destination.address(), values, self.stream.cu_stream()) }
            .map_err(|e| driver("copy to the GPU", e))
    }

    /// Copies `out.len()` elements from `source` to the host, waiting for the stream.
    pub fn download<T: Copy>(&self, source: DevicePtr<T>, out: &mut [T]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller's buffer holds at least out.len() elements from `source`; the
        // stream is synchronised before `out` is used.
        unsafe { result::memcpy_dtoh_async(out, source.address(), self.stream.cu_stream()) }
            .map_err(|e| driver("copy from the GPU", e))?;
        self.synchronize()
    }

    /// `len` elements from `source`, downloaded.
    pub fn download_vec<T: Copy + Default>(
        &self,
        source: DevicePtr<T>,
        len: usize,
    ) -> Result<Vec<T>> {
        let mut values = vec![T::default(); len];
        self.download(source, &mut values)?;
        Ok(values)
    }

    /// Queues zeroing `len` elements from `start`.
    pub fn fill_zero<T>(&self, start: DevicePtr<T>, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller reserved the range.
        unsafe {
            result::memset_d8_async(
                start.address(),
                0,
                len * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| driver("memset", e))
    }

    /// An event recorded now on the stream, with timing (stage marks of a profile).
    pub fn timing_event(&self) -> Result<CudaEvent> {
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| driver("cuEventRecord", e))
    }

    /// Seconds between two recorded events (waits for the second).
    pub fn seconds_between(start: &CudaEvent, end: &CudaEvent) -> Result<f64> {
        start
            .elapsed_ms(end)
            .map(|ms| f64::from(ms) * 1e-3)
            .map_err(|e| driver("cuEventElapsedTime", e))
    }

    /// Queues a copy of `len` elements from `source` to `destination`, both on the device.
    pub fn copy<T>(
        &self,
        destination: DevicePtr<T>,
        source: DevicePtr<T>,
        len: usize,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the caller reserved both ranges.
        unsafe {
            result::memcpy_dtod_async(
                destination.address(),
                source.address(),
                len * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| driver("copy on the GPU", e))
    }
}

/// Page-locked host memory for the copies every call makes (positions in, results out): the
/// driver copies it directly rather than through a staging buffer of its own. It grows to
/// the largest length asked for.
pub struct PinnedBuffer<T> {
    slice: Option<PinnedHostSlice<T>>,
}

impl<T> Default for PinnedBuffer<T> {
    fn default() -> Self {
        PinnedBuffer { slice: None }
    }
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy> PinnedBuffer<T> {
    /// The first `len` elements, zeros where never written. Without waiting for the stream
    /// (a wait costs a small system several microseconds): the backend's copies from and
    /// into this memory are stream-ordered and each evaluation ends by waiting for its
    /// download, so when an evaluation failed before that, an upload still pending from it
    /// only rewrites device memory that the next upload, queued after it, rewrites again.
    /// Growing waits, so no copy is pending while the old memory is freed.
    pub fn slice(&mut self, device: &Device, len: usize) -> Result<&mut [T]> {
        if self.slice.as_ref().is_none_or(|slice| slice.len() < len) {
            device.synchronize()?;
            self.slice = None;
            let capacity = len.max(1).checked_next_power_of_two().unwrap_or(len);
            let bytes = capacity.checked_mul(std::mem::size_of::<T>());
            if bytes.is_none_or(|bytes| bytes > isize::MAX as usize / 2) {
                return Err(Error::Cuda(format!(
                    "{len} elements of page-locked host memory are too many"
                )));
            }
            // SAFETY: plain page-locked memory (no flags: read and written by the host);
            // zeroed below before any slice of it exists.
            let mut slice = unsafe { device.context.alloc_pinned_with_flags::<T>(capacity, 0) }
                .map_err(|e| driver("allocating page-locked host memory", e))?;
            let pointer = slice
                .as_mut_ptr()
                .map_err(|e| driver("page-locked host memory", e))?;
            // SAFETY: the allocation holds `capacity` elements; all-zero bits are a valid T.
            unsafe { std::ptr::write_bytes(pointer, 0, capacity) };
            self.slice = Some(slice);
        }
        let slice = self.slice.as_mut().expect("allocated above");
        let all = slice
            .as_mut_slice()
            .map_err(|e| driver("page-locked host memory", e))?;
        Ok(&mut all[..len])
    }
}

impl<T> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        // cuMemFreeHost runs in the slice's drop; its context must be current (a failure is
        // only recorded by cudarc, never a panic).
        if let Some(slice) = &self.slice {
            let _ = slice.context().bind_to_thread();
        }
    }
}
