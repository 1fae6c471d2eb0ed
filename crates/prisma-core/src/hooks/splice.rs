//! Splicing a module into the forward pass: at a hook point the value x is replaced by a module's
//! output x′ (a sparse autoencoder's reconstruction, say), and the module's own values are hook
//! points too, spelled as SAELens spells them (`blocks.3.hook_resid_post.hook_sae_acts_post`), so
//! they are recorded and edited like any other hook.
//!
//! At the read point the (possibly edited) value x, restricted to the selected tokens and flattened
//! to the module's input width, goes through `hook_sae_input`, then `HookModule::encode`
//! (which visits `hook_sae_acts_pre` and `hook_sae_acts_post`). At the write point (the same
//! point for an SAE; a later one for a transcoder) `HookModule::decode` (visiting
//! `hook_sae_recons`) gives the reconstruction; with the error term, `hook_sae_error` = x − the
//! reconstruction computed without hooks is added back, so edits at the sub-hooks are the only
//! change to the model's output (SAELens's `use_error_term`). `hook_sae_output` is what goes on.
//! The model's own hook at the point keeps the model's value (what the module reads).

pub use super::point::SubHook;
use super::point::{HookPoint, SiteAxes, Tower};
use super::select::resolve_point;
use crate::error::{PrismaError, Result};
use std::sync::{Arc, Mutex};
use tch::Tensor;

/// A module that can be spliced into the forward pass: an encoder to `d_sae` features and a
/// decoder back. Sparse autoencoders implement it; a transcoder is one whose `d_out` is read at
/// another hook (`SpliceSpec::out`).
///
/// Contract:
/// - `encode` takes x [..., d_in] (the hook's value at the selected tokens, trailing axes
///   flattened to `d_in`, in the model's dtype) and returns the feature activations [..., d_sae].
///   It passes its pre-activations through `hooks.hook(SubHook::ActsPre, …)` and its activations
///   through `hooks.hook(SubHook::ActsPost, …)`, and goes on with what those return (they may be
///   edited).
/// - `decode` takes activations [..., d_sae] and returns the reconstruction [..., d_out] in the
///   model's dtype, passing it through `hooks.hook(SubHook::Recons, …)` at the point SAELens does
///   (before any output normalisation is undone) and going on with what that returns.
/// - Both are pure functions of their input: the splice calls them a second time with hooks off
///   to compute the error term.
///
/// The splice visits `hook_sae_input`, `hook_sae_error` and `hook_sae_output` itself and checks
/// that a module visited its three hooks.
pub trait HookModule: Send {
    /// Width of the input (the product of the hook's trailing axes it reads, e.g. H·d_head at
    /// `attn.hook_z`).
    fn d_in(&self) -> i64;
    /// Number of features.
    fn d_sae(&self) -> i64;
    /// Width of the reconstruction; `d_in` unless the module writes another hook.
    fn d_out(&self) -> i64 {
        self.d_in()
    }
    fn encode(&self, x: &Tensor, hooks: &mut SubHooks) -> Result<Tensor>;
    fn decode(&self, acts: &Tensor, hooks: &mut SubHooks) -> Result<Tensor>;
}

/// A module shared between splices and runs. libtorch tensors are `Send` but not `Sync`, so a
/// module holding them is shared behind a mutex (only ever taken by the one thread running it).
pub type SharedModule = Arc<Mutex<dyn HookModule>>;

/// The hooks a module passes its values through; with hooks off (the error term's clean pass),
/// values go through untouched.
pub struct SubHooks<'h> {
    /// Where values go, and the point the module is spliced at; None with hooks off.
    ctx: Option<(&'h mut dyn SubHookSink, HookPoint)>,
    visited: [bool; 6],
}

/// What `SubHooks` forwards to: the forward's `HookCtx` (interventions, then recording).
pub(super) trait SubHookSink {
    fn visit(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor>;
}

impl<'h> SubHooks<'h> {
    fn on(ctx: &'h mut dyn SubHookSink, at: HookPoint) -> Self {
        SubHooks { ctx: Some((ctx, at)), visited: [false; 6] }
    }
    /// Hooks that pass values through (also what a module's own unit tests can use).
    pub fn off() -> SubHooks<'static> {
        SubHooks { ctx: None, visited: [false; 6] }
    }

