//! Importing the other SAE formats, read as data (see `pickle`):
//! - ViT-Prisma: a state dict (`weights.pt`, any `.pt`) beside its `config.json`, or the legacy
//!   pickled `{"cfg": VisionModelSAERunnerConfig, "state_dict": ...}` (`.pt`, `.pkl`, `.pkl.gz`);
//! - saev: `sae.pt`, one JSON header line followed by a `torch.save` of the state dict.
//!
//! Both become an `Sae` in SAELens terms, with the hook and the token selection in its metadata.

use super::config::{config_error, kind_from_name, Architecture, Normalization, SaeConfig, TokenSelection};
use super::model::Sae;
use crate::error::{PrismaError, Result};
use crate::weights::pickle::{self, Py};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn state_dict(py: &Py, file: &Path) -> Result<HashMap<String, Tensor>> {
    let items = py.items();
    if items.is_empty() {
        return Err(PrismaError::WeightsFormat { file: file.into(), reason: "no state dict of tensors".into() });
    }
    Ok(items.into_iter().filter_map(|(k, v)| v.as_tensor().map(|t| (k, t))).collect())
}

fn take(sd: &mut HashMap<String, Tensor>, name: &str, file: &Path) -> Result<Tensor> {
    sd.remove(name).ok_or_else(|| PrismaError::WeightsMissing { file: file.into(), tensor: name.into() })
}

/// True for a saev checkpoint: its first byte opens the JSON header.
pub fn is_saev_file(path: &Path) -> bool {
    use std::io::Read;
    let mut first = [0u8; 1];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut first)).is_ok() && first[0] == b'{'
}

// ---------------------------------------------------------------------------------------------
// ViT-Prisma

/// Reads a ViT-Prisma SAE: `path` is a weights file (legacy or beside `config.json`) or a folder
/// holding `weights.pt` (or a single `.pt`) and `config.json`.
pub fn read_prisma(path: &Path) -> Result<Sae> {
    let weights = if path.is_dir() { prisma_weights_in(path)? } else { path.to_path_buf() };
    let graph = pickle::load_file(&weights)?;
    let (cfg_json, sd_py, cfg_path) = match (graph.get("cfg"), graph.get("state_dict")) {
        (Some(cfg), Some(sd)) => (cfg.to_json(), sd, weights.clone()),
        _ => {
            let cfg_path = weights.parent().unwrap_or(Path::new(".")).join("config.json");
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| PrismaError::Config {
                path: cfg_path.clone(),
                reason: format!("a ViT-Prisma state dict needs its config.json beside it ({e})"),
            })?;
            let json = serde_json::from_str(&text).map_err(|e| config_error(&cfg_path, format!("not valid JSON ({e})")))?;
            (json, graph, cfg_path)
        }
    };
    let cfg = prisma_config(&cfg_json, &cfg_path)?;
    let mut sd = state_dict(&sd_py, &weights)?;
    let gated = cfg.architecture == Architecture::Gated;
    let sae = Sae {
        w_enc: take(&mut sd, "W_enc", &weights)?,
        w_dec: take(&mut sd, "W_dec", &weights)?,
        b_dec: take(&mut sd, "b_dec", &weights)?,
        // ViT-Prisma's gated SAE allocates a b_enc it never uses.
        b_enc: if gated { None } else { Some(take(&mut sd, "b_enc", &weights)?) },
        threshold: None,
        b_gate: if gated { Some(take(&mut sd, "b_gate", &weights)?) } else { None },
        r_mag: if gated { Some(take(&mut sd, "r_mag", &weights)?) } else { None },
        b_mag: if gated { Some(take(&mut sd, "b_mag", &weights)?) } else { None },
        cfg,
    };
    sae.validated(&weights)
}

fn prisma_weights_in(dir: &Path) -> Result<PathBuf> {
    let preferred = dir.join("weights.pt");
    if preferred.is_file() {
        return Ok(preferred);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PrismaError::Io { path: dir.into(), reason: e.to_string() })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pt" || x == "pth"))
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(PrismaError::WeightsMissing { file: preferred, tensor: "(no weights.pt or other .pt file)".into() }),
        _ => Err(PrismaError::Argument(format!("{} holds several .pt files; name the one to load", dir.display()))),
    }
}

