//! One batched activation-patching engine for every TransformerLens `get_act_patch_*` family.
//!
//! Each patched run starts at the patched layer from the cached corrupted residual, so earlier
//! layers are never recomputed, and many patches (one per batch entry, each with its own
//! position/head mask) share one forward. Ablation sweeps use the same engine with a different
//! source of values (zeros, a mean, another image) instead of the clean run.

use super::check_model;
use super::metric::{normalise, MetricSpec, MetricValue};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookEdit, HookPoint, HookSelection, Site, SiteAxes};
use crate::inference_mode::inference_mode;
use crate::model::Model;
use crate::models::linear::{with_linear_kernels, LinearKernels};
use crate::models::vit::{BlockEntry, EntryPoint, ForwardPlan, ForwardStart};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// The sites a sweep patches, named on the wire as the site table names them (see
/// `analysis::tests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
pub enum PatchWhat {
    ResidPre,
    ResidMid,
    ResidPost,
    AttnOut,
    MlpOut,
    HeadZ,
    HeadQ,
    HeadK,
    HeadV,
    HeadPattern,
}

impl PatchWhat {
    pub fn site(self) -> Site {
        match self {
            PatchWhat::ResidPre => Site::ResidPre,
            PatchWhat::ResidMid => Site::ResidMid,
            PatchWhat::ResidPost => Site::ResidPost,
            PatchWhat::AttnOut => Site::AttnOut,
            PatchWhat::MlpOut => Site::MlpOut,
            PatchWhat::HeadZ => Site::Z,
            PatchWhat::HeadQ => Site::Q,
            PatchWhat::HeadK => Site::K,
            PatchWhat::HeadV => Site::V,
            PatchWhat::HeadPattern => Site::Pattern,
        }
    }
}

/// The axes a sweep runs over, besides the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
pub enum PatchBy {
    LayerPos,
    LayerHead,
    LayerPosHead,
}

impl PatchBy {
    pub(crate) fn uses_pos(self) -> bool {
        matches!(self, PatchBy::LayerPos | PatchBy::LayerPosHead)
    }
    pub(crate) fn uses_head(self) -> bool {
        matches!(self, PatchBy::LayerHead | PatchBy::LayerPosHead)
    }
}

#[derive(Debug, Clone, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(optional_fields)]
pub struct PatchOptions {
    pub what: PatchWhat,
    pub by: PatchBy,
    #[serde(flatten)]
    pub metric: MetricSpec,
    /// Most patched runs (rows) in one batched block; default sized to keep activations near 128 MB.
    pub chunk: Option<usize>,
    /// Restrict to these layers (default: all).
    pub layers: Option<Vec<usize>>,
    /// Compute the sweep's linear layers with oneDNN (f32 CPU models only; see models/linear.rs):
    /// faster on large models, equal to at::linear only to float rounding.
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub fast_linear: bool,
}

#[derive(Debug, Clone, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct PatchResult {
    pub what: PatchWhat,
    pub by: PatchBy,
    /// Axis names and sizes of the value arrays, e.g. ["layer", "pos"] and [12, 197].
    pub axes: Vec<String>,
    pub dims: Vec<usize>,
    pub layers: Vec<usize>,
    pub clean: MetricValue,
    pub corrupt: MetricValue,
    /// Row-major over `dims`.
    pub value: Vec<f64>,
    pub prob: Vec<f64>,
    pub normalised: Vec<f64>,
    pub batched_forwards: usize,
    pub patched_runs: usize,
}

impl PatchResult {
    /// A sweep's result from one metric per patched run (`value`, row-major over `dims`, whose axes
    /// are named `axes`), each also normalised: 0 at the corrupted run's metric, 1 at the clean one's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn of_runs(
        opts: &PatchOptions,
        axes: Vec<String>,
        dims: Vec<usize>,
        layers: Vec<usize>,
        clean: MetricValue,
        corrupt: MetricValue,
        value: Vec<f64>,
        prob: Vec<f64>,
        batched_forwards: usize,
    ) -> PatchResult {
        let normalised = value.iter().map(|v| normalise(*v, clean.value, corrupt.value)).collect();
        PatchResult {
            what: opts.what,
            by: opts.by,
            axes,
            dims,
            layers,
            clean,
            corrupt,
            patched_runs: value.len(),
            value,
            prob,
            normalised,
            batched_forwards,
        }
    }
}

/// Where patched values come from, per layer: the clean run's activation (patching) or a
/// replacement such as zeros or a mean (ablation). Shapes broadcast to the activation.
pub trait PatchSource {
    fn values(&self, point: HookPoint) -> Result<Tensor>;
}

/// Values recorded at one forward (the clean run, or a reference run).
pub struct CachedSource(pub Vec<(HookPoint, Tensor)>);

