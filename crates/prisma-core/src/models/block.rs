//! One pre-LN transformer block (attention + MLP) with a hook at every intermediate value. Shared by
//! the vision tower (`HookedViT`) and the text tower (`HookedTextEncoder`); the tower only changes the
//! hook names and whether attention is masked. All of the block's math lives in this file, patching
//! sweeps' partial entries included.
//!
//! A change to the block's math must touch every path that computes it:
//! - q, k, v: `project_qkv` (used by the full block, `qkv_of`, and by sweep rows, `Layer::qkv_entry_at`);
//! - attention, three paths: `attention_z` with fused SDPA (nobody watches the scores or pattern),
//!   `attention_z` with explicit scores and softmax (they are watched), and `class_token_z` (the
//!   class token's query only, keys and values never projected; the last block of a sweep or an
//!   attribution run);
//! - the output projection: `attention_output`, per head (`hook_result` watched) or fused;
//! - the MLP: `mlp_half`, gated or plain, with the activation fused into the product when
//!   `hook_pre` is not watched.
//!
//! The unit tests at the end check every partial path against a plain full run of the block.

pub use super::activation::Activation;
use super::linear::{linear, linear_then};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, Site, Tower};
use tch::{Kind, Tensor};

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
pub(crate) enum BlockEntry {
    /// `hook_resid_pre` plus the (already hooked) q, k and v.
    Qkv { resid_pre: Tensor, q: Tensor, k: Tensor, v: Tensor },
    /// `hook_resid_pre` plus the (already hooked) z.
    Z { resid_pre: Tensor, z: Tensor },
    /// `hook_resid_mid`: only the MLP half of the block remains.
    ResidMid(Tensor),
}

/// The points at which rows can enter a block part-way (see `BlockEntry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryPoint {
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

/// One block of a tower, as patching sweeps enter it part-way.
pub(crate) struct Layer<'a> {
    pub dims: BlockDims,
    pub w: &'a BlockWeights,
    pub index: usize,
}

impl Layer<'_> {
    /// Runs the block from `entry` (see `block_from`), unmasked.
    pub fn run(&self, entry: BlockEntry, cls_only: bool, ctx: &mut HookCtx) -> Result<Tensor> {
        block_from(&self.dims, self.w, self.index, entry, cls_only, None, ctx)
    }

    /// Rows at the block's input (`hook_resid_pre`) brought up to `point`, hooks visited on the way.
    pub fn advance(&self, resid_pre: Tensor, point: EntryPoint, cls_only: bool, ctx: &mut HookCtx) -> Result<BlockEntry> {
        let (dims, w, layer) = (&self.dims, self.w, self.index);
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

    /// Rows already inside a forward (`carried`, at this block's `hook_resid_pre`) joined with rows
    /// that enter the block part-way at `entry`: the carried rows are brought up to the entry's
    /// point, then both go on as one batch, carried rows first. Sweeps use this to run patches that
    /// start at different layers in one pass. Hooks before the entry point see the carried rows only.
    pub fn join(&self, carried: Tensor, entry: BlockEntry, cls_only: bool, ctx: &mut HookCtx) -> Result<BlockEntry> {
        self.advance(carried, entry.point(), cls_only, ctx)?.concat(entry, cls_only)
    }

    /// Rows entering the block after each had one position of its input changed: `resid` [n, pos,
    /// d] is their `hook_resid_pre`, `positions[i]` the token row i changed, and `base` the q, k and
    /// v [1, pos, H, dh] of the run they were changed from. Only the changed tokens go through ln1
    /// and the projection; every other token's q, k and v are the base run's. Hooks are not visited.
    pub fn qkv_entry_at(&self, resid: &Tensor, positions: &[i64], base: [Tensor; 3]) -> Result<BlockEntry> {
        let (dims, w) = (&self.dims, self.w);
        let n = positions.len() as i64;
        let device = resid.device();
        let rows_idx = Tensor::from_slice(&(0..n).collect::<Vec<i64>>()).f_to_device(device)?;
        let pos_idx = Tensor::from_slice(positions).f_to_device(device)?;
        // [n, d]: each row's changed token.
        let changed = resid.f_index(&[Some(&rows_idx), Some(&pos_idx)])?;
        let normed = changed.f_layer_norm([dims.d_model].as_slice(), Some(&w.ln1.weight), Some(&w.ln1.bias), dims.layer_norm_eps, true)?;
        let mut out = Vec::with_capacity(3);
        for (part, full) in project_qkv(dims, w, &normed)?.iter().zip(base) {
            let mut size = full.size();
            size[0] = n;
            let mut t = full.f_expand(size.as_slice(), false)?.f_contiguous()?;
            let _ = t.f_index_put_(&[Some(&rows_idx), Some(&pos_idx)], part, false)?;
            out.push(t);
        }
        let [q, k, v]: [Tensor; 3] = out.try_into().map_err(|_| PrismaError::Internal("qkv".into()))?;
        Ok(BlockEntry::Qkv { resid_pre: resid.shallow_clone(), q, k, v })
    }
}

