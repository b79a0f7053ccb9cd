//! CUDA graphs of the steady-state stages. A stage's launches (graph build, forward,
//! backward, readout kernels) depend only on the atom count, the buffers' addresses and a
//! few scalars; from the second call with the same [`GraphKey`] on, the stage is recorded
//! once as a CUDA graph and then replayed with one launch, which removes the per-kernel
//! launch latency and host work that bound small systems. Uploads and downloads stay outside
//! the graphs. Every buffer allocation changes the registry's generation, part of the key,
//! so a graph never runs on moved buffers.

use std::collections::{HashMap, HashSet};

use cudarc::driver::{CudaGraph, sys};

use super::device::{Device, driver};
use crate::error::{Error, Result};

/// A stage recorded as a graph of its own.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum GraphStage {
    Graph,
    Forward,
    Backward,
    Readout,
}

/// What a recorded stage depends on besides the buffers' contents.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct GraphKey {
    pub stage: GraphStage,
    pub n_atoms: usize,
    pub n_energy_atoms: usize,
    /// The registry's generation ([`Registry::generation`](super::buffers::Registry)).
    pub generation: u64,
    /// The stage's scalar arguments that can change between calls (bits).
    pub scalars: u64,
}

/// A recorded graph. cudarc's handle holds raw driver pointers and so is neither `Send` nor
/// `Sync`; the driver allows an executable graph to be launched from any thread with its
/// context bound (`CudaGraph::launch` binds it), and [`StageGraphs`] launches only through
/// `&mut self`, so no two threads ever use one at a time.
struct Recorded(CudaGraph);

// SAFETY: see `Recorded`.
unsafe impl Send for Recorded {}
// SAFETY: shared references never reach the graph (launches take `&mut StageGraphs`).
unsafe impl Sync for Recorded {}

/// At most this many recorded graphs (and keys seen once) are kept; past it all are dropped
/// (a system whose atom count keeps changing records nothing worth keeping).
const MAX_GRAPHS: usize = 32;

/// The recorded stages of one backend.
pub struct StageGraphs {
    /// Off with `PAINN_CUDA_GRAPHS=0` (every stage launched kernel by kernel).
    pub enabled: bool,
    graphs: HashMap<GraphKey, Recorded>,
    seen: HashSet<GraphKey>,
}

impl StageGraphs {
    pub fn new() -> StageGraphs {
        StageGraphs {
            enabled: std::env::var("PAINN_CUDA_GRAPHS").map_or(true, |value| value != "0"),
            graphs: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// A placeholder while the backend's own is in use.
    pub fn disabled() -> StageGraphs {
        StageGraphs {
            enabled: false,
            graphs: HashMap::new(),
            seen: HashSet::new(),
        }
    }

    /// Runs `stage` for `key` on `device`'s stream: the first time eagerly (sizes settle and
    /// buffers are allocated), the second time recorded and launched as a graph, afterwards
    /// by replaying that graph. `generation` reads the registry's generation.
    pub fn run<B>(
        &mut self,
        backend: &mut B,
        device: impl Fn(&B) -> &Device,
        generation: impl Fn(&B) -> u64,
        key: GraphKey,
        stage: impl FnOnce(&mut B) -> Result<()>,
    ) -> Result<()> {
        if !self.enabled {
            return stage(backend);
        }
        if let Some(Recorded(graph)) = self.graphs.get(&key) {
            return graph.launch().map_err(|e| driver("cuGraphLaunch", e));
        }
        if !self.seen.contains(&key) {
            stage(backend)?;
            if self.seen.len() >= MAX_GRAPHS {
                self.seen.clear();
            }
            self.seen.insert(key);
            return Ok(());
        }
        let stream = device(backend).stream().clone();
        // Relaxed: an allocation inside the stage (not expected once sizes have settled) is
        // allowed, and the generation check below keeps such a graph from being reused.
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| driver("cuStreamBeginCapture", e))?;
        let staged = stage(backend);
        let captured = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        staged?;
        let graph = captured
            .map_err(|e| driver("cuStreamEndCapture", e))?
            .ok_or_else(|| Error::Cuda("internal error: an empty stage graph".into()))?;
        graph.launch().map_err(|e| driver("cuGraphLaunch", e))?;
        if generation(backend) == key.generation {
            if self.graphs.len() >= MAX_GRAPHS {
                // Queued launches of the graphs dropped here finish first.
                device(backend).synchronize()?;
                self.graphs.clear();
            }
            self.graphs.insert(key, Recorded(graph));
        } else {
            // Buffers moved while recording: used once, not kept.
            device(backend).synchronize()?;
        }
        Ok(())
    }
}
