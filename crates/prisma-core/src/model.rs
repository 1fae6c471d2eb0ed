//! The family-agnostic handle the binding and tests use: load a folder, list hooks, run.

use crate::device::{device_name, dtype_name, parse_device, parse_dtype};
use crate::error::{PrismaError, Result};
use crate::hooks::splice::SpliceTarget;
use crate::hooks::{resolve_point, HookCtx, HookPoint, HookSelection, Site, SiteAxes, Splice, SpliceSpec, Tower};
use crate::interventions::{parse_specs, Intervention, InterventionSpec};
use crate::models::text::HookedTextEncoder;
use crate::models::vit::{normalize_rows, ForwardPlan, ForwardStart, Head, HookedViT};
use crate::weights::family::{load_dir, LoadOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub family: String,
    pub architecture: String,
    pub source_format: String,
    pub model_dir: PathBuf,
    pub config_json: String,
    pub n_params: i64,
    pub labels: Vec<String>,
    pub unexpected_tensors: Vec<String>,
    pub device: Device,
    pub kind: Kind,
}

/// The text prompts a CLIP-style model currently classifies against: `per_label` prompts for each
/// label, label-major (every template of label 0, then of label 1, ...).
pub struct ClassPrompts {
    pub prompts: Vec<String>,
    pub per_label: usize,
    /// [prompts, tokens] token ids and attention mask, as fed to the text tower.
    pub ids: Tensor,
    pub attention_mask: Tensor,
}

pub struct Model {
    pub info: ModelInfo,
    pub vit: HookedViT,
    pub text: Option<HookedTextEncoder>,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub class_prompts: Option<ClassPrompts>,
    /// Modules spliced into every forward of `run` (see `Model::splice`).
    splices: Vec<Splice>,
}

/// One forward request. `pixels` is [B, C, H, W] (or [B, T, C, H, W] for video) float32 on the
/// CPU; it is moved to the model.
#[derive(Default)]
pub struct RunRequest {
    pub pixels: Option<Tensor>,
    pub cache: Vec<String>,
    pub stop_at_layer: Option<usize>,
    pub start_at_layer: Option<usize>,
    pub start_resid: Option<Tensor>,
    pub interventions: Vec<InterventionSpec>,
    pub tensors: HashMap<String, Tensor>,
    /// Modules spliced into this run only, after those of `Model::splice`.
    pub splices: Vec<SpliceSpec>,
}

pub struct RunOutput {
    pub output_name: HookPoint,
    pub output: Tensor,
    pub cache: Vec<(HookPoint, Tensor)>,
}

impl Model {
    pub fn load(dir: &Path, device: &str, dtype: &str) -> Result<Model> {
        Self::load_with(dir, device, dtype, &LoadOptions::default())
    }

    pub fn load_with(dir: &Path, device: &str, dtype: &str, opts: &LoadOptions) -> Result<Model> {
        let device = parse_device(device)?;
        let kind = parse_dtype(dtype)?;
        let loaded = load_dir(dir, kind, device, opts)?;
        let tokenizer = match &loaded.tokenizer {
            Some(path) => Some(
                tokenizers::Tokenizer::from_file(path)
                    .map_err(|e| PrismaError::Config { path: path.clone(), reason: format!("not a tokenizers tokenizer.json: {e}") })?,
            ),
            None => None,
        };
        let info = ModelInfo {
            family: loaded.family.into(),
            architecture: loaded.architecture,
            source_format: loaded.source_format.into(),
            model_dir: dir.into(),
            config_json: loaded.config_json,
            n_params: loaded.n_params,
            labels: loaded.labels,
            unexpected_tensors: loaded.unexpected,
            device,
            kind,
        };
        Ok(Model { info, vit: loaded.vit, text: loaded.text, tokenizer, class_prompts: None, splices: Vec::new() })
    }

