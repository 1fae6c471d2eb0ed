//! What the Hugging Face vision encoders with the `encoder.layer.{l}` layout share: ViT / DeiT /
//! DINO (`hf_vit.rs`), DINOv2 (`dinov2.rs`), VideoMAE (`videomae.rs`) and ViViT (`vivit.rs`). Their
//! config.json, the embeddings module, the blocks (whose tensor names each family gives as a
//! `BlockNames`) and the last steps. Each family's loader says which of these parts it has.

use super::common::{
    fold_layer_scale, labels_from_id2label, linear, ln, parse_activation, take_cat, unsupported, LoadOptions, OneOrMany, Parts,
};
use super::pos_embed::{set_image_size, GridResample};
use super::store::TensorStore;
use crate::error::{PrismaError, Result};
use crate::models::vit::{Activation, BlockWeights, FinalNorm, Head, LayerNormWeights, Pooling, ViTConfig, ViTWeights};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The architectures these loaders read (config.json `architectures[0]`); empty = the bare model.
pub const ARCHITECTURES: &[&str] = &[
    "ViTModel",
    "ViTForImageClassification",
    "DeiTModel",
    "DeiTForImageClassification",
    "Dinov2Model",
    "Dinov2WithRegistersModel",
    "VideoMAEModel",
    "VideoMAEForVideoClassification",
    "VivitModel",
    "VivitForVideoClassification",
];

pub fn accepts_architecture(architecture: &str) -> bool {
    architecture.is_empty() || ARCHITECTURES.contains(&architecture)
}

#[derive(Deserialize)]
pub(super) struct HfVitConfig {
    #[serde(default)]
    pub model_type: String,
    #[serde(default)]
    architectures: Vec<String>,
    hidden_size: i64,
    pub num_hidden_layers: usize,
    num_attention_heads: i64,
    intermediate_size: Option<i64>,
    mlp_ratio: Option<f64>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    image_size: OneOrMany,
    patch_size: Option<OneOrMany>,
    #[serde(default = "default_channels")]
    pub num_channels: i64,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default)]
    pub num_register_tokens: i64,
    num_frames: Option<i64>,
    tubelet_size: Option<OneOrMany>,
    #[serde(default = "default_true")]
    pub use_mean_pooling: bool,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_channels() -> i64 {
    3
}
fn default_true() -> bool {
    true
}

/// A parsed config.json with the sizes every family needs, and the checkpoint's name prefix.
pub(super) struct Header {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub raw: HfVitConfig,
    pub architecture: String,
    /// `vit.` / `deit.` / … where a task model nests the backbone; empty for bare models.
    pub prefix: String,
    pub activation: Activation,
    pub d: i64,
    pub n_heads: i64,
    pub patch: i64,
    /// Frames per tubelet (video models; 1 otherwise).
    pub tubelet: i64,
    /// A video model (VideoMAE, ViViT): tubelet embedding, time slices in the position table.
    pub is_video: bool,
    /// Frames per clip (video models; 0 otherwise).
    pub num_frames: i64,
    pub image_size: [i64; 2],
}

/// The prefix tokens and patch embedding the embeddings module holds.
pub(super) struct Embeddings {
    pub patch_weight: Tensor,
    pub patch_bias: Option<Tensor>,
    pub class_token: Option<Tensor>,
    pub distillation_token: Option<Tensor>,
    pub register_tokens: Option<Tensor>,
}

impl Embeddings {
    /// Entries of the learned position table before the patches (class and distillation tokens).
    pub fn n_table_prefix(&self) -> i64 {
        self.class_token.is_some() as i64 + self.distillation_token.is_some() as i64
    }
}

/// A block's tensor names below `encoder.layer.{l}.` where the families differ.
pub(super) struct BlockNames {
    pub ln1: &'static str,
    pub ln2: &'static str,
    /// The MLP's two linears (`mlp.weights_in` / `mlp.weights_out` instead where the config says
    /// `use_swiglu_ffn`).
    pub mlp_in: &'static str,
    pub mlp_out: &'static str,
    pub qkv_bias: QkvBias,
    /// `layer_scale1.lambda1` / `layer_scale2.lambda1`, folded into the output projections.
    pub layer_scale: bool,
}

/// The ViT / DeiT / VideoMAE / ViViT names.
pub(super) const VIT_BLOCK: BlockNames = BlockNames {
    ln1: "layernorm_before",
    ln2: "layernorm_after",
    mlp_in: "intermediate.dense",
    mlp_out: "output.dense",
    qkv_bias: QkvBias::Each,
    layer_scale: false,
};

pub(super) enum QkvBias {
    /// `query.bias`, `key.bias`, `value.bias`.
    Each,
    /// VideoMAE: `q_bias` and `v_bias`, none for k; no bias at all when they are absent.
    QueryValue,
}

