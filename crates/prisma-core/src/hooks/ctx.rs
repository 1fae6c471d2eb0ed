//! What a forward pass does at each hook point: apply the interventions registered there,
//! then record the (possibly edited) value if the caller asked for it.

use super::{HookPoint, HookSelection};
use crate::error::Result;
use crate::interventions::Intervention;
use tch::Tensor;

pub struct HookCtx<'a> {
    record: &'a HookSelection,
    interventions: &'a [Intervention],
    /// Recorded activations in forward order.
    pub recorded: Vec<(HookPoint, Tensor)>,
}

impl<'a> HookCtx<'a> {
    pub fn new(record: &'a HookSelection, interventions: &'a [Intervention]) -> Self {
        HookCtx { record, interventions, recorded: Vec::new() }
    }

    /// True when anything will read or edit this point. Lets the model take fused fast paths
    /// (fused layer norm, fused attention, no per-head result) wherever nobody is looking.
    pub fn active(&self, point: HookPoint) -> bool {
        self.record.contains(&point) || self.interventions.iter().any(|i| i.point == point)
    }

    pub fn hook(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        let mut x = x;
        for intervention in self.interventions.iter().filter(|i| i.point == point) {
            x = intervention.apply(&x)?;
        }
        if self.record.contains(&point) {
            // The forward never writes in place, so sharing storage with the live value is safe.
            self.recorded.push((point, x.shallow_clone()));
        }
        Ok(x)
    }
}
