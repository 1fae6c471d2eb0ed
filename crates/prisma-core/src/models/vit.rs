//! HookedViT: a pre-LN vision transformer whose every intermediate value passes a hook point.
//! Loaders (weights/*) fill `ViTConfig` + `ViTWeights`; nothing here knows checkpoint names.

use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, Site, BLOCK_SITES};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Gelu,
    GeluTanh,
    QuickGelu,
    Relu,
    Silu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        }
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => x.f_gelu("none")?,
            Activation::GeluTanh => x.f_gelu("tanh")?,
            // CLIP's approximation: x * sigmoid(1.702 x).
            Activation::QuickGelu => x.f_mul(&x.f_mul_scalar(1.702)?.f_sigmoid()?)?,
            Activation::Relu => x.f_relu()?,
            Activation::Silu => x.f_silu()?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Head reads the class token.
    ClassToken,
    /// Head reads the mean of the patch tokens.
    MeanPatches,
}

#[derive(Debug, Clone)]
pub struct ViTConfig {
    pub architecture: String,
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
    pub has_class_token: bool,
    pub has_distillation_token: bool,
    pub has_ln_pre: bool,
    pub pooling: Pooling,
    /// 0 when the model has no classification head.
    pub n_classes: i64,
}

impl ViTConfig {
    pub fn grid(&self) -> [i64; 2] {
        [self.image_size[0] / self.patch_size, self.image_size[1] / self.patch_size]
    }
    pub fn n_patches(&self) -> i64 {
        let [h, w] = self.grid();
        h * w
    }
    pub fn n_prefix_tokens(&self) -> i64 {
        self.has_class_token as i64 + self.has_distillation_token as i64
    }
    pub fn n_pos(&self) -> i64 {
        self.n_patches() + self.n_prefix_tokens()
    }
}

pub struct LayerNormWeights {
    pub weight: Tensor,
    pub bias: Tensor,
}

pub struct BlockWeights {
    pub ln1: LayerNormWeights,
    /// Fused [3d, d] projection (q rows, then k, then v) so the common path is one matmul.
    pub w_qkv: Tensor,
    pub b_qkv: Option<Tensor>,
    /// [d, H*dh] as in nn.Linear, and the same weights as [H, dh, d] for per-head results.
    pub w_o: Tensor,
    pub w_o_heads: Tensor,
    pub b_o: Tensor,
    pub ln2: LayerNormWeights,
    pub w_in: Tensor,
    pub b_in: Tensor,
    pub w_out: Tensor,
    pub b_out: Tensor,
}

pub struct ViTWeights {
    pub patch_weight: Tensor,
    pub patch_bias: Option<Tensor>,
    pub class_token: Option<Tensor>,
    pub distillation_token: Option<Tensor>,
    /// [1, pos, d]
    pub pos_embed: Tensor,
    pub ln_pre: Option<LayerNormWeights>,
    pub blocks: Vec<BlockWeights>,
    pub ln_final: LayerNormWeights,
    pub head: Option<(Tensor, Tensor)>,
}

