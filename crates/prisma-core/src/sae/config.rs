//! An SAE's configuration in SAELens 6.x terms (the `cfg.json` of a SAELens folder), read from any
//! of the supported sources. Keys we do not interpret are kept verbatim so a read + write round
//! trip loses nothing (`metadata` in particular).

use crate::error::{PrismaError, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use tch::Kind;

/// Inference architectures (what SAELens saves). BatchTopK and Matryoshka train to JumpReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Standard,
    Gated,
    TopK,
    JumpRelu,
}

impl Architecture {
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Standard => "standard",
            Architecture::Gated => "gated",
            Architecture::TopK => "topk",
            Architecture::JumpRelu => "jumprelu",
        }
    }
}

/// SAELens `normalize_activations`. `ExpectedAverageOnlyIn` is an identity at inference (SAELens
/// folds the scaling factor into the weights when it knows it; see `Sae::fold_scaling_factor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    None,
    ExpectedAverageOnlyIn,
    ConstantNormRescale,
    LayerNorm,
}

impl Normalization {
    pub fn name(self) -> &'static str {
        match self {
            Normalization::None => "none",
            Normalization::ExpectedAverageOnlyIn => "expected_average_only_in",
            Normalization::ConstantNormRescale => "constant_norm_rescale",
            Normalization::LayerNorm => "layer_norm",
        }
    }

    fn parse(value: Option<&Value>, path: &Path) -> Result<Self> {
        Ok(match value {
            None | Some(Value::Null) => Normalization::None,
            // SAELens < 6 stored a bool: true meant the expected-average scaling.
            Some(Value::Bool(b)) => {
                if *b {
                    Normalization::ExpectedAverageOnlyIn
                } else {
                    Normalization::None
                }
            }
            Some(Value::String(s)) => match s.as_str() {
                "none" => Normalization::None,
                "expected_average_only_in" => Normalization::ExpectedAverageOnlyIn,
                "constant_norm_rescale" => Normalization::ConstantNormRescale,
                "layer_norm" => Normalization::LayerNorm,
                other => {
                    return Err(config_error(
                        path,
                        format!(
                            "normalize_activations '{other}' is not supported (none, expected_average_only_in, constant_norm_rescale, layer_norm)"
                        ),
                    ))
                }
            },
            Some(other) => return Err(config_error(path, format!("normalize_activations has an unexpected value {other}"))),
        })
    }
}

/// Which tokens of an image the SAE was trained on (and so is applied to when spliced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSelection {
    All,
    /// The class token only (ViT-Prisma `cls_token_only`, saev `special`).
    Cls,
    /// Every token but the class token (ViT-Prisma `use_patches_only`, saev `content`).
    Patches,
}

impl TokenSelection {
    pub fn name(self) -> &'static str {
        match self {
            TokenSelection::All => "all",
            TokenSelection::Cls => "cls",
            TokenSelection::Patches => "patches",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(TokenSelection::All),
            "cls" => Ok(TokenSelection::Cls),
            "patches" => Ok(TokenSelection::Patches),
            other => Err(PrismaError::Argument(format!("unknown token selection '{other}' (all, cls, patches)"))),
        }
    }
}

/// Metadata key (inside SAELens's free-form `metadata`) holding the token selection.
pub const TOKENS_KEY: &str = "token_selection";

#[derive(Debug, Clone)]
pub struct SaeConfig {
    pub architecture: Architecture,
    pub d_in: i64,
    pub d_sae: i64,
    /// The weights' dtype (`float32`, `float16`, `bfloat16`); encode/decode compute in it.
    pub kind: Kind,
    pub apply_b_dec_to_input: bool,
    pub normalize_activations: Normalization,
    /// TopK only.
    pub k: Option<i64>,
    /// TopK only: pre-activations are scaled by the decoder row norms before the top-k.
    pub rescale_acts_by_decoder_norm: bool,
    /// SAELens's free-form `metadata` (`hook_name`, `model_name`, ...), kept verbatim.
    pub metadata: Map<String, Value>,
    /// Every other key of `cfg.json` as read (kept for the round trip).
    pub extra: Map<String, Value>,
}

pub(crate) fn config_error(path: &Path, reason: String) -> PrismaError {
    PrismaError::Config { path: path.into(), reason }
}

pub fn kind_from_name(name: &str) -> Option<Kind> {
    Some(match name.strip_prefix("torch.").unwrap_or(name) {
        "float32" | "float" => Kind::Float,
        "float16" | "half" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "float64" | "double" => Kind::Double,
        _ => return None,
    })
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "float16",
        Kind::BFloat16 => "bfloat16",
        Kind::Double => "float64",
        _ => "float32",
    }
}

