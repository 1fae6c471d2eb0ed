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

pub(crate) fn require_head(model: &Model, what: &str) -> Result<()> {
    if !model.vit.weights.has_head() {
        if model.text.is_some() {
            return Err(PrismaError::Argument(format!(
                "{what} on a CLIP-style model needs class prompts: pass --labels (and --template) so logits are image-text similarities"
            )));
        }
        return Err(PrismaError::Argument(format!(
            "{what} needs a classification head, and {} has none ({})",
            model.info.model_dir.display(),
            model.info.architecture
        )));
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