/// Where a forward pass begins.
pub enum ForwardStart<'a> {
    Pixels(&'a Tensor),
    /// Start at block `layer` from its `hook_resid_pre` value.
    Resid { layer: usize, resid: &'a Tensor },
    /// Start inside block `layer` with some of its values already known (see `BlockEntry`).
    Inside { layer: usize, entry: BlockEntry },
}

/// A block entered part-way, with the values before that point already computed (e.g. taken from a
/// cached run). Patching sweeps use this to skip work that a patch cannot change. Hooks before the
/// entry point are not visited.
pub enum BlockEntry {
    /// `hook_resid_pre` plus the (already hooked) q, k and v.
    Qkv { resid_pre: Tensor, q: Tensor, k: Tensor, v: Tensor },
    /// `hook_resid_pre` plus the (already hooked) z.
    Z { resid_pre: Tensor, z: Tensor },
    /// `hook_resid_mid`: only the MLP half of the block remains.
    ResidMid(Tensor),
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
    /// Every hook point of this model, in forward order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let mut points = vec![
            HookPoint::global(Site::Embed),
            HookPoint::global(Site::PosEmbed),
            HookPoint::global(Site::FullEmbed),
        ];
        if self.cfg.has_ln_pre {
            points.push(HookPoint::global(Site::LnPreScale));
            points.push(HookPoint::global(Site::LnPreNormalized));
        }
        for layer in 0..self.cfg.n_layers {
            points.extend(BLOCK_SITES.iter().map(|(site, _)| HookPoint::block(layer, *site)));
        }
        points.push(HookPoint::global(Site::LnFinalScale));
        points.push(HookPoint::global(Site::LnFinalNormalized));
        if self.cfg.n_classes > 0 {
            points.push(HookPoint::global(Site::Logits));
        }
        points
    }

    pub fn hook_shape(&self, point: HookPoint, batch: i64) -> Vec<i64> {
        let c = &self.cfg;
        let (pos, d, h, dh) = (c.n_pos(), c.d_model, c.n_heads, c.d_head);
        use Site::*;
        match point.site {
            Embed => vec![batch, c.n_patches(), d],
            LnPreScale | Ln1Scale | Ln2Scale | LnFinalScale => vec![batch, pos, 1],
            Q | K | V | Z => vec![batch, pos, h, dh],
            AttnScores | Pattern => vec![batch, h, pos, pos],
            Result => vec![batch, pos, h, d],
            MlpPre | MlpPost => vec![batch, pos, c.d_mlp],
            Logits => vec![batch, c.n_classes],
            _ => vec![batch, pos, d],
        }
    }

    /// Runs from `start` to the logits, or only up to block `stop_at_layer` (exclusive), in which case
    /// the result is that block's `hook_resid_pre`. Returns the output's hook name and value.
    pub fn forward(&self, start: ForwardStart, stop_at_layer: Option<usize>, ctx: &mut HookCtx) -> Result<(HookPoint, Tensor)> {
        self.forward_planned(start, stop_at_layer, ForwardPlan::default(), ctx)
    }

    pub fn forward_planned(&self, start: ForwardStart, stop_at_layer: Option<usize>, plan: ForwardPlan, ctx: &mut HookCtx) -> Result<(HookPoint, Tensor)> {
        let n_layers = self.cfg.n_layers;
        let last_layer = stop_at_layer.unwrap_or(n_layers).min(n_layers);
        let cls_only = |layer: usize| {
            plan.last_block_class_token_only
                && stop_at_layer.is_none()
                && layer + 1 == n_layers
                && self.cfg.pooling == Pooling::ClassToken
                && self.cfg.has_class_token
        };
        let (first_layer, mut resid) = match start {
            ForwardStart::Pixels(pixels) => (0, self.embed(pixels, ctx)?),
            ForwardStart::Resid { layer, resid } => (layer, resid.shallow_clone()),
            ForwardStart::Inside { layer, entry } => {
                if layer >= n_layers {
                    return Err(PrismaError::LayerRange(format!("cannot enter block {layer} of {n_layers}")));
                }
                (layer + 1, self.block_from(layer, entry, cls_only(layer), ctx)?)
            }
        };
        for layer in first_layer..last_layer {
            resid = self.block_from(layer, BlockEntry::Qkv { resid_pre: resid, q: Tensor::new(), k: Tensor::new(), v: Tensor::new() }, cls_only(layer), ctx)?;
        }
        if let Some(stop) = stop_at_layer {
            let name = if stop < n_layers {
                HookPoint::block(stop, Site::ResidPre)
            } else {
                HookPoint::block(n_layers - 1, Site::ResidPost)
            };
            return Ok((name, resid));
        }
        let normalized = self.layer_norm(
            &resid,
            &self.weights.ln_final,
            HookPoint::global(Site::LnFinalScale),
            HookPoint::global(Site::LnFinalNormalized),
            ctx,
        )?;
        let Some((w, b)) = &self.weights.head else {
            return Ok((HookPoint::global(Site::LnFinalNormalized), normalized));
        };
        let pooled = match self.cfg.pooling {
            Pooling::ClassToken => normalized.f_select(1, 0)?,
            Pooling::MeanPatches => {
                let prefix = self.cfg.n_prefix_tokens();
                normalized
                    .f_narrow(1, prefix, self.cfg.n_patches())?
                    .f_mean_dim([1i64].as_slice(), false, None::<Kind>)?
            }
        };
        let logits = ctx.hook(HookPoint::global(Site::Logits), pooled.f_linear(w, Some(b))?)?;
        Ok((HookPoint::global(Site::Logits), logits))
    }

    fn embed(&self, pixels: &Tensor, ctx: &mut HookCtx) -> Result<Tensor> {
        let c = &self.cfg;
        let size = pixels.size();
        if size.len() != 4 || size[1] != c.num_channels || size[2] != c.image_size[0] || size[3] != c.image_size[1] {
            return Err(PrismaError::Shape(format!(
                "pixels have shape {size:?}, this model expects [batch, {}, {}, {}]",
                c.num_channels, c.image_size[0], c.image_size[1]
            )));
        }
        let w = &self.weights;
        let p = c.patch_size;
        let patches = pixels
            .f_conv2d(&w.patch_weight, w.patch_bias.as_ref(), [p, p].as_slice(), [0i64, 0].as_slice(), [1i64, 1].as_slice(), 1)?
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?;
        let patches = ctx.hook(HookPoint::global(Site::Embed), patches)?;
        let batch = size[0];
        let mut tokens: Vec<Tensor> = Vec::with_capacity(3);
        for token in [&w.class_token, &w.distillation_token].into_iter().flatten() {
            tokens.push(token.f_expand([batch, 1, c.d_model].as_slice(), false)?);
        }
        tokens.push(patches);
        let tokens = Tensor::f_cat(&tokens, 1)?;
        let pos = w.pos_embed.f_expand([batch, c.n_pos(), c.d_model].as_slice(), false)?;
        let pos = ctx.hook(HookPoint::global(Site::PosEmbed), pos)?;
        let mut resid = ctx.hook(HookPoint::global(Site::FullEmbed), tokens.f_add(&pos)?)?;
        if let Some(ln_pre) = &w.ln_pre {
            resid = self.layer_norm(
                &resid,
                ln_pre,
                HookPoint::global(Site::LnPreScale),
                HookPoint::global(Site::LnPreNormalized),
                ctx,
            )?;
        }
        Ok(resid)
    }

    /// Runs block `layer` from `entry`. A `Qkv` entry with undefined q/k/v means "from resid_pre".
    /// With `cls_only`, queries (and everything after attention) are computed for token 0 only.
    fn block_from(&self, layer: usize, entry: BlockEntry, cls_only: bool, ctx: &mut HookCtx) -> Result<Tensor> {
        let c = &self.cfg;
        let w = &self.weights.blocks[layer];
        let at = |site| HookPoint::block(layer, site);
        let resid_mid = match entry {
            BlockEntry::ResidMid(resid_mid) if cls_only => resid_mid.f_narrow(1, 0, 1)?,
            BlockEntry::ResidMid(resid_mid) => resid_mid,
            BlockEntry::Z { resid_pre, z } => self.attention_output(layer, &resid_pre, z, cls_only, ctx)?,
            BlockEntry::Qkv { resid_pre, q, k, v } => {
                let (resid_pre, q, k, v) = if q.defined() {
                    (resid_pre, q, k, v)
                } else {
                    let resid_pre = ctx.hook(at(Site::ResidPre), resid_pre)?;
                    let x = self.layer_norm(&resid_pre, &w.ln1, at(Site::Ln1Scale), at(Site::Ln1Normalized), ctx)?;
                    let size = x.size();
                    let heads = [size[0], size[1], c.n_heads, c.d_head];
                    let qkv = x.f_linear(&w.w_qkv, w.b_qkv.as_ref())?.f_split(c.d_model, -1)?;
                    let [q, k, v]: [Tensor; 3] = qkv
                        .try_into()
                        .map_err(|_| PrismaError::Internal("qkv split did not give three parts".into()))?;
                    let q = ctx.hook(at(Site::Q), q.f_reshape(heads.as_slice())?)?;
                    let k = ctx.hook(at(Site::K), k.f_reshape(heads.as_slice())?)?;
                    let v = ctx.hook(at(Site::V), v.f_reshape(heads.as_slice())?)?;
                    (resid_pre, q, k, v)
                };
                let q = if cls_only { q.f_narrow(1, 0, 1)? } else { q };
                // [B, H, pos, dh]
                let (qh, kh, vh) = (q.f_transpose(1, 2)?, k.f_transpose(1, 2)?, v.f_transpose(1, 2)?);
                let z = if ctx.active(at(Site::AttnScores)) || ctx.active(at(Site::Pattern)) {
                    let scale = 1.0 / (c.d_head as f64).sqrt();
                    let scores = qh.f_matmul(&kh.f_transpose(-1, -2)?)?.f_mul_scalar(scale)?;
                    let scores = ctx.hook(at(Site::AttnScores), scores)?;
                    let pattern = ctx.hook(at(Site::Pattern), scores.f_softmax(-1, None::<Kind>)?)?;
                    pattern.f_matmul(&vh)?
                } else {
                    Tensor::f_scaled_dot_product_attention(&qh, &kh, &vh, None::<Tensor>, 0.0, false, None, false)?
                };
                let z = ctx.hook(at(Site::Z), z.f_transpose(1, 2)?)?;
                self.attention_output(layer, &resid_pre, z, cls_only, ctx)?
            }
        };
        let x = self.layer_norm(&resid_mid, &w.ln2, at(Site::Ln2Scale), at(Site::Ln2Normalized), ctx)?;
        let pre = ctx.hook(at(Site::MlpPre), x.f_linear(&w.w_in, Some(&w.b_in))?)?;
        let post = ctx.hook(at(Site::MlpPost), c.activation.apply(&pre)?)?;
        let mlp_out = ctx.hook(at(Site::MlpOut), post.f_linear(&w.w_out, Some(&w.b_out))?)?;
        ctx.hook(at(Site::ResidPost), resid_mid.f_add(&mlp_out)?)
    }

    /// From z to `hook_resid_mid`: per-head results when watched, else one fused projection.
    fn attention_output(&self, layer: usize, resid_pre: &Tensor, z: Tensor, cls_only: bool, ctx: &mut HookCtx) -> Result<Tensor> {
        let c = &self.cfg;
        let w = &self.weights.blocks[layer];
        let at = |site| HookPoint::block(layer, site);
        // Only the class token's row matters downstream; z at other positions feeds other rows.
        let z = if cls_only && z.size()[1] != 1 { z.f_narrow(1, 0, 1)? } else { z };
        let size = z.size();
        let (batch, pos) = (size[0], size[1]);
        let attn_out = if ctx.active(at(Site::Result)) {
            let result = Tensor::f_einsum("bphd,hdm->bphm", &[&z, &w.w_o_heads], None::<&[i64]>)?;
            let result = ctx.hook(at(Site::Result), result)?;
            result.f_sum_dim_intlist([2i64].as_slice(), false, None::<Kind>)?.f_add(&w.b_o)?
        } else {
            z.f_reshape([batch, pos, c.d_model].as_slice())?.f_linear(&w.w_o, Some(&w.b_o))?
        };
        let attn_out = ctx.hook(at(Site::AttnOut), attn_out)?;
        let resid_pre = if cls_only { resid_pre.f_narrow(1, 0, 1)? } else { resid_pre.shallow_clone() };
        ctx.hook(at(Site::ResidMid), resid_pre.f_add(&attn_out)?)
    }

    /// TransformerLens-style layer norm: `scale` = sqrt(var + eps) of the centred input is a hook
    /// point, and `normalized` is the output after weight and bias.
    fn layer_norm(
        &self,
        x: &Tensor,
        ln: &LayerNormWeights,
        scale_point: HookPoint,
        normalized_point: HookPoint,
        ctx: &mut HookCtx,
    ) -> Result<Tensor> {
        let eps = self.cfg.layer_norm_eps;
        let normalized = if ctx.active(scale_point) {
            let centred = x.f_sub(&x.f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?)?;
            let scale = centred
                .f_square()?
                .f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?
                .f_add_scalar(eps)?
                .f_sqrt()?;
            let scale = ctx.hook(scale_point, scale)?;
            centred.f_div(&scale)?.f_mul(&ln.weight)?.f_add(&ln.bias)?
        } else {
            x.f_layer_norm([self.cfg.d_model].as_slice(), Some(&ln.weight), Some(&ln.bias), eps, true)?
        };
        ctx.hook(normalized_point, normalized)
    }
}
