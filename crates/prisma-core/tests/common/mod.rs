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

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let (_, a) = to_f32_vec(a).unwrap();
    let (_, b) = to_f32_vec(b).unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max)
}
