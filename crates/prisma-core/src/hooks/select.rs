//! Turning user names and patterns (`blocks.*.hook_resid_post`, `*`) into a model's hook points.

use super::point::HookPoint;
use crate::error::{PrismaError, Result};
use globset::GlobBuilder;
use std::collections::BTreeSet;

/// The hook points one run should record, resolved against one model's list of points.
#[derive(Debug, Clone, Default)]
pub struct HookSelection {
    points: BTreeSet<HookPoint>,
}

/// Exactly these points (analyses that know what they record).
impl FromIterator<HookPoint> for HookSelection {
    fn from_iter<I: IntoIterator<Item = HookPoint>>(points: I) -> Self {
        HookSelection { points: points.into_iter().collect() }
    }
}

/// The one check of a hook name against a model (`available`: its points, sub-hooks of spliced
/// modules included): a name that does not parse is `E_UNKNOWN_HOOK`, one naming a layer the
/// model lacks is `E_LAYER_RANGE`, one the model does not have otherwise is `E_UNKNOWN_HOOK`.
pub fn resolve_point(name: &str, available: &[HookPoint]) -> Result<HookPoint> {
    let point = HookPoint::parse(name)?;
    if let Some(l) = point.layer {
        // Each tower has its own depth (a CLIP text tower may be shallower than its vision tower).
        let n_layers = available.iter().filter(|p| p.tower == point.tower).filter_map(|p| p.layer).max().map_or(0, |m| m + 1);
        if l >= n_layers {
            return Err(PrismaError::LayerRange(format!(
                "hook '{name}': layer {l} is out of range (the model has {n_layers} layers: 0..{})",
                n_layers.saturating_sub(1)
            )));
        }
    }
    if !available.contains(&point) {
        let hint = if point.sub.is_some() { " (sub-hooks exist only where a module is spliced)" } else { "" };
        return Err(PrismaError::UnknownHook(format!("this model has no hook '{name}'{hint}")));
    }
    Ok(point)
}

impl HookSelection {
    pub fn none() -> Self {
        Self::default()
    }

    /// `available` is every hook point of the model, in forward order. A plain name is checked by
    /// `resolve_point`; a pattern matching nothing is `E_UNKNOWN_HOOK`.
    pub fn resolve(patterns: &[String], available: &[HookPoint]) -> Result<Self> {
        let names: Vec<String> = available.iter().map(|p| p.to_string()).collect();
        let mut points = BTreeSet::new();
        for pattern in patterns {
            let pattern = pattern.trim();
            let is_glob = pattern.contains(['*', '?', '[', '{']);
            if !is_glob {
                points.insert(resolve_point(pattern, available)?);
                continue;
            }
            let matcher = GlobBuilder::new(pattern)
                .literal_separator(false)
                .build()
                .map_err(|e| PrismaError::UnknownHook(format!("bad hook pattern '{pattern}': {e}")))?
                .compile_matcher();
            let before = points.len();
            let mut matched_any = false;
            for (point, name) in available.iter().zip(&names) {
                if matcher.is_match(name) {
                    matched_any = true;
                    points.insert(*point);
                }
            }
            if !matched_any && points.len() == before {
                return Err(PrismaError::UnknownHook(format!("no hook matches '{pattern}' (`prisma inspect MODEL` lists the hooks)")));
            }
        }
        Ok(HookSelection { points })
    }

    pub fn contains(&self, point: &HookPoint) -> bool {
        self.points.contains(point)
    }

    pub fn insert(&mut self, point: HookPoint) {
        self.points.insert(point);
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &HookPoint> {
        self.points.iter()
    }
}
