//! One batched activation-patching engine for every TransformerLens `get_act_patch_*` family.
//!
//! Each patched run starts at the patched layer from the cached corrupted residual, so earlier
//! layers are never recomputed, and many patches (one per batch entry, each with its own
//! position/head mask) share one forward. Ablation sweeps use the same engine with a different
//! source of values (zeros, a mean, another image) instead of the clean run.

use super::metric::{normalise, MetricSpec, MetricValue};
use super::{model_pixels, require_head};
use crate::error::{PrismaError, Result};
use crate::hooks::{HookCtx, HookPoint, HookSelection, Site};
use crate::interventions::Intervention;
use crate::model::Model;
use crate::models::vit::{BlockEntry, ForwardPlan, ForwardStart};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchOptions {
    pub what: PatchWhat,
    pub by: PatchBy,
    #[serde(flatten)]
    pub metric: MetricSpec,
    /// Most patched runs (rows) in one batched block; default sized to keep activations near 128 MB.
    pub chunk: Option<usize>,
    /// Restrict to these layers (default: all).
    pub layers: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize)]
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
    require_head(model, "patching")?;
    opts.metric.check(model.vit.cfg.n_classes)?;
    let site = opts.what.site();
    if opts.by.uses_head() && site.axes().head.is_none() {
        return Err(PrismaError::Argument(format!(
            "--what {:?} has no heads; use --by layer,pos (or a head_* site)",
            opts.what
        )));
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
pub fn sweep(model: &Model, base: &Tensor, source: &dyn PatchSource, opts: &PatchOptions, clean: Option<MetricValue>) -> Result<PatchResult> {
    let layers = check(model, opts)?;
    let (base_run, _) = base_runs(model, base, None, &opts.metric)?;
    sweep_from(model, &layers, base_run, source, opts, clean)
}

/// Activation patching: clean activations patched into the corrupted run (TransformerLens's
/// convention), normalised so that corrupted = 0 and clean = 1.
pub fn activation_patching(model: &Model, clean: &Tensor, corrupt: &Tensor, opts: &PatchOptions) -> Result<PatchResult> {
    let layers = check(model, opts)?;
    let points: Vec<HookPoint> = layers.iter().map(|&l| HookPoint::block(l, opts.what.site())).collect();
    let (base_run, clean_run) = base_runs(model, corrupt, Some((clean, &points)), &opts.metric)?;
    let (clean_metric, clean_cache) = clean_run.ok_or_else(|| PrismaError::Internal("the clean run was not recorded".into()))?;
    sweep_from(model, &layers, base_run, &clean_cache, opts, Some(clean_metric))
}

/// A reference run's metric and the values it kept.
type RecordedRun = (MetricValue, CachedSource);

/// What a patched run may start from: the base run's value at every block site.
const BASE_SITES: [Site; 9] = [Site::ResidPre, Site::Q, Site::K, Site::V, Site::Z, Site::AttnOut, Site::ResidMid, Site::MlpOut, Site::ResidPost];

/// The base (corrupted) run and, when given, the run that supplies the patched values (clean, kept
/// at `points`), as one batched forward: one pass of fixed per-op costs instead of two, which is
/// most of a small model's sweep.
fn base_runs(
    model: &Model,
    base: &Tensor,
    reference: Option<(&Tensor, &[HookPoint])>,
    metric: &MetricSpec,
) -> Result<(RecordedRun, Option<RecordedRun>)> {
    let single = |t: &Tensor, what: &str| -> Result<()> {
        if t.size().first() != Some(&1) {
            return Err(PrismaError::Shape(format!("patching takes exactly one {what} image")));
        }
        Ok(())
    };
    let base = model_pixels(model, base)?;
    single(&base, "base")?;
    let mut record = HookSelection::none();
    for l in 0..model.vit.cfg.n_layers {
        BASE_SITES.iter().for_each(|s| record.insert(HookPoint::block(l, *s)));
    }
    let pixels = match reference {
        Some((reference, points)) => {
            let reference = model_pixels(model, reference)?;
            single(&reference, "clean")?;
            if reference.size() != base.size() {
                return Err(PrismaError::Shape(format!(
                    "the clean and corrupted inputs differ in shape ({:?} vs {:?})",
                    reference.size(),
                    base.size()
                )));
            }
            points.iter().for_each(|p| record.insert(*p));
            Tensor::f_cat(&[&base, &reference], 0)?
        }
        None => base,
    };
    let mut recorded = Vec::new();
    let metrics = tch::no_grad(|| -> Result<Vec<MetricValue>> {
        let mut ctx = HookCtx::new(&record, &[]);
        let (_, logits) = model.vit.forward(ForwardStart::Pixels(&pixels), None, &mut ctx)?;
        recorded = ctx.recorded;
        metric.values(&logits)
    })?;
    let row = |i: i64, keep: &dyn Fn(&HookPoint) -> bool| -> Result<CachedSource> {
        let values = recorded.iter().filter(|(p, _)| keep(p)).map(|(p, t)| Ok((*p, t.f_narrow(0, i, 1)?))).collect::<Result<Vec<_>>>()?;
        Ok(CachedSource(values))
    };
    let metric_of = |i: usize| metrics.get(i).cloned().ok_or_else(|| PrismaError::Internal("missing base-run metric".into()));
    let base_run = (metric_of(0)?, row(0, &|p| BASE_SITES.contains(&p.site))?);
    let reference_run = match reference {
        Some((_, points)) => Some((metric_of(1)?, row(1, &|p| points.contains(p))?)),
        None => None,
    };
    Ok((base_run, reference_run))
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

/// The sweep itself. Patches are run in passes: each pass takes a group of items (positions,
/// heads) at a band of consecutive patched layers, entering each layer's rows where their patch
/// takes effect and carrying them on with the rows that entered earlier. Every row computes only
/// the blocks after its patch, and a pass costs one walk through the blocks: on small models, where
/// per-op costs dominate, the whole sweep is one pass.
fn sweep_from(
    model: &Model,
    layers: &[usize],
    (base_metric, base): RecordedRun,
    source: &dyn PatchSource,
    opts: &PatchOptions,
    clean: Option<MetricValue>,
) -> Result<PatchResult> {
    let cfg = &model.vit.cfg;
    let site = opts.what.site();
    let n_layers = cfg.n_layers;
    let (n_pos, n_heads) = (cfg.n_pos(), cfg.n_heads);
    let (axis_names, dims) = result_axes(model, opts.by, layers.len());
    // Items within a layer: (pos, head), row-major.
    let items: Vec<(Option<i64>, Option<i64>)> = match opts.by {
        PatchBy::LayerPos => (0..n_pos).map(|p| (Some(p), None)).collect(),
        PatchBy::LayerHead => (0..n_heads).map(|h| (None, Some(h))).collect(),
        PatchBy::LayerPosHead => (0..n_pos).flat_map(|p| (0..n_heads).map(move |h| (Some(p), Some(h)))).collect(),
    };
    // Patched layers in forward order.
    let mut order = layers.to_vec();
    order.sort_unstable();
    order.dedup();
    let rows_per_block = opts.chunk.unwrap_or_else(|| {
        let per_run = (n_pos * cfg.d_mlp.max(cfg.d_model * 4) * 4 * 3).max(1) as usize;
        // ~128 MB of activations per batched block: measured fastest on ViT-B (chunk 16 vs 36: -12%).
        ((128usize << 20) / per_run).clamp(1, 256)
    });
    // A pass takes up to `per_pass` items at each of `band` consecutive patched layers, so its last
    // blocks hold at most about `rows_per_block` rows. Big models get one layer per pass with many
    // items (the GEMMs are what costs); small models get every layer in one pass.
    let per_pass = rows_per_block.min(items.len()).max(1);
    let band = (rows_per_block / per_pass).max(1);
    // The last block can run for the class token alone unless a pattern is patched inside it.
    let cls_only_last = model.vit.head_reads_class_token_only() && !(site == Site::Pattern && order.contains(&(n_layers - 1)));
    let patch_values = order
        .iter()
        .map(|&l| Ok(source.values(HookPoint::block(l, site))?.f_to_kind(model.info.kind)?.f_to_device(model.info.device)?))
        .collect::<Result<Vec<Tensor>>>()?;

    let plan = SweepPlan { site, by: opts.by, cls_only_last, patch_values: &patch_values, base: &base };
    let mut results: Vec<Vec<MetricValue>> = vec![Vec::with_capacity(items.len()); order.len()];
    let mut batched_forwards = 0;
    let passes = order.chunks(band).enumerate().flat_map(|(b, layers)| items.chunks(per_pass).map(move |group| (b * band, layers, group)));
    for (first_slot, band_layers, group) in passes {
        let n = group.len();
        let (logits, row_slots) = tch::no_grad(|| run_pass(model, &plan, first_slot, band_layers, group))?;
        batched_forwards += 1;
        let metrics = opts.metric.values(&logits)?;
        for (slot, block) in row_slots.iter().zip(metrics.chunks(n)) {
            results[*slot].extend_from_slice(block);
        }
    }
    // In the order the layers were asked for.
    let mut value = Vec::with_capacity(layers.len() * items.len());
    let mut prob = Vec::with_capacity(value.capacity());
    for l in layers {
        let slot = order.binary_search(l).map_err(|_| PrismaError::Internal(format!("layer {l} was not swept")))?;
        value.extend(results[slot].iter().map(|m| m.value));
        prob.extend(results[slot].iter().map(|m| m.prob));
    }
    let corrupt = base_metric;
    let clean = clean.unwrap_or_else(|| corrupt.clone());
    let normalised = value.iter().map(|v| normalise(*v, clean.value, corrupt.value)).collect();
    Ok(PatchResult {
        what: opts.what,
        by: opts.by,
        axes: axis_names,
        dims,
        layers: layers.to_vec(),
        clean,
        corrupt,
        patched_runs: value.len(),
        value,
        prob,
        normalised,
        batched_forwards,
    })
}

/// What every pass of one sweep shares.
struct SweepPlan<'a> {
    site: Site,
    by: PatchBy,
    /// Run the last block for the class token's query only.
    cls_only_last: bool,
    /// Per slot (a patched layer's index in forward order), the values patched in (broadcastable
    /// to the site's activation).
    patch_values: &'a [Tensor],
    base: &'a CachedSource,
}

/// One pass: `group`'s items patched at each layer of `band_layers` (slots `first_slot..`), as one
/// walk through the blocks from the band's first layer. Returns the logits of every row and the
/// slot of each block of `group.len()` rows, in row order (rows that entered earlier first).
fn run_pass(
    model: &Model,
    plan: &SweepPlan,
    first_slot: usize,
    band_layers: &[usize],
    group: &[(Option<i64>, Option<i64>)],
) -> Result<(Tensor, Vec<usize>)> {
    let none = HookSelection::none();
    let last = model.vit.cfg.n_layers - 1;
    let mask = patch_mask(model, plan.site, plan.by, group)?;
    let positions: Vec<i64> = group.iter().map(|(p, _)| p.unwrap_or(0)).collect();
    // Rows inside the forward at the current block's input.
    let mut carried: Option<Tensor> = None;
    let mut row_slots = Vec::with_capacity(band_layers.len());
    for layer in band_layers[0]..=last {
        let cls_only = plan.cls_only_last && layer == last;
        let mut after = None;
        let mut interventions = Vec::new();
        let entry = match band_layers.binary_search(&layer) {
            Err(_) => carried.take().map(BlockEntry::resid_pre),
            Ok(i) => {
                let slot = first_slot + i;
                row_slots.push(slot);
                match patch_entry(model, layer, plan.site, plan.by, &plan.patch_values[slot], &mask, &positions, plan.base)? {
                    PatchEntry::Inside(entry) => Some(match carried.take() {
                        Some(c) => model.vit.join(layer, c, entry, cls_only, &mut HookCtx::new(&none, &[]))?,
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
                        interventions.push(Intervention::masked_set(HookPoint::block(layer, plan.site), values, mask));
                        Some(BlockEntry::resid_pre(resid_pre))
                    }
                }
            }
        };
        if let Some(entry) = entry {
            let mut ctx = HookCtx::new(&none, &interventions);
            carried = Some(model.vit.block(layer, entry, cls_only, &mut ctx)?);
        }
        if let Some(resid) = after {
            carried = Some(match carried {
                Some(c) => {
                    // After a class-token-only last block only token 0 is carried.
                    let resid = if c.size()[1] == 1 { resid.f_narrow(1, 0, 1)? } else { resid };
                    Tensor::f_cat(&[&c, &resid], 0)?
                }
                None => resid,
            });
        }
    }
    let resid = carried.ok_or_else(|| PrismaError::Internal("a patching pass ran no rows".into()))?;
    let logits = model.vit.finalize(&resid, &mut HookCtx::new(&none, &[]))?.1;
    Ok((logits, row_slots))
}

/// Which values each run of a group patches: [n, ...] over the site's shape with only the batch,
/// position and head axes spelled out (the others broadcast), true at the run's own position/head.
fn patch_mask(model: &Model, site: Site, by: PatchBy, group: &[(Option<i64>, Option<i64>)]) -> Result<Tensor> {
    let axes = site.axes();
    let shape = model.vit.hook_shape(HookPoint::block(0, site), 1);
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
    let mut flags = vec![0u8; (n * per_item) as usize];
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
        flags[offset as usize] = 1;
    }
    Ok(Tensor::from_slice(&flags).f_to_kind(Kind::Bool)?.f_reshape(mask_shape.as_slice())?.f_to_device(model.info.device)?)
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
    base: &CachedSource,
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
        let mut full = base_value.size();
        full[0] = n;
        Ok(values.f_broadcast_to(full.as_slice())?.f_where_self(mask, &base_value.f_expand(full.as_slice(), false)?)?)
    };
    Ok(match site {
        Site::ResidPre if by == PatchBy::LayerPos => PatchEntry::Inside(resid_pre_entry(model, layer, &patched(Site::ResidPre)?, positions, base)?),
        Site::ResidPost => PatchEntry::AfterBlock(patched(Site::ResidPost)?),
        Site::MlpOut => PatchEntry::AfterBlock(expand(&base_at(Site::ResidMid)?)?.f_add(&patched(Site::MlpOut)?)?),
        Site::ResidMid => PatchEntry::Inside(BlockEntry::ResidMid(patched(Site::ResidMid)?)),
        Site::AttnOut => PatchEntry::Inside(BlockEntry::ResidMid(expand(&base_at(Site::ResidPre)?)?.f_add(&patched(Site::AttnOut)?)?)),
        Site::Z => PatchEntry::Inside(BlockEntry::Z { resid_pre: expand(&base_at(Site::ResidPre)?)?, z: patched(Site::Z)? }),
        Site::Q | Site::K | Site::V => {
            let pick = |s: Site| -> Result<Tensor> { if s == site { patched(s) } else { expand(&base_at(s)?) } };
            PatchEntry::Inside(BlockEntry::Qkv { resid_pre: expand(&base_at(Site::ResidPre)?)?, q: pick(Site::Q)?, k: pick(Site::K)?, v: pick(Site::V)? })
        }
        // Anything else (the pattern): rerun the block from its input with a masked intervention.
        _ => PatchEntry::Intervened { resid_pre: expand(&base_at(Site::ResidPre)?)?, values: values.shallow_clone(), mask: mask.shallow_clone() },
    })
}