/// Runs block `layer` from `entry`. A `Qkv` entry with undefined q/k/v means "from resid_pre".
/// With `cls_only`, queries (and everything after attention) are computed for token 0 only.
/// `mask` ([B or 1, 1, q, k] bool, true = may attend) restricts attention (causal text towers).
pub(crate) fn block_from(
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
    let [q, k, v] = project_qkv(dims, w, &x)?;
    let q = ctx.hook(at(Site::Q), q)?;
    let k = ctx.hook(at(Site::K), k)?;
    let v = ctx.hook(at(Site::V), v)?;
    Ok((resid_pre, q, k, v))
}

/// ln1's output x [..., d] through the fused projection: q, k and v, each [..., H, dh].
fn project_qkv(dims: &BlockDims, w: &BlockWeights, x: &Tensor) -> Result<[Tensor; 3]> {
    let mut shape = x.size();
    shape.pop();
    shape.extend([3, dims.n_heads, dims.d_head]);
    // [..., 3, H, dh] viewed apart: q, k and v in two ops, not four.
    let qkv = linear(x, &w.w_qkv, w.b_qkv.as_ref())?.f_reshape(shape.as_slice())?.f_unbind(-3)?;
    qkv.try_into().map_err(|_| PrismaError::Internal("the qkv projection did not give three parts".into()))
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
pub(crate) fn layer_norm(
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

#[cfg(test)]
mod tests {
    //! Every partial way through a block (entering part-way, joining rows, the class-token-only
    //! paths, single changed tokens) against a plain full run of the same block, on a tiny block with
    //! fixed weights.

    use super::*;
    use crate::hooks::HookSelection;
    use tch::{Device, IndexOp};

    const DIMS: BlockDims = BlockDims {
        tower: Tower::Vision,
        d_model: 8,
        n_heads: 2,
        d_head: 4,
        layer_norm_eps: 1e-5,
        activation: Activation::Gelu,
        gated_mlp: false,
    };

    fn fixed(shape: &[i64], phase: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.613 + phase).sin().reshape(shape)
    }

    fn weights() -> BlockWeights {
        let (d, mlp) = (DIMS.d_model, 16);
        let ln = |phase| LayerNormWeights { weight: fixed(&[d], phase) * 0.2 + 1.0, bias: fixed(&[d], phase + 0.5) * 0.1 };
        let w_o = fixed(&[d, d], 3.0) * 0.4;
        BlockWeights {
            ln1: ln(0.3),
            w_qkv: fixed(&[3 * d, d], 1.0) * 0.5,
            b_qkv: Some(fixed(&[3 * d], 1.7) * 0.1),
            w_o_heads: BlockWeights::heads_of(&w_o, DIMS.n_heads, DIMS.d_head).unwrap(),
            w_o,
            b_o: fixed(&[d], 2.2) * 0.1,
            ln2: ln(4.1),
            w_in: fixed(&[mlp, d], 5.0) * 0.4,
            b_in: fixed(&[mlp], 5.5) * 0.1,
            w_out: fixed(&[d, mlp], 6.0) * 0.3,
            b_out: fixed(&[d], 6.6) * 0.1,
        }
    }

    /// [2 rows, 5 tokens, d]
    fn input() -> Tensor {
        fixed(&[2, 5, DIMS.d_model], 0.0) * 2.0
    }

    fn full(w: &BlockWeights, x: &Tensor) -> Tensor {
        let none = HookSelection::none();
        block_from(&DIMS, w, 0, BlockEntry::resid_pre(x.shallow_clone()), false, None, &mut HookCtx::new(&none, &[])).unwrap()
    }

    fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
        assert_eq!(got.size(), want.size(), "{what}: shape");
        let worst = (got - want).abs().max().double_value(&[]);
        assert!(worst <= tol, "{what}: differs by {worst:e}");
    }

    fn layer(w: &BlockWeights) -> Layer<'_> {
        Layer { dims: DIMS, w, index: 0 }
    }

    /// `enter(point, cls_only, ctx)` at every entry point, with and without the class-token-only
    /// path, against `want` (its class token with cls_only). Rows run apart or in one batch round
    /// differently (`tol`); the class token's own path (keys and values never projected) too (1e-5).
    fn check_every_entry(want: &Tensor, tol: f64, enter: impl Fn(EntryPoint, bool, &mut HookCtx) -> BlockEntry) {
        let none = HookSelection::none();
        for cls_only in [false, true] {
            let want = if cls_only { want.i((.., 0..1, ..)) } else { want.shallow_clone() };
            for point in [EntryPoint::ResidPre, EntryPoint::Qkv, EntryPoint::Z, EntryPoint::ResidMid] {
                let mut ctx = HookCtx::new(&none, &[]);
                let entry = enter(point, cls_only, &mut ctx);
                assert_eq!(entry.point(), point);
                let got = block_from(&DIMS, &weights(), 0, entry, cls_only, None, &mut ctx).unwrap();
                assert_close(&got, &want, if cls_only { 1e-5 } else { tol }, &format!("{point:?}, cls_only {cls_only}"));
            }
        }
    }

    #[test]
    fn entering_part_way_continues_the_full_block() {
        let (w, x) = (weights(), input());
        check_every_entry(&full(&w, &x), 0.0, |point, cls_only, ctx| layer(&w).advance(x.shallow_clone(), point, cls_only, ctx).unwrap());
    }

    #[test]
    fn joined_rows_run_as_if_apart() {
        let (w, x) = (weights(), input());
        let (carried, entering) = (x.i(0..1), x.i(1..2) * 0.5);
        let want = Tensor::cat(&[full(&w, &carried), full(&w, &entering)], 0);
        check_every_entry(&want, 1e-6, |point, cls_only, ctx| {
            let entry = layer(&w).advance(entering.shallow_clone(), point, cls_only, ctx).unwrap();
            layer(&w).join(carried.shallow_clone(), entry, cls_only, ctx).unwrap()
        });
    }

    #[test]
    fn the_three_attention_paths_agree() {
        let (w, x) = (weights(), input());
        let fused = full(&w, &x);
        // Watching the pattern takes the explicit scores + softmax path.
        let watch: HookSelection = [HookPoint::block(0, Site::Pattern)].into_iter().collect();
        let mut ctx = HookCtx::new(&watch, &[]);
        let explicit = block_from(&DIMS, &w, 0, BlockEntry::resid_pre(x.shallow_clone()), false, None, &mut ctx).unwrap();
        assert_eq!(ctx.recorded.len(), 1);
        assert_close(&explicit, &fused, 1e-5, "explicit vs fused");
        // The class token alone, with nothing watched (class_token_z) and with the pattern watched (explicit, one query).
        let none = HookSelection::none();
        let quiet = block_from(&DIMS, &w, 0, BlockEntry::resid_pre(x.shallow_clone()), true, None, &mut HookCtx::new(&none, &[])).unwrap();
        assert_close(&quiet, &fused.i((.., 0..1, ..)), 1e-5, "class_token_z");
        let watched =
            block_from(&DIMS, &w, 0, BlockEntry::resid_pre(x.shallow_clone()), true, None, &mut HookCtx::new(&watch, &[])).unwrap();
        assert_close(&watched, &fused.i((.., 0..1, ..)), 1e-5, "explicit, class token only");
    }

    #[test]
    fn concat_keeps_rows_in_order_and_refuses_different_points() {
        let w = weights();
        let x = input();
        let none = HookSelection::none();
        let mut ctx = HookCtx::new(&none, &[]);
        let at = |rows: Tensor, point, ctx: &mut HookCtx| layer(&w).advance(rows, point, false, ctx).unwrap();
        let (a, b) = (x.i(0..1), x.i(1..2));
        let BlockEntry::Z { resid_pre, z } =
            at(a.shallow_clone(), EntryPoint::Z, &mut ctx).concat(at(b.shallow_clone(), EntryPoint::Z, &mut ctx), false).unwrap()
        else {
            panic!("not a Z entry")
        };
        assert_close(&resid_pre, &x, 0.0, "resid_pre rows");
        // Rows advanced one at a time against all rows advanced at once: batch rounding only.
        let BlockEntry::Z { z: z_all, .. } = at(x.shallow_clone(), EntryPoint::Z, &mut ctx) else { panic!("not a Z entry") };
        assert_close(&z, &z_all, 1e-6, "z rows");
        // With cls_only, values after attention keep token 0 only.
        let BlockEntry::ResidMid(mid) = at(a.shallow_clone(), EntryPoint::ResidMid, &mut ctx)
            .concat(at(b.shallow_clone(), EntryPoint::ResidMid, &mut ctx), true)
            .unwrap()
        else {
            panic!("not a ResidMid entry")
        };
        assert_eq!(mid.size(), vec![2, 1, DIMS.d_model]);
        let mixed = at(a, EntryPoint::Qkv, &mut ctx).concat(at(b, EntryPoint::Z, &mut ctx), false);
        assert!(matches!(mixed, Err(PrismaError::Internal(_))));
    }

    #[test]
    fn a_changed_token_enters_with_the_base_runs_other_qkv() {
        let w = weights();
        let base = input().i(0..1);
        let record: HookSelection = [Site::Q, Site::K, Site::V].map(|s| HookPoint::block(0, s)).into_iter().collect();
        let mut ctx = HookCtx::new(&record, &[]);
        layer(&w).advance(base.shallow_clone(), EntryPoint::Qkv, false, &mut ctx).unwrap();
        let base_qkv: [Tensor; 3] = ctx.recorded.into_iter().map(|(_, t)| t).collect::<Vec<_>>().try_into().unwrap();
        // Three rows, each with one token of the base input changed.
        let positions = [0i64, 2, 4];
        let rows: Vec<Tensor> = positions
            .iter()
            .map(|&p| {
                let row = base.copy();
                let _ = row.i((.., p, ..)).g_add_(&(fixed(&[DIMS.d_model], p as f64) * 0.7));
                row
            })
            .collect();
        let resid = Tensor::cat(&rows, 0);
        let entry = layer(&w).qkv_entry_at(&resid, &positions, base_qkv).unwrap();
        let none = HookSelection::none();
        let got = block_from(&DIMS, &w, 0, entry, false, None, &mut HookCtx::new(&none, &[])).unwrap();
        assert_close(&got, &full(&w, &resid), 1e-6, "changed tokens");
    }
}