/// Keys SAELens moves into `metadata` when it migrates a pre-6.0 config (`LLM_METADATA_KEYS`).
const PRE_6_METADATA_KEYS: &[&str] = &[
    "model_name",
    "hook_name",
    "model_class_name",
    "hook_head_index",
    "model_from_pretrained_kwargs",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "sae_lens_version",
    "sae_lens_training_version",
    "hook_name_out",
    "hook_head_index_out",
    "hf_hook_name",
    "hf_hook_name_out",
];

/// What a SAELens `cfg.json` says, before the weights are seen.
pub(crate) struct ParsedSaelens {
    pub cfg: SaeConfig,
    /// A training checkpoint's architecture that is converted on load (batchtopk and matryoshka
    /// are saved for inference as JumpReLU).
    pub training_architecture: Option<String>,
    /// Pre-6.0 `finetuning_scaling_factor`: a per-feature scale folded into `W_dec` on load.
    pub finetuning_scaling_factor: bool,
    /// A batchtopk checkpoint trained with decoder-norm rescaling: the norms are folded on load.
    pub checkpoint_rescale: bool,
}

fn version_is_pre_6(v: Option<&str>) -> bool {
    match v {
        None => true,
        Some(v) => v.split(['.', '-']).next().and_then(|major| major.trim_start_matches('v').parse::<u64>().ok()).is_none_or(|m| m < 6),
    }
}

/// Reads a SAELens `cfg.json` (6.x, or older and migrated as SAELens's `handle_pre_6_0_config` does).
pub(crate) fn parse_saelens(value: Value, path: &Path) -> Result<ParsedSaelens> {
    let Value::Object(mut map) = value else { return Err(config_error(path, "cfg.json is not a JSON object".into())) };
    let version = map
        .get("sae_lens_version")
        .and_then(Value::as_str)
        .or_else(|| map.get("metadata").and_then(|m| m.get("sae_lens_version")).and_then(Value::as_str))
        .map(str::to_owned);
    if version_is_pre_6(version.as_deref()) {
        map = migrate_pre_6(map);
    }
    let architecture_name = map.get("architecture").and_then(Value::as_str).unwrap_or("standard").to_string();
    let (architecture, training_architecture) = match architecture_name.as_str() {
        "standard" => (Architecture::Standard, None),
        "gated" => (Architecture::Gated, None),
        "topk" => (Architecture::TopK, None),
        "jumprelu" => (Architecture::JumpRelu, None),
        "batchtopk" | "matryoshka_batchtopk" => (Architecture::JumpRelu, Some(architecture_name.clone())),
        other => {
            return Err(PrismaError::Config {
                path: path.into(),
                reason: format!(
                    "unknown SAE architecture '{other}' (supported: standard, gated, topk, jumprelu, and batchtopk/matryoshka_batchtopk checkpoints)"
                ),
            })
        }
    };
    let int = |key: &str| -> Result<i64> {
        map.get(key)
            .and_then(Value::as_i64)
            .filter(|v| *v > 0)
            .ok_or_else(|| config_error(path, format!("'{key}' must be a positive integer")))
    };
    let d_in = int("d_in")?;
    let d_sae = int("d_sae")?;
    let dtype = map.get("dtype").and_then(Value::as_str).unwrap_or("float32");
    let kind = kind_from_name(dtype)
        .ok_or_else(|| config_error(path, format!("dtype '{dtype}' is not supported (float32, float16, bfloat16)")))?;
    let normalize_activations = Normalization::parse(map.get("normalize_activations"), path)?;
    if let Some(reshape) = map.get("reshape_activations").and_then(Value::as_str) {
        if reshape != "none" {
            return Err(config_error(path, format!("reshape_activations '{reshape}' (attention hook_z SAEs) is not supported")));
        }
    }
    let k = match architecture {
        Architecture::TopK => Some(int("k")?),
        _ => None,
    };
    let rescale_flag = map.get("rescale_acts_by_decoder_norm").and_then(Value::as_bool).unwrap_or(false);
    let rescale = architecture == Architecture::TopK && rescale_flag;
    let checkpoint_rescale = training_architecture.is_some() && rescale_flag;
    let finetuning_scaling_factor = map.get("finetuning_scaling_factor").and_then(Value::as_bool).unwrap_or(false);
    let apply_b_dec_to_input = map.get("apply_b_dec_to_input").and_then(Value::as_bool).unwrap_or(true);
    for key in
        ["d_in", "d_sae", "dtype", "apply_b_dec_to_input", "normalize_activations", "architecture", "k", "rescale_acts_by_decoder_norm"]
    {
        map.remove(key);
    }
    let metadata = match map.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if training_architecture.is_some() {
        // What SAELens keeps only in a training checkpoint's config.
        for key in [
            "topk_threshold_lr",
            "aux_loss_coefficient",
            "use_sparse_activations",
            "decoder_init_norm",
            "matryoshka_widths",
            "use_matryoshka_aux_loss",
        ] {
            map.remove(key);
        }
    }
    let cfg = SaeConfig {
        architecture,
        d_in,
        d_sae,
        kind,
        apply_b_dec_to_input,
        normalize_activations,
        k,
        rescale_acts_by_decoder_norm: rescale,
        metadata,
        extra: map,
    };
    Ok(ParsedSaelens { cfg, training_architecture, finetuning_scaling_factor, checkpoint_rescale })
}