impl Header {
    /// Reads config.json's sizes; refuses what no family here reads (a two-headed DeiT, a bad
    /// activation, heads that do not divide the width, non-square patches).
    pub fn read(dir: &Path, value: &Value, store: &TensorStore, family: &str) -> Result<Header> {
        let config_path = dir.join("config.json");
        let bad = |reason: String| PrismaError::Config { path: config_path.clone(), reason };
        let raw = HfVitConfig::deserialize(value).map_err(|e| bad(format!("not a ViT-family config: {e}")))?;
        let architecture = raw.architectures.first().cloned().unwrap_or_default();
        let is_video = matches!(family, "videomae" | "vivit");
        // Task models nest the backbone under `vit.` / `deit.` / …; bare models have no prefix.
        let prefix = if store.names().any(|n| n.starts_with(&format!("{family}."))) { format!("{family}.") } else { String::new() };
        if architecture == "DeiTForImageClassificationWithTeacher" || store.contains("cls_classifier.weight") {
            return Err(unsupported(dir, "DeiTForImageClassificationWithTeacher (two heads)".into()));
        }
        let activation = parse_activation(&raw.hidden_act).ok_or_else(|| bad(format!("unsupported hidden_act '{}'", raw.hidden_act)))?;
        let d = raw.hidden_size;
        if d % raw.num_attention_heads != 0 {
            return Err(bad(format!("hidden_size {d} is not divisible by num_attention_heads {}", raw.num_attention_heads)));
        }
        let (patch, tubelet) = match (&raw.tubelet_size, &raw.patch_size, family) {
            (Some(OneOrMany::Many(t)), _, "vivit") if t.len() == 3 && t[1] == t[2] => (t[1], t[0]),
            (_, Some(p), _) => match p.pair() {
                Some([a, b]) if a == b => (a, raw.tubelet_size.as_ref().and_then(|t| t.pair()).map_or(1, |t| t[0])),
                _ => return Err(bad("non-square patches are not supported".into())),
            },
            _ => return Err(bad("no patch_size".into())),
        };
        let num_frames = if is_video { raw.num_frames.ok_or_else(|| bad("video config without num_frames".into()))? } else { 0 };
        let image_size = raw.image_size.pair().ok_or_else(|| bad("image_size must be a number or [height, width]".into()))?;
        Ok(Header {
            dir: dir.into(),
            architecture,
            prefix,
            activation,
            d,
            n_heads: raw.num_attention_heads,
            patch,
            tubelet: if is_video { tubelet } else { 1 },
            is_video,
            num_frames,
            image_size,
            raw,
            config_path,
        })
    }

    pub fn bad(&self, reason: String) -> PrismaError {
        PrismaError::Config { path: self.config_path.clone(), reason }
    }

    pub fn missing(&self, tensor: String) -> PrismaError {
        PrismaError::WeightsMissing { file: self.dir.join("model.safetensors"), tensor }
    }

