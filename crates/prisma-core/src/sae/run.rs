//! A training run: activation batches from a source, mixed in a shuffle buffer, each batch given
//! to every SAE being trained (several SAEs from one pass over the data, since reading activations
//! is what costs), with checkpoints a killed run resumes from with identical weights.

use super::model::Sae;
use super::saelens::write_safetensors_with;
use super::train::{SaeTrainConfig, SaeTrainer, StepMetrics};
use crate::error::{PrismaError, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where activations come from (the activation cache reader, or tensors in memory).
pub trait ActivationSource {
    /// The next batch of activation vectors [n, d_in] (n may vary), or None at the end.
    fn next_batch(&mut self) -> Result<Option<Tensor>>;
    /// A position `seek` can return to (e.g. the number of batches read).
    fn position(&self) -> u64;
    fn seek(&mut self, position: u64) -> Result<()>;
}

/// Rows of a tensor in memory, `batch` at a time.
pub struct TensorSource {
    data: Tensor,
    batch: i64,
    next: u64,
}

impl TensorSource {
    pub fn new(data: Tensor, batch: i64) -> TensorSource {
        TensorSource { data, batch: batch.max(1), next: 0 }
    }
}

impl ActivationSource for TensorSource {
    fn next_batch(&mut self) -> Result<Option<Tensor>> {
        let n = self.data.size()[0];
        let start = self.next as i64 * self.batch;
        if start >= n {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(self.data.f_narrow(0, start, self.batch.min(n - start))?))
    }
    fn position(&self) -> u64 {
        self.next
    }
    fn seek(&mut self, position: u64) -> Result<()> {
        self.next = position;
        Ok(())
    }
}

/// SplitMix64: a tiny generator whose whole state is one u64, so it checkpoints exactly.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A uniformly random permutation of 0..n (Fisher-Yates).
    fn permutation(&mut self, n: usize) -> Vec<i64> {
        let mut p: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// SAELens's mixing buffer: fill to `capacity` rows, shuffle, serve the first half in batches and
/// keep the second half to mix with what comes next.
pub struct ShuffleBuffer {
    capacity: i64,
    batch: i64,
    /// Rows waiting to be mixed.
    kept: Option<Tensor>,
    /// Shuffled rows being served.
    queue: Option<Tensor>,
    rng: Rng,
    source_exhausted: bool,
}

impl ShuffleBuffer {
    pub fn new(capacity: i64, batch: i64, seed: i64) -> ShuffleBuffer {
        ShuffleBuffer {
            capacity: capacity.max(2 * batch),
            batch,
            kept: None,
            queue: None,
            rng: Rng(seed as u64 ^ 0x5AE5_EED5),
            source_exhausted: false,
        }
    }

    fn rows(t: &Option<Tensor>) -> i64 {
        t.as_ref().map_or(0, |t| t.size()[0])
    }

    /// The next shuffled batch of exactly `batch` rows, or None when the source is spent.
    pub fn next_batch(&mut self, source: &mut dyn ActivationSource) -> Result<Option<Tensor>> {
        if Self::rows(&self.queue) < self.batch {
            self.refill(source)?;
        }
        let Some(queue) = self.queue.take() else { return Ok(None) };
        let n = queue.size()[0];
        if n < self.batch {
            return Ok(None);
        }
        let batch = queue.f_narrow(0, 0, self.batch)?;
        if n > self.batch {
            self.queue = Some(queue.f_narrow(0, self.batch, n - self.batch)?);
        }
        Ok(Some(batch))
    }

    fn refill(&mut self, source: &mut dyn ActivationSource) -> Result<()> {
        let mut parts: Vec<Tensor> = [self.queue.take(), self.kept.take()].into_iter().flatten().collect();
        let mut have: i64 = parts.iter().map(|t| t.size()[0]).sum();
        while have < self.capacity && !self.source_exhausted {
            match source.next_batch()? {
                Some(b) => {
                    let b = b.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?;
                    have += b.size()[0];
                    parts.push(b);
                }
                None => self.source_exhausted = true,
            }
        }
        if parts.is_empty() {
            return Ok(());
        }
        let all = Tensor::f_cat(&parts, 0)?;
        let n = all.size()[0];
        let order = Tensor::from_slice(&self.rng.permutation(n as usize));
        let mixed = all.f_index_select(0, &order)?;
        // Serve half (whole batches), keep the rest; at the end of the data serve everything.
        let serve = if self.source_exhausted { n } else { ((n / 2) / self.batch).max(1) * self.batch };
        let serve = serve.min(n);
        self.queue = Some(mixed.f_narrow(0, 0, serve)?);
        if serve < n {
            self.kept = Some(mixed.f_narrow(0, serve, n - serve)?);
        }
        Ok(())
    }

    /// Some of the rows now held (to estimate a scaling factor or initialise b_dec).
    pub fn sample(&mut self, source: &mut dyn ActivationSource) -> Result<Option<Tensor>> {
        if Self::rows(&self.queue) < self.batch {
            self.refill(source)?;
        }
        Ok(self.queue.as_ref().map(|q| q.shallow_clone()))
    }
}

/// How a run reads, mixes and checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct RunOptions {
    /// Rows per training step.
    pub batch_size: i64,
    /// Rows the shuffle buffer mixes (SAELens: n_batches_in_buffer × batch).
    pub buffer_rows: i64,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub seed: i64,
    /// Checkpoint every this many steps into `checkpoint_dir` (0: only at the end).
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub checkpoint_every: i64,
    #[serde(default)]
    #[ts(optional, as = "Option<String>")]
    pub checkpoint_dir: Option<PathBuf>,
}

/// A training run over one hook of an activation cache, as the binding takes it.
#[derive(Debug, Clone, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct TrainRequest {
    /// The cache folder (`prisma sae cache`).
    pub cache: String,
    pub hook: String,
    pub configs: Vec<SaeTrainConfig>,
    pub options: RunOptions,
    /// One SAELens folder per config.
    pub outs: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    configs: Vec<SaeTrainConfig>,
    options: RunOptions,
    trainers: Vec<serde_json::Value>,
    rng: Rng,
    source_position: u64,
    source_exhausted: bool,
}

