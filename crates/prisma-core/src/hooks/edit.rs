//! What changes a value at a hook point during a forward.

use super::point::HookPoint;
use crate::error::Result;
use tch::Tensor;

/// Something that edits the value at one hook point during a forward. Interventions (data from the
/// caller) are the common kind; an engine may bring its own (a patching sweep's per-row patch).
pub trait HookEdit {
    fn point(&self) -> HookPoint;
    fn apply(&self, x: &Tensor) -> Result<Tensor>;
}