/// Runs `pixels` once, recording `points`; returns the metric and the recorded values.
pub fn reference_run(
    model: &Model,
    pixels: &Tensor,
    points: &[HookPoint],
    metric: &MetricSpec,
    plan: ForwardPlan,
) -> Result<(MetricValue, Vec<(HookPoint, Tensor)>)> {
    let pixels = model_pixels(model, pixels)?;
    let mut record = HookSelection::none();
    for p in points {
        record.insert(*p);
    }
    tch::no_grad(|| {
        let mut ctx = HookCtx::new(&record, &[]);
        let (_, logits) = model.vit.forward_planned(ForwardStart::Pixels(&pixels), None, plan, &mut ctx)?;
        let m = metric.values(&logits)?.into_iter().next().ok_or_else(|| PrismaError::Internal("empty batch".into()))?;
        Ok((m, ctx.recorded))
    })
}

/// Entering block `layer` after patching one position per run in its input: every other position's
/// q, k and v are the base run's, so only the patched rows go through ln1 and the projections.
fn resid_pre_entry(model: &Model, layer: usize, resid: &Tensor, positions: &[i64], base: &CachedSource) -> Result<BlockEntry> {
    let cfg = &model.vit.cfg;
    let w = &model.vit.weights.blocks[layer];
    let n = positions.len() as i64;
    let device = model.info.device;
    let rows_idx = Tensor::from_slice(&(0..n).collect::<Vec<i64>>()).f_to_device(device)?;
    let pos_idx = Tensor::from_slice(positions).f_to_device(device)?;
    let rows = resid.f_index(&[Some(&rows_idx), Some(&pos_idx)])?; // [n, d]
    let x = rows.f_layer_norm([cfg.d_model].as_slice(), Some(&w.ln1.weight), Some(&w.ln1.bias), cfg.layer_norm_eps, true)?;
    let qkv = x.f_linear(&w.w_qkv, w.b_qkv.as_ref())?.f_split(cfg.d_model, -1)?;
    let mut out = Vec::with_capacity(3);
    for (part, site) in qkv.iter().zip([Site::Q, Site::K, Site::V]) {
        let full = base.values(HookPoint::block(layer, site))?;
        let mut size = full.size();
        size[0] = n;
        let mut t = full.f_expand(size.as_slice(), false)?.f_contiguous()?;
        let _ = t.f_index_put_(&[Some(&rows_idx), Some(&pos_idx)], &part.f_reshape([n, cfg.n_heads, cfg.d_head].as_slice())?, false)?;
        out.push(t);
    }
    let [q, k, v]: [Tensor; 3] = out.try_into().map_err(|_| PrismaError::Internal("qkv".into()))?;
    Ok(BlockEntry::Qkv { resid_pre: resid.shallow_clone(), q, k, v })
}