const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// Trains one SAE per config from one pass over `source`; `on_step(i, metrics)` sees every step of
/// SAE i. Resumes from `opts.checkpoint_dir` when it holds a checkpoint of the same configs. Stops
/// at the smallest `total_steps` or when the data runs out. Returns the SAEs in inference form.
pub fn train(
    source: &mut dyn ActivationSource,
    configs: &[SaeTrainConfig],
    opts: &RunOptions,
    on_step: &mut dyn FnMut(usize, &StepMetrics) -> Result<()>,
) -> Result<Vec<Sae>> {
    if configs.is_empty() {
        return Err(PrismaError::Argument("no SAE to train".into()));
    }
    if opts.batch_size < 1 || opts.buffer_rows < 1 {
        return Err(PrismaError::Argument("batch_size and buffer_rows must be positive".into()));
    }
    if configs.iter().any(|c| c.d_in != configs[0].d_in) {
        return Err(PrismaError::Argument("SAEs trained in one pass must share d_in".into()));
    }
    let mut trainers = configs.iter().cloned().map(SaeTrainer::new).collect::<Result<Vec<_>>>()?;
    let mut buffer = ShuffleBuffer::new(opts.buffer_rows, opts.batch_size, opts.seed);
    let checkpoint = opts.checkpoint_dir.as_ref().map(|d| d.join(CHECKPOINT_FILE));
    let resumed = match &checkpoint {
        Some(path) if path.is_file() => {
            restore(path, configs, opts, &mut trainers, &mut buffer, source)?;
            true
        }
        _ => false,
    };
    if !resumed {
        if let Some(sample) = buffer.sample(source)? {
            for t in trainers.iter_mut() {
                t.estimate_scaling_factor(std::slice::from_ref(&sample))?;
                t.init_b_dec(&sample.f_narrow(0, 0, opts.batch_size.min(sample.size()[0]))?)?;
            }
        }
    }
    let total = configs.iter().map(|c| c.total_steps).min().unwrap_or(0);
    while trainers[0].step < total {
        let Some(batch) = buffer.next_batch(source)? else { break };
        for (i, t) in trainers.iter_mut().enumerate() {
            let m = t.train_step(&batch)?;
            on_step(i, &m)?;
        }
        let step = trainers[0].step;
        if let Some(path) = &checkpoint {
            if opts.checkpoint_every > 0 && step % opts.checkpoint_every == 0 && step < total {
                save_checkpoint(path, configs, opts, &trainers, &buffer, source)?;
            }
        }
    }
    if let Some(path) = &checkpoint {
        save_checkpoint(path, configs, opts, &trainers, &buffer, source)?;
    }
    trainers.iter().map(SaeTrainer::to_sae).collect()
}

