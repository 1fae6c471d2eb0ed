//! Interpretability techniques over the hooked forward: metrics, activation patching sweeps,
//! attribution patching, logit lens and direct logit attribution. Results are plain serde
//! structs so the binding can hand them to TypeScript as JSON.

pub mod ablation;
pub mod attribution;
pub mod dla;
pub mod lens;
pub mod metric;
pub mod patching;

use crate::error::{PrismaError, Result};
use crate::model::Model;
use tch::Tensor;

/// What every technique here needs of a model: a head to read logits from, and no spliced
/// modules (techniques run their own forwards, which do not apply them).
pub(crate) fn check_model(model: &Model, what: &str) -> Result<()> {
    require_head(model, what)?;
    model.require_no_splices(what)
}

fn require_head(model: &Model, what: &str) -> Result<()> {
    if !model.vit.weights.has_head() {
        if model.text.is_some() {
            return Err(PrismaError::Argument(format!(
                "{what} on a CLIP-style model needs class prompts (CLI: --labels and --template; library: model.setClassPrompts), \
                 so that logits are image-text similarities"
            )));
        }
        return Err(PrismaError::NoHead {
            what: what.to_string(),
            path: model.info.model_dir.clone(),
            architecture: model.info.architecture.clone(),
        });
    }
    Ok(())
}

pub(crate) fn to_vec_f64(t: &Tensor) -> Result<Vec<f64>> {
    let copy_error = |e: tch::TchError| PrismaError::Internal(format!("copying tensor: {e}"));
    // The common case (a contiguous f32 tensor on the CPU) is one memcpy and a widening in Rust,
    // exact like libtorch's cast, instead of four dispatched ops.
    if t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float && t.is_contiguous() {
        let n = t.numel();
        let mut host = vec![0f32; n];
        t.f_copy_data(&mut host, n).map_err(copy_error)?;
        return Ok(host.into_iter().map(f64::from).collect());
    }
    let flat = t.f_to_device(tch::Device::Cpu)?.f_to_kind(tch::Kind::Double)?.f_contiguous()?.f_reshape([-1i64].as_slice())?;
    Vec::<f64>::try_from(&flat).map_err(copy_error)
}

#[cfg(test)]
mod tests {
    use super::lens::LensSite;
    use super::patching::PatchWhat;
    use crate::hooks::Site;

    /// A site's short name: its TransformerLens spelling without the component and `hook_`
    /// (`attn.hook_z` → `z`), `head_` in front where the site has a head axis (`head_z`).
    fn short_name(site: Site) -> String {
        let last = site.spelling().rsplit('.').next().unwrap_or_default();
        let short = last.strip_prefix("hook_").unwrap_or(last);
        if site.axes().head.is_some() {
            format!("head_{short}")
        } else {
            short.to_string()
        }
    }

    fn wire_name<T: serde::Serialize>(value: T) -> String {
        serde_json::to_value(value).unwrap().as_str().unwrap().to_string()
    }

    /// The sweep's and the lens's names are not a vocabulary of their own: each is its site's name.
    #[test]
    fn technique_names_are_the_site_tables() {
        use PatchWhat::*;
        for what in [ResidPre, ResidMid, ResidPost, AttnOut, MlpOut, HeadZ, HeadQ, HeadK, HeadV, HeadPattern] {
            assert_eq!(wire_name(what), short_name(what.site()), "{what:?}");
        }
        for site in [LensSite::ResidPre, LensSite::ResidMid, LensSite::ResidPost] {
            assert_eq!(wire_name(site), short_name(site.site()), "{site:?}");
        }
    }
}
