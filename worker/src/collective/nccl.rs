//! [`Collective`] over NCCL (through cudarc, `libnccl` loaded at run time): the GPU path.
//!
//! # Rendezvous
//! Rank 0 calls [`unique_id`] (`ncclGetUniqueId`: 128 bytes naming a bootstrap socket in rank 0's
//! process), hands it to the coordinator, and the coordinator hands it to every other rank of the
//! round (rpc `ShareNcclId`, the same role as torch's TCPStore). Every rank then calls
//! [`Nccl::init`] (`ncclCommInitRank`) with the id, its rank and the world size. A new round
//! makes a new id and communicator; an id never outlives its round.
//!
//! # Stream
//! The all-reduce is enqueued on the **legacy default stream** (`cudaStream_t` null), which is
//! libtorch's current stream: ringtrain never sets another one, and PyTorch builds use the legacy
//! (not per-thread) default stream. Work on the legacy default stream is ordered with all of
//! libtorch's kernels on the device, so the backward's gradients are complete before NCCL reads
//! them and Adam reads the averaged gradients after NCCL writes them, without any host
//! synchronisation. The host waits only where a metric is read.
//!
//! # Failure
//! A lost peer makes NCCL block rather than fail. [`NcclAbort`] (`ncclCommAbort` from the
//! heartbeat thread when the coordinator ends the round) releases the blocked kernels; the next
//! call here then fails with [`CollectiveError::PeerLost`] and the worker re-joins. Who releases
//! the communicator, and when, is `comm_slot.rs`: exactly once, by the first abort or the drop,
//! never destroyed, never waiting for a blocked call.
//!
//! # Library
//! cudarc opens `libnccl.so` and panics when it cannot. [`check_library`] probes first and turns
//! absence into [`CollectiveError::Library`], which names the library, where the torch wheel's
//! copy is (`libnccl.so.2`) and the fix.
//!
//! Tests: `tests` at the bottom (library check, id handling, rejections without a GPU);
//! `tests/tests/gpu.rs` behind the `cuda-tests` feature (a real communicator).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::nccl::{result, sys};
use tch::{Device, Kind, Tensor};

use super::comm_slot::CommSlot;
use super::{Collective, CollectiveError};

/// Bytes in an NCCL unique id.
pub const UNIQUE_ID_BYTES: usize = 128;

/// The file name cudarc opens (it does not try `libnccl.so.2`, the wheel's name).
pub const LIBRARY_NAME: &str = "libnccl.so";

/// Folders that may hold `libnccl.so.2`: `LD_LIBRARY_PATH`, then the torch wheel's
/// `nvidia/nccl/lib` next to the loaded libtorch.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(torch_lib) = crate::amp::libtorch_dir() {
        dirs.push(torch_lib.join("../../nvidia/nccl/lib"));
    }
    dirs
}

/// The first `libnccl.so.2` (or `libnccl.so`) in `dirs`.
pub fn find_library_file(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| [d.join("libnccl.so.2"), d.join(LIBRARY_NAME)])
        .find(|p| p.is_file())
}

/// The error for an NCCL library that cudarc cannot open, with the fix for where it was found.
pub fn library_missing(found: Option<&Path>) -> CollectiveError {
    let fix = match found {
        Some(p) => {
            let dir = p.parent().unwrap_or(Path::new("."));
            format!(
                "{} exists but cudarc opens only {LIBRARY_NAME}: run \
                 `mkdir -p ~/.cache/ringtrain/nccl && ln -sf {} ~/.cache/ringtrain/nccl/{LIBRARY_NAME}` \
                 and add ~/.cache/ringtrain/nccl to LD_LIBRARY_PATH (scripts/gpu-check.sh does this; \
                 binaries built by `make build` find it themselves), or use --collective ring",
                p.display(),
                dir.join(p.file_name().unwrap_or_default()).display(),
            )
        }
        None => "install the torch==2.11.0 wheel (it ships nvidia/nccl/lib/libnccl.so.2) and link \
                 it as libnccl.so on LD_LIBRARY_PATH, or use --collective ring"
            .into(),
    };
    CollectiveError::Library {
        library: LIBRARY_NAME.into(),
        fix,
    }
}