fn save_checkpoint(
    path: &Path,
    configs: &[SaeTrainConfig],
    opts: &RunOptions,
    trainers: &[SaeTrainer],
    buffer: &ShuffleBuffer,
    source: &dyn ActivationSource,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, t) in trainers.iter().enumerate() {
        for (name, value) in t.state_tensors()? {
            tensors.push((format!("sae{i}.{name}"), value));
        }
    }
    for (name, part) in [("buffer.queue", &buffer.queue), ("buffer.kept", &buffer.kept)] {
        if let Some(t) = part {
            tensors.push((name.into(), t.f_contiguous()?));
        }
    }
    let meta = CheckpointMeta {
        configs: configs.to_vec(),
        options: RunOptions { checkpoint_dir: None, ..opts.clone() },
        trainers: trainers.iter().map(SaeTrainer::state_meta).collect(),
        rng: buffer.rng,
        source_position: source.position(),
        source_exhausted: buffer.source_exhausted,
    };
    let text = serde_json::to_string(&meta).map_err(|e| PrismaError::Internal(e.to_string()))?;
    let named: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.shallow_clone())).collect();
    write_safetensors_with(path, &named, Some(HashMap::from([("run".to_string(), text)])))
}

fn restore(
    path: &Path,
    configs: &[SaeTrainConfig],
    opts: &RunOptions,
    trainers: &mut [SaeTrainer],
    buffer: &mut ShuffleBuffer,
    source: &mut dyn ActivationSource,
) -> Result<()> {
    let bad = |reason: String| PrismaError::TensorFile { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| PrismaError::Io { path: path.into(), reason: e.to_string() })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a checkpoint ({e})")))?;
    let text =
        header.metadata().as_ref().and_then(|m| m.get("run").cloned()).ok_or_else(|| bad("no run state in the checkpoint".into()))?;
    let meta: CheckpointMeta = serde_json::from_str(&text).map_err(|e| bad(format!("unreadable run state ({e})")))?;
    if meta.configs != configs || meta.options != (RunOptions { checkpoint_dir: None, ..opts.clone() }) {
        return Err(bad("the checkpoint was made with different SAE configs or run options; use another folder".into()));
    }
    let tensors: HashMap<String, Tensor> = crate::weights::store::read_safetensors_f32(path)?.into_iter().collect();
    for (i, t) in trainers.iter_mut().enumerate() {
        let prefix = format!("sae{i}.");
        let own: HashMap<String, Tensor> =
            tensors.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.shallow_clone()))).collect();
        let state = meta.trainers.get(i).ok_or_else(|| bad(format!("no state for SAE {i}")))?;
        t.restore(&own, state)?;
    }
    buffer.queue = tensors.get("buffer.queue").map(Tensor::shallow_clone);
    buffer.kept = tensors.get("buffer.kept").map(Tensor::shallow_clone);
    buffer.rng = meta.rng;
    buffer.source_exhausted = meta.source_exhausted;
    source.seek(meta.source_position)
}