    /// Gives a headless model (e.g. a DINOv2 backbone) a linear probe on its pooled, normalised
    /// output: `weight` [C, d] and `bias` [C] from a .safetensors/.npy file (names `weight`/`bias`,
    /// or `head.*` / `classifier.*`). Every technique then reads the probe's logits.
    pub fn set_linear_probe(&mut self, path: &Path, labels: Option<Vec<String>>) -> Result<()> {
        if !matches!(self.vit.weights.head, Head::None) {
            return Err(PrismaError::Argument(format!(
                "{} already has a head; --probe is for backbones without one",
                self.info.model_dir.display()
            )));
        }
        let tensors: HashMap<String, Tensor> = crate::tensor_file::read_tensor_file(path)?.into_iter().collect();
        let pick = |names: &[&str]| names.iter().find_map(|n| tensors.get(*n)).map(Tensor::shallow_clone);
        let bad = |reason: String| PrismaError::TensorFile { path: path.into(), reason };
        let weight =
            pick(&["weight", "head.weight", "classifier.weight"]).ok_or_else(|| bad("no 'weight' tensor [classes, d_model]".into()))?;
        let d = self.vit.cfg.d_model;
        let size = weight.size();
        if size.len() != 2 || size[1] != d || size[0] < 1 {
            return Err(bad(format!("probe weight has shape {size:?}, expected [classes, {d}]")));
        }
        let n = size[0];
        let bias = match pick(&["bias", "head.bias", "classifier.bias"]) {
            Some(b) if b.size() == [n] => b,
            Some(b) => return Err(bad(format!("probe bias has shape {:?}, expected [{n}]", b.size()))),
            None => Tensor::f_zeros([n].as_slice(), (Kind::Float, Device::Cpu))?,
        };
        let labels = match labels {
            Some(l) if l.len() as i64 == n => l,
            Some(l) => return Err(PrismaError::Argument(format!("{} labels given for a probe with {n} classes", l.len()))),
            None => (0..n).map(|i| format!("LABEL_{i}")).collect(),
        };
        self.vit.weights.head = Head::Classifier { weight: self.to_model(&weight)?, bias: self.to_model(&bias)? };
        self.vit.cfg.n_classes = n;
        self.info.labels = labels;
        Ok(())
    }

    fn text_tower(&self) -> Result<&HookedTextEncoder> {
        self.text.as_ref().ok_or_else(|| {
            PrismaError::Argument(format!(
                "{} has no text tower ({}); text prompts need a CLIP-style model",
                self.info.model_dir.display(),
                self.info.architecture
            ))
        })
    }

