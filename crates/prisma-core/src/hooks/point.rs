//! Typed hook names. A `HookPoint` prints and parses in exact TransformerLens spelling
//! (`blocks.3.attn.hook_pattern`), plus SAELens's sub-hooks of a spliced module
//! (`blocks.3.hook_resid_post.hook_sae_acts_post`); model code records at a point and never builds
//! strings. Everything known about a site (spelling, axes, shape) is one row of `sites!` below.

use crate::error::{PrismaError, Result};
use std::fmt;

/// Which axis of a site's activation indexes tokens and which indexes heads (batch is always 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteAxes {
    pub pos: Option<usize>,
    pub head: Option<usize>,
}

const NO_AXES: SiteAxes = SiteAxes { pos: None, head: None };
/// [batch, pos, ...]
const TOKENS: SiteAxes = SiteAxes { pos: Some(1), head: None };
/// [batch, pos, head, ...]
const POS_HEAD: SiteAxes = SiteAxes { pos: Some(1), head: Some(2) };
/// [batch, head, query pos, key pos]
const HEAD_POS: SiteAxes = SiteAxes { pos: Some(2), head: Some(1) };

/// The sizes a site's shape is made of, for one tower and one batch.
#[derive(Debug, Clone, Copy)]
pub struct ShapeDims {
    pub batch: i64,
    /// Tokens in the residual stream (text: the prompt length).
    pub pos: i64,
    /// Tokens at `hook_embed` (vision: patches only, before class/register tokens join).
    pub embed_tokens: i64,
    pub d_model: i64,
    pub n_heads: i64,
    pub d_head: i64,
    pub d_mlp: i64,
    /// Width of `hook_image_embeds` / `hook_text_embeds`.
    pub embed_dim: i64,
    pub n_classes: i64,
    /// The final norm runs on the pooled vector, not on every token.
    pub pooled_final_norm: bool,
}

/// Where a site lives: outside the blocks (`hook_embed`) or inside each (`blocks.{l}.…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Block,
}

/// One row of the site table.
pub struct SiteInfo {
    pub site: Site,
    pub scope: Scope,
    /// TransformerLens spelling (after `blocks.{l}.` for block sites).
    pub spelling: &'static str,
    pub axes: SiteAxes,
    pub shape: fn(&ShapeDims) -> Vec<i64>,
}