    /// Visits `sub` with value `x`: returns x, or x as edited by an intervention at that sub-hook.
    pub fn hook(&mut self, sub: SubHook, x: Tensor) -> Result<Tensor> {
        self.visited[sub as usize] = true;
        match &mut self.ctx {
            Some((ctx, at)) => ctx.visit(at.with_sub(sub), x),
            None => Ok(x),
        }
    }

    fn require(&self, subs: &[SubHook]) -> Result<()> {
        match (subs.iter().find(|s| !self.visited[**s as usize]), &self.ctx) {
            (Some(s), Some((_, at))) => Err(PrismaError::Internal(format!("the module spliced at '{at}' did not visit {}", s.spelling()))),
            _ => Ok(()),
        }
    }
}

/// Which tokens a splice applies to; the others pass through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tokens {
    #[default]
    All,
    /// The class token only.
    Class,
    /// The patch tokens only (after the class, distillation and register tokens).
    Patches,
}

/// A splice as asked for: a module at a hook (names as the user gives them).
#[derive(Clone)]
pub struct SpliceSpec {
    pub module: SharedModule,
    /// The hook the module reads (and, unless `out` is set, replaces).
    pub hook: String,
    /// The hook the module's output replaces, when it is not `hook` (a transcoder: reads
    /// `ln2.hook_normalized`, writes `hook_mlp_out`). Must not come before `hook`.
    pub out: Option<String>,
    pub tokens: Tokens,
    /// Keep the error term, so that the model's output is unchanged unless a sub-hook is edited.
    pub use_error_term: bool,
}

impl SpliceSpec {
    pub fn new(module: impl HookModule + 'static, hook: &str) -> Self {
        SpliceSpec { module: Arc::new(Mutex::new(module)), hook: hook.into(), out: None, tokens: Tokens::All, use_error_term: false }
    }
}

/// What a model tells a splice about itself when it is compiled.
pub struct SpliceTarget<'a> {
    /// Every hook point of the model, in forward order (no sub-hooks).
    pub points: &'a [HookPoint],
    /// A point's shape for a batch of one.
    pub shape: &'a dyn Fn(HookPoint) -> Vec<i64>,
    /// Vision tokens: all, and those before the first patch.
    pub n_pos: i64,
    pub n_prefix: i64,
    pub has_class_token: bool,
}

/// A splice checked against a model: the points it reads and writes, and how values are cut to
/// its tokens and its widths.
#[derive(Clone)]
pub struct Splice {
    module: SharedModule,
    pub read: HookPoint,
    pub write: HookPoint,
    pub tokens: Tokens,
    pub use_error_term: bool,
    /// Token range (start, len) along `pos_axis`, when not all tokens.
    range: Option<(i64, i64)>,
    pos_axis: Option<usize>,
    /// Leading axes kept when the read value is flattened to d_in (and the written one to d_out).
    read_keep: usize,
    write_keep: usize,
    d_sae: i64,
    d_in: i64,
    d_out: i64,
}

/// What a splice carries from its read point to its write point.
pub(super) struct Encoded {
    /// The module's input before `hook_sae_input` (for the error term's clean pass).
    input: Tensor,
    acts: Tensor,
}

