//! Sparse autoencoders: SAELens folders read and written natively, ViT-Prisma and saev files
//! imported without running pickled code, and each architecture's exact forward (SAELens 6.x
//! semantics, sub-hooks included).
//!
//! ```text
//! load(path, &LoadOptions) -> Sae          any supported format (detect_format says which)
//! save(&Sae, dir)                          a SAELens folder (cfg.json + sae_weights.safetensors)
//! convert(src, dst, &LoadOptions) -> Sae   load + save
//! Sae::encode / decode / reconstruct       SAELens's encode, decode, decode(encode(x))
//! Sae::forward_hooked(x, error_term, hook) the spliced forward with its six sub-hooks
//! train::SaeTrainer::new(cfg) / train_step(batch) -> StepMetrics / to_sae()
//! run::train(source, &[cfg..], &RunOptions, on_step) -> Vec<Sae>   several SAEs, one pass, resumable
//! cache::CacheWriter / CacheReader::source(hook) / merge   the activation cache on disk
//! metrics::ReconstructionMetrics / DownstreamMetrics (update per batch, finish -> report)
//! metrics::downstream_logits(model, pixels, sae, hook_mean) -> clean / spliced / ablated logits
//! ```

pub mod cache;
pub mod concepts;
pub mod config;
pub mod eval;
pub mod features;
pub mod import;
pub mod metrics;
pub mod model;
/// The pickle reader SAE files are imported with (shared with model checkpoints).
pub use crate::weights::pickle;
pub mod run;
pub mod saelens;
mod sparse;
pub mod train;

pub use crate::hooks::splice::SubHook;
pub use config::{Architecture, Normalization, SaeConfig, TokenSelection};
pub use model::{shared_splice_spec, splice_spec, Sae, SaeModule};

use crate::error::{PrismaError, Result};
use crate::hooks::HookPoint;
use std::path::Path;
use tch::Kind;

/// The formats `load` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A folder with `cfg.json` + `sae_weights.safetensors`.
    SaeLens,
    /// `weights.pt` + `config.json`, or a pickled `{cfg, state_dict}` `.pt` / `.pkl` / `.pkl.gz`.
    VitPrisma,
    /// `sae.pt`: a JSON header line, then `torch.save` of the state dict.
    Saev,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::SaeLens => "saelens",
            SourceFormat::VitPrisma => "vit-prisma",
            SourceFormat::Saev => "saev",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where the SAE reads in the model, overriding its config (TransformerLens spelling).
    pub hook: Option<String>,
    /// The tokens it applies to, overriding its config.
    pub tokens: Option<TokenSelection>,
    /// SAELens `expected_average_only_in`: the dataset scaling factor to fold into the weights.
    pub scaling_factor: Option<f64>,
    /// Cast the weights (and the config's dtype) after loading.
    pub kind: Option<Kind>,
}

/// Which format `path` holds, from its layout and first bytes (nothing is unpickled).
pub fn detect_format(path: &Path) -> Result<SourceFormat> {
    if !path.exists() {
        return Err(PrismaError::Io { path: path.into(), reason: "no such file or folder".into() });
    }
    if path.is_dir() {
        if saelens::is_saelens_dir(path) {
            return Ok(SourceFormat::SaeLens);
        }
        if path.join("sae.pt").is_file() && import::is_saev_file(&path.join("sae.pt")) {
            return Ok(SourceFormat::Saev);
        }
        if path.join("config.json").is_file() {
            return Ok(SourceFormat::VitPrisma);
        }
        return Err(PrismaError::Config {
            path: path.into(),
            reason: "not an SAE folder (no cfg.json for SAELens, config.json + weights.pt for ViT-Prisma, or saev sae.pt)".into(),
        });
    }
    if import::is_saev_file(path) {
        return Ok(SourceFormat::Saev);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if [".pt", ".pth", ".pkl", ".pkl.gz"].iter().any(|ext| name.ends_with(ext)) {
        return Ok(SourceFormat::VitPrisma);
    }
    if name == "cfg.json" || name.ends_with(".safetensors") {
        return Ok(SourceFormat::SaeLens);
    }
    Err(PrismaError::Config {
        path: path.into(),
        reason: "not a recognised SAE file (.pt, .pkl, .pkl.gz, sae.pt, or a SAELens folder)".into(),
    })
}

/// Loads an SAE from any supported format. The hook comes from its config unless `opts.hook`
/// overrides it; an override must be a well-formed hook name.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Sae> {
    let format = detect_format(path)?;
    let mut sae = match format {
        SourceFormat::SaeLens => {
            let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
            saelens::read_dir(dir, opts.scaling_factor)?
        }
        SourceFormat::VitPrisma => import::read_prisma(path)?,
        SourceFormat::Saev => import::read_saev(path)?,
    };
    if let Some(hook) = &opts.hook {
        HookPoint::parse(hook)?;
        sae.cfg.set_hook_name(hook);
    }
    if let Some(tokens) = opts.tokens {
        sae.cfg.set_tokens(tokens);
    }
    if format != SourceFormat::SaeLens {
        if let Some(f) = opts.scaling_factor {
            sae.fold_scaling_factor(f)?;
        }
    }
    if let Some(kind) = opts.kind {
        sae = sae.to_kind(kind)?;
    }
    Ok(sae)
}

/// Writes `sae` as a SAELens folder.
pub fn save(sae: &Sae, dir: &Path) -> Result<()> {
    saelens::write_dir(sae, dir)
}

/// Reads any supported format and writes it as a SAELens folder; returns what was written.
pub fn convert(src: &Path, dst: &Path, opts: &LoadOptions) -> Result<Sae> {
    let sae = load(src, opts)?;
    save(&sae, dst)?;
    Ok(sae)
}

/// The model hook `sae` reads, checked against `model`: the hook must exist (`E_UNKNOWN_HOOK` /
/// `E_LAYER_RANGE`) and be a [batch, pos, d] activation of width `d_in` (`E_SHAPE`).
pub fn check_against_model(sae: &Sae, model: &crate::Model) -> Result<HookPoint> {
    let name = sae.cfg.hook_name().ok_or_else(|| PrismaError::Argument("the SAE's config names no hook; give one (DIR@HOOK)".into()))?;
    let selection = model.resolve_hooks(&[name.to_string()])?;
    let point = *selection.iter().next().ok_or_else(|| PrismaError::UnknownHook(format!("this model has no hook '{name}'")))?;
    let shape = model.hook_shape(point, 1);
    let axes = point.site.axes();
    if axes.pos != Some(1) || axes.head.is_some() || shape.len() != 3 {
        return Err(PrismaError::Shape(format!("an SAE reads a [batch, pos, d] activation; '{name}' has shape {shape:?}")));
    }
    if shape[2] != sae.cfg.d_in {
        return Err(PrismaError::Shape(format!("the SAE has d_in {} but hook '{name}' is {} wide in this model", sae.cfg.d_in, shape[2])));
    }
    Ok(point)
}