/// Defines `Site` and `SITES` from one list, so every site has exactly one row, and the table is
/// in the enum's order (`Site::info` indexes it).
macro_rules! sites {
    ($($(#[$doc:meta])* $site:ident: $scope:ident $spelling:literal, $axes:expr, $shape:expr;)*) => {
        /// A place in the forward pass. Block sites carry their layer in `HookPoint`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Site {
            $($(#[$doc])* $site,)*
        }

        /// Every site in forward order (global sites either side of the blocks).
        pub const SITES: &[SiteInfo] = &[
            $(SiteInfo { site: Site::$site, scope: Scope::$scope, spelling: $spelling, axes: $axes, shape: $shape },)*
        ];
    };
}

sites! {
    Embed: Global "hook_embed", TOKENS, |s| vec![s.batch, s.embed_tokens, s.d_model];
    PosEmbed: Global "hook_pos_embed", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    FullEmbed: Global "hook_full_embed", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    LnPreScale: Global "ln_pre.hook_scale", TOKENS, |s| vec![s.batch, s.pos, 1];
    LnPreNormalized: Global "ln_pre.hook_normalized", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    ResidPre: Block "hook_resid_pre", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    Ln1Scale: Block "ln1.hook_scale", TOKENS, |s| vec![s.batch, s.pos, 1];
    Ln1Normalized: Block "ln1.hook_normalized", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    Q: Block "attn.hook_q", POS_HEAD, |s| vec![s.batch, s.pos, s.n_heads, s.d_head];
    K: Block "attn.hook_k", POS_HEAD, |s| vec![s.batch, s.pos, s.n_heads, s.d_head];
    V: Block "attn.hook_v", POS_HEAD, |s| vec![s.batch, s.pos, s.n_heads, s.d_head];
    AttnScores: Block "attn.hook_attn_scores", HEAD_POS, |s| vec![s.batch, s.n_heads, s.pos, s.pos];
    Pattern: Block "attn.hook_pattern", HEAD_POS, |s| vec![s.batch, s.n_heads, s.pos, s.pos];
    Z: Block "attn.hook_z", POS_HEAD, |s| vec![s.batch, s.pos, s.n_heads, s.d_head];
    /// Each head's contribution to `hook_attn_out` (before the output bias).
    Result: Block "attn.hook_result", POS_HEAD, |s| vec![s.batch, s.pos, s.n_heads, s.d_model];
    AttnOut: Block "hook_attn_out", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    ResidMid: Block "hook_resid_mid", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    Ln2Scale: Block "ln2.hook_scale", TOKENS, |s| vec![s.batch, s.pos, 1];
    Ln2Normalized: Block "ln2.hook_normalized", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    /// The MLP's pre-activation (the gate half of a gated MLP).
    MlpPre: Block "mlp.hook_pre", TOKENS, |s| vec![s.batch, s.pos, s.d_mlp];
    /// The linear half of a gated (SwiGLU) MLP; only gated models have it.
    MlpPreLinear: Block "mlp.hook_pre_linear", TOKENS, |s| vec![s.batch, s.pos, s.d_mlp];
    MlpPost: Block "mlp.hook_post", TOKENS, |s| vec![s.batch, s.pos, s.d_mlp];
    MlpOut: Block "hook_mlp_out", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    ResidPost: Block "hook_resid_post", TOKENS, |s| vec![s.batch, s.pos, s.d_model];
    LnFinalScale: Global "ln_final.hook_scale", TOKENS,
        |s| if s.pooled_final_norm { vec![s.batch, 1] } else { vec![s.batch, s.pos, 1] };
    LnFinalNormalized: Global "ln_final.hook_normalized", TOKENS,
        |s| if s.pooled_final_norm { vec![s.batch, s.d_model] } else { vec![s.batch, s.pos, s.d_model] };
    ImageEmbeds: Global "hook_image_embeds", NO_AXES, |s| vec![s.batch, s.embed_dim];
    TextEmbeds: Global "hook_text_embeds", NO_AXES, |s| vec![s.batch, s.embed_dim];
    Logits: Global "hook_logits", NO_AXES, |s| vec![s.batch, s.n_classes];
}

impl Site {
    pub fn info(self) -> &'static SiteInfo {
        &SITES[self as usize]
    }

    pub fn is_block_site(self) -> bool {
        self.info().scope == Scope::Block
    }

    pub fn axes(self) -> SiteAxes {
        self.info().axes
    }

    pub fn spelling(self) -> &'static str {
        self.info().spelling
    }

    pub fn shape(self, dims: &ShapeDims) -> Vec<i64> {
        (self.info().shape)(dims)
    }

    /// Block sites in forward order.
    pub fn in_block() -> impl Iterator<Item = Site> {
        SITES.iter().filter(|i| i.scope == Scope::Block).map(|i| i.site)
    }
}

/// Which tower of the model a hook point belongs to. Vision hooks print bare
/// (`blocks.3.hook_resid_post`); text-tower hooks of CLIP-style models print with a `text.` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tower {
    Vision,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    pub tower: Tower,
    pub layer: Option<usize>,
    pub site: Site,
    /// A hook inside a module spliced at this point (`….hook_sae_acts_post`); None for the model's
    /// own value.
    pub sub: Option<SubHook>,
}