impl Splice {
    /// Checks `spec` against a model (`target`) and the splices already placed (`placed`).
    pub fn compile(spec: &SpliceSpec, target: &SpliceTarget, placed: &[&Splice]) -> Result<Splice> {
        let read = resolve_point(&spec.hook, target.points)?;
        let write = match &spec.out {
            Some(out) => resolve_point(out, target.points)?,
            None => read,
        };
        let (d_in, d_sae, d_out) = {
            let m = lock(&spec.module)?;
            (m.d_in(), m.d_sae(), m.d_out())
        };
        let index = |p: HookPoint| target.points.iter().position(|q| *q == p);
        if read.tower != write.tower || index(write) < index(read) {
            return Err(PrismaError::Argument(format!("a module spliced at '{read}' cannot write '{write}', which comes before it")));
        }
        for other in placed {
            if [read, write].iter().any(|p| *p == other.read || *p == other.write) {
                return Err(PrismaError::Argument(format!(
                    "a module is already spliced at '{}'; one module per hook",
                    if read == other.read || read == other.write { read } else { write }
                )));
            }
        }
        let (read_axes, write_axes) = (read.site.axes(), write.site.axes());
        let range = match spec.tokens {
            Tokens::All => None,
            tokens => {
                if read.tower != Tower::Vision || read_axes.pos.is_none() || read_axes.pos != write_axes.pos {
                    return Err(PrismaError::Argument(format!(
                        "'{read}' has no image token axis: a module spliced there applies to all of it"
                    )));
                }
                let patches = target.n_pos - target.n_prefix;
                Some(match tokens {
                    Tokens::Class if target.has_class_token => (0, 1),
                    Tokens::Class => return Err(PrismaError::Argument("this model has no class token to splice at".into())),
                    _ if patches > 0 => (target.n_prefix, patches),
                    _ => return Err(PrismaError::Argument("this model has no patch tokens to splice at".into())),
                })
            }
        };
        let read_keep = keep_axes(read, &(target.shape)(read), read_axes, d_in, "takes")?;
        let write_keep = keep_axes(write, &(target.shape)(write), write_axes, d_out, "gives")?;
        Ok(Splice {
            module: spec.module.clone(),
            read,
            write,
            tokens: spec.tokens,
            use_error_term: spec.use_error_term,
            range,
            pos_axis: read_axes.pos,
            read_keep,
            write_keep,
            d_sae,
            d_in,
            d_out,
        })
    }

