//! SAE evaluation metrics, streamed over two batches, against a plain numpy computation on the
//! same small cache (fixtures/make_sae_metrics_reference.py -> reference/sae-metrics.json).

mod common;

use common::{fixtures, load, max_abs_diff, reference};
use prisma_core::sae::metrics::{downstream_logits, DensityOptions, DownstreamMetrics, ReconstructionMetrics};
use prisma_core::sae::{self, LoadOptions};
use serde_json::Value;
use tch::{Kind, Tensor};

fn numpy() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference/sae-metrics.json")).unwrap()).unwrap()
}

fn close(name: &str, got: f64, want: &Value) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{name}: no reference value"));
    let d = (got - want).abs() / want.abs().max(1.0);
    assert!(d <= 1e-6, "{name}: {got} vs numpy {want} (rel {d:e})");
}

#[test]
fn reconstruction_and_density_metrics_equal_numpy() {
    let r = reference("sae.safetensors");
    let np = numpy();
    let sae = sae::load(&fixtures().join("sae/saelens/topk"), &LoadOptions::default()).unwrap();
    let x = &r["topk.x"];
    let mut m = ReconstructionMetrics::new(sae.d_sae()).unwrap();
    // Streamed: two images, then one.
    m.update_with(&sae, &x.narrow(0, 0, 2), Some(0)).unwrap();
    m.update_with(&sae, &x.narrow(0, 2, 1), Some(0)).unwrap();
    let rep = m.finish(&DensityOptions::default()).unwrap();
    assert_eq!((rep.tokens, rep.images), (51, 3));
    close("l0_per_token", rep.l0_per_token, &np["l0_per_token"]);
    close("l0_class_token", rep.l0_class_token.unwrap(), &np["l0_class_token"]);
    close("l0_per_image", rep.l0_per_image, &np["l0_per_image"]);
    close("l1_per_token", rep.l1_per_token, &np["l1_per_token"]);
    close("explained_variance", rep.explained_variance, &np["explained_variance"]);
    close("fvu", rep.fvu, &np["fvu"]);
    close("mse", rep.mse, &np["mse"]);
    close("cosine_similarity", rep.cosine_similarity, &np["cosine_similarity"]);
    let density: Vec<f64> = np["feature_density"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(rep.feature_density.len(), density.len());
    for (i, (a, b)) in rep.feature_density.iter().zip(&density).enumerate() {
        assert!((a - b).abs() < 1e-12, "density of feature {i}: {a} vs {b}");
    }
    assert_eq!(rep.dead, np["dead"].as_i64().unwrap());
    assert_eq!(rep.almost_dead, np["almost_dead"].as_i64().unwrap());
    assert_eq!(rep.dense, np["dense"].as_i64().unwrap());
    let counts: Vec<i64> = np["log_density_counts"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(rep.log_density_counts, counts);
    // Other thresholds, against a naive count over numpy's densities.
    let opts = DensityOptions { almost_dead: 0.05, dense: 0.2, ..Default::default() };
    let rep2 = m.finish(&opts).unwrap();
    assert_eq!(rep2.almost_dead, density.iter().filter(|d| **d > 0.0 && **d < 0.05).count() as i64);
    assert_eq!(rep2.dense, density.iter().filter(|d| **d > 0.2).count() as i64);
    assert!(rep2.almost_dead > 0, "the threshold is exercised");
    // The same metrics from the cached values sae-lens computed, given directly.
    let mut direct = ReconstructionMetrics::new(sae.d_sae()).unwrap();
    direct.update(x, &r["topk.decode"], &r["topk.encode"], None).unwrap();
    let rep3 = direct.finish(&DensityOptions::default()).unwrap();
    close("explained_variance (direct)", rep3.explained_variance, &np["explained_variance"]);
    assert!(rep3.l0_class_token.is_none());
    // Bad shapes are one E_SHAPE.
    assert_eq!(m.update(x, x, x, None).unwrap_err().code(), "E_SHAPE");
}

fn logits(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).reshape([rows.len() as i64, -1]).to_kind(Kind::Float)
}

#[test]
fn downstream_metrics_equal_numpy_from_logits_the_model_produces() {
    let np = numpy();
    let model = load("vit-tiny-cls");
    let refs = reference("vit-tiny-cls.safetensors");
    let pixels = &refs["pixel_values"];
    let sae = sae::load(&fixtures().join("sae/saelens/topk"), &LoadOptions::default()).unwrap();
    let mean = refs["blocks.1.hook_resid_post"].mean_dim([0i64].as_slice(), true, Kind::Float);
    let l = downstream_logits(&model, pixels, &sae, Some(&mean)).unwrap();
    // The model's ablations equal transformers' with a forward hook.
    assert!(max_abs_diff(&l.clean, &logits(&np["logits"]["clean"])) < 1e-5);
    assert!(max_abs_diff(&l.zero, &logits(&np["logits"]["zero"])) < 1e-5);
    assert!(max_abs_diff(l.mean.as_ref().unwrap(), &logits(&np["logits"]["mean"])) < 1e-5);
    let labels = Tensor::from_slice(&[0i64, 1, 2]);
    for (with_labels, key) in [(true, "downstream_labels"), (false, "downstream_clean_prediction")] {
        let mut m = DownstreamMetrics::new();
        // Streamed in two batches.
        for (start, len) in [(0, 2), (2, 1)] {
            let part = |t: &Tensor| t.narrow(0, start, len);
            let lab = part(&labels);
            m.update(
                &part(&l.clean),
                &part(&l.spliced),
                Some(&part(&l.zero)),
                l.mean.as_ref().map(part).as_ref(),
                with_labels.then_some(&lab),
            )
            .unwrap();
        }
        let rep = m.finish().unwrap();
        let d = &np[key];
        close("ce_clean", rep.ce_clean, &d["ce_clean"]);
        close("ce_spliced", rep.ce_spliced, &d["ce_spliced"]);
        close("ce_zero", rep.ce_zero_ablation.unwrap(), &d["ce_zero"]);
        close("ce_mean", rep.ce_mean_ablation.unwrap(), &d["ce_mean"]);
        close("ce_recovered_zero", rep.ce_recovered_zero.unwrap(), &d["ce_recovered_zero"]);
        close("ce_recovered_mean", rep.ce_recovered_mean.unwrap(), &d["ce_recovered_mean"]);
        close("kl_spliced", rep.kl_spliced, &np["kl_spliced"]);
        close("kl_zero", rep.kl_zero_ablation.unwrap(), &np["kl_zero"]);
        close("kl_mean", rep.kl_mean_ablation.unwrap(), &np["kl_mean"]);
        close("kl_recovered_zero", rep.kl_recovered_zero.unwrap(), &np["kl_recovered_zero"]);
        close("kl_recovered_mean", rep.kl_recovered_mean.unwrap(), &np["kl_recovered_mean"]);
        close("top1_agreement", rep.top1_agreement, &np["top1_agreement"]);
        if with_labels {
            close("accuracy_clean", rep.accuracy_clean.unwrap(), &np["accuracy_clean"]);
            close("accuracy_spliced", rep.accuracy_spliced.unwrap(), &np["accuracy_spliced"]);
            assert_eq!(rep.ce_target, "labels");
        } else {
            assert_eq!(rep.ce_target, "clean prediction");
            assert!(rep.accuracy_clean.is_none());
        }
    }
    // Mixing batches with and without labels is refused.
    let mut m = DownstreamMetrics::new();
    m.update(&l.clean, &l.spliced, None, None, Some(&labels)).unwrap();
    assert_eq!(m.update(&l.clean, &l.spliced, None, None, None).unwrap_err().code(), "E_ARGUMENT");
}
