//! HookedTextEncoder: the text tower of a CLIP-style model (causal pre-LN transformer, pooled at the
//! end-of-text token, projected into the shared embedding space). Its hooks carry a `text.` prefix.

use super::block::{block_from, layer_norm, Activation, BlockDims, BlockEntry, BlockWeights, LayerNormWeights};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, ShapeDims, Site, Tower};
use tch::{Kind, Tensor};

/// Which token's final state is the sentence embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextPooling {
    /// The position of the highest token id (the end-of-text token in CLIP vocabularies). What
    /// open_clip does, and HF CLIP for configs with the legacy `eos_token_id: 2`.
    ArgmaxId,
    /// The first position holding this id (HF CLIP with a real `eos_token_id`).
    FirstId(i64),
}

#[derive(Debug, Clone)]
pub struct TextConfig {
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub d_mlp: i64,
    pub n_layers: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub max_positions: i64,
    pub vocab_size: i64,
    pub pooling: TextPooling,
    /// Pad every prompt batch to this length (open_clip's fixed context); None = to the longest.
    pub pad_to: Option<i64>,
    /// Mask padding keys as well as future ones (HF CLIP passes attention_mask; open_clip does not).
    pub mask_padding: bool,
}

impl TextConfig {
    pub fn dims(&self) -> BlockDims {
        BlockDims {
            tower: Tower::Text,
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_head: self.d_head,
            layer_norm_eps: self.layer_norm_eps,
            activation: self.activation,
            gated_mlp: false,
        }
    }
}

pub struct TextWeights {
    /// [vocab, d]
    pub token_embed: Tensor,
    /// [max_positions, d]
    pub pos_embed: Tensor,
    pub blocks: Vec<BlockWeights>,
    pub ln_final: LayerNormWeights,
    /// [proj, d] (nn.Linear layout)
    pub projection: Tensor,
    /// exp(logit_scale), the temperature of image-text similarities.
    pub logit_scale: f64,
}

pub struct HookedTextEncoder {
    pub cfg: TextConfig,
    pub weights: TextWeights,
}

impl HookedTextEncoder {
    pub fn hook_points(&self) -> Vec<HookPoint> {
        let text = |layer, site| HookPoint::in_tower(Tower::Text, layer, site);
        let mut points = vec![text(None, Site::Embed), text(None, Site::PosEmbed), text(None, Site::FullEmbed)];
        for layer in 0..self.cfg.n_layers {
            points.extend(Site::in_block().filter(|s| *s != Site::MlpPreLinear).map(|s| text(Some(layer), s)));
        }
        points.push(text(None, Site::LnFinalScale));
        points.push(text(None, Site::LnFinalNormalized));
        points.push(HookPoint::global(Site::TextEmbeds));
        points
    }

    /// The sizes this tower's hook shapes are made of (see `Site::shape`), for `batch` prompts of
    /// `len` tokens.
    pub fn shape_dims(&self, batch: i64, len: i64) -> ShapeDims {
        let c = &self.cfg;
        ShapeDims {
            batch,
            pos: len,
            embed_tokens: len,
            d_model: c.d_model,
            n_heads: c.n_heads,
            d_head: c.d_head,
            d_mlp: c.d_mlp,
            embed_dim: self.weights.projection.size()[0],
            n_classes: 0,
            pooled_final_norm: false,
        }
    }

