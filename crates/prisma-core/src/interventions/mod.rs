//! Interventions as data: a hook, an optional selection (batch entries, positions, heads) and an
//! action. The same JSON spec comes from the library API and from CLI flags.

use crate::error::{PrismaError, Result};
use crate::hooks::edit::HookEdit;
use crate::hooks::point::{HookPoint, SiteAxes, SubHook};
use serde::Deserialize;
use std::collections::HashMap;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Default, Deserialize, ts_rs::TS)]
#[serde(deny_unknown_fields)]
#[ts(optional_fields)]
pub struct Selection {
    pub batch: Option<Vec<i64>>,
    pub pos: Option<Vec<i64>>,
    pub head: Option<Vec<i64>>,
    /// Features of a spliced SAE (the last axis of its `hook_sae_acts_pre` / `hook_sae_acts_post`).
    pub feature: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ts_rs::TS)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Zero,
    Scale,
    Add,
    Set,
    Patch,
    Mean,
}

/// The serialised form (`[{"hook": "...", "select": {...}, "action": "zero"}]`).
#[derive(Debug, Clone, Deserialize, ts_rs::TS)]
#[serde(deny_unknown_fields)]
#[ts(optional_fields)]
pub struct InterventionSpec {
    pub hook: String,
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub select: Selection,
    pub action: ActionKind,
    pub factor: Option<f64>,
    pub tensor: Option<String>,
    pub coeff: Option<f64>,
}

pub fn parse_specs(json: &str) -> Result<Vec<InterventionSpec>> {
    serde_json::from_str(json).map_err(|e| PrismaError::Intervention(format!("bad interventions JSON: {e}")))
}

enum Action {
    Zero,
    Scale(f64),
    /// x + coeff * direction, direction broadcast along the last axis.
    Add(Tensor),
    /// Values broadcast to the activation's shape.
    Set(Tensor),
}

/// An intervention checked against a model and bound to its tensors, ready to apply.
pub struct Intervention {
    pub point: HookPoint,
    /// The point's position and head axes (a spliced module's sub-hooks have their own).
    axes: SiteAxes,
    selection: Selection,
    action: Action,
}

impl Intervention {
    /// `axes` are the point's (`Model::hook_axes`); `tensors` are the caller's named tensors,
    /// already on the model's device and dtype.
    pub fn compile(spec: &InterventionSpec, point: HookPoint, axes: SiteAxes, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        if spec.select.pos.is_some() && axes.pos.is_none() {
            return Err(PrismaError::Intervention(format!("'{}' has no position axis to select", spec.hook)));
        }
        if spec.select.head.is_some() && axes.head.is_none() {
            return Err(PrismaError::Intervention(format!(
                "'{}' has no head axis; select heads at attn.hook_q/k/v/z/result/attn_scores/pattern",
                spec.hook
            )));
        }
        if spec.select.feature.is_some() && !matches!(point.sub, Some(SubHook::ActsPre | SubHook::ActsPost)) {
            return Err(PrismaError::Intervention(format!(
                "'{}' has no feature axis; select features at a spliced SAE's hook_sae_acts_pre / hook_sae_acts_post",
                spec.hook
            )));
        }
        let named = |what: &str| -> Result<Tensor> {
            let name = spec
                .tensor
                .as_deref()
                .ok_or_else(|| PrismaError::Intervention(format!("action '{what}' at '{}' needs a \"tensor\"", spec.hook)))?;
            tensors
                .get(name)
                .map(|t| t.shallow_clone())
                .ok_or_else(|| PrismaError::Intervention(format!("no tensor named '{name}' was given")))
        };
        let action = match spec.action {
            ActionKind::Zero => Action::Zero,
            ActionKind::Scale => Action::Scale(
                spec.factor.ok_or_else(|| PrismaError::Intervention(format!("action 'scale' at '{}' needs a \"factor\"", spec.hook)))?,
            ),
            ActionKind::Add => Action::Add(named("add")?.f_mul_scalar(spec.coeff.unwrap_or(1.0))?),
            ActionKind::Set | ActionKind::Patch => Action::Set(named("set")?),
            ActionKind::Mean => {
                let runs = named("mean")?;
                if runs.dim() == 0 {
                    return Err(PrismaError::Intervention("a 'mean' tensor needs a leading runs axis".into()));
                }
                // Mean over the runs axis, keeping it as a batch axis of 1 so it broadcasts.
                Action::Set(runs.f_mean_dim([0i64].as_slice(), true, Kind::Float)?.f_to_kind(runs.kind())?)
            }
        };
        Ok(Intervention { point, axes, selection: spec.select.clone(), action })
    }

    /// Boolean mask broadcastable to the activation, or None when everything is selected.
    fn mask(&self, shape: &[i64], device: tch::Device) -> Result<Option<Tensor>> {
        let axes = self.axes;
        let picks = [
            (Some(0usize), self.selection.batch.as_ref(), "batch"),
            (axes.pos, self.selection.pos.as_ref(), "pos"),
            (axes.head, self.selection.head.as_ref(), "head"),
            (shape.len().checked_sub(1).filter(|_| self.selection.feature.is_some()), self.selection.feature.as_ref(), "feature"),
        ];
        let mut mask: Option<Tensor> = None;
        for (axis, indices, label) in picks {
            let (Some(axis), Some(indices)) = (axis, indices) else { continue };
            let n = shape[axis];
            let mut flags = vec![0u8; n as usize];
            for &i in indices {
                let j = if i < 0 { i + n } else { i };
                if j < 0 || j >= n {
                    return Err(PrismaError::Intervention(format!("{label} index {i} is out of range at '{}' (size {n})", self.point)));
                }
                flags[j as usize] = 1;
            }
            let mut view = vec![1i64; shape.len()];
            view[axis] = n;
            let m = Tensor::from_slice(&flags).f_to_kind(Kind::Bool)?.f_reshape(view)?.f_to_device(device)?;
            mask = Some(match mask {
                None => m,
                Some(prev) => prev.f_logical_and(&m)?,
            });
        }
        Ok(mask)
    }
}

impl HookEdit for Intervention {
    fn point(&self) -> HookPoint {
        self.point
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.size();
        let new = match &self.action {
            Action::Zero => x.f_zeros_like()?,
            Action::Scale(f) => x.f_mul_scalar(*f)?,
            Action::Add(direction) => {
                let last = shape.last().copied().unwrap_or(0);
                if direction.numel() as i64 != last {
                    return Err(PrismaError::Shape(format!(
                        "add at '{}': direction has {} values, the activation's last axis has {last}",
                        self.point,
                        direction.numel()
                    )));
                }
                x.f_add(&direction.f_reshape([last])?)?
            }
            Action::Set(values) => values.f_broadcast_to(shape.as_slice()).map_err(|_| {
                PrismaError::Shape(format!("values of shape {:?} do not broadcast to '{}' of shape {shape:?}", values.size(), self.point))
            })?,
        };
        match self.mask(&shape, x.device())? {
            None => Ok(new),
            Some(mask) => Ok(new.f_where_self(&mask, x)?),
        }
    }
}