impl HookPoint {
    pub const fn global(site: Site) -> Self {
        HookPoint { tower: Tower::Vision, layer: None, site, sub: None }
    }
    pub const fn block(layer: usize, site: Site) -> Self {
        HookPoint { tower: Tower::Vision, layer: Some(layer), site, sub: None }
    }
    pub const fn in_tower(tower: Tower, layer: Option<usize>, site: Site) -> Self {
        HookPoint { tower, layer, site, sub: None }
    }
    /// The sub-hook `sub` of a module spliced at this point.
    pub const fn with_sub(self, sub: SubHook) -> Self {
        HookPoint { sub: Some(sub), ..self }
    }
    /// The model's own point this one hangs off (itself when it is not a sub-hook).
    pub const fn base(self) -> Self {
        HookPoint { sub: None, ..self }
    }

    /// Parses exact TransformerLens spelling (with `text.` in front for a text tower, and a SAELens
    /// sub-hook behind for a spliced module). Only the syntax is checked here; whether the point
    /// exists in a given model is the model's business (`resolve_point`).
    pub fn parse(name: &str) -> Result<HookPoint> {
        if let Some((base, last)) = name.rsplit_once('.') {
            if let Some(sub) = SubHook::parse(last) {
                let base = Self::parse_base(base).map_err(|_| unknown(name))?;
                return Ok(base.with_sub(sub));
            }
        }
        Self::parse_base(name)
    }

    fn parse_base(name: &str) -> Result<HookPoint> {
        if let Some(rest) = name.strip_prefix("text.") {
            let inner = Self::parse_base(rest).map_err(|_| unknown(name))?;
            if inner.tower == Tower::Text || matches!(inner.site, Site::ImageEmbeds | Site::TextEmbeds | Site::Logits) {
                return Err(unknown(name));
            }
            return Ok(HookPoint { tower: Tower::Text, ..inner });
        }
        let (scope, layer, spelling) = match name.strip_prefix("blocks.") {
            Some(rest) => {
                let (layer_text, site_text) = rest.split_once('.').ok_or_else(|| unknown(name))?;
                (Scope::Block, Some(layer_text.parse::<usize>().map_err(|_| unknown(name))?), site_text)
            }
            None => (Scope::Global, None, name),
        };
        let info = SITES.iter().find(|i| i.scope == scope && i.spelling == spelling).ok_or_else(|| unknown(name))?;
        Ok(HookPoint::in_tower(Tower::Vision, layer, info.site))
    }
}

fn unknown(name: &str) -> PrismaError {
    PrismaError::UnknownHook(format!(
        "unknown hook '{name}' (hook names look like 'blocks.3.hook_resid_post'; `prisma inspect MODEL` lists them)"
    ))
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tower == Tower::Text {
            f.write_str("text.")?;
        }
        if let Some(l) = self.layer {
            write!(f, "blocks.{l}.")?;
        }
        f.write_str(self.site.spelling())?;
        if let Some(sub) = self.sub {
            write!(f, ".{}", sub.spelling())?;
        }
        Ok(())
    }
}

/// A value inside a spliced module, in SAELens's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubHook {
    /// The module's input: the hook's value at the selected tokens, trailing axes flattened to `d_in`.
    Input,
    /// Feature pre-activations [..., d_sae].
    ActsPre,
    /// Feature activations [..., d_sae].
    ActsPost,
    /// The reconstruction [..., d_out].
    Recons,
    /// The model's value minus the reconstruction computed without hooks (error term only).
    Error,
    /// What replaces the model's value at the selected tokens.
    Output,
}

impl SubHook {
    /// In forward order.
    pub const ALL: [SubHook; 6] = [SubHook::Input, SubHook::ActsPre, SubHook::ActsPost, SubHook::Recons, SubHook::Error, SubHook::Output];

