//! Shared helpers for the fidelity tests: fixture paths, reference loading, comparisons.
#![allow(dead_code)]

use prisma_core::model::to_f32_vec;
use prisma_core::tensor_file::read_tensor_file;
use prisma_core::Model;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tch::Tensor;

pub const MODELS: &[&str] = &["vit-tiny-cls", "vit-tiny-base", "vit-odd"];

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn load(name: &str) -> Model {
    Model::load(&fixtures().join("models").join(name), "cpu", "f32").expect("fixture model loads")
}

pub fn reference(file: &str) -> BTreeMap<String, Tensor> {
    read_tensor_file(&fixtures().join("reference").join(file)).expect("reference loads").into_iter().collect()
}

/// Largest |a - b| over the elements. A NaN anywhere (on either side, or inf - inf) makes it +inf,
/// so `max_abs_diff(..) <= TOL` cannot pass on a NaN activation (`f64::max` would skip it).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let (_, a) = to_f32_vec(a).unwrap();
    let (_, b) = to_f32_vec(b).unwrap();
    worst(a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).abs()))
}

/// Largest |a - b| of two equally long lists of values, NaN as +inf (see `max_abs_diff`).
pub fn max_abs_diff_of(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    worst(a.iter().zip(b).map(|(x, y)| (x - y).abs()))
}

/// The largest of some non-negative numbers (0 when there are none); any NaN among them gives +inf.
pub fn worst(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, |acc, v| if v.is_nan() { f64::INFINITY } else { acc.max(v) })
}