impl PatchSource for CachedSource {
    fn values(&self, point: HookPoint) -> Result<Tensor> {
        self.0
            .iter()
            .find(|(p, _)| *p == point)
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(|| PrismaError::Internal(format!("no cached value at {point}")))
    }
}

pub struct ZeroSource;

impl PatchSource for ZeroSource {
    fn values(&self, _point: HookPoint) -> Result<Tensor> {
        Ok(Tensor::from(0.0f32))
    }
}

/// Validates a sweep's options against the model; returns the layers it covers.
pub(crate) fn check(model: &Model, opts: &PatchOptions) -> Result<Vec<usize>> {
    check_model(model, "patching")?;
    opts.metric.check(model.vit.cfg.n_classes)?;
    let site = opts.what.site();
    if opts.by.uses_head() && site.axes().head.is_none() {
        return Err(PrismaError::Argument(format!("--what {:?} has no heads; use --by layer,pos (or a head_* site)", opts.what)));
    }
    let n_layers = model.vit.cfg.n_layers;
    let layers = opts.layers.clone().unwrap_or_else(|| (0..n_layers).collect());
    if let Some(bad) = layers.iter().find(|&&l| l >= n_layers) {
        return Err(PrismaError::LayerRange(format!("layer {bad} is out of range (0..{})", n_layers - 1)));
    }
    Ok(layers)
}

/// Axis names and sizes of a sweep's result arrays: layer, then position and/or head.
pub(crate) fn result_axes(model: &Model, by: PatchBy, n_layers: usize) -> (Vec<String>, Vec<usize>) {
    let cfg = &model.vit.cfg;
    let mut names = vec!["layer".to_string()];
    let mut dims = vec![n_layers];
    if by.uses_pos() {
        names.push("pos".into());
        dims.push(cfg.n_pos() as usize);
    }
    if by.uses_head() {
        names.push("head".into());
        dims.push(cfg.n_heads as usize);
    }
    (names, dims)
}

/// Runs one base image (`base`, the corrupted run) with values from `source` patched in.
/// `clean` is the metric patching should restore (None: the base run's own, as for ablation); the
/// base run's metric is the "corrupt" end of the normalisation.
pub fn sweep(
    model: &Model,
    base: &Tensor,
    source: &dyn PatchSource,
    opts: &PatchOptions,
    clean: Option<MetricValue>,
) -> Result<PatchResult> {
    run_sweep(model, base, Source::Values(source), opts, clean)
}

/// Activation patching: clean activations patched into the corrupted run (TransformerLens's
/// convention), normalised so that corrupted = 0 and clean = 1.
pub fn activation_patching(model: &Model, clean: &Tensor, corrupt: &Tensor, opts: &PatchOptions) -> Result<PatchResult> {
    run_sweep(model, corrupt, Source::Image(clean), opts, None)
}

/// Where the values patched in come from.
enum Source<'a> {
    /// Another image's run (activation patching: the clean image).
    Image(&'a Tensor),
    /// Values that need no run of their own (ablation: zeros, a mean, a reference image's cache).
    Values(&'a dyn PatchSource),
}

/// What a patched run may start from: the base run's value at every block site.
const BASE_SITES: [Site; 9] =
    [Site::ResidPre, Site::Q, Site::K, Site::V, Site::Z, Site::AttnOut, Site::ResidMid, Site::MlpOut, Site::ResidPost];

/// Every `BASE_SITES` point of these layers: what reference runs record for the patches.
fn base_points(layers: &[usize]) -> Vec<HookPoint> {
    layers.iter().flat_map(|&l| BASE_SITES.iter().map(move |s| HookPoint::block(l, *s))).collect()
}

/// The base image, then the source image if there is one, as one batch of model pixels.
fn reference_pixels(model: &Model, base: &Tensor, source: &Source) -> Result<Tensor> {
    let single = |t: &Tensor, what: &str| -> Result<()> {
        if t.size().first() != Some(&1) {
            return Err(PrismaError::Shape(format!("patching takes exactly one {what} image")));
        }
        Ok(())
    };
    let base = model.to_model(base)?;
    single(&base, "base")?;
    let Source::Image(reference) = source else { return Ok(base) };
    let reference = model.to_model(reference)?;
    single(&reference, "clean")?;
    if reference.size() != base.size() {
        return Err(PrismaError::Shape(format!(
            "the clean and corrupted inputs differ in shape ({:?} vs {:?})",
            reference.size(),
            base.size()
        )));
    }
    Ok(Tensor::f_cat(&[&base, &reference], 0)?)
}

/// Values recorded at hook points over a batch of runs.
type Recorded = Vec<(HookPoint, Tensor)>;

/// One row of values recorded over a batch of reference runs: row 0 is the base run, row 1 the
/// source image's run. Rows are cut out only when asked for: a sweep reads a few of the values.
struct RowOf<'a> {
    recorded: &'a [(HookPoint, Tensor)],
    row: i64,
}

