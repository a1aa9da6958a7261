//! The gradient all-reduce the training step is written against.
//!
//! A step calls [`Collective::all_reduce_mean`] once on the flat gradient buffer. This issue
//! ships the world-size-1 implementation; the TCP ring (CPU) and NCCL (CUDA) plug in here
//! without changing the training loop.
//!
//! # Contract
//! * Every rank calls `all_reduce_mean` the same number of times with buffers of equal length.
//! * After the call every rank holds the element-wise mean, bit-identical on all ranks.
//! * A lost peer is an error ([`CollectiveError::PeerLost`]), never a hang.

use tch::Tensor;

/// What can go wrong in a collective.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CollectiveError {
    /// A peer closed its connection or stopped answering within the timeout.
    #[error("peer rank {rank} lost: {reason}")]
    PeerLost { rank: u32, reason: String },
    /// Ranks disagree on the buffer length.
    #[error("buffer length mismatch: local {local}, peer {peer}")]
    ShapeMismatch { local: usize, peer: usize },
}

/// An all-reduce over the ranks of one run.
pub trait Collective {
    /// This process's rank in `0..world_size`.
    fn rank(&self) -> u32;
    /// Number of ranks.
    fn world_size(&self) -> u32;
    /// Replaces `buf` by the element-wise mean of all ranks' `buf`.
    fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<(), CollectiveError>;
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
