//! SAELens folders: `cfg.json` + `sae_weights.safetensors`, read and written natively.

use super::config::{parse_saelens, Architecture, Normalization};
use super::model::Sae;
use crate::error::{PrismaError, Result};
use crate::tensor_file::write_atomically;
use crate::weights::store::TensorStore;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
/// Written by SAELens's trainer beside a checkpoint: `{"scaling_factor": f}`.
pub const SCALER_FILE: &str = "activation_scaler.json";

pub fn is_saelens_dir(dir: &Path) -> bool {
    dir.join(CFG_FILE).is_file()
}

/// Reads a SAELens folder. An `expected_average_only_in` SAE is folded with `scaling_factor` when
/// given, else with the factor in `activation_scaler.json` beside it; without either it runs as
/// SAELens runs it, unscaled.
pub fn read_dir(dir: &Path, scaling_factor: Option<f64>) -> Result<Sae> {
    let cfg_path = dir.join(CFG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| PrismaError::Io { path: cfg_path.clone(), reason: e.to_string() })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PrismaError::Config { path: cfg_path.clone(), reason: format!("not valid JSON ({e})") })?;
    let parsed = parse_saelens(json, &cfg_path)?;
    let weights_path = dir.join(WEIGHTS_FILE);
    if !weights_path.is_file() {
        return Err(PrismaError::WeightsMissing { file: weights_path, tensor: format!("(no {WEIGHTS_FILE})") });
    }
    let kind = parsed.cfg.kind;
    let mut store = TensorStore::open_file(&weights_path, kind, Device::Cpu)?;
    let cfg = parsed.cfg;
    let (d_in, d_sae) = (cfg.d_in, cfg.d_sae);
    let w_enc = store.take("W_enc", &[d_in, d_sae])?;
    let mut w_dec = store.take("W_dec", &[d_sae, d_in])?;
    let b_dec = store.take("b_dec", &[d_in])?;
    let mut b_enc = store.take_optional("b_enc", &[d_sae])?;
    let mut threshold = store.take_optional("threshold", &[d_sae])?;
    // SAELens < 6 JumpReLU checkpoints hold log_threshold.
    if let Some(log_threshold) = store.take_optional("log_threshold", &[d_sae])? {
        threshold = Some(log_threshold.f_exp()?);
    }
    let b_gate = store.take_optional("b_gate", &[d_sae])?;
    let r_mag = store.take_optional("r_mag", &[d_sae])?;
    let b_mag = store.take_optional("b_mag", &[d_sae])?;
    if let Some(scale) = store.take_optional("scaling_factor", &[d_sae])? {
        let ones = scale.f_sub_scalar(1.0)?.f_abs()?.f_max()?.double_value(&[]) <= 1e-5;
        if !ones {
            if !parsed.finetuning_scaling_factor {
                return Err(PrismaError::WeightsFormat {
                    file: weights_path,
                    reason: "a scaling_factor tensor is present but finetuning_scaling_factor is false".into(),
                });
            }
            // Pre-6.0 decode was (f * s) @ W_dec, which is f @ (s[:, None] * W_dec).
            w_dec = w_dec.f_mul(&scale.f_unsqueeze(1)?)?;
        }
    }
    let topk_threshold = store.take_optional("topk_threshold", &[])?;
    let leftover = store.leftover();
    if !leftover.is_empty() {
        return Err(PrismaError::WeightsFormat {
            file: weights_path,
            reason: format!("unexpected tensors {leftover:?} for a {} SAE", cfg.architecture.name()),
        });
    }
    if let Some(training) = parsed.training_architecture.as_deref() {
        // A batchtopk/matryoshka training checkpoint: save it as SAELens's save_inference_model
        // would (decoder norms folded when trained with rescaling; threshold = topk_threshold).
        let t = topk_threshold.ok_or_else(|| PrismaError::WeightsMissing {
            file: weights_path.clone(),
            tensor: format!("topk_threshold ({training} checkpoint)"),
        })?;
        let enc = b_enc.as_ref().ok_or_else(|| PrismaError::WeightsMissing { file: weights_path.clone(), tensor: "b_enc".into() })?;
        let (mut w_enc2, mut b_enc2) = (w_enc.shallow_clone(), enc.shallow_clone());
        if parsed.checkpoint_rescale {
            let norms = w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?.f_clamp_min(1e-8)?;
            b_enc2 = b_enc2.f_mul(&norms)?;
            w_dec = w_dec.f_div(&norms.f_unsqueeze(1)?)?;
            w_enc2 = w_enc2.f_mul(&norms.f_unsqueeze(0)?)?;
        }
        threshold = Some(enc.f_ones_like()?.f_mul_scalar(t.double_value(&[]))?);
        b_enc = Some(b_enc2);
        let sae = Sae { cfg, w_enc: w_enc2, b_enc, w_dec, b_dec, threshold, b_gate, r_mag, b_mag };
        return finish(sae, &weights_path, dir, scaling_factor);
    }
    if cfg.architecture == Architecture::Gated {
        b_enc = None;
    }
    let sae = Sae { cfg, w_enc, b_enc, w_dec, b_dec, threshold, b_gate, r_mag, b_mag };
    finish(sae, &weights_path, dir, scaling_factor)
}

