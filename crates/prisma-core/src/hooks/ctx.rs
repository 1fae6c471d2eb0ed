//! What a forward pass does at each hook point: apply the interventions registered there, record
//! the (possibly edited) value if the caller asked for it, and hand it to a spliced module if one
//! reads or writes there (see `splice`).

use super::edit::HookEdit;
use super::point::HookPoint;
use super::select::HookSelection;
use super::splice::{Encoded, Splice, SubHookSink};
use crate::error::{PrismaError, Result};
use crate::interventions::Intervention;
use tch::Tensor;

pub struct HookCtx<'a> {
    record: &'a HookSelection,
    edits: Vec<&'a dyn HookEdit>,
    splices: &'a [&'a Splice],
    /// Per splice: what its read point encoded, waiting for its write point.
    pending: Vec<Option<Encoded>>,
    /// Recorded activations in forward order.
    pub recorded: Vec<(HookPoint, Tensor)>,
}

impl<'a> HookCtx<'a> {
    pub fn new(record: &'a HookSelection, interventions: &'a [Intervention]) -> Self {
        let edits = interventions.iter().map(|i| i as &dyn HookEdit).collect();
        HookCtx { record, edits, splices: &[], pending: Vec::new(), recorded: Vec::new() }
    }

    /// With one more edit, applied after the interventions at its point.
    pub fn with_edit(mut self, edit: &'a dyn HookEdit) -> Self {
        self.edits.push(edit);
        self
    }

    /// With modules spliced into the forward (checked against the model: see `Splice::compile`).
    pub fn with_splices(self, splices: &'a [&'a Splice]) -> Self {
        HookCtx { splices, pending: splices.iter().map(|_| None).collect(), ..self }
    }

    /// True when anything will read or edit this point. Lets the model take fused fast paths
    /// (fused layer norm, fused attention, no per-head result) wherever nobody is looking.
    pub fn active(&self, point: HookPoint) -> bool {
        self.record.contains(&point)
            || self.edits.iter().any(|e| e.point() == point)
            || self.splices.iter().any(|s| s.read == point || s.write == point)
    }

    pub fn hook(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        let mut x = self.edit_and_record(point, x)?;
        let splices = self.splices;
        for (i, splice) in splices.iter().copied().enumerate() {
            if splice.read == point {
                let encoded = splice.read_side(self, &x)?;
                self.pending[i] = Some(encoded);
            }
            if splice.write == point {
                let encoded = self.pending[i]
                    .take()
                    .ok_or_else(|| PrismaError::Internal(format!("'{}' was written before '{}' was read", splice.write, splice.read)))?;
                x = splice.write_side(self, x, encoded)?;
            }
        }
        Ok(x)
    }

    fn edit_and_record(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        let mut x = x;
        for edit in self.edits.iter().filter(|e| e.point() == point) {
            x = edit.apply(&x)?;
        }
        if self.record.contains(&point) {
            // The forward never writes in place, so sharing storage with the live value is safe.
            self.recorded.push((point, x.shallow_clone()));
        }
        Ok(x)
    }
}

/// A spliced module's sub-hooks are visited like any other point, minus splicing.
impl SubHookSink for HookCtx<'_> {
    fn visit(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor> {
        self.edit_and_record(point, x)
    }
}