impl PatchSource for RowOf<'_> {
    fn values(&self, point: HookPoint) -> Result<Tensor> {
        let (_, t) = self
            .recorded
            .iter()
            .find(|(p, _)| *p == point)
            .ok_or_else(|| PrismaError::Internal(format!("no recorded value at {point}")))?;
        Ok(t.f_narrow(0, self.row, 1)?)
    }
}

/// One patched run within a layer: its position and/or head.
type Item = (Option<i64>, Option<i64>);

/// How a sweep's patched runs are grouped into passes.
struct Layout {
    /// Items within a layer, row-major.
    items: Vec<Item>,
    /// Patched layers in forward order.
    order: Vec<usize>,
    /// A pass takes up to `per_pass` items at each of `band` consecutive patched layers.
    per_pass: usize,
    band: usize,
}

impl Layout {
    fn new(model: &Model, opts: &PatchOptions, layers: &[usize]) -> Self {
        let cfg = &model.vit.cfg;
        let rows_per_block = opts.chunk.unwrap_or_else(|| {
            let per_run = (cfg.n_pos() * cfg.d_mlp.max(cfg.d_model * 4) * 4 * 3).max(1) as usize;
            // ~128 MB of activations per batched block, the fastest size on ViT-B (docs/benchmarks.md).
            ((128usize << 20) / per_run).clamp(1, 256)
        });
        Self::of(opts.by, cfg.n_pos(), cfg.n_heads, layers, rows_per_block)
    }

    /// The layout of a sweep by `by` over `layers` of a model with `n_pos` tokens and `n_heads`
    /// heads, with at most about `rows_per_block` patched runs in one batched block.
    fn of(by: PatchBy, n_pos: i64, n_heads: i64, layers: &[usize], rows_per_block: usize) -> Self {
        let items: Vec<Item> = match by {
            PatchBy::LayerPos => (0..n_pos).map(|p| (Some(p), None)).collect(),
            PatchBy::LayerHead => (0..n_heads).map(|h| (None, Some(h))).collect(),
            PatchBy::LayerPosHead => (0..n_pos).flat_map(|p| (0..n_heads).map(move |h| (Some(p), Some(h)))).collect(),
        };
        let mut order = layers.to_vec();
        order.sort_unstable();
        order.dedup();
        // A pass's last blocks hold at most about `rows_per_block` rows. Big models get one layer per
        // pass with many items (the GEMMs are what costs); small models get every layer in one pass.
        let per_pass = rows_per_block.min(items.len()).max(1);
        let band = (rows_per_block / per_pass).max(1);
        Layout { items, order, per_pass, band }
    }

    /// (first slot, patched layers, items) of each pass.
    fn passes(&self) -> impl Iterator<Item = (usize, &[usize], &[Item])> {
        let band = self.band;
        self.order
            .chunks(band)
            .enumerate()
            .flat_map(move |(b, layers)| self.items.chunks(self.per_pass).map(move |group| (b * band, layers, group)))
    }

    fn one_pass(&self) -> bool {
        self.band >= self.order.len() && self.per_pass >= self.items.len()
    }
}

/// The sweep itself. Patches are run in passes: each pass takes a group of items (positions,
/// heads) at a band of consecutive patched layers, entering each layer's rows where their patch
/// takes effect and carrying them on with the rows that entered earlier. Every row computes only
/// the blocks after its patch, and a pass costs one walk through the blocks.
///
/// When the whole sweep is one pass (small models, where per-op costs dominate), the base run and
/// the source image's run walk at the head of that pass and supply each layer's patches as they
/// go: the sweep is then a single walk. Otherwise they run first, as one batched forward whose
/// values every pass reads.
fn run_sweep(model: &Model, base: &Tensor, source: Source, opts: &PatchOptions, clean: Option<MetricValue>) -> Result<PatchResult> {
    // A sweep's tensors all stay inside it and its result is host values, which is what inference
    // mode asks; on a tiny model it takes ~10% off a sweep that is mostly per-op overhead. It also
    // implies no_grad for everything below. With fast_linear its linear layers run on oneDNN (see
    // models/linear.rs).
    let kernels = if opts.fast_linear { LinearKernels::onednn_for(model.info.device, model.info.kind)? } else { LinearKernels::Aten };
    inference_mode(|| with_linear_kernels(kernels, || run_sweep_here(model, base, source, opts, clean)))
}

