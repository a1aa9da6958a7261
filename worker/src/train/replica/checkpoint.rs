//! Checkpoints inside an epoch: BatchNorm buffers averaged, the state saved, the driver's
//! barrier; the time they take is kept out of the epoch's training time.

use std::time::Instant;

use tch::Device;

use super::buffers::{average_buffers, replica_hash};
use super::{EpochRun, Replica};
use crate::collective::Collective;
use crate::train::{state, Driver, MidCheckpoint, TrainError};

impl Replica<'_> {
    /// A checkpoint after the epoch's first `steps` steps.
    pub(super) fn mid_checkpoint(
        &mut self,
        run: &EpochRun,
        steps: usize,
        stop: bool,
        collective: &mut dyn Collective,
        driver: &mut dyn Driver,
    ) -> Result<(), TrainError> {
        let started = Instant::now();
        let taken = self.mid_checkpoint_at(run, steps, stop, collective, driver);
        run.checkpointing
            .set(run.checkpointing.get() + started.elapsed());
        taken
    }

    /// [`Self::mid_checkpoint`]'s work: buffers averaged, state saved, the driver's barrier.
    fn mid_checkpoint_at(
        &mut self,
        run: &EpochRun,
        steps: usize,
        stop: bool,
        collective: &mut dyn Collective,
        driver: &mut dyn Driver,
    ) -> Result<(), TrainError> {
        average_buffers(&self.bufs, collective)?;
        let n = steps as i64;
        let c = MidCheckpoint {
            epoch: run.epoch,
            step_in_epoch: n as u32,
            global_step: self.step,
            step_losses: Vec::<f32>::try_from(&run.losses.narrow(0, 0, n).to_device(Device::Cpu))
                .unwrap_or_default(),
            params_hash: replica_hash(&self.flat, &self.bufs),
            state: self.saved_state()?,
            stop,
        };
        driver.checkpoint(&c)
    }

    /// With `save_state`: the model and optimizer as safetensors bytes.
    pub(super) fn saved_state(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>, TrainError> {
        if self.spec.save_state {
            Ok(Some(state::save(&self.vs, &self.adam)?))
        } else {
            Ok(None)
        }
    }
}