fn finish(sae: Sae, weights_path: &Path, dir: &Path, scaling_factor: Option<f64>) -> Result<Sae> {
    let mut sae = sae.validated(weights_path)?;
    if sae.cfg.normalize_activations == Normalization::ExpectedAverageOnlyIn {
        let factor = match scaling_factor {
            Some(f) => Some(f),
            None => read_scaler(dir)?,
        };
        if let Some(f) = factor {
            sae.fold_scaling_factor(f)?;
        }
    }
    Ok(sae)
}

fn read_scaler(dir: &Path) -> Result<Option<f64>> {
    let path = dir.join(SCALER_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| PrismaError::Io { path: path.clone(), reason: e.to_string() })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| PrismaError::Config { path: path.clone(), reason: format!("not valid JSON ({e})") })?;
    Ok(json.get("scaling_factor").and_then(serde_json::Value::as_f64))
}

/// Writes `sae` as a SAELens folder (weights in the config's dtype), each file atomically; the
/// weights go first, so a folder with a `cfg.json` always has the weights that belong to it.
pub fn write_dir(sae: &Sae, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| PrismaError::Io { path: dir.into(), reason: e.to_string() })?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors: Vec<(&str, Tensor)> = sae
        .named_tensors()
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_detach()?.f_to_device(Device::Cpu)?.f_to_kind(sae.cfg.kind)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    write_safetensors(&weights_path, &tensors)?;
    let cfg_path = dir.join(CFG_FILE);
    let text = serde_json::to_string_pretty(&sae.cfg.to_saelens_json()).map_err(|e| PrismaError::Internal(e.to_string()))?;
    write_atomically(&cfg_path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| PrismaError::Io { path: tmp.into(), reason: e.to_string() })
    })
}

/// Safetensors of float tensors in their own dtype (f32, f16, bf16, f64), written atomically.
pub fn write_safetensors(path: &Path, tensors: &[(&str, Tensor)]) -> Result<()> {
    write_safetensors_with(path, tensors, None)
}

/// As `write_safetensors`, with `__metadata__`.
pub fn write_safetensors_with(
    path: &Path,
    tensors: &[(&str, Tensor)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    use safetensors::tensor::TensorView;
    let io = |e: String| PrismaError::Io { path: path.into(), reason: e };
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = match t.kind() {
            Kind::Float => safetensors::Dtype::F32,
            Kind::Half => safetensors::Dtype::F16,
            Kind::BFloat16 => safetensors::Dtype::BF16,
            Kind::Double => safetensors::Dtype::F64,
            other => return Err(PrismaError::Internal(format!("tensor '{name}' has dtype {other:?}"))),
        };
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let mut bytes = vec![0u8; n];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        buffers.push((name.to_string(), dtype, shape, bytes));
    }
    let views = buffers
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| io(e.to_string()))?))
        })
        .collect::<Result<Vec<_>>>()?;
    write_atomically(path, |tmp| safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| io(e.to_string())))
}