    /// Token ids [B, T] and attention mask [B, T] for prompts, with the folder's tokenizer.json
    /// (start/end-of-text added by its post-processor; too-long prompts keep their last token, the
    /// end-of-text, as the reference tokenizers do when truncating).
    pub fn tokenize(&self, prompts: &[String]) -> Result<(Tensor, Tensor)> {
        let text = self.text_tower()?;
        let tokenizer = self.tokenizer.as_ref().ok_or_else(|| PrismaError::ModelDir {
            path: self.info.model_dir.clone(),
            reason: "no tokenizer.json next to the weights (needed to encode text prompts)".into(),
        })?;
        if prompts.is_empty() {
            return Err(PrismaError::Argument("no text prompts given".into()));
        }
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id as i64)
            .or_else(|| tokenizer.token_to_id("<|endoftext|>").map(|i| i as i64))
            .unwrap_or(0);
        crate::models::text::encode_texts(tokenizer, prompts, text.cfg.max_positions, text.cfg.pad_to, pad_id, false)
    }

    /// logit_scale × normalised text embeddings: the class directions image embeddings are scored on.
    /// Class directions [C, proj] from the prompts' text embeddings [C·per_label, proj]: each
    /// prompt's unit embedding, averaged over a label's prompts and renormalised (CLIP's prompt
    /// ensembling, as open_clip's `build_zero_shot_classifier`), times logit_scale.
    fn class_directions(&self, text_embeds: &Tensor, per_label: usize) -> Result<Tensor> {
        let unit = normalize_rows(text_embeds)?;
        let classes = if per_label > 1 {
            let size = unit.size();
            let grouped = unit.f_reshape([size[0] / per_label as i64, per_label as i64, size[1]].as_slice())?;
            normalize_rows(&grouped.f_mean_dim([1i64].as_slice(), false, None::<Kind>)?)?
        } else {
            unit
        };
        Ok(classes.f_mul_scalar(self.text_tower()?.weights.logit_scale)?)
    }

    /// Makes a CLIP-style model a classifier over text prompts: label `i` is scored with
    /// `prompts[i·k .. (i+1)·k]`, k = prompts / labels (k > 1 averages the prompts' embeddings).
    /// Every technique then reads logits = logit_scale · cos(image, class direction).
    pub fn set_class_prompts(&mut self, labels: Vec<String>, prompts: Vec<String>) -> Result<()> {
        if labels.is_empty() || prompts.is_empty() || !prompts.len().is_multiple_of(labels.len()) {
            return Err(PrismaError::Argument(format!(
                "{} prompts for {} labels: give the same number of prompts (one per template) for every label",
                prompts.len(),
                labels.len()
            )));
        }
        let per_label = prompts.len() / labels.len();
        let (ids, attention_mask) = self.tokenize(&prompts)?;
        let selection = HookSelection::none();
        let mut ctx = HookCtx::new(&selection, &[]);
        let embeds = tch::no_grad(|| self.text_tower()?.forward(&ids, &attention_mask, &mut ctx))?;
        let classes = self.class_directions(&embeds, per_label)?;
        let Head::Contrastive { classes: slot, .. } = &mut self.vit.weights.head else {
            return Err(PrismaError::Argument("only CLIP-style models take text prompts as classes".into()));
        };
        *slot = Some(classes);
        self.vit.cfg.n_classes = labels.len() as i64;
        self.info.labels = labels;
        self.class_prompts = Some(ClassPrompts { prompts, per_label, ids, attention_mask });
        Ok(())
    }

    /// Intra-op threads for work on this model: one for tiny models, where thread synchronisation
    /// costs more than it saves (docs/benchmarks.md, "Measurements behind choices in the code"),
    /// else libtorch's default. libtorch's setting is process-wide, so callers set it per call.
    pub fn use_threads(&self) {
        static DEFAULT: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
        let default = *DEFAULT.get_or_init(tch::get_num_threads);
        let c = &self.vit.cfg;
        let flops_per_layer = c.n_pos() * c.d_model * (4 * c.d_model + 2 * c.d_mlp);
        let threads = if flops_per_layer < 10_000_000 { 1 } else { default };
        if tch::get_num_threads() != threads {
            tch::set_num_threads(threads);
        }
    }

    pub fn device_name(&self) -> String {
        device_name(self.info.device)
    }
    pub fn dtype_name(&self) -> &'static str {
        dtype_name(self.info.kind)
    }

    /// Every hook point: the text tower's first (it runs first in a CLIP forward), then the vision
    /// tower and head, with the sub-hooks of spliced modules after the points they hang off.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        self.hook_points_with(&self.splices.iter().collect::<Vec<_>>())
    }

    /// The model's own points (no sub-hooks).
    fn base_points(&self) -> Vec<HookPoint> {
        let mut points = self.text.as_ref().map(|t| t.hook_points()).unwrap_or_default();
        points.extend(self.vit.hook_points());
        points
    }

    fn hook_points_with(&self, splices: &[&Splice]) -> Vec<HookPoint> {
        let mut points = Vec::new();
        for point in self.base_points() {
            points.push(point);
            for splice in splices {
                points.extend(splice.sub_hooks().filter(|p| p.sub.is_some_and(|s| splice.visited_at(s) == point)));
            }
        }
        points
    }

    /// Shapes for a batch of `batch` images; text-tower shapes are for the current class prompts.
    pub fn hook_shape(&self, point: HookPoint, batch: i64) -> Vec<i64> {
        self.hook_shape_with(point, batch, &self.splices.iter().collect::<Vec<_>>())
    }

    fn hook_shape_with(&self, point: HookPoint, batch: i64, splices: &[&Splice]) -> Vec<i64> {
        match Splice::owner(point, splices) {
            Some((splice, sub)) => splice.sub_shape(sub, &self.base_shape(splice.visited_at(sub), batch)),
            None => self.base_shape(point, batch),
        }
    }

    fn base_shape(&self, point: HookPoint, batch: i64) -> Vec<i64> {
        match (&self.text, point.tower == Tower::Text || point.site == Site::TextEmbeds) {
            (Some(text), true) => {
                let (n, len) = self.class_prompts.as_ref().map_or((0, text.cfg.max_positions), |c| {
                    let s = c.ids.size();
                    (s[0], s[1])
                });
                point.site.shape(&text.shape_dims(n, len))
            }
            _ => point.site.shape(&self.vit.shape_dims(batch)),
        }
    }

    /// A point's position and head axes (a sub-hook's are those of its module's values).
    fn hook_axes(point: HookPoint, splices: &[&Splice]) -> SiteAxes {
        match Splice::owner(point, splices) {
            Some((splice, sub)) => splice.sub_axes(sub),
            None => point.site.axes(),
        }
    }

    pub fn resolve_hooks(&self, patterns: &[String]) -> Result<HookSelection> {
        HookSelection::resolve(patterns, &self.hook_points())
    }

    /// Splices a module into every later `run` (and lists its sub-hooks among the hook points).
    /// Techniques that cannot honour a splice refuse to run while one is in place.
    pub fn splice(&mut self, spec: &SpliceSpec) -> Result<()> {
        let splice = self.compile_splice(spec, &self.splices.iter().collect::<Vec<_>>())?;
        self.splices.push(splice);
        Ok(())
    }

    pub fn clear_splices(&mut self) {
        self.splices.clear();
    }

    pub fn splices(&self) -> &[Splice] {
        &self.splices
    }

    fn compile_splice(&self, spec: &SpliceSpec, placed: &[&Splice]) -> Result<Splice> {
        let c = &self.vit.cfg;
        let target = SpliceTarget {
            points: &self.base_points(),
            shape: &|p| self.base_shape(p, 1),
            n_pos: c.n_pos(),
            n_prefix: c.n_prefix_tokens(),
            has_class_token: c.has_class_token,
        };
        Splice::compile(spec, &target, placed)
    }

    /// For techniques that run their own forwards and do not apply spliced modules: an error
    /// while one is spliced, rather than results that silently leave it out.
    pub(crate) fn require_no_splices(&self, what: &str) -> Result<()> {
        match self.splices.first() {
            None => Ok(()),
            Some(s) => Err(PrismaError::Unsupported(format!(
                "{what} does not support spliced modules yet (one is spliced at '{}'); run it without them",
                s.read
            ))),
        }
    }

    pub fn parse_interventions(json: &str) -> Result<Vec<InterventionSpec>> {
        parse_specs(json)
    }

    /// `t` on this model's device, in its dtype.
    pub(crate) fn to_model(&self, t: &Tensor) -> Result<Tensor> {
        // Asking the tensor is not a libtorch op; `to` is two dispatches even when it changes nothing,
        // which shows on a tiny model's sub-millisecond sweep.
        if t.device() == self.info.device && t.kind() == self.info.kind {
            return Ok(t.shallow_clone());
        }
        Ok(t.f_to_device(self.info.device)?.f_to_kind(self.info.kind)?)
    }

    pub fn run(&self, req: RunRequest) -> Result<RunOutput> {
        let n_layers = self.vit.cfg.n_layers;
        let mut run_splices: Vec<Splice> = Vec::with_capacity(req.splices.len());
        for spec in &req.splices {
            let placed: Vec<&Splice> = self.splices.iter().chain(&run_splices).collect();
            let splice = self.compile_splice(spec, &placed)?;
            run_splices.push(splice);
        }
        let splices: Vec<&Splice> = self.splices.iter().chain(&run_splices).collect();
        let available = self.hook_points_with(&splices);
        let record = HookSelection::resolve(&req.cache, &available)?;
        let tensors: HashMap<String, Tensor> =
            req.tensors.iter().map(|(k, t)| Ok((k.clone(), self.to_model(t)?))).collect::<Result<_>>()?;
        let mut interventions = Vec::with_capacity(req.interventions.len());
        for spec in &req.interventions {
            let point = resolve_point(&spec.hook, &available)?;
            interventions.push(Intervention::compile(spec, point, Self::hook_axes(point, &splices), &tensors)?);
        }
        if let Some(stop) = req.stop_at_layer {
            if stop > n_layers {
                return Err(PrismaError::LayerRange(format!("stop-at-layer {stop} is out of range (0..={n_layers})")));
            }
        }
        let mut ctx = HookCtx::new(&record, &interventions).with_splices(&splices);
        // A run that watches or edits the text tower runs it first, on the current class prompts,
        // and scores the image against what it produced.
        let text_points: Vec<HookPoint> = self.text.as_ref().map(|t| t.hook_points()).unwrap_or_default();
        let text_active = text_points.iter().any(|p| ctx.active(*p));
        let classes = match (&self.text, &self.class_prompts) {
            (Some(text), Some(prompts)) if text_active => {
                let embeds = tch::no_grad(|| text.forward(&prompts.ids, &prompts.attention_mask, &mut ctx))?;
                Some(self.class_directions(&embeds, prompts.per_label)?)
            }
            (Some(_), None) if text_active => {
                return Err(PrismaError::Argument("text-tower hooks need class prompts (--labels / --template)".into()));
            }
            _ => None,
        };
        let plan = ForwardPlan::default();
        let (output_name, output) = tch::no_grad(|| -> Result<(HookPoint, Tensor)> {
            match (req.start_at_layer, &req.start_resid) {
                (Some(layer), Some(resid)) => {
                    if layer > n_layers {
                        return Err(PrismaError::LayerRange(format!("start-at-layer {layer} is out of range (0..={n_layers})")));
                    }
                    if let Some(stop) = req.stop_at_layer {
                        if stop < layer {
                            return Err(PrismaError::LayerRange(format!("stop-at-layer {stop} comes before start-at-layer {layer}")));
                        }
                    }
                    let c = &self.vit.cfg;
                    let size = resid.size();
                    if size.len() != 3 || size[1] != c.n_pos() || size[2] != c.d_model {
                        return Err(PrismaError::Shape(format!(
                            "start residual has shape {size:?}, expected [batch, {}, {}]",
                            c.n_pos(),
                            c.d_model
                        )));
                    }
                    let resid = self.to_model(resid)?;
                    self.vit.forward_with_classes(
                        ForwardStart::Resid { layer, resid: &resid },
                        req.stop_at_layer,
                        plan,
                        classes.as_ref(),
                        &mut ctx,
                    )
                }
                (Some(_), None) => Err(PrismaError::Shape("start-at-layer needs a start residual".into())),
                (None, _) => {
                    let pixels = req.pixels.as_ref().ok_or_else(|| PrismaError::Shape("no pixels given".into()))?;
                    let pixels = self.to_model(pixels)?;
                    self.vit.forward_with_classes(ForwardStart::Pixels(&pixels), req.stop_at_layer, plan, classes.as_ref(), &mut ctx)
                }
            }
        })?;
        Ok(RunOutput { output_name, output, cache: ctx.recorded })
    }
}

/// Copies a tensor to a CPU float32 Vec, plus its shape.
pub fn to_f32_vec(t: &Tensor) -> Result<(Vec<i64>, Vec<f32>)> {
    let shape = t.size();
    let flat = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?.f_reshape([-1i64].as_slice())?;
    let values = Vec::<f32>::try_from(&flat).map_err(|e| PrismaError::Internal(format!("copying tensor: {e}")))?;
    Ok((shape, values))
}

pub fn from_f32(shape: &[i64], data: &[f32]) -> Result<Tensor> {
    let expected: i64 = shape.iter().product();
    if expected as usize != data.len() {
        return Err(PrismaError::Shape(format!("shape {shape:?} needs {expected} values, got {}", data.len())));
    }
    Ok(Tensor::from_slice(data).f_reshape(shape)?)
}
