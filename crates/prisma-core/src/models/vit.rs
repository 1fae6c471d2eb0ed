//! HookedViT: a pre-LN vision transformer whose every intermediate value passes a hook point.
//! Loaders (weights/*) fill `ViTConfig` + `ViTWeights`; nothing here knows checkpoint names. One
//! struct covers every family we load (HF ViT/DeiT/DINOv2/CLIP vision, open_clip, timm, VideoMAE,
//! ViViT): they differ only in the switches of `ViTConfig` and in which weights exist.

use super::block::{block_from, layer_norm, Layer};
pub use super::block::{Activation, BlockDims, BlockWeights, LayerNormWeights};
pub(crate) use super::block::{BlockEntry, EntryPoint};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, ShapeDims, Site, Tower};
use tch::{Kind, Tensor};

/// Below this many multiply-adds a CPU patch embedding runs as one matrix product (see
/// `HookedViT::small_patch_product`).
pub const SMALL_PATCH_PRODUCT: i64 = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Head reads the class token.
    ClassToken,
    /// Head reads the mean of the patch tokens (class, distillation and register tokens excluded).
    MeanPatches,
}

/// Where the final layer norm sits relative to pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalNorm {
    /// Normalise every token, then pool (HF ViT, DINOv2, ViViT, timm class-token, open_clip ln_post).
    AllTokens,
    /// Pool, then normalise the pooled vector (HF CLIP post_layernorm, timm/VideoMAE fc_norm).
    Pooled,
}

#[derive(Debug, Clone)]
pub struct ViTConfig {
    pub architecture: String,
    pub image_size: [i64; 2],
    pub patch_size: i64,
    pub num_channels: i64,
    /// Video models: frames per clip (input [B, T, C, H, W]); 0 for image models.
    pub num_frames: i64,
    /// Video models: frames per tubelet.
    pub tubelet_size: i64,
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    /// MLP hidden width (per half for a gated MLP).
    pub d_mlp: i64,
    pub n_layers: usize,
    pub layer_norm_eps: f64,
    /// The final norm's eps, where it differs from the blocks' (VideoMAE fc_norm).
    pub final_norm_eps: f64,
    pub activation: Activation,
    pub gated_mlp: bool,
    pub has_class_token: bool,
    pub has_distillation_token: bool,
    /// Register tokens (DINOv2 -reg), after the class token; they get no position embedding.
    pub n_registers: i64,
    pub has_ln_pre: bool,
    pub pooling: Pooling,
    pub final_norm: FinalNorm,
    /// 0 when the model has no classification head (or a CLIP model without class prompts).
    pub n_classes: i64,
}

