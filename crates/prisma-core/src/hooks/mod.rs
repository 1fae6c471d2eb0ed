//! Hook points and what happens at them. `point` is the vocabulary (typed names in TransformerLens
//! and SAELens spelling, one table of every site's facts); `select` picks points by name or glob;
//! `edit` is what changes a value at a point; `splice` puts a module into the forward; `ctx` is
//! what a forward pass calls at each point. This module only re-exports them: the parts import
//! each other directly, so modules the context depends on (interventions) can use the vocabulary
//! without an import cycle.

mod ctx;
pub mod edit;
pub mod point;
mod select;
pub mod splice;
pub use ctx::HookCtx;
pub use edit::HookEdit;
pub use point::*;
pub use select::{resolve_point, HookSelection};
pub use splice::{HookModule, SharedModule, Splice, SpliceSpec, SubHooks, Tokens};
