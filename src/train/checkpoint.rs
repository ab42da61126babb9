//! Checkpoints that resume: the trained variables and the optimiser's moments as safetensors,
//! and a serde JSON of the settings, the step, the sampler's state and the progress so far.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::AdamW;
use crate::error::{Error, Result};

/// The variables, `weights.safetensors`.
pub const CHECKPOINT_WEIGHTS: &str = "weights.safetensors";
/// The optimiser's moments, `optimizer.safetensors`.
pub const CHECKPOINT_OPTIMIZER: &str = "optimizer.safetensors";
/// Settings, step and progress, `state.json`.
pub const CHECKPOINT_STATE: &str = "state.json";

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState<C, L> {
    /// The run's settings (a resumed run must use the same).
    pub config: C,
    /// Steps done.
    pub step: usize,
    /// The optimiser's step count.
    pub optimizer_steps: u64,
    /// The state of the run's random generator (batches, heads, dropout).
    pub rng_state: u64,
    /// Progress reports so far.
    pub logs: Vec<L>,
}

/// Whether `dir` holds a checkpoint.
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(CHECKPOINT_STATE).is_file()
}

/// Writes a checkpoint into `dir`, replacing the one there only once the new one is complete.
pub fn save_checkpoint<C: Serialize, L: Serialize>(
    dir: &Path,
    vs: &nn::VarStore,
    opt: &AdamW,
    state: &CheckpointState<C, L>,
) -> Result<()> {
    let tmp = dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(Error::io("removing", tmp.clone()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(Error::io("creating", tmp.clone()))?;
    vs.save(tmp.join(CHECKPOINT_WEIGHTS))?;
    let moments = opt.state_tensors();
    let named: Vec<(&str, Tensor)> = moments
        .iter()
        .map(|(n, t)| (n.as_str(), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&named, tmp.join(CHECKPOINT_OPTIMIZER))?;
    let json = serde_json::to_string_pretty(state).map_err(|source| Error::Json {
        what: "checkpoint state".into(),
        source,
    })?;
    let state_path = tmp.join(CHECKPOINT_STATE);
    std::fs::write(&state_path, json + "\n").map_err(Error::io("writing", state_path))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(Error::io("removing", dir.to_path_buf()))?;
    }
    std::fs::rename(&tmp, dir).map_err(Error::io("renaming", tmp.clone()))?;
    Ok(())
}

/// Reads a checkpoint from `dir` into `vs` and `opt`, and returns its state.
pub fn load_checkpoint<C: DeserializeOwned, L: DeserializeOwned>(
    dir: &Path,
    vs: &nn::VarStore,
    opt: &mut AdamW,
) -> Result<CheckpointState<C, L>> {
    let state_path = dir.join(CHECKPOINT_STATE);
    let text =
        std::fs::read_to_string(&state_path).map_err(Error::io("reading", state_path.clone()))?;
    let state: CheckpointState<C, L> =
        serde_json::from_str(&text).map_err(|source| Error::Json {
            what: state_path.display().to_string(),
            source,
        })?;
    load_weights(vs, &dir.join(CHECKPOINT_WEIGHTS))?;
    let moments = Tensor::read_safetensors(dir.join(CHECKPOINT_OPTIMIZER))?;
    opt.load_state(moments, state.optimizer_steps)?;
    Ok(state)
}

/// Copies every variable of `vs` from the safetensors file at `path` (all must be there, with
/// their shapes).
fn load_weights(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let saved: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(path)?.into_iter().collect();
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let src = saved.get(&name).ok_or_else(|| {
            Error::config("checkpoint", format!("{} has no `{name}`", path.display()))
        })?;
        if src.size() != var.size() {
            return Err(Error::config(
                "checkpoint",
                format!("`{name}` is {:?} there, {:?} here", src.size(), var.size()),
            ));
        }
        var.f_copy_(src)?;
    }
    Ok(())
}

/// Where a run starts: fresh (`None`), or the state of the checkpoint in `dir` when there is one
/// there, whose settings must be `config` (else an error that says so).
pub fn resume<C, L>(
    dir: Option<&Path>,
    vs: &nn::VarStore,
    opt: &mut AdamW,
    config: &C,
) -> Result<Option<CheckpointState<C, L>>>
where
    C: DeserializeOwned + PartialEq,
    L: DeserializeOwned,
{
    let Some(dir) = dir.filter(|d| has_checkpoint(d)) else {
        return Ok(None);
    };
    let state: CheckpointState<C, L> = load_checkpoint(dir, vs, opt)?;
    if state.config != *config {
        return Err(Error::config(
            "checkpoint",
            format!(
                "{} was written with other settings; remove it or use the same settings",
                dir.display()
            ),
        ));
    }
    Ok(Some(state))
}