    /// The splice among `splices` whose sub-hook `point` is, and which sub-hook.
    pub fn owner<'s>(point: HookPoint, splices: &[&'s Splice]) -> Option<(&'s Splice, SubHook)> {
        let sub = point.sub?;
        splices.iter().find(|s| s.read == point.base()).map(|s| (*s, sub))
    }

    /// The sub-hooks this splice adds, each after its model point, in forward order.
    pub fn sub_hooks(&self) -> impl Iterator<Item = HookPoint> + '_ {
        SubHook::ALL.into_iter().filter(|s| self.use_error_term || *s != SubHook::Error).map(|s| self.read.with_sub(s))
    }

    /// The model point a sub-hook is visited at (the write point for the decoder's side).
    pub fn visited_at(&self, sub: SubHook) -> HookPoint {
        match sub {
            SubHook::Input | SubHook::ActsPre | SubHook::ActsPost => self.read,
            _ => self.write,
        }
    }

    /// A sub-hook's shape, from the shape of the point it is visited at.
    pub fn sub_shape(&self, sub: SubHook, point_shape: &[i64]) -> Vec<i64> {
        let mut shape = point_shape.to_vec();
        if let (Some((_, len)), Some(axis)) = (self.range, self.pos_axis) {
            shape[axis] = len;
        }
        let (keep, width) = match sub {
            SubHook::Input => (self.read_keep, self.d_in),
            SubHook::ActsPre | SubHook::ActsPost => (self.read_keep, self.d_sae),
            SubHook::Recons => (self.write_keep, self.d_out),
            SubHook::Error | SubHook::Output => return shape,
        };
        shape.truncate(keep);
        shape.push(width);
        shape
    }

    /// A sub-hook's position and head axes (those the flattening keeps).
    pub fn sub_axes(&self, sub: SubHook) -> SiteAxes {
        let point = self.visited_at(sub);
        let axes = point.site.axes();
        let keep = match sub {
            SubHook::Input | SubHook::ActsPre | SubHook::ActsPost => self.read_keep,
            SubHook::Recons => self.write_keep,
            SubHook::Error | SubHook::Output => usize::MAX,
        };
        SiteAxes { pos: axes.pos.filter(|a| *a < keep), head: axes.head.filter(|a| *a < keep) }
    }

    /// At the read point: encodes x (the model's value), visiting the encoder's sub-hooks.
    pub(super) fn read_side(&self, ctx: &mut dyn SubHookSink, x: &Tensor) -> Result<Encoded> {
        let input = flatten(&self.select(x)?, self.read_keep)?;
        let hooked = ctx.visit(self.read.with_sub(SubHook::Input), input.shallow_clone())?;
        let module = lock(&self.module)?;
        let mut hooks = SubHooks::on(&mut *ctx, self.read);
        let acts = module.encode(&hooked, &mut hooks)?;
        hooks.require(&[SubHook::ActsPre, SubHook::ActsPost])?;
        Ok(Encoded { input, acts })
    }

    /// At the write point: decodes, adds the error term, and puts the output in place of x at
    /// the selected tokens.
    pub(super) fn write_side(&self, ctx: &mut dyn SubHookSink, x: Tensor, encoded: Encoded) -> Result<Tensor> {
        let Encoded { input, acts } = encoded;
        let module = lock(&self.module)?;
        let selected = self.select(&x)?;
        let target = selected.size();
        let mut hooks = SubHooks::on(&mut *ctx, self.read);
        let recons = module.decode(&acts, &mut hooks)?;
        hooks.require(&[SubHook::Recons])?;
        let mut out = recons.f_reshape(target.as_slice())?;
        if self.use_error_term {
            let mut off = SubHooks::off();
            let clean = module.decode(&module.encode(&input, &mut off)?, &mut off)?.f_reshape(target.as_slice())?;
            let error = ctx.visit(self.read.with_sub(SubHook::Error), selected.f_sub(&clean)?)?;
            out = out.f_add(&error)?;
        }
        let out = ctx.visit(self.read.with_sub(SubHook::Output), out)?;
        self.merge(&x, &out)
    }

    /// x at the selected tokens.
    fn select(&self, x: &Tensor) -> Result<Tensor> {
        match (self.range, self.pos_axis) {
            (Some((start, len)), Some(axis)) => Ok(x.f_narrow(axis as i64, start, len)?),
            _ => Ok(x.shallow_clone()),
        }
    }

    /// x with the selected tokens replaced by `y`.
    fn merge(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        let (Some((start, len)), Some(axis)) = (self.range, self.pos_axis) else { return Ok(y.shallow_clone()) };
        let axis = axis as i64;
        let total = x.size()[axis as usize];
        let before = x.f_narrow(axis, 0, start)?;
        let after = x.f_narrow(axis, start + len, total - start - len)?;
        Ok(Tensor::f_cat(&[&before, y, &after], axis)?)
    }
}

/// How many leading axes of `shape` stay when its trailing axes are flattened to `width`: the
/// trailing axes must multiply to exactly `width`, and the batch and position axes stay.
fn keep_axes(point: HookPoint, shape: &[i64], axes: SiteAxes, width: i64, verb: &str) -> Result<usize> {
    let first = axes.pos.map_or(1, |p| p + 1);
    let mut product = 1;
    for keep in (first..shape.len()).rev() {
        product *= shape[keep];
        if product == width {
            return Ok(keep);
        }
    }
    Err(PrismaError::Shape(format!(
        "the module spliced at '{point}' {verb} vectors of {width} values, but '{point}' has shape {shape:?} (batch of one)"
    )))
}

/// [lead..., trailing...] → [lead..., product of trailing].
fn flatten(x: &Tensor, keep: usize) -> Result<Tensor> {
    let size = x.size();
    if keep + 1 == size.len() {
        return Ok(x.shallow_clone());
    }
    let mut shape = size[..keep].to_vec();
    shape.push(-1);
    Ok(x.f_reshape(shape.as_slice())?)
}

fn lock(module: &SharedModule) -> Result<std::sync::MutexGuard<'_, dyn HookModule + 'static>> {
    module.lock().map_err(|_| PrismaError::Internal("a spliced module panicked in an earlier run".into()))
}
