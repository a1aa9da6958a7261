//! The gradient all-reduce the training step is written against, and its CPU implementation.
//!
//! A step calls [`Collective::all_reduce_mean`] once on the flat gradient buffer. [`Solo`] is
//! world size 1; [`Ring`] is the TCP ring all-reduce between CPU workers; NCCL (CUDA) plugs in
//! here later without changing the training loop.
//!
//! Owns the trait, its error type and the implementations. Not rendezvous: who is rank what, and
//! at which address, is decided by the coordinator and handed in as a [`RingConfig`].
//!
//! ```text
//!  mod.rs     Collective, CollectiveError, Solo
//!  ring.rs    Ring, RingConfig: reduce-scatter / all-gather on &mut [f32]   (no tch)
//!  link.rs    dial next + accept prev (strangers refused), socket options   (no tch)
//!  handshake.rs  the authenticated hello / challenge / proof exchange       (no tch)
//!  wire.rs    byte layouts of call header and chunks; error mapping         (no tch)
//!  tensor.rs  impl Collective for Ring: a CPU f32 tensor borrowed as &mut [f32]
//! ```
//!
//! # Contract
//! * Every rank calls `all_reduce_mean` the same number of times with buffers of equal length.
//! * After the call every rank holds the element-wise mean, bit-identical on all ranks.
//! * A lost peer is an error ([`CollectiveError::PeerLost`]), never a hang: every socket
//!   operation is bounded by the configured timeout.
//! * After any error a [`Ring`] is closed: its sockets are shut down (so peers fail fast too) and
//!   every later call returns the same error. Recovery means a new rendezvous and a new ring.
//!
//! Tests: at the bottom of `ring.rs` (algorithm, handshake, failures), `wire.rs` (encodings)
//! and `tensor.rs` (adapter).

mod comm_slot;
mod handshake;
mod link;
pub mod nccl;
pub mod ring;
mod ring_config;
pub mod staged;
mod tensor;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use tch::Tensor;

pub use ring::{Ring, RingConfig, DEFAULT_CHUNK_ELEMS};

/// What can go wrong in a collective.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CollectiveError {
    /// A peer closed its connection or stopped answering within the timeout.
    #[error("peer rank {rank} lost: {reason}")]
    PeerLost { rank: u32, reason: String },
    /// Ranks disagree on the buffer length.
    #[error("buffer length mismatch: local {local}, peer {peer}")]
    ShapeMismatch { local: usize, peer: usize },
    /// A connection's handshake was malformed or came from the wrong run, rank or world size.
    #[error("handshake with {peer} failed on {field}: {reason}")]
    Handshake {
        peer: SocketAddr,
        field: &'static str,
        reason: String,
    },
    /// A neighbour did not connect, accept or answer the handshake within the timeout.
    #[error("rank {rank} did not show up within {waited:?}")]
    Timeout { rank: u32, waited: Duration },
    /// The previous rank did not connect within the timeout, and connections that failed the
    /// handshake were refused meanwhile (the last one named).
    #[error("rank {rank} did not connect within {waited:?}; {refused} connection(s) were refused meanwhile, the last {last}")]
    Refused {
        rank: u32,
        waited: Duration,
        refused: u32,
        last: String,
    },
    /// A connected peer sent a message that breaks the protocol (wrong magic, segment or count).
    #[error("protocol error from rank {rank}: {reason}")]
    Protocol { rank: u32, reason: String },
    /// The ring configuration is inconsistent (rank out of range, wrong number of peers...).
    #[error("invalid ring configuration: {reason}")]
    Config { reason: String },
    /// A local socket operation failed (not attributable to a peer).
    #[error("{op} failed: {reason}")]
    Io { op: &'static str, reason: String },
    /// The tensor cannot be reduced by this collective (device, dtype or layout).
    #[error("unsupported tensor: {reason}")]
    UnsupportedTensor { reason: String },
    /// A shared library the collective needs cannot be loaded.
    #[error("cannot load {library}: {fix}")]
    Library { library: String, fix: String },
    /// An NCCL call failed.
    #[error("{op} failed: {reason}")]
    Nccl { op: &'static str, reason: String },
}

/// Ends a round's collective from another thread (the heartbeat thread, when the coordinator
/// ends the round), so a step blocked on a lost peer fails at once.
pub type AbortHandle = Box<dyn Fn() + Send>;

/// An all-reduce over the ranks of one run.
pub trait Collective {
    /// This process's rank in `0..world_size`.
    fn rank(&self) -> u32;
    /// Number of ranks.
    fn world_size(&self) -> u32;
    /// Replaces `buf` by the element-wise mean of all ranks' `buf`.
    fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<(), CollectiveError>;
    /// Whether `all_reduce_mean` has finished the reduction when it returns, so timing the
    /// call on the host measures it (not so for NCCL, which only enqueues work on the GPU).
    fn host_timed(&self) -> bool {
        true
    }
}

/// World size 1: the mean of one buffer is itself.
#[derive(Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> u32 {
        0
    }
    fn world_size(&self) -> u32 {
        1
    }
    fn all_reduce_mean(&mut self, _buf: &mut Tensor) -> Result<(), CollectiveError> {
        Ok(())
    }
}