fn run_sweep_here(model: &Model, base: &Tensor, source: Source, opts: &PatchOptions, clean: Option<MetricValue>) -> Result<PatchResult> {
    let layers = check(model, opts)?;
    let cfg = &model.vit.cfg;
    let site = opts.what.site();
    let n_layers = cfg.n_layers;
    let (axis_names, dims) = result_axes(model, opts.by, layers.len());
    let layout = Layout::new(model, opts, &layers);
    // The last block can run for the class token alone unless a pattern is patched inside it.
    let cls_only_last = model.vit.head_reads_class_token_only() && !(site == Site::Pattern && layout.order.contains(&(n_layers - 1)));
    let pixels = reference_pixels(model, base, &source)?;
    // Values given up front (ablation), or None: recorded from the source image (row 1).
    let given_values = match source {
        Source::Image(_) => None,
        Source::Values(values) => Some(values),
    };
    let n_items = layout.items.len();
    let mut results: Vec<Vec<MetricValue>> = vec![Vec::with_capacity(n_items); layout.order.len()];
    let mut batched_forwards = 0;
    let reference_metrics = if layout.one_pass() && site != Site::Pattern {
        let plan = SweepPlan { site, by: opts.by, cls_only_last, values: PassValues::Walking { pixels: &pixels, source: given_values } };
        let (logits, row_slots) = run_pass(model, &plan, 0, &layout.order, &layout.items)?;
        batched_forwards += 1;
        let metrics = opts.metric.values(&logits)?;
        let n_reference = pixels.size()[0] as usize;
        file_by_slot(&mut results, &row_slots, &metrics[n_reference..], n_items);
        metrics[..n_reference].to_vec()
    } else {
        let mut points = base_points(&layout.order);
        points.extend(layout.order.iter().map(|&l| HookPoint::block(l, site)));
        let (reference_metrics, recorded) = reference_runs(model, &pixels, &points, &opts.metric, ForwardPlan::default())?;
        let base_values = RowOf { recorded: &recorded, row: 0 };
        let source_values = RowOf { recorded: &recorded, row: 1 };
        let source: &dyn PatchSource = given_values.unwrap_or(&source_values);
        let patch_values =
            layout.order.iter().map(|&l| model.to_model(&source.values(HookPoint::block(l, site))?)).collect::<Result<Vec<Tensor>>>()?;
        let plan = SweepPlan {
            site,
            by: opts.by,
            cls_only_last,
            values: PassValues::Recorded { patch_values: &patch_values, base: &base_values },
        };
        for (first_slot, band_layers, group) in layout.passes() {
            let (logits, row_slots) = run_pass(model, &plan, first_slot, band_layers, group)?;
            batched_forwards += 1;
            file_by_slot(&mut results, &row_slots, &opts.metric.values(&logits)?, group.len());
        }
        reference_metrics
    };
    let metric_of =
        |i: usize| reference_metrics.get(i).cloned().ok_or_else(|| PrismaError::Internal("missing reference-run metric".into()));
    let corrupt = metric_of(0)?;
    let clean = match given_values {
        None => metric_of(1)?,
        Some(_) => clean.unwrap_or_else(|| corrupt.clone()),
    };
    // In the order the layers were asked for.
    let mut value = Vec::with_capacity(layers.len() * n_items);
    let mut prob = Vec::with_capacity(value.capacity());
    for l in &layers {
        let slot = layout.order.binary_search(l).map_err(|_| PrismaError::Internal(format!("layer {l} was not swept")))?;
        value.extend(results[slot].iter().map(|m| m.value));
        prob.extend(results[slot].iter().map(|m| m.prob));
    }
    Ok(PatchResult::of_runs(opts, axis_names, dims, layers, clean, corrupt, value, prob, batched_forwards))
}

/// Files a pass's metrics (its patched rows, `per_slot` at a time, in `row_slots` order) under the
/// slot of the layer each block of rows was patched at.
fn file_by_slot(results: &mut [Vec<MetricValue>], row_slots: &[usize], metrics: &[MetricValue], per_slot: usize) {
    for (slot, block) in row_slots.iter().zip(metrics.chunks(per_slot)) {
        results[*slot].extend_from_slice(block);
    }
}

/// How one layer's patched runs enter the forward.
enum PatchEntry {
    /// Inside block `layer`, with every value before the patch taken from the base run.
    Inside(BlockEntry),
    /// At the input of block `layer + 1` (resid_post, mlp_out).
    AfterBlock(Tensor),
    /// Block `layer` rerun from its input with the patch as a masked intervention (pattern).
    Intervened { resid_pre: Tensor, values: Tensor, mask: Tensor },
}

/// A patch applied inside a block as it runs (the pattern): `values` where `mask` is true, the
/// run's own value elsewhere, both broadcast to the activation, so each row patches its own
/// position and/or head.
struct MaskedPatch {
    point: HookPoint,
    values: Tensor,
    mask: Tensor,
}