/// ViT-Prisma's `VisionModelSAERunnerConfig` (as JSON) in SAELens terms. ViT-Prisma always
/// subtracts `b_dec` before encoding, and its layer_norm and constant_norm_rescale are SAELens's.
fn prisma_config(j: &Value, path: &Path) -> Result<SaeConfig> {
    let get = |k: &str| j.get(k).filter(|v| !v.is_null());
    if get("is_transcoder").and_then(Value::as_bool) == Some(true) {
        return Err(config_error(path, "ViT-Prisma transcoders are not supported (only sparse autoencoders)".into()));
    }
    let d_in = get("d_in").and_then(Value::as_i64).filter(|d| *d > 0).ok_or_else(|| config_error(path, "no positive 'd_in'".into()))?;
    let d_sae = match get("expansion_factor").and_then(Value::as_i64) {
        Some(e) if e > 0 => d_in * e,
        _ => get("d_sae")
            .and_then(Value::as_i64)
            .filter(|d| *d > 0)
            .ok_or_else(|| config_error(path, "no 'expansion_factor' or 'd_sae'".into()))?,
    };
    let activation = get("activation_fn_str").and_then(Value::as_str).unwrap_or("relu");
    let prisma_arch = get("architecture").and_then(Value::as_str).unwrap_or("standard");
    let k = get("activation_fn_kwargs").and_then(|kw| kw.get("k")).and_then(Value::as_i64);
    let architecture = match (prisma_arch, activation) {
        ("standard" | "vanilla", "relu") => Architecture::Standard,
        ("standard" | "vanilla", "topk") => Architecture::TopK,
        ("gated", "relu") => Architecture::Gated,
        (arch, act) => {
            return Err(PrismaError::Config {
                path: path.into(),
                reason: format!(
                    "unknown SAE architecture: ViT-Prisma architecture '{arch}' with activation '{act}' (supported: standard/relu, standard/topk, gated/relu)"
                ),
            })
        }
    };
    if architecture == Architecture::TopK && k.is_none() {
        return Err(config_error(path, "a topk SAE needs activation_fn_kwargs.k".into()));
    }
    let normalize_activations = match get("normalize_activations").and_then(Value::as_str) {
        Some("layer_norm") => Normalization::LayerNorm,
        Some("constant_norm_rescale") => Normalization::ConstantNormRescale,
        _ => Normalization::None,
    };
    let dtype = get("_dtype").or_else(|| get("dtype")).and_then(Value::as_str).unwrap_or("float32");
    let kind = kind_from_name(dtype).unwrap_or(Kind::Float);
    let mut metadata = Map::new();
    let layer = match get("hook_point_layer") {
        Some(Value::Array(layers)) if layers.len() == 1 => layers[0].as_i64(),
        Some(Value::Array(_)) => return Err(config_error(path, "multi-layer ViT-Prisma SAEs are not supported".into())),
        Some(v) => v.as_i64(),
        None => None,
    };
    let subtype = get("layer_subtype").and_then(Value::as_str).unwrap_or("ln2.hook_normalized");
    let hook = get("hook_point").and_then(Value::as_str).map(str::to_owned).or_else(|| layer.map(|l| format!("blocks.{l}.{subtype}")));
    if let Some(hook) = hook {
        metadata.insert("hook_name".into(), json!(hook));
    }
    for (from, to) in [
        ("hook_point_head_index", "hook_head_index"),
        ("model_name", "model_name"),
        ("context_size", "context_size"),
        ("dataset_name", "dataset_path"),
    ] {
        if let Some(v) = get(from) {
            metadata.insert(to.into(), v.clone());
        }
    }
    let tokens = if get("cls_token_only").and_then(Value::as_bool) == Some(true) {
        TokenSelection::Cls
    } else if get("use_patches_only").and_then(Value::as_bool) == Some(true) {
        TokenSelection::Patches
    } else {
        TokenSelection::All
    };
    metadata.insert("source_format".into(), json!("vit-prisma"));
    // Everything else the source said, for the record.
    metadata.insert("source_config".into(), j.clone());
    let mut cfg = SaeConfig {
        architecture,
        d_in,
        d_sae,
        kind,
        apply_b_dec_to_input: true,
        normalize_activations,
        k: if architecture == Architecture::TopK { k } else { None },
        rescale_acts_by_decoder_norm: false,
        metadata,
        extra: Map::new(),
    };
    cfg.set_tokens(tokens);
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// saev

/// Reads a saev checkpoint (`sae.pt`, or a folder holding it). saev does not subtract `b_dec`
/// before encoding and normalises on the data side, so the SAE is `apply_b_dec_to_input = false`
/// with no normalisation. Its BatchTopK runs at inference as a JumpReLU with its running threshold
/// (a threshold <= 0 meaning ReLU), which is SAELens's `jumprelu` with that threshold everywhere.
/// saev's TopK keeps the k largest values without a ReLU; SAELens's applies one, which differs only
/// when fewer than k pre-activations are positive.
pub fn read_saev(path: &Path) -> Result<Sae> {
    let file = if path.is_dir() { path.join("sae.pt") } else { path.to_path_buf() };
    let bytes = std::fs::read(&file).map_err(|e| PrismaError::Io { path: file.clone(), reason: e.to_string() })?;
    let newline =
        bytes.iter().position(|&b| b == b'\n').ok_or_else(|| config_error(&file, "no JSON header line (not a saev checkpoint)".into()))?;
    let header: Value =
        serde_json::from_slice(&bytes[..newline]).map_err(|e| config_error(&file, format!("header is not valid JSON ({e})")))?;
    let graph = pickle::load_bytes(&bytes[newline + 1..], &file)?;
    let mut sd = state_dict(&graph, &file)?;
    let cfg_json = header.get("cfg").cloned().unwrap_or_else(|| header.clone());
    let d_in = cfg_json
        .get("d_model")
        .or_else(|| cfg_json.get("d_vit"))
        .and_then(Value::as_i64)
        .ok_or_else(|| config_error(&file, "no 'd_model' in the header".into()))?;
    let d_sae = match cfg_json.get("d_sae").and_then(Value::as_i64) {
        Some(d) => d,
        None => {
            d_in * cfg_json
                .get("exp_factor")
                .and_then(Value::as_i64)
                .ok_or_else(|| config_error(&file, "no 'd_sae' or 'exp_factor'".into()))?
        }
    };
    let activation = cfg_json.get("activation");
    let class = activation
        .and_then(|a| a.get("cls"))
        .and_then(Value::as_str)
        .or_else(|| header.get("cls").and_then(Value::as_str))
        .unwrap_or("Relu");
    let top_k =
        activation.and_then(|a| a.get("params")).and_then(|p| p.get("top_k")).or_else(|| cfg_json.get("top_k")).and_then(Value::as_i64);
    let architecture = match class {
        "Relu" => Architecture::Standard,
        "TopK" => Architecture::TopK,
        "BatchTopK" => Architecture::JumpRelu,
        other => {
            return Err(PrismaError::Config {
                path: file,
                reason: format!("unknown SAE architecture: saev activation '{other}' (Relu, TopK, BatchTopK)"),
            })
        }
    };
    let w_enc = take(&mut sd, "W_enc", &file)?;
    let b_enc = take(&mut sd, "b_enc", &file)?;
    let threshold = if architecture == Architecture::JumpRelu {
        let t = take(&mut sd, "activation.threshold", &file)?.f_to_kind(Kind::Double)?.double_value(&[]).max(0.0);
        Some(b_enc.f_ones_like()?.f_mul_scalar(t)?)
    } else {
        None
    };
    let mut metadata = Map::new();
    metadata.insert("source_format".into(), json!("saev"));
    metadata.insert("source_config".into(), header.clone());
    let cfg = SaeConfig {
        architecture,
        d_in,
        d_sae,
        kind: w_enc.kind(),
        apply_b_dec_to_input: false,
        normalize_activations: Normalization::None,
        k: if architecture == Architecture::TopK {
            Some(top_k.ok_or_else(|| config_error(&file, "a TopK SAE needs top_k".into()))?)
        } else {
            None
        },
        rescale_acts_by_decoder_norm: false,
        metadata,
        extra: Map::new(),
    };
    let sae = Sae {
        w_dec: take(&mut sd, "W_dec", &file)?,
        b_dec: take(&mut sd, "b_dec", &file)?,
        w_enc,
        b_enc: Some(b_enc),
        threshold,
        b_gate: None,
        r_mag: None,
        b_mag: None,
        cfg,
    };
    sae.validated(&file)
}