/// SAELens's pre-6.0 migration: renamed keys, defaults, `activation_fn=topk` + `k` → architecture
/// `topk`, a bool `normalize_activations`, and the model/hook keys moved into `metadata`.
fn migrate_pre_6(map: Map<String, Value>) -> Map<String, Value> {
    let rename = |k: &str| -> String {
        match k {
            "hook_point" => "hook_name",
            "hook_point_head_index" => "hook_head_index",
            "activation_fn_str" => "activation_fn",
            other => other,
        }
        .to_string()
    };
    let mut cfg: Map<String, Value> = map.into_iter().map(|(k, v)| (rename(&k), v)).collect();
    cfg.entry("apply_b_dec_to_input").or_insert(Value::Bool(true));
    cfg.entry("architecture").or_insert(json!("standard"));
    let topk_k = cfg.get("activation_fn_kwargs").and_then(|kw| kw.get("k")).cloned().filter(|k| !k.is_null());
    if cfg.get("activation_fn").and_then(Value::as_str) == Some("topk") {
        if let Some(k) = topk_k {
            cfg.insert("architecture".into(), json!("topk"));
            cfg.insert("k".into(), k);
        }
    }
    let mut metadata = Map::new();
    for key in PRE_6_METADATA_KEYS {
        if let Some(v) = cfg.get(*key) {
            metadata.insert((*key).to_string(), v.clone());
        }
    }
    let mut out = Map::new();
    for key in [
        "d_in",
        "d_sae",
        "dtype",
        "device",
        "apply_b_dec_to_input",
        "normalize_activations",
        "architecture",
        "k",
        "finetuning_scaling_factor",
    ] {
        if let Some(v) = cfg.get(key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    out.insert(
        "reshape_activations".into(),
        json!(if cfg.get("hook_name").and_then(Value::as_str).is_some_and(|h| h.contains("hook_z")) { "hook_z" } else { "none" }),
    );
    out.insert("metadata".into(), Value::Object(metadata));
    out
}

impl SaeConfig {
    /// `metadata.hook_name`, where the SAE reads (and writes) in the model.
    pub fn hook_name(&self) -> Option<&str> {
        self.metadata.get("hook_name").and_then(Value::as_str)
    }

    pub fn set_hook_name(&mut self, hook: &str) {
        self.metadata.insert("hook_name".into(), json!(hook));
    }

    /// The token selection recorded in the metadata (all tokens when none is recorded).
    pub fn tokens(&self) -> TokenSelection {
        self.metadata.get(TOKENS_KEY).and_then(Value::as_str).and_then(|s| TokenSelection::parse(s).ok()).unwrap_or(TokenSelection::All)
    }

    pub fn set_tokens(&mut self, tokens: TokenSelection) {
        self.metadata.insert(TOKENS_KEY.into(), json!(tokens.name()));
    }

    /// The `cfg.json` SAELens 6.x reads: the interpreted fields over every kept key.
    pub fn to_saelens_json(&self) -> Value {
        let mut out = self.extra.clone();
        out.insert("d_in".into(), json!(self.d_in));
        out.insert("d_sae".into(), json!(self.d_sae));
        out.insert("dtype".into(), json!(kind_name(self.kind)));
        out.entry("device").or_insert(json!("cpu"));
        out.insert("apply_b_dec_to_input".into(), json!(self.apply_b_dec_to_input));
        out.insert("normalize_activations".into(), json!(self.normalize_activations.name()));
        out.entry("reshape_activations").or_insert(json!("none"));
        out.insert("architecture".into(), json!(self.architecture.name()));
        if self.architecture == Architecture::TopK {
            out.insert("k".into(), json!(self.k.unwrap_or(0)));
            out.insert("rescale_acts_by_decoder_norm".into(), json!(self.rescale_acts_by_decoder_norm));
        }
        // Pre-6.0 keys that SAELens 6 no longer reads; a migrated config must not look pre-6.0 again.
        out.remove("finetuning_scaling_factor");
        let mut m = self.metadata.clone();
        let old = m.get("sae_lens_version").and_then(Value::as_str).map(str::to_owned);
        if version_is_pre_6(old.as_deref()) {
            if let Some(old) = old {
                m.insert("migrated_from_sae_lens_version".into(), json!(old));
            }
            m.insert("sae_lens_version".into(), json!(SAELENS_FORMAT_VERSION));
        }
        out.insert("metadata".into(), Value::Object(m));
        Value::Object(out)
    }
}

/// The SAELens release whose folder layout this module writes (and tests against).
pub const SAELENS_FORMAT_VERSION: &str = "6.54.12";