impl HookEdit for MaskedPatch {
    fn point(&self) -> HookPoint {
        self.point
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let shape = x.size();
        let values = self.values.f_broadcast_to(shape.as_slice()).map_err(|_| {
            PrismaError::Shape(format!("values of shape {:?} do not broadcast to '{}' of shape {shape:?}", self.values.size(), self.point))
        })?;
        Ok(values.f_where_self(&self.mask, x)?)
    }
}

/// Where a site's patched runs enter block `layer`: inside it (see `patch_entry`), or after it
/// (None). The pattern, which enters through an intervention, has no such point.
fn entry_point(site: Site) -> Option<EntryPoint> {
    match site {
        Site::ResidPre | Site::Q | Site::K | Site::V => Some(EntryPoint::Qkv),
        Site::Z => Some(EntryPoint::Z),
        Site::ResidMid | Site::AttnOut => Some(EntryPoint::ResidMid),
        _ => None,
    }
}

/// Where one pass finds the base run's values and the values it patches in.
enum PassValues<'a> {
    /// Recorded by reference runs made before the passes: per slot (a patched layer's index in
    /// forward order) the values patched in, broadcastable to the site's activation.
    Recorded { patch_values: &'a [Tensor], base: &'a dyn PatchSource },
    /// Recorded on the way by reference rows at the head of the pass, from `pixels`: row 0 the base
    /// image, row 1 the image whose values are patched in, unless `source` supplies them.
    Walking { pixels: &'a Tensor, source: Option<&'a dyn PatchSource> },
}

/// What every pass of one sweep shares.
struct SweepPlan<'a> {
    site: Site,
    by: PatchBy,
    /// Run the last block for the class token's query only.
    cls_only_last: bool,
    values: PassValues<'a>,
}

/// One pass: `group`'s items patched at each layer of `band_layers` (slots `first_slot..`), as one
/// walk through the blocks from the band's first layer (from the embedding when reference rows
/// walk with it). Returns the logits of every row (reference rows first) and the slot of each
/// block of `group.len()` rows, in row order (rows that entered earlier first).
fn run_pass(model: &Model, plan: &SweepPlan, first_slot: usize, band_layers: &[usize], group: &[Item]) -> Result<(Tensor, Vec<usize>)> {
    let none = HookSelection::none();
    let last = model.vit.cfg.n_layers - 1;
    let mask = patch_mask(&plan.site.shape(&model.vit.shape_dims(1)), plan.site.axes(), plan.by, group, model.info.device)?;
    let positions: Vec<i64> = group.iter().map(|(p, _)| p.unwrap_or(0)).collect();
    // Rows inside the forward at the current block's input.
    let (mut carried, first_layer, record) = match &plan.values {
        PassValues::Walking { pixels, .. } => {
            let (_, embedded) = model.vit.forward(ForwardStart::Pixels(pixels), Some(0), &mut HookCtx::new(&none, &[]))?;
            (Some(embedded), 0, base_points(band_layers).into_iter().collect())
        }
        PassValues::Recorded { .. } => (None, band_layers[0], HookSelection::none()),
    };
    let mut row_slots = Vec::with_capacity(band_layers.len());
    for layer in first_layer..=last {
        let cls_only = plan.cls_only_last && layer == last;
        let mut after = None;
        let mut masked_patch = None;
        let entry = match band_layers.binary_search(&layer) {
            Err(_) => carried.take().map(BlockEntry::resid_pre),
            Ok(i) => {
                let slot = first_slot + i;
                row_slots.push(slot);
                let patch = |base: &dyn PatchSource, values: &Tensor| {
                    patch_entry(model, layer, plan.site, plan.by, values, &mask, &positions, base)
                };
                let entry = match &plan.values {
                    PassValues::Recorded { patch_values, base } => patch(*base, &patch_values[slot])?,
                    PassValues::Walking { source, .. } => {
                        let rows = carried.take().ok_or_else(|| PrismaError::Internal("no reference rows in the pass".into()))?;
                        walk_to_patches(model, plan.site, layer, rows, *source, &record, cls_only, &patch)?
                    }
                };
                match entry {
                    PatchEntry::Inside(entry) => Some(match carried.take() {
                        Some(c) => model.vit.layer(layer).join(c, entry, cls_only, &mut HookCtx::new(&none, &[]))?,
                        None => entry,
                    }),
                    PatchEntry::AfterBlock(resid) => {
                        after = Some(resid);
                        carried.take().map(BlockEntry::resid_pre)
                    }
                    PatchEntry::Intervened { resid_pre, values, mask } => {
                        let (resid_pre, mask) = match carried.take() {
                            Some(c) => {
                                // Carried rows pass the intervention unchanged.
                                let mut keep = mask.size();
                                keep[0] = c.size()[0];
                                let untouched = Tensor::f_zeros(keep.as_slice(), (Kind::Bool, mask.device()))?;
                                (Tensor::f_cat(&[&c, &resid_pre], 0)?, Tensor::f_cat(&[&untouched, &mask], 0)?)
                            }
                            None => (resid_pre, mask),
                        };
                        masked_patch = Some(MaskedPatch { point: HookPoint::block(layer, plan.site), values, mask });
                        Some(BlockEntry::resid_pre(resid_pre))
                    }
                }
            }
        };
        if let Some(entry) = entry {
            let ctx = HookCtx::new(&none, &[]);
            let mut ctx = match &masked_patch {
                Some(patch) => ctx.with_edit(patch),
                None => ctx,
            };
            carried = Some(model.vit.layer(layer).run(entry, cls_only, &mut ctx)?);
        }
        if let Some(resid) = after {
            carried = Some(match carried {
                Some(c) => join_after_block(c, resid)?,
                None => resid,
            });
        }
    }
    let resid = carried.ok_or_else(|| PrismaError::Internal("a patching pass ran no rows".into()))?;
    let logits = model.vit.finalize(&resid, &mut HookCtx::new(&none, &[]))?.1;
    Ok((logits, row_slots))
}