/// The sizes of a CLIP-style vision tower, all that differs between the places that build one
/// (the HF and open_clip loaders, the CLIP trainer).
pub struct ClipVisionSizes {
    pub image_size: [i64; 2],
    pub patch_size: i64,
    pub num_channels: i64,
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub d_mlp: i64,
    pub n_layers: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl ViTConfig {
    /// A CLIP-style vision tower: class token, ln_pre, plain MLP, the class token read by a
    /// contrastive head (no classes until prompts are set). `final_norm` is where the loader's
    /// library puts its last layer norm.
    pub fn clip_vision(architecture: &str, s: ClipVisionSizes, final_norm: FinalNorm) -> ViTConfig {
        ViTConfig {
            architecture: architecture.into(),
            image_size: s.image_size,
            patch_size: s.patch_size,
            num_channels: s.num_channels,
            num_frames: 0,
            tubelet_size: 1,
            d_model: s.d_model,
            n_heads: s.n_heads,
            d_head: s.d_head,
            d_mlp: s.d_mlp,
            n_layers: s.n_layers,
            layer_norm_eps: s.layer_norm_eps,
            final_norm_eps: s.layer_norm_eps,
            activation: s.activation,
            gated_mlp: false,
            has_class_token: true,
            has_distillation_token: false,
            n_registers: 0,
            has_ln_pre: true,
            pooling: Pooling::ClassToken,
            final_norm,
            n_classes: 0,
        }
    }

    pub fn grid(&self) -> [i64; 2] {
        [self.image_size[0] / self.patch_size, self.image_size[1] / self.patch_size]
    }
    /// Time slices of a video model (tokens are time-major); 1 for images.
    pub fn time_slices(&self) -> i64 {
        if self.num_frames > 0 {
            self.num_frames / self.tubelet_size.max(1)
        } else {
            1
        }
    }
    pub fn n_patches(&self) -> i64 {
        let [h, w] = self.grid();
        h * w * self.time_slices()
    }
    pub fn n_prefix_tokens(&self) -> i64 {
        self.has_class_token as i64 + self.has_distillation_token as i64 + self.n_registers
    }
    pub fn n_pos(&self) -> i64 {
        self.n_patches() + self.n_prefix_tokens()
    }
    pub fn dims(&self) -> BlockDims {
        BlockDims {
            tower: Tower::Vision,
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_head: self.d_head,
            layer_norm_eps: self.layer_norm_eps,
            activation: self.activation,
            gated_mlp: self.gated_mlp,
        }
    }
    fn final_dims(&self) -> BlockDims {
        BlockDims { layer_norm_eps: self.final_norm_eps, ..self.dims() }
    }
}

/// What turns the pooled, normalised vector into outputs.
pub enum Head {
    None,
    /// nn.Linear classifier: weight [C, d], bias [C].
    Classifier {
        weight: Tensor,
        bias: Tensor,
    },
    /// CLIP-style: image embedding = pooled @ projectionᵀ (projection [proj, d]); logits against
    /// `classes` [C, proj] = logit_scale × normalised text embeddings of the class prompts, when set.
    Contrastive {
        projection: Tensor,
        classes: Option<Tensor>,
    },
}

pub struct ViTWeights {
    /// Conv2d [d, C, p, p], or Conv3d [d, C, tubelet, p, p] for video.
    pub patch_weight: Tensor,
    pub patch_bias: Option<Tensor>,
    pub class_token: Option<Tensor>,
    pub distillation_token: Option<Tensor>,
    /// [1, registers, d]
    pub register_tokens: Option<Tensor>,
    /// [1, pos, d] in token order (zero rows at register positions).
    pub pos_embed: Tensor,
    pub ln_pre: Option<LayerNormWeights>,
    pub blocks: Vec<BlockWeights>,
    pub ln_final: LayerNormWeights,
    pub head: Head,
}

impl ViTWeights {
    /// The weights of a `ViTConfig::clip_vision` tower: a bias-free patch convolution, a class
    /// token, ln_pre, and `projection` [proj, d] to the shared embedding space.
    pub fn clip_vision(
        patch_weight: Tensor,
        class_token: Tensor,
        pos_embed: Tensor,
        ln_pre: LayerNormWeights,
        blocks: Vec<BlockWeights>,
        ln_final: LayerNormWeights,
        projection: Tensor,
    ) -> ViTWeights {
        ViTWeights {
            patch_weight,
            patch_bias: None,
            class_token: Some(class_token),
            distillation_token: None,
            register_tokens: None,
            pos_embed,
            ln_pre: Some(ln_pre),
            blocks,
            ln_final,
            head: Head::Contrastive { projection, classes: None },
        }
    }

    pub fn has_head(&self) -> bool {
        match &self.head {
            Head::None => false,
            Head::Classifier { .. } => true,
            Head::Contrastive { classes, .. } => classes.is_some(),
        }
    }
}

/// Where a forward pass begins.
pub enum ForwardStart<'a> {
    Pixels(&'a Tensor),
    /// Start at block `layer` from its `hook_resid_pre` value.
    Resid {
        layer: usize,
        resid: &'a Tensor,
    },
}

/// Options that change how much of the last block is computed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardPlan {
    /// Compute the last block only for the class token's query (its keys/values still use every
    /// token). Valid when only the logits are wanted from a class-token model and nothing reads or
    /// edits hooks of the last block or ln_final.
    pub last_block_class_token_only: bool,
}

pub struct HookedViT {
    pub cfg: ViTConfig,
    pub weights: ViTWeights,
}

