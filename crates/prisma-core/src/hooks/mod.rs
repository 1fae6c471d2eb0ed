//! Typed hook names. A `HookPoint` prints and parses in exact TransformerLens spelling
//! (`blocks.3.attn.hook_pattern`); model code records at a point and never builds strings.

mod ctx;
mod select;
pub use ctx::HookCtx;
pub use select::HookSelection;

use crate::error::{PrismaError, Result};
use std::fmt;

/// A place in the forward pass. Block sites carry their layer in `HookPoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    Embed,
    PosEmbed,
    FullEmbed,
    LnPreScale,
    LnPreNormalized,
    ResidPre,
    Ln1Scale,
    Ln1Normalized,
    Q,
    K,
    V,
    AttnScores,
    Pattern,
    Z,
    Result,
    AttnOut,
    ResidMid,
    Ln2Scale,
    Ln2Normalized,
    MlpPre,
    MlpPost,
    MlpOut,
    ResidPost,
    MlpPreLinear,
    LnFinalScale,
    LnFinalNormalized,
    ImageEmbeds,
    TextEmbeds,
    Logits,
}

/// Which tower of the model a hook point belongs to. Vision hooks print bare
/// (`blocks.3.hook_resid_post`); text-tower hooks of CLIP-style models print with a `text.` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tower {
    Vision,
    Text,
}

/// Which axis of a site's activation indexes tokens and which indexes heads (batch is always 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiteAxes {
    pub pos: Option<usize>,
    pub head: Option<usize>,
}

/// Sites outside the blocks, in forward order, with their spelling.
const GLOBAL_SITES: &[(Site, &str)] = &[
    (Site::Embed, "hook_embed"),
    (Site::PosEmbed, "hook_pos_embed"),
    (Site::FullEmbed, "hook_full_embed"),
    (Site::LnPreScale, "ln_pre.hook_scale"),
    (Site::LnPreNormalized, "ln_pre.hook_normalized"),
    (Site::LnFinalScale, "ln_final.hook_scale"),
    (Site::LnFinalNormalized, "ln_final.hook_normalized"),
    (Site::ImageEmbeds, "hook_image_embeds"),
    (Site::TextEmbeds, "hook_text_embeds"),
    (Site::Logits, "hook_logits"),
];

/// Sites inside a block, in forward order, with the spelling after `blocks.{l}.`.
pub const BLOCK_SITES: &[(Site, &str)] = &[
    (Site::ResidPre, "hook_resid_pre"),
    (Site::Ln1Scale, "ln1.hook_scale"),
    (Site::Ln1Normalized, "ln1.hook_normalized"),
    (Site::Q, "attn.hook_q"),
    (Site::K, "attn.hook_k"),
    (Site::V, "attn.hook_v"),
    (Site::AttnScores, "attn.hook_attn_scores"),
    (Site::Pattern, "attn.hook_pattern"),
    (Site::Z, "attn.hook_z"),
    (Site::Result, "attn.hook_result"),
    (Site::AttnOut, "hook_attn_out"),
    (Site::ResidMid, "hook_resid_mid"),
    (Site::Ln2Scale, "ln2.hook_scale"),
    (Site::Ln2Normalized, "ln2.hook_normalized"),
    (Site::MlpPre, "mlp.hook_pre"),
    (Site::MlpPreLinear, "mlp.hook_pre_linear"),
    (Site::MlpPost, "mlp.hook_post"),
    (Site::MlpOut, "hook_mlp_out"),
    (Site::ResidPost, "hook_resid_post"),
];

impl Site {
    pub fn is_block_site(self) -> bool {
        BLOCK_SITES.iter().any(|(s, _)| *s == self)
    }

    pub fn axes(self) -> SiteAxes {
        use Site::*;
        match self {
            Q | K | V | Z | Result => SiteAxes { pos: Some(1), head: Some(2) },
            AttnScores | Pattern => SiteAxes { pos: Some(2), head: Some(1) },
            Logits | ImageEmbeds | TextEmbeds => SiteAxes { pos: None, head: None },
            _ => SiteAxes { pos: Some(1), head: None },
        }
    }

    fn spelling(self) -> &'static str {
        GLOBAL_SITES.iter().chain(BLOCK_SITES.iter()).find(|(s, _)| *s == self).map(|(_, name)| *name).unwrap_or("?")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    pub tower: Tower,
    pub layer: Option<usize>,
    pub site: Site,
}

impl HookPoint {
    pub const fn global(site: Site) -> Self {
        HookPoint { tower: Tower::Vision, layer: None, site }
    }
    pub const fn block(layer: usize, site: Site) -> Self {
        HookPoint { tower: Tower::Vision, layer: Some(layer), site }
    }
    pub const fn in_tower(tower: Tower, layer: Option<usize>, site: Site) -> Self {
        HookPoint { tower, layer, site }
    }

    /// Parses exact TransformerLens spelling (with `text.` in front for a text tower). Only the
    /// syntax is checked here; whether the layer exists in a given model is the model's business
    /// (`E_LAYER_RANGE`).
    pub fn parse(name: &str) -> Result<HookPoint> {
        if let Some(rest) = name.strip_prefix("text.") {
            let inner = Self::parse(rest).map_err(|_| unknown(name))?;
            if inner.tower == Tower::Text || matches!(inner.site, Site::ImageEmbeds | Site::TextEmbeds | Site::Logits) {
                return Err(unknown(name));
            }
            return Ok(HookPoint { tower: Tower::Text, ..inner });
        }
        if let Some(rest) = name.strip_prefix("blocks.") {
            let (layer_text, site_text) = rest.split_once('.').ok_or_else(|| unknown(name))?;
            let layer: usize = layer_text.parse().map_err(|_| unknown(name))?;
            let site = BLOCK_SITES.iter().find(|(_, spelling)| *spelling == site_text).map(|(s, _)| *s).ok_or_else(|| unknown(name))?;
            return Ok(HookPoint::block(layer, site));
        }
        GLOBAL_SITES.iter().find(|(_, spelling)| *spelling == name).map(|(s, _)| HookPoint::global(*s)).ok_or_else(|| unknown(name))
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
        match self.layer {
            Some(l) => write!(f, "blocks.{l}.{}", self.site.spelling()),
            None => f.write_str(self.site.spelling()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_round_trips() {
        for (site, _) in GLOBAL_SITES {
            let p = HookPoint::global(*site);
            assert_eq!(HookPoint::parse(&p.to_string()).unwrap(), p);
        }
        for (site, _) in BLOCK_SITES {
            let p = HookPoint::block(11, *site);
            assert_eq!(HookPoint::parse(&p.to_string()).unwrap(), p);
        }
        assert_eq!(HookPoint::block(3, Site::Pattern).to_string(), "blocks.3.attn.hook_pattern");
        let text = HookPoint::in_tower(Tower::Text, Some(1), Site::ResidPost);
        assert_eq!(text.to_string(), "text.blocks.1.hook_resid_post");
        assert_eq!(HookPoint::parse("text.blocks.1.hook_resid_post").unwrap(), text);
        assert_eq!(HookPoint::parse("text.ln_final.hook_normalized").unwrap().tower, Tower::Text);
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
        ] {
            assert!(matches!(HookPoint::parse(bad), Err(PrismaError::UnknownHook(_))), "{bad}");
        }
    }
}