/// Checks that cudarc can open NCCL (instead of letting it panic) and returns its version
/// (e.g. 22805 for 2.28.5).
pub fn check_library() -> Result<i32, CollectiveError> {
    // SAFETY: only tries to open the library by name; nothing is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(library_missing(
            find_library_file(&search_dirs()).as_deref(),
        ));
    }
    result::get_nccl_version().map_err(|e| nccl_error("ncclGetVersion", e, None))
}

fn nccl_error(
    op: &'static str,
    e: result::NcclError,
    comm: Option<sys::ncclComm_t>,
) -> CollectiveError {
    // SAFETY: ncclGetErrorString returns a static string; ncclGetLastError accepts a null or
    // live communicator and returns a string owned by NCCL, valid until the next call.
    let (name, last) = unsafe {
        let name = std::ffi::CStr::from_ptr(sys::ncclGetErrorString(e.0))
            .to_string_lossy()
            .into_owned();
        let last_ptr = sys::ncclGetLastError(comm.unwrap_or(std::ptr::null_mut()));
        let last = if last_ptr.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(last_ptr)
                .to_string_lossy()
                .into_owned()
        };
        (name, last)
    };
    CollectiveError::Nccl {
        op,
        reason: if last.is_empty() {
            name
        } else {
            format!("{name}: {last}")
        },
    }
}

/// A new NCCL unique id (rank 0 only; it opens the bootstrap socket the others connect to).
pub fn unique_id() -> Result<Vec<u8>, CollectiveError> {
    check_library()?;
    let id = result::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e, None))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// Parses the 128 bytes of an id handed over by the coordinator.
pub fn parse_unique_id(bytes: &[u8]) -> Result<sys::ncclUniqueId, CollectiveError> {
    if bytes.len() != UNIQUE_ID_BYTES {
        return Err(CollectiveError::Config {
            reason: format!(
                "NCCL unique id has {} bytes, expected {UNIQUE_ID_BYTES}",
                bytes.len()
            ),
        });
    }
    let mut id = sys::ncclUniqueId {
        internal: [0; UNIQUE_ID_BYTES],
    };
    for (dst, &src) in id.internal.iter_mut().zip(bytes) {
        *dst = src as std::ffi::c_char;
    }
    Ok(id)
}

/// A raw NCCL communicator. Released only through its [`CommSlot`] (`ncclCommAbort`, once).
#[derive(Clone, Copy)]
struct CommPtr(sys::ncclComm_t);

// SAFETY: an ncclComm_t may be used from any thread. The slot guarantees it is released once and
// that no call starts after that; NCCL documents ncclCommAbort as safe to call while another
// thread is blocked on the communicator's work.
unsafe impl Send for CommPtr {}
unsafe impl Sync for CommPtr {}

/// An NCCL communicator for one round.
pub struct Nccl {
    comm: Arc<CommSlot<CommPtr>>,
    rank: u32,
    world_size: u32,
    device: Device,
}

/// Ends a communicator from another thread (`ncclCommAbort`), releasing blocked collectives.
#[derive(Clone)]
pub struct NcclAbort {
    comm: Arc<CommSlot<CommPtr>>,
}

impl NcclAbort {
    /// Aborts the communicator; only the first abort (or drop) releases it, and it never waits
    /// for a collective in flight (`comm_slot.rs`).
    pub fn abort(&self) {
        if self.comm.abort() {
            tracing::warn!("NCCL communicator aborted");
        }
    }
}