    /// A backbone tensor's name.
    pub fn p(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn emb(&self, name: &str) -> String {
        self.p(&format!("embeddings.{name}"))
    }

    /// The architecture as reported: config.json's, else the model type.
    pub fn architecture_name(&self) -> String {
        if self.architecture.is_empty() {
            self.raw.model_type.clone()
        } else {
            self.architecture.clone()
        }
    }

    /// `classifier.weight`'s class count and labels (0 and none without a classifier).
    pub fn classes(&self, store: &TensorStore, value: &Value) -> (i64, Vec<String>) {
        if store.contains("classifier.weight") {
            let n = store.shape_of("classifier.weight").map_or(0, |s| s[0]);
            (n, labels_from_id2label(value, n))
        } else {
            (0, Vec::new())
        }
    }

    /// The patch embedding and prefix tokens; a distillation token (DeiT) and `n_registers`
    /// register tokens (DINOv2 -reg) where the family has them.
    pub fn embeddings(&self, store: &mut TensorStore, distillation: bool, n_registers: i64) -> Result<Embeddings> {
        let d = self.d;
        let has_class_token = store.contains(&self.emb("cls_token"));
        let (c, p) = (self.raw.num_channels, self.patch);
        let shape: Vec<i64> = if self.is_video { vec![d, c, self.tubelet, p, p] } else { vec![d, c, p, p] };
        let patch_weight = store.take(&self.emb("patch_embeddings.projection.weight"), &shape)?;
        let patch_bias = store.take_optional(&self.emb("patch_embeddings.projection.bias"), &[d])?;
        let class_token = if has_class_token { Some(store.take(&self.emb("cls_token"), &[1, 1, d])?) } else { None };
        let distillation_token = if distillation { Some(store.take(&self.emb("distillation_token"), &[1, 1, d])?) } else { None };
        let register_tokens = if n_registers > 0 { Some(store.take(&self.emb("register_tokens"), &[1, n_registers, d])?) } else { None };
        store.discard_prefix(&self.emb("mask_token"));
        Ok(Embeddings { patch_weight, patch_bias, class_token, distillation_token, register_tokens })
    }

    /// The learned position table and its own patch grid: `grid`, or (None) the square grid the
    /// table holds (DINOv2 stores its pretraining grid, e.g. 37x37 for 518 px).
    pub fn learned_positions(&self, store: &mut TensorStore, emb: &Embeddings, grid: Option<[i64; 2]>) -> Result<(Tensor, [i64; 2])> {
        let name = self.emb("position_embeddings");
        let shape = store.shape_of(&name).ok_or_else(|| self.missing(name.clone()))?;
        let n_prefix = emb.n_table_prefix();
        let n_grid = shape.get(1).copied().unwrap_or(0) - n_prefix;
        let grid = grid.unwrap_or_else(|| {
            let side = (n_grid as f64).sqrt().round() as i64;
            [side, side]
        });
        let slices = if self.is_video { self.num_frames / self.tubelet } else { 1 };
        if grid[0] * grid[1] * slices != n_grid {
            return Err(PrismaError::WeightsShape {
                file: self.dir.join("model.safetensors"),
                tensor: name,
                expected: vec![1, n_prefix + grid[0] * grid[1] * slices, self.d],
                found: shape,
            });
        }
        Ok((store.take(&name, &shape)?, grid))
    }

    /// The grid of `image_size` in patches.
    pub fn image_grid(&self) -> [i64; 2] {
        [self.image_size[0] / self.patch, self.image_size[1] / self.patch]
    }

    /// The MLP's two linears: `names`' own, or the SwiGLU pair.
    fn mlp_names(&self, names: &BlockNames) -> (&'static str, &'static str) {
        if self.raw.use_swiglu_ffn {
            ("mlp.weights_in", "mlp.weights_out")
        } else {
            (names.mlp_in, names.mlp_out)
        }
    }

    /// The MLP's hidden width: from the weights (SwiGLU, per half), else `intermediate_size`, else
    /// `mlp_ratio` times the width.
    pub fn d_mlp(&self, store: &TensorStore) -> Result<i64> {
        if self.raw.use_swiglu_ffn {
            let name = self.p("encoder.layer.0.mlp.weights_in.weight");
            return store.shape_of(&name).map(|s| s[0] / 2).ok_or_else(|| self.missing(name));
        }
        Ok(match self.raw.intermediate_size {
            Some(n) => n,
            None => (self.d as f64 * self.raw.mlp_ratio.unwrap_or(4.0)) as i64,
        })
    }

    /// The model's configuration for a table of `table_grid` patches: a class-token model with its
    /// final norm over every token and no head; a family changes what differs.
    pub fn config(&self, emb: &Embeddings, d_mlp: i64, table_grid: [i64; 2]) -> ViTConfig {
        let raw = &self.raw;
        ViTConfig {
            architecture: self.architecture_name(),
            image_size: [table_grid[0] * self.patch, table_grid[1] * self.patch],
            patch_size: self.patch,
            num_channels: raw.num_channels,
            num_frames: self.num_frames,
            tubelet_size: self.tubelet,
            d_model: self.d,
            n_heads: self.n_heads,
            d_head: self.d / self.n_heads,
            d_mlp,
            n_layers: raw.num_hidden_layers,
            layer_norm_eps: raw.layer_norm_eps,
            final_norm_eps: raw.layer_norm_eps,
            activation: if raw.use_swiglu_ffn { Activation::Silu } else { self.activation },
            gated_mlp: raw.use_swiglu_ffn,
            has_class_token: emb.class_token.is_some(),
            has_distillation_token: emb.distillation_token.is_some(),
            n_registers: emb.register_tokens.as_ref().map_or(0, |t| t.size()[1]),
            has_ln_pre: false,
            pooling: Pooling::ClassToken,
            final_norm: FinalNorm::AllTokens,
            n_classes: 0,
        }
    }

    /// Every `encoder.layer.{l}` block.
    pub fn blocks(&self, store: &mut TensorStore, names: &BlockNames, d_mlp: i64, d_head: i64) -> Result<Vec<BlockWeights>> {
        let d = self.d;
        let gate = if self.raw.use_swiglu_ffn { 2 } else { 1 };
        let (mlp_in, mlp_out) = self.mlp_names(names);
        let mut blocks = Vec::with_capacity(self.raw.num_hidden_layers);
        for l in 0..self.raw.num_hidden_layers {
            let b = |name: &str| self.p(&format!("encoder.layer.{l}.{name}"));
            let ln1 = ln(store, &b(names.ln1), d)?;
            let qkv = |what: &str| ["query", "key", "value"].map(|proj| b(&format!("attention.attention.{proj}.{what}")));
            let w_qkv = take_cat(store, qkv("weight"), &[d, d])?;
            let b_qkv = match names.qkv_bias {
                QkvBias::QueryValue => match (
                    store.take_optional(&b("attention.attention.q_bias"), &[d])?,
                    store.take_optional(&b("attention.attention.v_bias"), &[d])?,
                ) {
                    (Some(q), Some(v)) => Some(Tensor::f_cat(&[q.shallow_clone(), q.f_zeros_like()?, v], 0)?),
                    _ => None,
                },
                QkvBias::Each if self.raw.qkv_bias => Some(take_cat(store, qkv("bias"), &[d])?),
                QkvBias::Each => None,
            };
            let scale = |store: &mut TensorStore, i: u8| -> Result<Option<Tensor>> {
                if names.layer_scale {
                    Ok(Some(store.take(&b(&format!("layer_scale{i}.lambda1")), &[d])?))
                } else {
                    Ok(None)
                }
            };
            let (ls1, ls2) = (scale(store, 1)?, scale(store, 2)?);
            let (w_o, b_o) = linear(store, &b("attention.output.dense"), d, d)?;
            let (w_o, b_o) = fold_layer_scale(w_o, b_o, ls1.as_ref())?;
            let w_o_heads = BlockWeights::heads_of(&w_o, self.n_heads, d_head)?;
            let ln2 = ln(store, &b(names.ln2), d)?;
            let (w_in, b_in) = linear(store, &b(mlp_in), gate * d_mlp, d)?;
            let (w_out, b_out) = linear(store, &b(mlp_out), d, d_mlp)?;
            let (w_out, b_out) = fold_layer_scale(w_out, b_out, ls2.as_ref())?;
            blocks.push(BlockWeights { ln1, w_qkv, b_qkv, w_o, w_o_heads, b_o, ln2, w_in, b_in, w_out, b_out });
        }
        Ok(blocks)
    }

    /// `classifier.*` as the head, or none.
    pub fn head(&self, store: &mut TensorStore, n_classes: i64) -> Result<Head> {
        if !store.contains("classifier.weight") {
            return Ok(Head::None);
        }
        let (weight, bias) = linear(store, "classifier", n_classes, self.d)?;
        Ok(Head::Classifier { weight, bias })
    }

    /// Assembles the model, drops the pooler (dense + tanh on the class token, feeding no output we
    /// expose) and sets the input size: `size`, else the config's.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        store: &mut TensorStore,
        mut cfg: ViTConfig,
        emb: Embeddings,
        pos_embed: Tensor,
        blocks: Vec<BlockWeights>,
        ln_final: LayerNormWeights,
        head: Head,
        how: GridResample,
        size: Option<[i64; 2]>,
        labels: Vec<String>,
        family: &'static str,
    ) -> Result<Parts> {
        store.discard_prefix(&self.p("pooler."));
        let mut weights = ViTWeights {
            patch_weight: emb.patch_weight,
            patch_bias: emb.patch_bias,
            class_token: emb.class_token,
            distillation_token: emb.distillation_token,
            register_tokens: emb.register_tokens,
            pos_embed,
            ln_pre: None,
            blocks,
            ln_final,
            head,
        };
        set_image_size(&mut cfg, &mut weights, size.unwrap_or(self.image_size), how, &self.config_path)?;
        Ok(Parts { cfg, weights, text: None, labels, family })
    }
}

/// The plain ViT layout (ViT, DeiT with its distillation token, ViViT with its tubelets): a learned
/// position table at the config's grid, `layernorm` over every token, then the class token.
pub(super) fn load_vit_layout(
    dir: &Path,
    value: &Value,
    store: &mut TensorStore,
    opts: &LoadOptions,
    family: &'static str,
    distillation: bool,
) -> Result<Parts> {
    let h = Header::read(dir, value, store, family)?;
    let (n_classes, labels) = h.classes(store, value);
    let emb = h.embeddings(store, distillation, 0)?;
    let (pos_embed, table_grid) = h.learned_positions(store, &emb, Some(h.image_grid()))?;
    let d_mlp = h.d_mlp(store)?;
    let mut cfg = h.config(&emb, d_mlp, table_grid);
    cfg.n_classes = n_classes;
    let blocks = h.blocks(store, &VIT_BLOCK, d_mlp, cfg.d_head)?;
    let ln_final = ln(store, &h.p("layernorm"), h.d)?;
    let head = h.head(store, n_classes)?;
    h.finish(store, cfg, emb, pos_embed, blocks, ln_final, head, GridResample::Bicubic, opts.image_size, labels, family)
}