/// Rows that have run block `layer` (`ran`) followed by rows that enter after it. After a
/// class-token-only last block only token 0 goes on.
fn join_after_block(ran: Tensor, resid: Tensor) -> Result<Tensor> {
    let resid = if ran.size()[1] == 1 { resid.f_narrow(1, 0, 1)? } else { resid };
    Ok(Tensor::f_cat(&[&ran, &resid], 0)?)
}

/// Brings the carried rows (the walking reference rows first) to where patches at `layer` enter,
/// recording on the way (`record`) the values the patches are made of: the base run's (row 0) and,
/// unless `source` gives them, the patched-in image's (row 1). `patch` builds the patched runs'
/// entry from those values; the carried rows lead it, so nothing is left carried: inside the
/// block they join the patched runs' entry, after it their output of the block leads the patched
/// rows.
#[allow(clippy::too_many_arguments)]
fn walk_to_patches(
    model: &Model,
    site: Site,
    layer: usize,
    rows: Tensor,
    source: Option<&dyn PatchSource>,
    record: &HookSelection,
    cls_only: bool,
    patch: &dyn Fn(&dyn PatchSource, &Tensor) -> Result<PatchEntry>,
) -> Result<PatchEntry> {
    let mut ctx = HookCtx::new(record, &[]);
    let (advanced, after_block) = match entry_point(site) {
        Some(point) => (Some(model.vit.layer(layer).advance(rows, point, cls_only, &mut ctx)?), None),
        None => (None, Some(model.vit.layer(layer).run(BlockEntry::resid_pre(rows), cls_only, &mut ctx)?)),
    };
    let recorded = ctx.recorded;
    let at = HookPoint::block(layer, site);
    let values = match source {
        Some(source) => model.to_model(&source.values(at)?)?,
        None => RowOf { recorded: &recorded, row: 1 }.values(at)?,
    };
    Ok(match (patch(&RowOf { recorded: &recorded, row: 0 }, &values)?, advanced, after_block) {
        (PatchEntry::Inside(entry), Some(advanced), None) => PatchEntry::Inside(advanced.concat(entry, cls_only)?),
        (PatchEntry::AfterBlock(resid), None, Some(ran)) => PatchEntry::AfterBlock(join_after_block(ran, resid)?),
        _ => return Err(PrismaError::Internal(format!("{site:?} patches do not enter where the reference rows wait"))),
    })
}

/// Which values each run of a group patches: [n, ...] over the site's shape (`shape`, for one
/// run, with position and head axes `axes`) with only the batch, position and head axes spelled
/// out (the others broadcast), true at the run's own position/head.
fn patch_mask(shape: &[i64], axes: SiteAxes, by: PatchBy, group: &[Item], device: tch::Device) -> Result<Tensor> {
    let n = group.len() as i64;
    let mut mask_shape = vec![1i64; shape.len()];
    mask_shape[0] = n;
    if let (true, Some(a)) = (by.uses_pos(), axes.pos) {
        mask_shape[a] = shape[a];
    }
    if let (true, Some(a)) = (by.uses_head(), axes.head) {
        mask_shape[a] = shape[a];
    }
    let per_item: i64 = mask_shape[1..].iter().product();
    let mut flags = vec![false; (n * per_item) as usize];
    for (i, (p, h)) in group.iter().enumerate() {
        // Strides of the mask, row-major.
        let mut offset = i as i64 * per_item;
        let mut stride = per_item;
        for (axis, &size) in mask_shape.iter().enumerate().skip(1) {
            stride /= size;
            let index = if Some(axis) == axes.pos && by.uses_pos() {
                p.unwrap_or(0)
            } else if Some(axis) == axes.head && by.uses_head() {
                h.unwrap_or(0)
            } else {
                0
            };
            offset += index * stride;
        }
        flags[offset as usize] = true;
    }
    let mask = Tensor::from_slice(&flags).f_reshape(mask_shape.as_slice())?;
    Ok(if device == tch::Device::Cpu { mask } else { mask.f_to_device(device)? })
}

