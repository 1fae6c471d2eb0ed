//! The SAE itself: weights in SAELens's layout and the inference forward of each architecture,
//! with SAELens's sub-hooks (`hook_sae_input`, `_acts_pre`, `_acts_post`, `_recons`, `_error`,
//! `_output`) exposed to a callback that may record or replace each value.

use super::config::{Architecture, Normalization, SaeConfig, TokenSelection};
use crate::error::{PrismaError, Result};
use crate::hooks::splice::{HookModule, SharedModule, SpliceSpec, SubHook, SubHooks, Tokens};
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// An SAE's weights, named and shaped as SAELens saves them.
#[derive(Debug)]
pub struct Sae {
    pub cfg: SaeConfig,
    /// [d_in, d_sae]
    pub w_enc: Tensor,
    /// [d_sae]; absent for gated SAEs.
    pub b_enc: Option<Tensor>,
    /// [d_sae, d_in]
    pub w_dec: Tensor,
    /// [d_in]
    pub b_dec: Tensor,
    /// [d_sae], JumpReLU.
    pub threshold: Option<Tensor>,
    /// [d_sae] each, gated.
    pub b_gate: Option<Tensor>,
    pub r_mag: Option<Tensor>,
    pub b_mag: Option<Tensor>,
}

/// What the input normalisation remembers for undoing it on the way out.
pub enum NormState {
    Identity,
    /// constant_norm_rescale: x was multiplied by this per-token coefficient.
    Scaled(Tensor),
    /// layer_norm: x was centred by `mu` and divided by `std + eps`.
    Standardised {
        mu: Tensor,
        std: Tensor,
    },
}

/// SAELens's layer_norm epsilon (added to the unbiased standard deviation).
const LN_EPS: f64 = 1e-5;

/// Passes a sub-hook value through unchanged.
pub fn no_hooks(_: SubHook, x: Tensor) -> Result<Tensor> {
    Ok(x)
}

impl Sae {
    pub fn d_in(&self) -> i64 {
        self.cfg.d_in
    }

    pub fn d_sae(&self) -> i64 {
        self.cfg.d_sae
    }