    /// Token ids [B, T] (int64) and attention mask [B, T] (1 = real token) → text embeddings
    /// [B, proj] (unnormalised), recorded at `hook_text_embeds`.
    pub fn forward(&self, ids: &Tensor, attention_mask: &Tensor, ctx: &mut HookCtx) -> Result<Tensor> {
        let c = &self.cfg;
        let w = &self.weights;
        let size = ids.size();
        if size.len() != 2 || size[1] > c.max_positions || size[1] == 0 {
            return Err(PrismaError::Shape(format!("token ids have shape {size:?}, expected [batch, 1..={}]", c.max_positions)));
        }
        let (batch, len) = (size[0], size[1]);
        let device = w.token_embed.device();
        let ids = ids.f_to_device(device)?;
        let text = |site| HookPoint::in_tower(Tower::Text, None, site);
        let tokens = ctx.hook(text(Site::Embed), lookup_rows(&w.token_embed, &ids)?)?;
        let pos = w.pos_embed.f_narrow(0, 0, len)?.f_unsqueeze(0)?.f_expand([batch, len, c.d_model].as_slice(), false)?;
        let pos = ctx.hook(text(Site::PosEmbed), pos)?;
        let mut resid = ctx.hook(text(Site::FullEmbed), tokens.f_add(&pos)?)?;
        // [1, 1, T, T] causal, and with padding also [B, 1, 1, T] on the keys.
        let mut mask = Tensor::f_ones([len, len].as_slice(), (Kind::Bool, device))?.f_tril(0)?.f_view([1, 1, len, len].as_slice())?;
        if c.mask_padding {
            let keys = attention_mask.f_to_device(device)?.f_ne(0)?.f_view([batch, 1, 1, len].as_slice())?;
            mask = mask.f_logical_and(&keys)?;
        }
        let dims = c.dims();
        for layer in 0..c.n_layers {
            resid = block_from(&dims, &w.blocks[layer], layer, BlockEntry::resid_pre(resid), false, Some(&mask), ctx)?;
        }
        let normed = layer_norm(&dims, &resid, &w.ln_final, text(Site::LnFinalScale), text(Site::LnFinalNormalized), ctx)?;
        let at = match c.pooling {
            TextPooling::ArgmaxId => ids.f_argmax(-1, false)?,
            TextPooling::FirstId(eos) => ids.f_eq(eos)?.f_to_kind(Kind::Int64)?.f_argmax(-1, false)?,
        };
        let rows = Tensor::f_arange(batch, (Kind::Int64, device))?;
        let pooled = normed.f_index(&[Some(rows), Some(at)])?;
        ctx.hook(HookPoint::global(Site::TextEmbeds), pooled.f_linear::<Tensor>(&w.projection, None)?)
    }
}

/// Token ids [B, T] and attention mask [B, T] for texts, with the `tokenizers` library (start/end of
/// text added by tokenizer.json's post-processor). Padded to the longest, or to `pad_to` (open_clip's
/// fixed context). Longer than `context`: an error when `strict` (training captions), else cut
/// keeping the last token, the end-of-text, as the reference tokenizers do when truncating.
pub fn encode_texts(
    tokenizer: &tokenizers::Tokenizer,
    texts: &[String],
    context: i64,
    pad_to: Option<i64>,
    pad_id: i64,
    strict: bool,
) -> Result<(Tensor, Tensor)> {
    if texts.is_empty() {
        return Err(PrismaError::Argument("no texts to encode".into()));
    }
    let max = context as usize;
    let mut rows: Vec<Vec<i64>> = Vec::with_capacity(texts.len());
    for text in texts {
        let enc = tokenizer.encode(text.as_str(), true).map_err(|e| PrismaError::Argument(format!("cannot tokenize '{text}': {e}")))?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        if ids.len() > max {
            if strict {
                return Err(PrismaError::Argument(format!(
                    "caption '{text}' has {} tokens, more than the text context of {context}; raise --context-length",
                    ids.len()
                )));
            }
            let last = ids[ids.len() - 1];
            ids.truncate(max);
            ids[max - 1] = last;
        }
        rows.push(ids);
    }
    let longest = rows.iter().map(Vec::len).max().unwrap_or(1);
    let len = pad_to.map_or(longest, |n| n as usize).max(longest);
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut mask = Vec::with_capacity(rows.len() * len);
    for row in &rows {
        for i in 0..len {
            ids.push(row.get(i).copied().unwrap_or(pad_id));
            mask.push((i < row.len()) as i64);
        }
    }
    let shape = [rows.len() as i64, len as i64];
    Ok((Tensor::from_slice(&ids).f_reshape(shape.as_slice())?, Tensor::from_slice(&mask).f_reshape(shape.as_slice())?))
}

/// Rows of an embedding table [V, d] for ids [B, T] → [B, T, d], with an id range check (a bad
/// tokenizer/model pairing would otherwise be a native index error).
fn lookup_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let vocab = table.size()[0];
    if ids.numel() > 0 {
        let max = ids.f_max()?.int64_value(&[]);
        let min = ids.f_min()?.int64_value(&[]);
        if min < 0 || max >= vocab {
            return Err(PrismaError::Argument(format!(
                "token id {max} is outside the text model's vocabulary of {vocab} (tokenizer and model do not match)"
            )));
        }
    }
    Ok(Tensor::f_embedding(table, ids, -1, false, false)?)
}