/// Where and how the runs patched at `layer` enter the forward: the patched value (`values` where
/// `mask`, the base run's elsewhere) plus, from the base run, everything before it in the block.
#[allow(clippy::too_many_arguments)]
fn patch_entry(
    model: &Model,
    layer: usize,
    site: Site,
    by: PatchBy,
    values: &Tensor,
    mask: &Tensor,
    positions: &[i64],
    base: &dyn PatchSource,
) -> Result<PatchEntry> {
    let n = mask.size()[0];
    let base_at = |s: Site| base.values(HookPoint::block(layer, s));
    let expand = |t: &Tensor| -> Result<Tensor> {
        let mut full = t.size();
        full[0] = n;
        Ok(t.f_expand(full.as_slice(), false)?)
    };
    let patched = |s: Site| -> Result<Tensor> {
        let base_value = base_at(s)?;
        let base_size = base_value.size();
        // A base run recorded in a class-token-only last block holds token 0 alone after
        // attention; a source recorded elsewhere (a mean, another image) may hold every token.
        let one_token = base_size.len() > 1 && base_size[1] == 1 && values.dim() == base_size.len() && values.size()[1] > 1;
        let values = if one_token { values.f_narrow(1, 0, 1)? } else { values.shallow_clone() };
        // `where` broadcasts: the mask's n rows give the result its n runs.
        Ok(values.f_where_self(mask, &base_value)?)
    };
    Ok(match site {
        Site::ResidPre if by == PatchBy::LayerPos => {
            let base_qkv = [base_at(Site::Q)?, base_at(Site::K)?, base_at(Site::V)?];
            PatchEntry::Inside(model.vit.layer(layer).qkv_entry_at(&patched(Site::ResidPre)?, positions, base_qkv)?)
        }
        Site::ResidPost => PatchEntry::AfterBlock(patched(Site::ResidPost)?),
        Site::MlpOut => PatchEntry::AfterBlock(expand(&base_at(Site::ResidMid)?)?.f_add(&patched(Site::MlpOut)?)?),
        Site::ResidMid => PatchEntry::Inside(BlockEntry::ResidMid(patched(Site::ResidMid)?)),
        Site::AttnOut => PatchEntry::Inside(BlockEntry::ResidMid(expand(&base_at(Site::ResidPre)?)?.f_add(&patched(Site::AttnOut)?)?)),
        Site::Z => PatchEntry::Inside(BlockEntry::Z { resid_pre: expand(&base_at(Site::ResidPre)?)?, z: patched(Site::Z)? }),
        Site::Q | Site::K | Site::V => {
            let pick = |s: Site| -> Result<Tensor> {
                if s == site {
                    patched(s)
                } else {
                    expand(&base_at(s)?)
                }
            };
            PatchEntry::Inside(BlockEntry::Qkv {
                resid_pre: expand(&base_at(Site::ResidPre)?)?,
                q: pick(Site::Q)?,
                k: pick(Site::K)?,
                v: pick(Site::V)?,
            })
        }
        // Anything else (the pattern): rerun the block from its input with a masked intervention.
        _ => PatchEntry::Intervened {
            resid_pre: expand(&base_at(Site::ResidPre)?)?,
            values: values.shallow_clone(),
            mask: mask.shallow_clone(),
        },
    })
}

/// Runs `pixels` once, recording `points`; returns the metric and the recorded values.
pub fn reference_run(
    model: &Model,
    pixels: &Tensor,
    points: &[HookPoint],
    metric: &MetricSpec,
    plan: ForwardPlan,
) -> Result<(MetricValue, Recorded)> {
    let (metrics, recorded) = reference_runs(model, pixels, points, metric, plan)?;
    let m = metrics.into_iter().next().ok_or_else(|| PrismaError::Internal("empty batch".into()))?;
    Ok((m, recorded))
}

/// `reference_run` over a batch: the metric of every image, and the values recorded at `points`
/// for the whole batch.
fn reference_runs(
    model: &Model,
    pixels: &Tensor,
    points: &[HookPoint],
    metric: &MetricSpec,
    plan: ForwardPlan,
) -> Result<(Vec<MetricValue>, Recorded)> {
    let (logits, recorded) = recorded_run(model, pixels, points, plan)?;
    Ok((metric.values(&logits)?, recorded))
}

