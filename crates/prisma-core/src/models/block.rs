//! One pre-LN transformer block (attention + MLP) with a hook at every intermediate value. Shared by
//! the vision tower (`HookedViT`) and the text tower (`HookedTextEncoder`); the tower only changes the
//! hook names and whether attention is masked.

use super::linear::{linear, linear_then};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, Site, Tower};
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

    pub(crate) fn apply(self, x: &Tensor) -> Result<Tensor> {
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

pub struct LayerNormWeights {
    pub weight: Tensor,
    pub bias: Tensor,
}

pub struct BlockWeights {
    pub ln1: LayerNormWeights,
    /// Fused [3d, d] projection (q rows, then k, then v) so the common path is one matmul.
    pub w_qkv: Tensor,
    pub b_qkv: Option<Tensor>,
    /// [d, H*dh] as in nn.Linear, and the same weights as [H, dh, d] for per-head results. Loaders
    /// fold a layer scale (DINOv2) into these and into `w_out`/`b_out`, so hooks see scaled outputs.
    pub w_o: Tensor,
    pub w_o_heads: Tensor,
    pub b_o: Tensor,
    pub ln2: LayerNormWeights,
    /// [d_mlp, d], or [2 d_mlp, d] for a gated (SwiGLU) MLP: gate rows first, then linear rows.
    pub w_in: Tensor,
    pub b_in: Tensor,
    pub w_out: Tensor,
    pub b_out: Tensor,
}

impl BlockWeights {
    /// Per-head view of an nn.Linear output projection [d, H*dh] → [H, dh, d].
    pub fn heads_of(w_o: &Tensor, n_heads: i64, d_head: i64) -> Result<Tensor> {
        let d = w_o.size()[0];
        // nn.Linear stores [out, in]; head h reads input columns h*dh..(h+1)*dh.
        Ok(w_o.f_reshape([d, n_heads, d_head].as_slice())?.f_permute([1i64, 2, 0].as_slice())?.f_contiguous()?)
    }
}

/// The sizes and choices one block needs; the same for every block of a tower.
#[derive(Debug, Clone, Copy)]
pub struct BlockDims {
    pub tower: Tower,
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    /// SwiGLU-style MLP: activation(gate) * linear.
    pub gated_mlp: bool,
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

/// The points at which rows can enter a block part-way (see `BlockEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// Nothing computed yet.
    ResidPre,
    Qkv,
    Z,
    ResidMid,
}

impl BlockEntry {
    /// Enter at `hook_resid_pre` (nothing known yet).
    pub fn resid_pre(resid_pre: Tensor) -> Self {
        BlockEntry::Qkv { resid_pre, q: Tensor::new(), k: Tensor::new(), v: Tensor::new() }
    }

    pub fn point(&self) -> EntryPoint {
        match self {
            BlockEntry::Qkv { q, .. } if !q.defined() => EntryPoint::ResidPre,
            BlockEntry::Qkv { .. } => EntryPoint::Qkv,
            BlockEntry::Z { .. } => EntryPoint::Z,
            BlockEntry::ResidMid(_) => EntryPoint::ResidMid,
        }
    }

    /// This entry's rows, then `other`'s, entering at the same point. With `cls_only`, values after
    /// attention exist for token 0 only, so both sides keep just that token.
    pub fn concat(self, other: BlockEntry, cls_only: bool) -> Result<BlockEntry> {
        let cat = |a: &Tensor, b: &Tensor| -> Result<Tensor> { Ok(Tensor::f_cat(&[a, b], 0)?) };
        let first_token = |t: &Tensor| -> Result<Tensor> {
            if cls_only && t.size()[1] != 1 {
                Ok(t.f_narrow(1, 0, 1)?)
            } else {
                Ok(t.shallow_clone())
            }
        };
        let cat_first = |a: &Tensor, b: &Tensor| -> Result<Tensor> { cat(&first_token(a)?, &first_token(b)?) };
        let (a, b) = (self.point(), other.point());
        Ok(match (self, other) {
            (BlockEntry::Qkv { resid_pre: r1, q: q1, k: k1, v: v1 }, BlockEntry::Qkv { resid_pre: r2, q: q2, k: k2, v: v2 }) if a == b => {
                if a == EntryPoint::ResidPre {
                    BlockEntry::resid_pre(cat(&r1, &r2)?)
                } else {
                    BlockEntry::Qkv { resid_pre: cat(&r1, &r2)?, q: cat(&q1, &q2)?, k: cat(&k1, &k2)?, v: cat(&v1, &v2)? }
                }
            }
            (BlockEntry::Z { resid_pre: r1, z: z1 }, BlockEntry::Z { resid_pre: r2, z: z2 }) => {
                BlockEntry::Z { resid_pre: cat(&r1, &r2)?, z: cat_first(&z1, &z2)? }
            }
            (BlockEntry::ResidMid(m1), BlockEntry::ResidMid(m2)) => BlockEntry::ResidMid(cat_first(&m1, &m2)?),
            _ => return Err(PrismaError::Internal(format!("cannot join rows entering at {a:?} with rows entering at {b:?}"))),
        })
    }
}

/// Rows at block `layer`'s input (`hook_resid_pre`) brought up to `point`, hooks visited on the way.
pub fn advance(
    dims: &BlockDims,
    w: &BlockWeights,
    layer: usize,
    resid_pre: Tensor,
    point: EntryPoint,
    cls_only: bool,
    ctx: &mut HookCtx,
) -> Result<BlockEntry> {
    if point == EntryPoint::ResidPre {
        return Ok(BlockEntry::resid_pre(resid_pre));
    }
    let (resid_pre, q, k, v) = qkv_of(dims, w, layer, resid_pre, ctx)?;
    if point == EntryPoint::Qkv {
        return Ok(BlockEntry::Qkv { resid_pre, q, k, v });
    }
    let z = attention_z(dims, layer, &q, &k, &v, cls_only, None, ctx)?;
    if point == EntryPoint::Z {
        return Ok(BlockEntry::Z { resid_pre, z });
    }
    Ok(BlockEntry::ResidMid(attention_output(dims, w, layer, &resid_pre, z, cls_only, ctx)?))
}

/// Runs block `layer` from `entry`. A `Qkv` entry with undefined q/k/v means "from resid_pre".
/// With `cls_only`, queries (and everything after attention) are computed for token 0 only.
/// `mask` ([B or 1, 1, q, k] bool, true = may attend) restricts attention (causal text towers).
pub fn block_from(
    dims: &BlockDims,
    w: &BlockWeights,
    layer: usize,
    entry: BlockEntry,
    cls_only: bool,
    mask: Option<&Tensor>,
    ctx: &mut HookCtx,
) -> Result<Tensor> {
    let resid_mid = match entry {
        BlockEntry::ResidMid(resid_mid) if cls_only => resid_mid.f_narrow(1, 0, 1)?,
        BlockEntry::ResidMid(resid_mid) => resid_mid,
        BlockEntry::Z { resid_pre, z } => attention_output(dims, w, layer, &resid_pre, z, cls_only, ctx)?,
        BlockEntry::Qkv { resid_pre, q, .. } if !q.defined() && cls_only && mask.is_none() && !watches_qkv(dims, layer, ctx) => {
            let (resid_pre, z) = class_token_z(dims, w, layer, resid_pre, ctx)?;
            attention_output(dims, w, layer, &resid_pre, z, cls_only, ctx)?
        }
        BlockEntry::Qkv { resid_pre, q, k, v } => {
            let (resid_pre, q, k, v) = if q.defined() { (resid_pre, q, k, v) } else { qkv_of(dims, w, layer, resid_pre, ctx)? };
            let z = attention_z(dims, layer, &q, &k, &v, cls_only, mask, ctx)?;
            attention_output(dims, w, layer, &resid_pre, z, cls_only, ctx)?
        }
    };
    mlp_half(dims, w, layer, resid_mid, ctx)
}

/// Rows already inside a forward (`carried`, at this block's `hook_resid_pre`) joined with rows that
/// enter the block part-way at `entry`: the carried rows are brought up to the entry's point, then
/// both go on as one batch, carried rows first. Patching sweeps use this to run patches that start
/// at different layers in one pass. Hooks before the entry point see the carried rows only.
pub fn join_entry(
    dims: &BlockDims,
    w: &BlockWeights,
    layer: usize,
    carried: Tensor,
    entry: BlockEntry,
    cls_only: bool,
    ctx: &mut HookCtx,
) -> Result<BlockEntry> {
    advance(dims, w, layer, carried, entry.point(), cls_only, ctx)?.concat(entry, cls_only)
}

/// `hook_resid_pre` through ln1 and the fused projection: (resid_pre, q, k, v), each [B, pos, H, dh].
fn qkv_of(
    dims: &BlockDims,
    w: &BlockWeights,
    layer: usize,
    resid_pre: Tensor,
    ctx: &mut HookCtx,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let at = |site| HookPoint::in_tower(dims.tower, Some(layer), site);
    let resid_pre = ctx.hook(at(Site::ResidPre), resid_pre)?;
    let x = layer_norm(dims, &resid_pre, &w.ln1, at(Site::Ln1Scale), at(Site::Ln1Normalized), ctx)?;
    let size = x.size();
    // [B, pos, 3, H, dh] viewed apart: q, k and v as [B, pos, H, dh] in two ops, not four.
    let qkv =
        linear(&x, &w.w_qkv, w.b_qkv.as_ref())?.f_reshape([size[0], size[1], 3, dims.n_heads, dims.d_head].as_slice())?.f_unbind(2)?;
    let [q, k, v]: [Tensor; 3] = qkv.try_into().map_err(|_| PrismaError::Internal("the qkv projection did not give three parts".into()))?;
    let q = ctx.hook(at(Site::Q), q)?;
    let k = ctx.hook(at(Site::K), k)?;
    let v = ctx.hook(at(Site::V), v)?;
    Ok((resid_pre, q, k, v))
}

/// Whether anything reads or edits this block's q, k, v, scores or pattern.
fn watches_qkv(dims: &BlockDims, layer: usize, ctx: &HookCtx) -> bool {
    [Site::Q, Site::K, Site::V, Site::AttnScores, Site::Pattern]
        .into_iter()
        .any(|site| ctx.active(HookPoint::in_tower(dims.tower, Some(layer), site)))
}

/// The class token's z [B, 1, H, dh] straight from `hook_resid_pre`, for a block whose only query is
/// the class token and whose q, k and v nobody watches (the last block of a patching sweep). Keys and
/// values are never projected for every token: with x_j the ln1 output, per head
///   q·k_j = (W_K^T q)·x_j + q·b_K, and the second term is the same for every key (softmax drops it);
///   Σ_j a_j v_j = W_V (Σ_j a_j x_j) + b_V, as the weights sum to one.
/// That is O(H·pos·d) a row instead of the 2·pos·d² of projecting k and v (ViT-B: 1/4 of the block
/// it replaces), and the same values to float rounding. Returns (hooked resid_pre, hooked z).
fn class_token_z(dims: &BlockDims, w: &BlockWeights, layer: usize, resid_pre: Tensor, ctx: &mut HookCtx) -> Result<(Tensor, Tensor)> {
    let at = |site| HookPoint::in_tower(dims.tower, Some(layer), site);
    let resid_pre = ctx.hook(at(Site::ResidPre), resid_pre)?;
    let x = layer_norm(dims, &resid_pre, &w.ln1, at(Site::Ln1Scale), at(Site::Ln1Normalized), ctx)?;
    let (batch, d, h, dh) = (x.size()[0], dims.d_model, dims.n_heads, dims.d_head);
    // The fused projection's rows are q, then k, then v; within each, head-major.
    let part = |i: i64| w.w_qkv.f_narrow(0, i * d, d);
    let bias = |i: i64| w.b_qkv.as_ref().map(|b| b.f_narrow(0, i * d, d)).transpose();
    let (w_k, w_v) = (part(1)?.f_reshape([h, dh, d].as_slice())?, part(2)?.f_reshape([h, dh, d].as_slice())?);
    // [H, B, dh]: the class token's query, head-major for the per-head products below.
    let q = linear(&x.f_select(1, 0)?, &part(0)?, bias(0)?.as_ref())?.f_reshape([batch, h, dh].as_slice())?.f_transpose(0, 1)?;
    // [B, H, d]: each head's query carried back through its key projection.
    let query_in_x = q.f_bmm(&w_k)?.f_transpose(0, 1)?;
    let scores = query_in_x.f_bmm(&x.f_transpose(1, 2)?)?.f_mul_scalar(1.0 / (dh as f64).sqrt())?;
    let pattern = scores.f_softmax(-1, None::<Kind>)?;
    // [H, B, d] attention-weighted ln1 outputs, then each head's value projection: [H, B, dh].
    let mixed = pattern.f_bmm(&x)?.f_transpose(0, 1)?;
    let z = mixed.f_bmm(&w_v.f_transpose(1, 2)?)?.f_transpose(0, 1)?;
    let z = match bias(2)? {
        Some(b_v) => z.f_add(&b_v.f_reshape([h, dh].as_slice())?)?,
        None => z,
    };
    let z = ctx.hook(at(Site::Z), z.f_reshape([batch, 1, h, dh].as_slice())?)?;
    Ok((resid_pre, z))
}

/// Attention from hooked q, k, v to z [B, pos (1 with `cls_only`), H, dh]. The fused kernel
/// unless someone reads or edits the scores or the pattern.
#[allow(clippy::too_many_arguments)]
fn attention_z(
    dims: &BlockDims,
    layer: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cls_only: bool,
    mask: Option<&Tensor>,
    ctx: &mut HookCtx,
) -> Result<Tensor> {
    let at = |site| HookPoint::in_tower(dims.tower, Some(layer), site);
    let q = if cls_only { q.f_narrow(1, 0, 1)? } else { q.shallow_clone() };
    let mask = match mask {
        Some(m) if cls_only => Some(m.f_narrow(2, 0, 1)?),
        Some(m) => Some(m.shallow_clone()),
        None => None,
    };
    // [B, H, pos, dh]
    let (qh, kh, vh) = (q.f_transpose(1, 2)?, k.f_transpose(1, 2)?, v.f_transpose(1, 2)?);
    let z = if ctx.active(at(Site::AttnScores)) || ctx.active(at(Site::Pattern)) {
        let scale = 1.0 / (dims.d_head as f64).sqrt();
        let mut scores = qh.f_matmul(&kh.f_transpose(-1, -2)?)?.f_mul_scalar(scale)?;
        if let Some(m) = &mask {
            scores = scores.f_masked_fill(&m.f_logical_not()?, f64::NEG_INFINITY)?;
        }
        let scores = ctx.hook(at(Site::AttnScores), scores)?;
        let pattern = ctx.hook(at(Site::Pattern), scores.f_softmax(-1, None::<Kind>)?)?;
        pattern.f_matmul(&vh)?
    } else {
        Tensor::f_scaled_dot_product_attention(&qh, &kh, &vh, mask.as_ref(), 0.0, false, None, false)?
    };
    ctx.hook(at(Site::Z), z.f_transpose(1, 2)?)
}

/// `hook_resid_mid` through ln2 and the MLP to `hook_resid_post`.
fn mlp_half(dims: &BlockDims, w: &BlockWeights, layer: usize, resid_mid: Tensor, ctx: &mut HookCtx) -> Result<Tensor> {
    let at = |site| HookPoint::in_tower(dims.tower, Some(layer), site);
    let x = layer_norm(dims, &resid_mid, &w.ln2, at(Site::Ln2Scale), at(Site::Ln2Normalized), ctx)?;
    let post = if dims.gated_mlp {
        let both = linear(&x, &w.w_in, Some(&w.b_in))?;
        let half = both.size()[2] / 2;
        let gate = ctx.hook(at(Site::MlpPre), both.f_narrow(-1, 0, half)?)?;
        let linear_part = ctx.hook(at(Site::MlpPreLinear), both.f_narrow(-1, half, half)?)?;
        ctx.hook(at(Site::MlpPost), dims.activation.apply(&gate)?.f_mul(&linear_part)?)?
    } else {
        let post = if ctx.active(at(Site::MlpPre)) {
            let pre = ctx.hook(at(Site::MlpPre), linear(&x, &w.w_in, Some(&w.b_in))?)?;
            dims.activation.apply(&pre)?
        } else {
            // Nobody reads the pre-activation: the GELU can ride on the product (oneDNN).
            linear_then(&x, &w.w_in, Some(&w.b_in), dims.activation)?
        };
        ctx.hook(at(Site::MlpPost), post)?
    };
    let mlp_out = ctx.hook(at(Site::MlpOut), linear(&post, &w.w_out, Some(&w.b_out))?)?;
    ctx.hook(at(Site::ResidPost), resid_mid.f_add(&mlp_out)?)
}

/// From z to `hook_resid_mid`: per-head results when watched, else one fused projection.
fn attention_output(
    dims: &BlockDims,
    w: &BlockWeights,
    layer: usize,
    resid_pre: &Tensor,
    z: Tensor,
    cls_only: bool,
    ctx: &mut HookCtx,
) -> Result<Tensor> {
    let at = |site| HookPoint::in_tower(dims.tower, Some(layer), site);
    // Only the class token's row matters downstream; z at other positions feeds other rows.
    let z = if cls_only && z.size()[1] != 1 { z.f_narrow(1, 0, 1)? } else { z };
    let size = z.size();
    let (batch, pos) = (size[0], size[1]);
    let attn_out = if ctx.active(at(Site::Result)) {
        let result = Tensor::f_einsum("bphd,hdm->bphm", &[&z, &w.w_o_heads], None::<&[i64]>)?;
        let result = ctx.hook(at(Site::Result), result)?;
        result.f_sum_dim_intlist([2i64].as_slice(), false, None::<Kind>)?.f_add(&w.b_o)?
    } else {
        linear(&z.f_reshape([batch, pos, dims.d_model].as_slice())?, &w.w_o, Some(&w.b_o))?
    };
    let attn_out = ctx.hook(at(Site::AttnOut), attn_out)?;
    let resid_pre = if cls_only { resid_pre.f_narrow(1, 0, 1)? } else { resid_pre.shallow_clone() };
    ctx.hook(at(Site::ResidMid), resid_pre.f_add(&attn_out)?)
}

/// TransformerLens-style layer norm: `scale` = sqrt(var + eps) of the centred input is a hook
/// point, and `normalized` is the output after weight and bias.
pub fn layer_norm(
    dims: &BlockDims,
    x: &Tensor,
    ln: &LayerNormWeights,
    scale_point: HookPoint,
    normalized_point: HookPoint,
    ctx: &mut HookCtx,
) -> Result<Tensor> {
    let eps = dims.layer_norm_eps;
    let normalized = if ctx.active(scale_point) {
        let centred = x.f_sub(&x.f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?)?;
        let scale = centred.f_square()?.f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?.f_add_scalar(eps)?.f_sqrt()?;
        let scale = ctx.hook(scale_point, scale)?;
        centred.f_div(&scale)?.f_mul(&ln.weight)?.f_add(&ln.bias)?
    } else {
        x.f_layer_norm([dims.d_model].as_slice(), Some(&ln.weight), Some(&ln.bias), eps, true)?
    };
    ctx.hook(normalized_point, normalized)
}
