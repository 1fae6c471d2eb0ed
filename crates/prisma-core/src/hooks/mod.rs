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
    LnFinalScale,
    LnFinalNormalized,
    Logits,
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
            Logits => SiteAxes { pos: None, head: None },
            _ => SiteAxes { pos: Some(1), head: None },
        }
    }

    fn spelling(self) -> &'static str {
        GLOBAL_SITES
            .iter()
            .chain(BLOCK_SITES.iter())
            .find(|(s, _)| *s == self)
            .map(|(_, name)| *name)
            .unwrap_or("?")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    pub layer: Option<usize>,
    pub site: Site,
}

impl HookPoint {
    pub const fn global(site: Site) -> Self {
        HookPoint { layer: None, site }
    }
    pub const fn block(layer: usize, site: Site) -> Self {
        HookPoint { layer: Some(layer), site }
    }

    /// Parses exact TransformerLens spelling. Only the syntax is checked here; whether the layer
    /// exists in a given model is the model's business (`E_LAYER_RANGE`).
    pub fn parse(name: &str) -> Result<HookPoint> {
        if let Some(rest) = name.strip_prefix("blocks.") {
            let (layer_text, site_text) = rest.split_once('.').ok_or_else(|| unknown(name))?;
            let layer: usize = layer_text.parse().map_err(|_| unknown(name))?;
            let site = BLOCK_SITES
                .iter()
                .find(|(_, spelling)| *spelling == site_text)
                .map(|(s, _)| *s)
                .ok_or_else(|| unknown(name))?;
            return Ok(HookPoint::block(layer, site));
        }
        GLOBAL_SITES
            .iter()
            .find(|(_, spelling)| *spelling == name)
            .map(|(s, _)| HookPoint::global(*s))
            .ok_or_else(|| unknown(name))
    }
}

fn unknown(name: &str) -> PrismaError {
    PrismaError::UnknownHook(format!(
        "unknown hook '{name}' (hook names look like 'blocks.3.hook_resid_post'; `prisma inspect MODEL` lists them)"
    ))
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
    }

    #[test]
    fn rejects_near_misses() {
        for bad in ["blocks.x.hook_resid_pre", "blocks.1.hook_resid", "hook_embeds", "blocks.1", "", "blocks..hook_resid_pre"] {
            assert!(matches!(HookPoint::parse(bad), Err(PrismaError::UnknownHook(_))), "{bad}");
        }
    }
}