    fn need<'a>(&self, t: &'a Option<Tensor>, name: &str) -> Result<&'a Tensor> {
        t.as_ref().ok_or_else(|| PrismaError::Internal(format!("{} SAE without '{name}'", self.cfg.architecture.name())))
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let last = x.size().last().copied().unwrap_or(0);
        if last != self.cfg.d_in {
            return Err(PrismaError::Shape(format!(
                "the SAE reads vectors of size d_in = {}, the activation's last axis has {last}",
                self.cfg.d_in
            )));
        }
        Ok(())
    }

    /// Casts to the SAE's dtype and normalises (SAELens `process_sae_in` before the `b_dec` term).
    fn normalise_in(&self, x: &Tensor) -> Result<(Tensor, NormState)> {
        match self.cfg.normalize_activations {
            Normalization::None | Normalization::ExpectedAverageOnlyIn => Ok((x.shallow_clone(), NormState::Identity)),
            Normalization::ConstantNormRescale => {
                let norm = x.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
                let coeff = norm.f_reciprocal()?.f_mul_scalar((self.cfg.d_in as f64).sqrt())?;
                Ok((x.f_mul(&coeff)?, NormState::Scaled(coeff)))
            }
            Normalization::LayerNorm => {
                let mu = x.f_mean_dim([-1i64].as_slice(), true, x.kind())?;
                let centred = x.f_sub(&mu)?;
                let std = centred.f_std_dim([-1i64].as_slice(), true, true)?;
                let out = centred.f_div(&std.f_add_scalar(LN_EPS)?)?;
                Ok((out, NormState::Standardised { mu, std }))
            }
        }
    }

    fn normalise_out(&self, x: &Tensor, state: &NormState) -> Result<Tensor> {
        Ok(match state {
            NormState::Identity => x.shallow_clone(),
            NormState::Scaled(coeff) => x.f_div(coeff)?,
            NormState::Standardised { mu, std } => x.f_mul(std)?.f_add(mu)?,
        })
    }

    /// Pre-activations and feature activations of an input already normalised, with `b_dec`
    /// subtracted when `apply_b_dec_to_input`. `hook` sees acts_pre and acts_post.
    fn encode_normalised(&self, sae_in: &Tensor, hook: &mut dyn FnMut(SubHook, Tensor) -> Result<Tensor>) -> Result<(Tensor, Tensor)> {
        let centred = if self.cfg.apply_b_dec_to_input { sae_in.f_sub(&self.b_dec)? } else { sae_in.shallow_clone() };
        match self.cfg.architecture {
            Architecture::Standard => {
                let pre = hook(SubHook::ActsPre, centred.f_matmul(&self.w_enc)?.f_add(self.need(&self.b_enc, "b_enc")?)?)?;
                let post = hook(SubHook::ActsPost, pre.f_relu()?)?;
                Ok((pre, post))
            }
            Architecture::TopK => {
                let pre = hook(SubHook::ActsPre, centred.f_matmul(&self.w_enc)?.f_add(self.need(&self.b_enc, "b_enc")?)?)?;
                let ranked = if self.cfg.rescale_acts_by_decoder_norm { pre.f_mul(&self.decoder_norms()?)? } else { pre.shallow_clone() };
                let post = hook(SubHook::ActsPost, top_k_relu(&ranked, self.k()?)?)?;
                Ok((pre, post))
            }
            Architecture::JumpRelu => {
                let pre = hook(SubHook::ActsPre, centred.f_matmul(&self.w_enc)?.f_add(self.need(&self.b_enc, "b_enc")?)?)?;
                let mask = pre.f_gt_tensor(self.need(&self.threshold, "threshold")?)?.f_to_kind(pre.kind())?;
                let post = hook(SubHook::ActsPost, pre.f_relu()?.f_mul(&mask)?)?;
                Ok((pre, post))
            }
            Architecture::Gated => {
                let gate = centred.f_matmul(&self.w_enc)?.f_add(self.need(&self.b_gate, "b_gate")?)?;
                let active = gate.f_gt(0.0)?.f_to_kind(gate.kind())?;
                let w_mag = self.w_enc.f_mul(&self.need(&self.r_mag, "r_mag")?.f_exp()?)?;
                let pre = hook(SubHook::ActsPre, centred.f_matmul(&w_mag)?.f_add(self.need(&self.b_mag, "b_mag")?)?)?;
                let post = hook(SubHook::ActsPost, active.f_mul(&pre.f_relu()?)?)?;
                Ok((pre, post))
            }
        }
    }

    fn k(&self) -> Result<i64> {
        let k = self.cfg.k.ok_or_else(|| PrismaError::Internal("topk SAE without k".into()))?;
        Ok(k.min(self.cfg.d_sae))
    }

    /// ‖W_dec[i]‖ for each feature.
    pub fn decoder_norms(&self) -> Result<Tensor> {
        Ok(self.w_dec.f_norm_scalaropt_dim(2, [-1i64].as_slice(), false)?)
    }

    /// Feature activations f(x) for activations `x` [..., d_in] (SAELens `encode`).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let x = x.f_to_kind(self.cfg.kind)?;
        let (sae_in, _) = self.normalise_in(&x)?;
        Ok(self.encode_normalised(&sae_in, &mut no_hooks)?.1)
    }

    /// Pre-activations and feature activations (for training metrics and AuxK).
    pub fn encode_with_pre(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_input(x)?;
        let x = x.f_to_kind(self.cfg.kind)?;
        let (sae_in, _) = self.normalise_in(&x)?;
        self.encode_normalised(&sae_in, &mut no_hooks)
    }

    /// `acts @ W_dec + b_dec` in the normalised space (SAELens `hook_sae_recons`).
    fn decode_normalised(&self, acts: &Tensor) -> Result<Tensor> {
        let acts = if self.cfg.architecture == Architecture::TopK && self.cfg.rescale_acts_by_decoder_norm {
            acts.f_div(&self.decoder_norms()?)?
        } else {
            acts.shallow_clone()
        };
        Ok(acts.f_matmul(&self.w_dec)?.f_add(&self.b_dec)?)
    }

    /// Reconstruction from feature activations (SAELens `decode`). With layer_norm or
    /// constant_norm_rescale the output scale comes from the input, so use `reconstruct`.
    pub fn decode(&self, acts: &Tensor) -> Result<Tensor> {
        if matches!(self.cfg.normalize_activations, Normalization::LayerNorm | Normalization::ConstantNormRescale) {
            return Err(PrismaError::Argument(format!(
                "an SAE with normalize_activations = {} decodes only together with its input (use reconstruct)",
                self.cfg.normalize_activations.name()
            )));
        }
        self.decode_normalised(&acts.f_to_kind(self.cfg.kind)?)
    }

    /// decode(encode(x)), in the SAE's dtype.
    pub fn reconstruct(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_hooked(x, false, &mut no_hooks)
    }

    /// The spliced forward: x → x̂ (or x̂ + error with `use_error_term`), each sub-hook value passed
    /// through `hook` (which may record it or return a replacement), in SAELens's order. The error
    /// term is computed from a clean pass (no hook edits), as SAELens does, so with it the output
    /// equals x whatever the hooks do upstream of `hook_sae_error`... up to float rounding.
    pub fn forward_hooked(
        &self,
        x: &Tensor,
        use_error_term: bool,
        hook: &mut dyn FnMut(SubHook, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.check_input(x)?;
        let x = x.f_to_kind(self.cfg.kind)?;
        let sae_input = hook(SubHook::Input, x.shallow_clone())?;
        let (normalised, state) = self.normalise_in(&sae_input)?;
        let (_, acts) = self.encode_normalised(&normalised, hook)?;
        let recons = hook(SubHook::Recons, self.decode_normalised(&acts)?)?;
        let mut out = self.normalise_out(&recons, &state)?;
        if use_error_term {
            let clean = tch::no_grad(|| -> Result<Tensor> {
                let (n, s) = self.normalise_in(&x)?;
                let (_, a) = self.encode_normalised(&n, &mut no_hooks)?;
                self.normalise_out(&self.decode_normalised(&a)?, &s)
            })?;
            let error = hook(SubHook::Error, x.f_sub(&clean)?)?;
            out = out.f_add(&error)?;
        }
        hook(SubHook::Output, out)
    }

    /// Folds SAELens's `expected_average_only_in` scaling factor into the weights (SAELens
    /// `fold_activation_norm_scaling_factor`): the SAE then reads unscaled activations.
    pub fn fold_scaling_factor(&mut self, factor: f64) -> Result<()> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(PrismaError::Argument(format!("scaling factor {factor} must be a positive number")));
        }
        tch::no_grad(|| -> Result<()> {
            self.w_enc = self.w_enc.f_mul_scalar(factor)?;
            self.w_dec = self.w_dec.f_div_scalar(factor)?;
            self.b_dec = self.b_dec.f_div_scalar(factor)?;
            Ok(())
        })?;
        self.cfg.normalize_activations = Normalization::None;
        Ok(())
    }

    /// The tensors of a SAELens `sae_weights.safetensors`, in a fixed order.
    pub fn named_tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let mut out = vec![("W_enc", &self.w_enc), ("W_dec", &self.w_dec), ("b_dec", &self.b_dec)];
        for (name, t) in [
            ("b_enc", &self.b_enc),
            ("threshold", &self.threshold),
            ("b_gate", &self.b_gate),
            ("r_mag", &self.r_mag),
            ("b_mag", &self.b_mag),
        ] {
            if let Some(t) = t {
                out.push((name, t));
            }
        }
        out.sort_by_key(|(n, _)| *n);
        out
    }

    /// Checks every tensor's shape against the config and casts all to the config's dtype.
    pub fn validated(mut self, file: &std::path::Path) -> Result<Sae> {
        let (d_in, d_sae) = (self.cfg.d_in, self.cfg.d_sae);
        let kind = self.cfg.kind;
        let check = |name: &str, t: &Tensor, shape: &[i64]| -> Result<Tensor> {
            if t.size() != shape {
                return Err(PrismaError::WeightsShape {
                    file: file.into(),
                    tensor: name.into(),
                    expected: shape.to_vec(),
                    found: t.size(),
                });
            }
            Ok(t.f_to_kind(kind)?.f_contiguous()?)
        };
        self.w_enc = check("W_enc", &self.w_enc, &[d_in, d_sae])?;
        self.w_dec = check("W_dec", &self.w_dec, &[d_sae, d_in])?;
        self.b_dec = check("b_dec", &self.b_dec, &[d_in])?;
        for (name, slot) in [
            ("b_enc", &mut self.b_enc),
            ("threshold", &mut self.threshold),
            ("b_gate", &mut self.b_gate),
            ("r_mag", &mut self.r_mag),
            ("b_mag", &mut self.b_mag),
        ] {
            if let Some(t) = slot.as_ref() {
                *slot = Some(check(name, t, &[d_sae])?);
            }
        }
        let required: &[(&str, bool)] = match self.cfg.architecture {
            Architecture::Standard | Architecture::TopK => &[("b_enc", self.b_enc.is_some())],
            Architecture::JumpRelu => &[("b_enc", self.b_enc.is_some()), ("threshold", self.threshold.is_some())],
            Architecture::Gated => &[("b_gate", self.b_gate.is_some()), ("r_mag", self.r_mag.is_some()), ("b_mag", self.b_mag.is_some())],
        };
        if let Some((name, _)) = required.iter().find(|(_, present)| !present) {
            return Err(PrismaError::WeightsMissing { file: file.into(), tensor: (*name).into() });
        }
        if self.cfg.architecture == Architecture::TopK && self.cfg.k.is_none_or(|k| k < 1) {
            return Err(PrismaError::Config { path: file.into(), reason: "a topk SAE needs k >= 1".into() });
        }
        Ok(self)
    }

    /// A copy in another dtype (weights and config).
    pub fn to_kind(&self, kind: Kind) -> Result<Sae> {
        let mut sae = self.map_tensors(|t| t.f_to_kind(kind))?;
        sae.cfg.kind = kind;
        Ok(sae)
    }

    /// A copy on another device (a spliced SAE must be on its model's device).
    pub fn to_device(&self, device: tch::Device) -> Result<Sae> {
        self.map_tensors(|t| t.f_to_device(device))
    }

    /// The device the weights are on.
    pub fn device(&self) -> tch::Device {
        self.w_enc.device()
    }

    fn map_tensors(&self, f: impl Fn(&Tensor) -> std::result::Result<Tensor, tch::TchError>) -> Result<Sae> {
        let cast = |t: &Tensor| f(t);
        let opt = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            Ok(match t {
                Some(t) => Some(cast(t)?),
                None => None,
            })
        };
        Ok(Sae {
            cfg: self.cfg.clone(),
            w_enc: cast(&self.w_enc)?,
            b_enc: opt(&self.b_enc)?,
            w_dec: cast(&self.w_dec)?,
            b_dec: cast(&self.b_dec)?,
            threshold: opt(&self.threshold)?,
            b_gate: opt(&self.b_gate)?,
            r_mag: opt(&self.r_mag)?,
            b_mag: opt(&self.b_mag)?,
        })
    }
}