/// `ncclCommAbort`, the one release of a communicator.
fn release(c: CommPtr) {
    // SAFETY: `c` came from ncclCommInitRank; the slot calls this exactly once per
    // communicator (module `comm_slot`), and never destroys it.
    if let Err(e) = unsafe { result::comm_abort(c.0) } {
        tracing::warn!(error = ?e, "ncclCommAbort failed");
    }
}

impl Nccl {
    /// Joins the communicator named by `id` as `rank` of `world_size` on CUDA device `device`
    /// (blocks until every rank has joined).
    pub fn init(
        id: &[u8],
        rank: u32,
        world_size: u32,
        device: Device,
    ) -> Result<Self, CollectiveError> {
        let id = parse_unique_id(id)?;
        if rank >= world_size {
            return Err(CollectiveError::Config {
                reason: format!("rank {rank} outside world size {world_size}"),
            });
        }
        let Device::Cuda(index) = device else {
            return Err(CollectiveError::UnsupportedTensor {
                reason: format!(
                    "NCCL needs a CUDA device, this worker trains on {}; use --collective ring",
                    crate::device::name(device)
                ),
            });
        };
        check_library()?;
        crate::device::bind_thread(index).map_err(|reason| CollectiveError::Nccl {
            op: "cuCtxSetCurrent",
            reason,
        })?;
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        let (n, r) = (world_size as i32, rank as i32);
        // SAFETY: `comm` is a valid out-pointer; the id has the right size; rank < world size.
        unsafe { result::comm_init_rank(&mut comm, n, id, r) }
            .map_err(|e| nccl_error("ncclCommInitRank", e, None))?;
        Ok(Self {
            comm: CommSlot::new(CommPtr(comm), release),
            rank,
            world_size,
            device,
        })
    }

    /// A handle that aborts this communicator from another thread.
    pub fn abort_handle(&self) -> NcclAbort {
        NcclAbort {
            comm: self.comm.clone(),
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // Abort, not destroy: ncclCommDestroy waits for peers, which may be gone. A no-op when
        // the heartbeat thread aborted it already.
        self.comm.abort();
    }
}

/// Checks that `t` is a contiguous f32 tensor on `device`.
pub(super) fn check_cuda_f32(t: &Tensor, device: Device) -> Result<(), CollectiveError> {
    let unsupported = |reason: String| Err(CollectiveError::UnsupportedTensor { reason });
    if !t.defined() {
        return unsupported("undefined tensor".into());
    }
    if t.device() != device {
        return unsupported(format!(
            "tensor on {}, the communicator is on {}",
            crate::device::name(t.device()),
            crate::device::name(device)
        ));
    }
    if t.kind() != Kind::Float {
        return unsupported(format!("dtype {:?}, NCCL reduces f32 here", t.kind()));
    }
    if !t.is_contiguous() {
        return unsupported("not contiguous; call .contiguous() first".into());
    }
    Ok(())
}

impl Collective for Nccl {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn world_size(&self) -> u32 {
        self.world_size
    }

    fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<(), CollectiveError> {
        check_cuda_f32(buf, self.device)?;
        let count = buf.numel();
        if count == 0 {
            return Ok(());
        }
        let Some(call) = self.comm.enter() else {
            return Err(CollectiveError::PeerLost {
                rank: self.rank,
                reason: "NCCL communicator aborted (the round ended)".into(),
            });
        };
        let comm = call.handle().0;
        let ptr = buf.data_ptr();
        // SAFETY: `ptr` addresses `count` contiguous f32 on this communicator's device (checked
        // above), owned by `buf`, which is borrowed mutably for the call. The operation is
        // enqueued on the legacy default stream (null), libtorch's stream, so libtorch's later
        // kernels on this memory run after it (module docs). `call` proves the communicator
        // was not released when the call started; an abort meanwhile is NCCL's documented way
        // to end it (comm_slot.rs).
        let r = unsafe {
            result::all_reduce(
                ptr,
                ptr,
                count,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclAvg,
                comm,
                std::ptr::null_mut(),
            )
        };
        r.map(|_| ()).map_err(|e| {
            // After an abort the communicator is gone: do not ask it for its last error.
            let live = (!self.comm.is_aborted()).then_some(comm);
            let err = nccl_error("ncclAllReduce", e, live);
            CollectiveError::PeerLost {
                rank: self.rank,
                reason: err.to_string(),
            }
        })
    }
    fn host_timed(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_missing_names_the_library_the_file_found_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_library_file(&[dir.path().to_path_buf()]), None);
        let err = library_missing(None).to_string();
        assert!(err.contains("libnccl.so"), "{err}");
        assert!(err.contains("--collective ring"), "{err}");

