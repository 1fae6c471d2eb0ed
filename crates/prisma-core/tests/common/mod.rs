//! Shared helpers for the fidelity tests: fixture paths, reference loading, comparisons.
#![allow(dead_code)]

use prisma_core::model::to_f32_vec;
use prisma_core::tensor_file::read_tensor_file;
use prisma_core::Model;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::Tensor;

pub const MODELS: &[&str] = &["vit-tiny-cls", "vit-tiny-base", "vit-odd", "deit-tiny"];

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn load(name: &str) -> Model {
    Model::load(&fixtures().join("models").join(name), "cpu", "f32").expect("fixture model loads")
}

pub fn reference(file: &str) -> BTreeMap<String, Tensor> {
    read_tensor_file(&fixtures().join("reference").join(file)).expect("reference loads").into_iter().collect()
}

/// A reference file's `__metadata__` (fixtures/reference/FILE).
pub fn reference_metadata(file: &str) -> BTreeMap<String, String> {
    let bytes = std::fs::read(fixtures().join("reference").join(file)).expect("reference reads");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("a safetensors header");
    meta.metadata().clone().unwrap_or_default().into_iter().collect()
}

/// The model uses the layer-norm eps of each norm of the reference model (the reference's `ln_eps`
/// metadata, read from the Python modules: `blocks`, `final`, and where the model has them `pre` and
/// `text`). A wrong eps moves these fixtures' activations by only ~4e-6, under the tolerance.
pub fn assert_ln_eps(name: &str, model: &Model, meta: &BTreeMap<String, String>) {
    let eps: BTreeMap<String, f64> = serde_json::from_str(meta.get("ln_eps").unwrap_or_else(|| panic!("{name}: no ln_eps metadata")))
        .unwrap_or_else(|e| panic!("{name}: ln_eps is not a JSON map of numbers: {e}"));
    let cfg = &model.vit.cfg;
    for (norm, want) in &eps {
        let ours = match norm.as_str() {
            "blocks" => cfg.layer_norm_eps,
            "final" => cfg.final_norm_eps,
            "pre" => {
                assert!(cfg.has_ln_pre, "{name}: the reference has ln_pre, the model none");
                cfg.layer_norm_eps
            }
            "text" => model.text.as_ref().unwrap_or_else(|| panic!("{name}: the reference has a text tower")).cfg.layer_norm_eps,
            other => panic!("{name}: unknown norm '{other}' in ln_eps"),
        };
        assert_eq!(ours, *want, "{name}: {norm} layer-norm eps is {ours:e}, the reference model's {want:e}");
    }
    assert!(eps.contains_key("blocks") && eps.contains_key("final"), "{name}: ln_eps lacks blocks or final: {eps:?}");
}

/// The other resolutions a reference holds: each `pixel_values_<tag>` (tag `48` or `36x42`) with its
/// [height, width]; the activations at that size are the keys under `res<tag>.`.
pub fn resolutions(reference: &BTreeMap<String, Tensor>) -> Vec<(String, [i64; 2])> {
    reference
        .keys()
        .filter_map(|k| k.strip_prefix("pixel_values_"))
        .map(|tag| {
            let size = match tag.split_once('x') {
                Some((h, w)) => [h.parse().expect("height"), w.parse().expect("width")],
                None => [tag.parse().expect("size"); 2],
            };
            (tag.to_string(), size)
        })
        .collect()
}

/// Largest |a - b| over the elements. A NaN anywhere (on either side, or inf - inf) makes it +inf,
/// so `max_abs_diff(..) <= TOL` cannot pass on a NaN activation (`f64::max` would skip it).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let (_, a) = to_f32_vec(a).unwrap();
    let (_, b) = to_f32_vec(b).unwrap();
    worst(a.iter().zip(&b).map(|(x, y)| diff(*x as f64, *y as f64)))
}

/// |x - y|, 0 for equal values (equal infinities too: masked attention scores are -inf on both sides).
fn diff(x: f64, y: f64) -> f64 {
    if x == y {
        0.0
    } else {
        (x - y).abs()
    }
}

/// Largest |a - b| of two equally long lists of values, NaN as +inf (see `max_abs_diff`).
pub fn max_abs_diff_of(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    worst(a.iter().zip(b).map(|(x, y)| diff(*x, *y)))
}

/// The largest of some non-negative numbers (0 when there are none); any NaN among them gives +inf.
pub fn worst(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, |acc, v| if v.is_nan() { f64::INFINITY } else { acc.max(v) })
}
