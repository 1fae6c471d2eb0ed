//! Direct logit attribution, following TransformerLens: every component the residual stream at
//! the pooled token is made of (embeddings, each head's output, each attention bias, each MLP
//! output) is centred, divided by the cached `ln_final.hook_scale` of the full stream, multiplied
//! by the layer norm's weight and projected on the logit direction W[target] - W[baseline].
//! Adding the constant term (layer-norm bias and head bias projected on the same direction)
//! gives the model's own logit (difference) exactly, up to rounding.

use super::metric::MetricSpec;
use super::{check_model, to_vec_f64};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, HookSelection, Site};
use crate::inference_mode::inference_mode;
use crate::model::Model;
use crate::models::vit::{FinalNorm, ForwardStart, Head, Pooling};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct DlaOptions {
    #[serde(flatten)]
    pub metric: MetricSpec,
    /// Also split each head by source position (the key it attends to).
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub per_position: bool,
}

/// What a DLA component is: the embeddings, a head, the attention output bias, an MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
#[ts(rename = "DlaComponentKind")]
pub enum ComponentKind {
    Embed,
    PosEmbed,
    Head,
    AttnBias,
    Mlp,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(rename = "DlaComponent")]
pub struct Component {
    pub name: String,
    pub kind: ComponentKind,
    pub layer: Option<usize>,
    pub head: Option<i64>,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct DlaResult {
    pub target: i64,
    pub baseline: Option<i64>,
    pub components: Vec<Component>,
    /// Layer × head matrix of head contributions, row-major [n_layers, n_heads].
    pub heads: Vec<f64>,
    /// [n_layers, n_heads, n_pos] when per_position was asked.
    pub head_positions: Option<Vec<f64>>,
    /// Layer-norm bias and head bias on the logit direction.
    pub constant: f64,
    pub sum_of_components: f64,
    /// The model's own logit (difference); equals sum_of_components + constant.
    pub logit: f64,
}

pub fn direct_logit_attribution(model: &Model, pixels: &Tensor, opts: &DlaOptions) -> Result<DlaResult> {
    // Its tensors stay inside and the result is host values: inference mode (see inference_mode.rs).
    inference_mode(|| direct_logit_attribution_here(model, pixels, opts))
}

fn direct_logit_attribution_here(model: &Model, pixels: &Tensor, opts: &DlaOptions) -> Result<DlaResult> {
    check_model(model, "direct logit attribution")?;
    let cfg = &model.vit.cfg;
    opts.metric.check(cfg.n_classes)?;
    if cfg.pooling == Pooling::MeanPatches && cfg.final_norm == FinalNorm::AllTokens {
        // Each token has its own layer-norm scale before the mean: no single linear read-out.
        return Err(PrismaError::Argument("DLA is not defined for models that normalise every token before mean pooling".into()));
    }
    let pixels = model.to_model(pixels)?;
    if pixels.size()[0] != 1 {
        return Err(PrismaError::Shape("DLA takes one image at a time".into()));
    }
    let w = &model.vit.weights;
    let contrastive = matches!(w.head, Head::Contrastive { .. });
    let mut record = HookSelection::none();
    for p in [Site::FullEmbed, Site::PosEmbed, Site::LnFinalScale] {
        record.insert(HookPoint::global(p));
    }
    if contrastive {
        record.insert(HookPoint::global(Site::ImageEmbeds));
    }
    if cfg.has_ln_pre {
        record.insert(HookPoint::block(0, Site::ResidPre));
    }
    for l in 0..cfg.n_layers {
        for s in [Site::Result, Site::MlpOut, Site::Pattern, Site::V] {
            record.insert(HookPoint::block(l, s));
        }
    }
    // No no_grad needed: the caller runs this in inference mode, which implies it.
    let mut ctx = HookCtx::new(&record, &[]);
    let (_, logits) = model.vit.forward(ForwardStart::Pixels(&pixels), None, &mut ctx)?;
    let get = |p: HookPoint| -> Result<Tensor> {
        ctx.recorded
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, t)| t.f_get(0).map_err(Into::into))
            .ok_or_else(|| PrismaError::Internal(format!("{p} not recorded")))?
    };
    let dbl = |t: &Tensor| t.f_to_kind(Kind::Double);
    // Logit direction and constant.
    let (direction, head_bias) = model.vit.logit_direction(opts.metric.target, opts.metric.baseline)?;
    let mut direction = dbl(&direction)?;
    if contrastive {
        // CLIP scores the normalised image embedding: freeze its norm from this run, like the LN scale.
        let embeds = dbl(&get(HookPoint::global(Site::ImageEmbeds))?)?;
        direction = direction.f_div(&embeds.f_norm_scalaropt_dim(2.0, [-1i64].as_slice(), false)?)?;
    }
    let ln_w = dbl(&w.ln_final.weight)?;
    let constant = dbl(&w.ln_final.bias)?.f_dot(&direction)?.double_value(&[]) + head_bias;
    // Pooled position(s): the class token, or the mean of the patches.
    let pool = |t: &Tensor| -> Result<Tensor> {
        // t: [pos, ...]
        Ok(match cfg.pooling {
            Pooling::ClassToken => dbl(&t.f_get(0)?)?,
            Pooling::MeanPatches => {
                dbl(&t.f_narrow(0, cfg.n_prefix_tokens(), cfg.n_patches())?.f_mean_dim([0i64].as_slice(), false, None::<Kind>)?)?
            }
        })
    };
    let scale = get(HookPoint::global(Site::LnFinalScale))?; // [pos, 1], or [1] where the norm follows pooling
    let scale = match cfg.final_norm {
        FinalNorm::AllTokens => dbl(&scale.f_get(0)?)?.f_reshape([1i64].as_slice())?,
        FinalNorm::Pooled => dbl(&scale)?.f_reshape([1i64].as_slice())?,
    };
    // Project any [..., d] on the direction through the cached LN scale: centre, /scale, *w.
    let project = |x: &Tensor| -> Result<Tensor> {
        let centred = x.f_sub(&x.f_mean_dim([-1i64].as_slice(), true, None::<Kind>)?)?;
        Ok(centred.f_div(&scale)?.f_mul(&ln_w)?.f_matmul(&direction)?)
    };
    let mut components = Vec::new();
    if cfg.has_ln_pre {
        // ln_pre is not linear: its output (block 0's input) is the embeddings' one component.
        let embedded = get(HookPoint::block(0, Site::ResidPre))?;
        components.push(Component {
            name: "ln_pre".into(),
            kind: ComponentKind::Embed,
            layer: None,
            head: None,
            value: project(&pool(&embedded)?)?.double_value(&[]),
        });
    } else {
        let full = get(HookPoint::global(Site::FullEmbed))?;
        let pos = get(HookPoint::global(Site::PosEmbed))?;
        let token_embed = full.f_sub(&pos)?;
        components.push(Component {
            name: "embed".into(),
            kind: ComponentKind::Embed,
            layer: None,
            head: None,
            value: project(&pool(&token_embed)?)?.double_value(&[]),
        });
        components.push(Component {
            name: "pos_embed".into(),
            kind: ComponentKind::PosEmbed,
            layer: None,
            head: None,
            value: project(&pool(&pos)?)?.double_value(&[]),
        });
    }
    let mut heads = Vec::new();
    let mut head_positions = Vec::new();
    for l in 0..cfg.n_layers {
        let result = pool(&get(HookPoint::block(l, Site::Result))?)?; // [H, d]
        let per_head = to_vec_f64(&project(&result)?)?;
        for (h, v) in per_head.iter().enumerate() {
            components.push(Component {
                name: format!("L{l}H{h}"),
                kind: ComponentKind::Head,
                layer: Some(l),
                head: Some(h as i64),
                value: *v,
            });
        }
        heads.extend(per_head);
        let b_o = dbl(&w.blocks[l].b_o)?;
        components.push(Component {
            name: format!("L{l}.attn_bias"),
            kind: ComponentKind::AttnBias,
            layer: Some(l),
            head: None,
            value: project(&b_o)?.double_value(&[]),
        });
        let mlp = pool(&get(HookPoint::block(l, Site::MlpOut))?)?;
        components.push(Component {
            name: format!("L{l}.mlp"),
            kind: ComponentKind::Mlp,
            layer: Some(l),
            head: None,
            value: project(&mlp)?.double_value(&[]),
        });
        if opts.per_position {
            if cfg.pooling != Pooling::ClassToken {
                return Err(PrismaError::Argument("per-position DLA needs a class-token model".into()));
            }
            // Head h's output at the class token = sum_k pattern[h, 0, k] * v[k, h] W_O[h].
            let pattern = dbl(&get(HookPoint::block(l, Site::Pattern))?.f_select(1, 0)?)?; // [H, k]
            let v = dbl(&get(HookPoint::block(l, Site::V))?)?; // [k, H, dh]
            let w_o = dbl(&w.blocks[l].w_o_heads)?; // [H, dh, d]
            let per_source = Tensor::f_einsum("hk,khd,hdm->hkm", &[&pattern, &v, &w_o], None::<&[i64]>)?;
            head_positions.extend(to_vec_f64(&project(&per_source)?)?);
        }
    }
    let sum_of_components: f64 = components.iter().map(|c| c.value).sum();
    let logit = opts.metric.values(&logits)?.into_iter().next().map(|m| m.value).unwrap_or(f64::NAN);
    Ok(DlaResult {
        target: opts.metric.target,
        baseline: opts.metric.baseline,
        components,
        heads,
        head_positions: opts.per_position.then_some(head_positions),
        constant,
        sum_of_components,
        logit,
    })
}