        let so2 = dir.path().join("libnccl.so.2");
        std::fs::write(&so2, b"not really a library").unwrap();
        let found = find_library_file(&[PathBuf::from("/nonexistent"), dir.path().to_path_buf()]);
        assert_eq!(found.as_deref(), Some(so2.as_path()));
        let err = library_missing(found.as_deref()).to_string();
        assert!(err.contains(&so2.display().to_string()), "{err}");
        assert!(err.contains("ln -sf"), "{err}");
        assert!(err.contains("LD_LIBRARY_PATH"), "{err}");
    }

    #[test]
    fn unique_ids_must_have_128_bytes() {
        let id: Vec<u8> = (0..UNIQUE_ID_BYTES).map(|i| i as u8).collect();
        let parsed = parse_unique_id(&id).unwrap();
        assert_eq!(parsed.internal[5] as u8, 5);
        assert_eq!(parsed.internal[200 - 73] as u8, 127);
        for len in [0, 127, 129] {
            let err = parse_unique_id(&vec![0; len]).unwrap_err();
            assert!(
                err.to_string().contains(&format!("has {len} bytes")),
                "{err}"
            );
        }
    }

    #[test]
    fn init_refuses_a_cpu_device_or_a_bad_rank_before_touching_nccl() {
        let id = vec![0u8; UNIQUE_ID_BYTES];
        let err = Nccl::init(&id, 0, 1, Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("--collective ring"), "{err}");
        let err = Nccl::init(&id, 2, 2, Device::Cuda(0)).err().unwrap();
        assert!(
            err.to_string().contains("rank 2 outside world size 2"),
            "{err}"
        );
        let err = Nccl::init(&id[..10], 0, 1, Device::Cuda(0)).err().unwrap();
        assert!(err.to_string().contains("has 10 bytes"), "{err}");
    }

    #[test]
    fn check_library_never_panics_and_agrees_with_the_file_search() {
        // Built by `make build`, the binary finds the wheel's NCCL through its run path; anywhere
        // else this must be an error naming the library, never cudarc's panic.
        match check_library() {
            Ok(version) => assert!(version >= 22000, "NCCL version {version}"),
            Err(CollectiveError::Library { library, fix }) => {
                assert_eq!(library, "libnccl.so");
                assert!(fix.contains("--collective ring"), "{fix}");
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn rank_zero_can_make_ids_without_a_gpu() {
        // ncclGetUniqueId only opens NCCL's bootstrap socket; it needs no GPU, so the id
        // exchange runs for real here whenever the library loads.
        if check_library().is_err() {
            return;
        }
        let a = unique_id().unwrap();
        let b = unique_id().unwrap();
        assert_eq!(a.len(), UNIQUE_ID_BYTES);
        assert_ne!(a, b, "each call names a new bootstrap socket");
        assert!(parse_unique_id(&a).is_ok());
    }

    #[test]
    fn tensors_on_the_wrong_device_or_dtype_are_refused() {
        let t = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let err = check_cuda_f32(&t, Device::Cuda(0)).unwrap_err();
        assert!(err.to_string().contains("tensor on cpu"), "{err}");
        let t = Tensor::zeros([4], (Kind::Double, Device::Cpu));
        let err = check_cuda_f32(&t, Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("Double"), "{err}");
    }
}