impl HookedViT {
    /// Every hook point of this model's vision tower and head, in forward order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let mut points = vec![HookPoint::global(Site::Embed), HookPoint::global(Site::PosEmbed), HookPoint::global(Site::FullEmbed)];
        if self.cfg.has_ln_pre {
            points.push(HookPoint::global(Site::LnPreScale));
            points.push(HookPoint::global(Site::LnPreNormalized));
        }
        for layer in 0..self.cfg.n_layers {
            points.extend(Site::in_block().filter(|s| self.cfg.gated_mlp || *s != Site::MlpPreLinear).map(|s| HookPoint::block(layer, s)));
        }
        points.push(HookPoint::global(Site::LnFinalScale));
        points.push(HookPoint::global(Site::LnFinalNormalized));
        if let Head::Contrastive { .. } = self.weights.head {
            points.push(HookPoint::global(Site::ImageEmbeds));
        }
        if self.weights.has_head() {
            points.push(HookPoint::global(Site::Logits));
        }
        points
    }

    /// The sizes this tower's hook shapes are made of (see `Site::shape`), for `batch` images.
    pub fn shape_dims(&self, batch: i64) -> ShapeDims {
        let c = &self.cfg;
        ShapeDims {
            batch,
            pos: c.n_pos(),
            embed_tokens: c.n_patches(),
            d_model: c.d_model,
            n_heads: c.n_heads,
            d_head: c.d_head,
            d_mlp: c.d_mlp,
            embed_dim: match &self.weights.head {
                Head::Contrastive { projection, .. } => projection.size()[0],
                _ => c.d_model,
            },
            n_classes: c.n_classes,
            pooled_final_norm: c.final_norm == FinalNorm::Pooled,
        }
    }

    /// Runs from `start` to the logits, or only up to block `stop_at_layer` (exclusive), in which case
    /// the result is that block's `hook_resid_pre`. Returns the output's hook name and value.
    pub fn forward(&self, start: ForwardStart, stop_at_layer: Option<usize>, ctx: &mut HookCtx) -> Result<(HookPoint, Tensor)> {
        self.forward_planned(start, stop_at_layer, ForwardPlan::default(), ctx)
    }

    pub fn forward_planned(
        &self,
        start: ForwardStart,
        stop_at_layer: Option<usize>,
        plan: ForwardPlan,
        ctx: &mut HookCtx,
    ) -> Result<(HookPoint, Tensor)> {
        self.forward_with_classes(start, stop_at_layer, plan, None, ctx)
    }

    /// `forward_planned` scoring a contrastive head against `classes` [C, proj] instead of the
    /// stored class prompts (a run whose text tower was hooked or edited).
    pub fn forward_with_classes(
        &self,
        start: ForwardStart,
        stop_at_layer: Option<usize>,
        plan: ForwardPlan,
        classes: Option<&Tensor>,
        ctx: &mut HookCtx,
    ) -> Result<(HookPoint, Tensor)> {
        let n_layers = self.cfg.n_layers;
        let dims = self.cfg.dims();
        let last_layer = stop_at_layer.unwrap_or(n_layers).min(n_layers);
        let cls_only = |layer: usize| {
            plan.last_block_class_token_only && stop_at_layer.is_none() && layer + 1 == n_layers && self.head_reads_class_token_only()
        };
        let (first_layer, mut resid) = match start {
            ForwardStart::Pixels(pixels) => (0, self.embed(pixels, ctx)?),
            ForwardStart::Resid { layer, resid } => (layer, resid.shallow_clone()),
        };
        for layer in first_layer..last_layer {
            resid = block_from(&dims, &self.weights.blocks[layer], layer, BlockEntry::resid_pre(resid), cls_only(layer), None, ctx)?;
        }
        if let Some(stop) = stop_at_layer {
            let name =
                if stop < n_layers { HookPoint::block(stop, Site::ResidPre) } else { HookPoint::block(n_layers - 1, Site::ResidPost) };
            return Ok((name, resid));
        }
        self.finalize_with(&resid, classes, ctx)
    }

    /// True when the output depends on the last block only through the class token's row (class
    /// token pooling), so that block may be run for the class token's query alone.
    pub fn head_reads_class_token_only(&self) -> bool {
        self.cfg.pooling == Pooling::ClassToken && self.cfg.has_class_token
    }

    /// Block `index`, for sweeps that enter it part-way (see block.rs).
    pub(crate) fn layer(&self, index: usize) -> Layer<'_> {
        Layer { dims: self.cfg.dims(), w: &self.weights.blocks[index], index }
    }

    /// Pools the final residual stream [B, pos, d] over the tokens the head reads → [B, d].
    pub fn pool(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.cfg.pooling {
            Pooling::ClassToken => x.f_select(1, 0)?,
            Pooling::MeanPatches => {
                let prefix = self.cfg.n_prefix_tokens();
                let n = x.size()[1] - prefix;
                x.f_narrow(1, prefix, n)?.f_mean_dim([1i64].as_slice(), false, None::<Kind>)?
            }
        })
    }

    /// From the last block's output to the model's output: final norm and pooling (in the model's
    /// order), then the head.
    pub fn finalize(&self, resid: &Tensor, ctx: &mut HookCtx) -> Result<(HookPoint, Tensor)> {
        self.finalize_with(resid, None, ctx)
    }

    fn finalize_with(&self, resid: &Tensor, classes_override: Option<&Tensor>, ctx: &mut HookCtx) -> Result<(HookPoint, Tensor)> {
        let dims = self.cfg.final_dims();
        let (scale, normalized) = (HookPoint::global(Site::LnFinalScale), HookPoint::global(Site::LnFinalNormalized));
        let (pooled, normed) = match self.cfg.final_norm {
            FinalNorm::AllTokens => {
                let normed = layer_norm(&dims, resid, &self.weights.ln_final, scale, normalized, ctx)?;
                (self.pool(&normed)?, normed)
            }
            FinalNorm::Pooled => {
                let pooled = layer_norm(&dims, &self.pool(resid)?, &self.weights.ln_final, scale, normalized, ctx)?;
                (pooled.shallow_clone(), pooled)
            }
        };
        match &self.weights.head {
            Head::None => Ok((normalized, normed)),
            Head::Classifier { weight, bias } => {
                Ok((HookPoint::global(Site::Logits), ctx.hook(HookPoint::global(Site::Logits), pooled.f_linear(weight, Some(bias))?)?))
            }
            Head::Contrastive { projection, classes } => {
                let embeds = ctx.hook(HookPoint::global(Site::ImageEmbeds), pooled.f_linear::<Tensor>(projection, None)?)?;
                match classes_override.or(classes.as_ref()) {
                    None => Ok((HookPoint::global(Site::ImageEmbeds), embeds)),
                    Some(classes) => {
                        let logits = normalize_rows(&embeds)?.f_linear::<Tensor>(classes, None)?;
                        Ok((HookPoint::global(Site::Logits), ctx.hook(HookPoint::global(Site::Logits), logits)?))
                    }
                }
            }
        }
    }

    /// The head applied to normalised vectors [..., d] as if each were the pooled one: the logit
    /// lens's per-position read-out. Errors for a model without a head.
    pub fn head_logits(&self, normed: &Tensor) -> Result<Tensor> {
        match &self.weights.head {
            Head::Classifier { weight, bias } => Ok(normed.f_linear(weight, Some(bias))?),
            Head::Contrastive { projection, classes: Some(classes) } => {
                Ok(normalize_rows(&normed.f_linear::<Tensor>(projection, None)?)?.f_linear::<Tensor>(classes, None)?)
            }
            _ => Err(PrismaError::Argument("this model has no head to read logits through".into())),
        }
    }

    /// Final layer norm on every vector of x [..., d] (the logit lens's view of any residual).
    pub fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor> {
        let w = &self.weights.ln_final;
        Ok(x.f_layer_norm([self.cfg.d_model].as_slice(), Some(&w.weight), Some(&w.bias), self.cfg.final_norm_eps, true)?)
    }

    /// The direction in normalised-residual space whose dot product (plus `bias`) gives the logit of
    /// `target` minus that of `baseline`, for a linear head. For a contrastive head the logit is this
    /// dot product divided by the image embedding's norm (which DLA freezes from the cached run).
    pub fn logit_direction(&self, target: i64, baseline: Option<i64>) -> Result<(Tensor, f64)> {
        let row = |m: &Tensor, i: i64| m.f_get(i);
        match &self.weights.head {
            Head::Classifier { weight, bias } => {
                let mut dir = row(weight, target)?;
                let mut b = bias.f_get(target)?.f_to_kind(Kind::Double)?.double_value(&[]);
                if let Some(base) = baseline {
                    dir = dir.f_sub(&row(weight, base)?)?;
                    b -= bias.f_get(base)?.f_to_kind(Kind::Double)?.double_value(&[]);
                }
                Ok((dir, b))
            }
            Head::Contrastive { projection, classes: Some(classes) } => {
                let mut text = row(classes, target)?;
                if let Some(base) = baseline {
                    text = text.f_sub(&row(classes, base)?)?;
                }
                Ok((text.f_unsqueeze(0)?.f_matmul(projection)?.f_squeeze_dim(0)?, 0.0))
            }
            _ => Err(PrismaError::Argument("this model has no head to read logits through".into())),
        }
    }

    /// The patch embedding of a small batch as one matrix product, [B, patches, d]; None where the
    /// convolution should run. Patches never overlap, so the convolution is a product of each
    /// flattened patch with the flattened kernel. The reference libraries run oneDNN's convolution,
    /// whose per-call setup dominates a small model's embedding and is negligible on a large one.
    /// The product rounds differently from it, so it is taken only below `SMALL_PATCH_PRODUCT`
    /// multiply-adds: large models keep the reference's own kernel and its bits, which a chaotic
    /// model amplifies (numbers in docs/benchmarks.md, "Measurements behind choices in the code").
    fn small_patch_product(&self, pixels: &Tensor) -> Result<Option<Tensor>> {
        let c = &self.cfg;
        let w = &self.weights;
        let size = pixels.size();
        let (batch, channels, height, width, p) = (size[0], size[1], size[2], size[3], c.patch_size);
        if pixels.device() != tch::Device::Cpu || height % p != 0 || width % p != 0 {
            return Ok(None);
        }
        let (rows, cols) = (height / p, width / p);
        let patch_len = channels * p * p;
        if batch * rows * cols * patch_len * c.d_model >= SMALL_PATCH_PRODUCT {
            return Ok(None);
        }
        // [B, C, rows, p, cols, p] -> [B, rows, cols, C, p, p]: each patch's values in the kernel's order.
        let flat = pixels
            .f_reshape([batch, channels, rows, p, cols, p].as_slice())?
            .f_permute([0i64, 2, 4, 1, 3, 5].as_slice())?
            .f_reshape([batch, rows * cols, patch_len].as_slice())?;
        Ok(Some(flat.f_linear(&w.patch_weight.f_reshape([c.d_model, patch_len].as_slice())?, w.patch_bias.as_ref())?))
    }

    fn embed(&self, pixels: &Tensor, ctx: &mut HookCtx) -> Result<Tensor> {
        let c = &self.cfg;
        let size = pixels.size();
        let w = &self.weights;
        let p = c.patch_size;
        // A convolution's output [B, d, grid...] as [B, patches, d].
        let tokens_of = |conv: Tensor| -> Result<Tensor> { Ok(conv.f_flatten(2, -1)?.f_transpose(1, 2)?) };
        let patches = if c.num_frames > 0 {
            if size.len() != 5
                || size[1] != c.num_frames
                || size[2] != c.num_channels
                || size[3] != c.image_size[0]
                || size[4] != c.image_size[1]
            {
                return Err(PrismaError::Shape(format!(
                    "pixels have shape {size:?}, this video model expects [batch, {}, {}, {}, {}] (frames, channels, height, width)",
                    c.num_frames, c.num_channels, c.image_size[0], c.image_size[1]
                )));
            }
            let t = c.tubelet_size;
            tokens_of(pixels.f_permute([0i64, 2, 1, 3, 4].as_slice())?.f_conv3d(
                &w.patch_weight,
                w.patch_bias.as_ref(),
                [t, p, p].as_slice(),
                [0i64, 0, 0].as_slice(),
                [1i64, 1, 1].as_slice(),
                1,
            )?)?
        } else {
            if size.len() != 4 || size[1] != c.num_channels || size[2] != c.image_size[0] || size[3] != c.image_size[1] {
                return Err(PrismaError::Shape(format!(
                    "pixels have shape {size:?}, this model expects [batch, {}, {}, {}]",
                    c.num_channels, c.image_size[0], c.image_size[1]
                )));
            }
            if let Some(patches) = self.small_patch_product(pixels)? {
                patches
            } else {
                tokens_of(pixels.f_conv2d(
                    &w.patch_weight,
                    w.patch_bias.as_ref(),
                    [p, p].as_slice(),
                    [0i64, 0].as_slice(),
                    [1i64, 1].as_slice(),
                    1,
                )?)?
            }
        };
        // [B, patches, d]
        let patches = ctx.hook(HookPoint::global(Site::Embed), patches)?;
        let batch = size[0];
        let mut tokens: Vec<Tensor> = Vec::with_capacity(4);
        for token in [&w.class_token, &w.distillation_token, &w.register_tokens].into_iter().flatten() {
            let n = token.size()[1];
            tokens.push(token.f_expand([batch, n, c.d_model].as_slice(), false)?);
        }
        tokens.push(patches);
        let tokens = Tensor::f_cat(&tokens, 1)?;
        let pos = w.pos_embed.f_expand([batch, c.n_pos(), c.d_model].as_slice(), false)?;
        let pos = ctx.hook(HookPoint::global(Site::PosEmbed), pos)?;
        let mut resid = ctx.hook(HookPoint::global(Site::FullEmbed), tokens.f_add(&pos)?)?;
        if let Some(ln_pre) = &w.ln_pre {
            resid =
                layer_norm(&c.dims(), &resid, ln_pre, HookPoint::global(Site::LnPreScale), HookPoint::global(Site::LnPreNormalized), ctx)?;
        }
        Ok(resid)
    }
}

/// x / ‖x‖ over the last axis (CLIP's embedding normalisation).
pub fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_div(&x.f_norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)?)?)
}