    pub fn spelling(self) -> &'static str {
        match self {
            SubHook::Input => "hook_sae_input",
            SubHook::ActsPre => "hook_sae_acts_pre",
            SubHook::ActsPost => "hook_sae_acts_post",
            SubHook::Recons => "hook_sae_recons",
            SubHook::Error => "hook_sae_error",
            SubHook::Output => "hook_sae_output",
        }
    }

    pub fn parse(spelling: &str) -> Option<SubHook> {
        Self::ALL.into_iter().find(|s| s.spelling() == spelling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_table_is_in_enum_order() {
        for (i, info) in SITES.iter().enumerate() {
            assert_eq!(info.site as usize, i, "{:?}", info.site);
            assert_eq!(info.site.info().spelling, info.spelling);
        }
    }

    #[test]
    fn every_spelling_round_trips() {
        let mut points = Vec::new();
        for info in SITES {
            let p = match info.scope {
                Scope::Global => HookPoint::global(info.site),
                Scope::Block => HookPoint::block(11, info.site),
            };
            points.push(p);
            if !matches!(info.site, Site::ImageEmbeds | Site::TextEmbeds | Site::Logits) {
                points.push(HookPoint { tower: Tower::Text, ..p });
            }
        }
        let with_subs: Vec<HookPoint> = points.iter().flat_map(|p| SubHook::ALL.iter().map(|s| p.with_sub(*s))).collect();
        for p in points.iter().chain(&with_subs) {
            assert_eq!(HookPoint::parse(&p.to_string()).unwrap(), *p, "{p}");
        }
        assert_eq!(HookPoint::block(3, Site::Pattern).to_string(), "blocks.3.attn.hook_pattern");
        let text = HookPoint::in_tower(Tower::Text, Some(1), Site::ResidPost);
        assert_eq!(text.to_string(), "text.blocks.1.hook_resid_post");
        assert_eq!(HookPoint::parse("text.blocks.1.hook_resid_post").unwrap(), text);
        assert_eq!(HookPoint::parse("text.ln_final.hook_normalized").unwrap().tower, Tower::Text);
        // SAELens's spelling of a spliced SAE's hooks.
        let acts = HookPoint::block(3, Site::ResidPost).with_sub(SubHook::ActsPost);
        assert_eq!(acts.to_string(), "blocks.3.hook_resid_post.hook_sae_acts_post");
        for (sub, name) in [
            (SubHook::Input, "hook_sae_input"),
            (SubHook::ActsPre, "hook_sae_acts_pre"),
            (SubHook::ActsPost, "hook_sae_acts_post"),
            (SubHook::Recons, "hook_sae_recons"),
            (SubHook::Error, "hook_sae_error"),
            (SubHook::Output, "hook_sae_output"),
        ] {
            let p = HookPoint::parse(&format!("blocks.3.hook_resid_post.{name}")).unwrap();
            assert_eq!((p.base(), p.sub), (HookPoint::block(3, Site::ResidPost), Some(sub)));
        }
        assert_eq!(HookPoint::parse("hook_logits.hook_sae_output").unwrap(), HookPoint::global(Site::Logits).with_sub(SubHook::Output));
    }

    #[test]
    fn rejects_near_misses() {
        for bad in [
            "blocks.x.hook_resid_pre",
            "blocks.1.hook_resid",
            "hook_embeds",
            "blocks.1",
            "",
            "blocks..hook_resid_pre",
            "text.text.hook_embed",
            "text.hook_logits",
            "blocks.1.hook_embed",
            "blocks.1.attn.hook_pattern.",
            // Sub-hooks: only SAELens's names, only behind a model point, only one.
            "hook_sae_input",
            "blocks.1.hook_sae_input",
            "blocks.1.hook_resid_post.hook_sae_act_post",
            "blocks.1.hook_resid_post.hook_sae_acts_post.hook_sae_input",
            "blocks.1.hook_resid_post.sae.hook_sae_input",
            "blocks.1.hook_resid_post.hook_sae_input.",
            "text.hook_logits.hook_sae_input",
            "blocks.1.hook_resid.hook_sae_input",
        ] {
            assert!(matches!(HookPoint::parse(bad), Err(PrismaError::UnknownHook(_))), "{bad}");
        }
    }
}
