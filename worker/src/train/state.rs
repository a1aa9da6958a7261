//! A replica's full training state as bytes, for checkpoints and resuming a round.
//!
//! ```text
//! model.safetensors      every VarStore variable (parameters and BatchNorm buffers) by its
//!                        PyTorch state_dict name, like final.safetensors
//! optimizer.safetensors  exp_avg, exp_avg_sq: Adam's moments, flat, laid out like FlatParams
//! ```
//! Adam's step count is the run's global step (one update per step), so it is not stored here.
//! Restoring copies into the existing tensors (the flat buffers' views), so the aliasing of
//! parameters, gradients and moments survives.
//!
//! Tests: the resume tests in `tests/tests/resume.rs` (bitwise equality with an uninterrupted
//! run).

use std::path::Path;

use tch::nn::VarStore;
use tch::Tensor;

use super::TrainError;
use crate::optim::Adam;

/// Where a resumed replica starts.
#[derive(Debug, Clone)]
pub struct ResumeState {
    /// Epoch to run next (or to continue).
    pub epoch: u32,
    /// Steps of `epoch` already done, and their losses (mean over the ranks).
    pub step_in_epoch: u32,
    pub epoch_losses: Vec<f32>,
    /// Steps done so far (Adam's step count).
    pub global_step: u64,
    /// `model.safetensors` bytes.
    pub model: Vec<u8>,
    /// `optimizer.safetensors` bytes.
    pub optimizer: Vec<u8>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn scratch() -> Result<tempfile::TempDir, TrainError> {
    tempfile::tempdir().map_err(|e| TrainError::Io {
        path: std::env::temp_dir(),
        reason: e.to_string(),
    })
}

/// The model's variables as a safetensors file.
pub fn model_bytes(vs: &VarStore) -> Result<Vec<u8>, TrainError> {
    let dir = scratch()?;
    let path = dir.path().join("model.safetensors");
    vs.save(&path)?;
    std::fs::read(&path).map_err(io(&path))
}

/// `(model.safetensors, optimizer.safetensors)` bytes of this replica.
pub fn save(vs: &VarStore, adam: &Adam) -> Result<(Vec<u8>, Vec<u8>), TrainError> {
    let model = model_bytes(vs)?;
    let dir = scratch()?;
    let path = dir.path().join("optimizer.safetensors");
    Tensor::write_safetensors(
        &[("exp_avg", &adam.exp_avg), ("exp_avg_sq", &adam.exp_avg_sq)],
        &path,
    )?;
    let optimizer = std::fs::read(&path).map_err(io(&path))?;
    Ok((model, optimizer))
}

/// Loads `r` into the model's variables and Adam's moments (shapes must match).
pub fn restore(vs: &mut VarStore, adam: &mut Adam, r: &ResumeState) -> Result<(), TrainError> {
    let dir = scratch()?;
    let mpath = dir.path().join("model.safetensors");
    std::fs::write(&mpath, &r.model).map_err(io(&mpath))?;
    vs.load(&mpath)?;
    let opath = dir.path().join("optimizer.safetensors");
    std::fs::write(&opath, &r.optimizer).map_err(io(&opath))?;
    let tensors = Tensor::read_safetensors(&opath)?;
    for (name, dst) in [
        ("exp_avg", &mut adam.exp_avg),
        ("exp_avg_sq", &mut adam.exp_avg_sq),
    ] {
        let src = tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| TrainError::Resume(format!("optimizer state has no tensor {name}")))?;
        if src.size() != dst.size() {
            return Err(TrainError::Resume(format!(
                "optimizer tensor {name} has shape {:?}, this model needs {:?}",
                src.size(),
                dst.size()
            )));
        }
        tch::no_grad(|| dst.copy_(src));
    }
    adam.step = r.global_step;
    Ok(())
}