/// Keeps the k largest entries of the last axis (ReLU applied to them), zeroes the rest
/// (SAELens `TopK`).
pub fn top_k_relu(x: &Tensor, k: i64) -> Result<Tensor> {
    let (values, indices) = x.f_topk(k, -1, true, false)?;
    Ok(x.f_zeros_like()?.f_scatter(-1, &indices, &values.f_relu()?)?)
}

/// An SAE as a module the forward pass can splice in (`hooks::splice`). The normalisation state
/// of an encode is kept for the decode that follows it, as SAELens keeps it on the module.
pub struct SaeModule {
    pub sae: Sae,
    pending: Mutex<Option<(NormState, Kind)>>,
}

impl SaeModule {
    pub fn new(sae: Sae) -> SaeModule {
        SaeModule { sae, pending: Mutex::new(None) }
    }
}

impl HookModule for SaeModule {
    fn d_in(&self) -> i64 {
        self.sae.cfg.d_in
    }
    fn d_sae(&self) -> i64 {
        self.sae.cfg.d_sae
    }
    fn encode(&self, x: &Tensor, hooks: &mut SubHooks) -> Result<Tensor> {
        self.sae.check_input(x)?;
        let input_kind = x.kind();
        let x = x.f_to_kind(self.sae.cfg.kind)?;
        let (normalised, state) = self.sae.normalise_in(&x)?;
        let (_, acts) = self.sae.encode_normalised(&normalised, &mut |s, t| hooks.hook(s, t))?;
        *self.pending.lock().map_err(|_| PrismaError::Internal("SAE state lock poisoned".into()))? = Some((state, input_kind));
        Ok(acts)
    }
    fn decode(&self, acts: &Tensor, hooks: &mut SubHooks) -> Result<Tensor> {
        let pending = self.pending.lock().map_err(|_| PrismaError::Internal("SAE state lock poisoned".into()))?.take();
        let (state, kind) = pending.unwrap_or((NormState::Identity, self.sae.cfg.kind));
        let recons = hooks.hook(SubHook::Recons, self.sae.decode_normalised(&acts.f_to_kind(self.sae.cfg.kind)?)?)?;
        Ok(self.sae.normalise_out(&recons, &state)?.f_to_kind(kind)?)
    }
}

/// A splice of `sae` at its hook (from its config) over its tokens, for `RunRequest::splices` or
/// `Model::splice`.
pub fn splice_spec(sae: Sae, use_error_term: bool) -> Result<SpliceSpec> {
    shared_splice_spec(&Arc::new(Mutex::new(SaeModule::new(sae))), use_error_term)
}

/// As `splice_spec`, for an SAE shared between runs (each run's splice uses the same weights).
pub fn shared_splice_spec(module: &Arc<Mutex<SaeModule>>, use_error_term: bool) -> Result<SpliceSpec> {
    let (hook, tokens) = {
        let m = module.lock().map_err(|_| PrismaError::Internal("SAE lock poisoned".into()))?;
        let hook =
            m.sae.cfg.hook_name().ok_or_else(|| PrismaError::Argument("the SAE's config names no hook; give one (DIR@HOOK)".into()))?;
        let tokens = match m.sae.cfg.tokens() {
            TokenSelection::All => Tokens::All,
            TokenSelection::Cls => Tokens::Class,
            TokenSelection::Patches => Tokens::Patches,
        };
        (hook.to_string(), tokens)
    };
    let shared: SharedModule = module.clone();
    Ok(SpliceSpec { module: shared, hook, out: None, tokens, use_error_term })
}