/// One forward of `pixels` without gradients: its logits, and the values at `points` for the
/// whole batch.
pub(crate) fn recorded_run(model: &Model, pixels: &Tensor, points: &[HookPoint], plan: ForwardPlan) -> Result<(Tensor, Recorded)> {
    let pixels = model.to_model(pixels)?;
    let record: HookSelection = points.iter().copied().collect();
    tch::no_grad(|| {
        let mut ctx = HookCtx::new(&record, &[]);
        let (_, logits) = model.vit.forward_planned(ForwardStart::Pixels(&pixels), None, plan, &mut ctx)?;
        Ok((logits, ctx.recorded))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every (layer, item) of a sweep is in exactly one pass; a pass takes consecutive patched
    /// layers in forward order and, at each, one group of items; its first slot is its first
    /// layer's place in that order.
    #[test]
    fn passes_cover_every_patch_once() {
        for (by, rows) in [
            (PatchBy::LayerPos, 1),
            (PatchBy::LayerPos, 7),
            (PatchBy::LayerHead, 7),
            (PatchBy::LayerPosHead, 40),
            (PatchBy::LayerHead, 256),
        ] {
            let layout = Layout::of(by, 17, 4, &[5, 0, 3, 3, 11], rows);
            assert_eq!(layout.order, vec![0, 3, 5, 11]);
            let mut seen = BTreeSet::new();
            let mut n_passes = 0;
            for (first_slot, layers, group) in layout.passes() {
                n_passes += 1;
                assert_eq!(layout.order[first_slot], layers[0], "{by:?} {rows}");
                assert_eq!(&layout.order[first_slot..first_slot + layers.len()], layers);
                assert!(layers.len() * group.len() <= rows, "{by:?} {rows}: pass of {} x {}", layers.len(), group.len());
                for &l in layers {
                    for item in group {
                        assert!(seen.insert((l, *item)), "{by:?} {rows}: ({l}, {item:?}) twice");
                    }
                }
            }
            assert_eq!(seen.len(), layout.order.len() * layout.items.len(), "{by:?} {rows}");
            assert_eq!(layout.one_pass(), n_passes == 1, "{by:?} {rows}");
        }
        // Items per layer: positions, heads, or both (position-major).
        assert_eq!(Layout::of(PatchBy::LayerPos, 3, 2, &[0], 8).items, vec![(Some(0), None), (Some(1), None), (Some(2), None)]);
        assert_eq!(
            Layout::of(PatchBy::LayerPosHead, 2, 2, &[0], 8).items[..3],
            [(Some(0), Some(0)), (Some(0), Some(1)), (Some(1), Some(0))]
        );
    }

    /// Each row of a mask is true at exactly its own item, along the site's position and head axes
    /// wherever the site keeps them.
    #[test]
    fn patch_masks_pick_each_rows_item() {
        let group: Vec<Item> = vec![(Some(0), Some(1)), (Some(3), Some(0)), (Some(4), Some(2))];
        // (site, by): the mask's shape and where row i's single true value sits.
        for (site, by, mask_shape) in [
            (Site::ResidPost, PatchBy::LayerPos, vec![3, 5, 1]),
            (Site::Z, PatchBy::LayerPosHead, vec![3, 5, 3, 1]),
            (Site::Z, PatchBy::LayerHead, vec![3, 1, 3, 1]),
            (Site::Pattern, PatchBy::LayerPosHead, vec![3, 3, 5, 1]),
            (Site::Pattern, PatchBy::LayerHead, vec![3, 3, 1, 1]),
        ] {
            let dims = crate::hooks::ShapeDims {
                batch: 1,
                pos: 5,
                embed_tokens: 4,
                d_model: 6,
                n_heads: 3,
                d_head: 2,
                d_mlp: 8,
                embed_dim: 6,
                n_classes: 2,
                pooled_final_norm: false,
            };
            let mask = patch_mask(&site.shape(&dims), site.axes(), by, &group, tch::Device::Cpu).unwrap();
            assert_eq!(mask.size(), mask_shape, "{site:?} {by:?}");
            let axes = site.axes();
            for (i, (p, h)) in group.iter().enumerate() {
                let row = mask.get(i as i64);
                assert_eq!(row.sum(tch::Kind::Int64).int64_value(&[]), 1, "{site:?} {by:?} row {i}");
                let mut at = vec![0i64; mask_shape.len() - 1];
                if let (true, Some(a)) = (by.uses_pos(), axes.pos) {
                    at[a - 1] = p.unwrap();
                }
                if let (true, Some(a)) = (by.uses_head(), axes.head) {
                    at[a - 1] = h.unwrap();
                }
                assert!(row.to_kind(tch::Kind::Int64).int64_value(&at) == 1, "{site:?} {by:?} row {i}: not at {at:?}");
            }
        }
    }
}
