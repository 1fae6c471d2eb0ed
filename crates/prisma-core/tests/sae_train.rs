//! SAE training against sae-lens 6.54.12's training classes (fixtures/make_sae_train_reference.py):
//! one step per architecture from the same weights and batch — loss terms, gradients after
//! clipping's input, the weights after Adam, AuxK over dead features, the BatchTopK threshold, the
//! decoder constraint — and the learning-rate schedule; then determinism, resumption after a stop,
//! and several SAEs from one pass.

mod common;

use common::reference;
use prisma_core::sae::run::{train, RunOptions, TensorSource};
use prisma_core::sae::train::{SaeTrainConfig, SaeTrainer};
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(a, b)
}

fn config(arch: &str) -> SaeTrainConfig {
    serde_json::from_value(serde_json::json!({
        "architecture": arch, "dIn": 32, "dSae": 64, "lr": 1e-3, "totalSteps": 10,
        "l1Coefficient": 0.3, "l0Coefficient": 0.5, "k": 6.0,
    }))
    .unwrap()
}

/// (reference name, architecture, config change)
type Case = (&'static str, &'static str, fn(&mut SaeTrainConfig));

const PARAMS: [&str; 8] = ["W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag"];

#[test]
fn one_step_per_architecture_matches_sae_lens() {
    let r = reference("sae-train.safetensors");
    let x = &r["x"];
    let dead = &r["dead"];
    let cases: [Case; 9] = [
        ("standard", "standard", |_| {}),
        ("standard-unit-norm", "standard", |c| c.unit_norm_decoder = true),
        ("topk", "topk", |_| {}),
        ("topk-plain", "topk", |c| c.rescale_acts_by_decoder_norm = false),
        ("batchtopk", "batchtopk", |_| {}),
        ("topk-sparse-edge", "topk", |_| {}),
        ("batchtopk-sparse-edge", "batchtopk", |_| {}),
        ("jumprelu", "jumprelu", |_| {}),
        ("gated", "gated", |_| {}),
    ];
    let runs = cases.iter().flat_map(|c| {
        // TopK and BatchTopK run both ways: the sparse step (default) and dense products + autograd.
        let both = matches!(c.1, "topk" | "batchtopk");
        [(c, false), (c, true)].into_iter().filter(move |(_, dense)| both || !dense)
    });
    for ((name, arch, tweak), dense) in runs {
        let (name, arch) = (*name, *arch);
        let mut cfg = config(arch);
        tweak(&mut cfg);
        cfg.dense_products = dense;
        let weights: Vec<(&'static str, Tensor)> =
            PARAMS.iter().filter_map(|p| r.get(&format!("{name}.before.{p}")).map(|t| (*p, t.shallow_clone()))).collect();
        let mut t = SaeTrainer::from_tensors(cfg, weights).unwrap();
        // 20 features (5 in the edge cases) dead for longer than the window: AuxK and its scale.
        let mask = if name.ends_with("sparse-edge") { &r["dead_few"] } else { dead };
        let since = mask.f_mul_scalar(2000.0).unwrap();
        t.set_steps_since_fired(&since).unwrap();
        if arch == "batchtopk" {
            t.topk_threshold = 0.05;
        }
        if name.ends_with("sparse-edge") {
            // The case exists for these: some selected entries are not positive.
            let pre = x.matmul(t.parameter("W_enc").unwrap()) + t.parameter("b_enc").unwrap();
            let positive_per_row = pre.gt(0.0).sum_dim_intlist([-1i64].as_slice(), false, Kind::Int64);
            assert!(positive_per_row.lt(6).any().int64_value(&[]) != 0, "{name}: every row has k positive pre-activations");
        }
        let m = t.train_step(x).unwrap();
        let want = |k: &str| r.get(&format!("{name}.loss.{k}")).map(|t| t.double_value(&[0]));
        let rel = |got: f64, want: f64| (got - want).abs() / want.abs().max(1.0);
        let mut report = vec![];
        for (got, key) in [
            (m.loss, "total"),
            (m.mse_loss, "mse_loss"),
            (m.sparsity_loss, "l1_loss"),
            (m.sparsity_loss, "l0_loss"),
            (m.aux_loss, "auxiliary_reconstruction_loss"),
        ] {
            if let Some(w) = want(key) {
                let d = rel(got, w);
                assert!(d <= 1e-5, "{name} {key}: {got} vs {w} (rel {d:e})");
                report.push(format!("{key} {d:.1e}"));
            }
        }
        let mut worst: f64 = 0.0;
        let mut worst_grad: f64 = 0.0;
        for p in PARAMS {
            let Some(after) = r.get(&format!("{name}.after.{p}")) else { continue };
            let got = t.parameter(p).unwrap();
            let d = diff(got, after);
            assert!(d <= 1e-5, "{name} {p} after one step: max |diff| {d:e}");
            worst = worst.max(d);
            // Gradients (before clipping; the reference's grads are read before clip_grad_norm_).
            let g = t.last_gradient(p).unwrap();
            let gw = &r[&format!("{name}.grad.{p}")];
            if name != "standard-unit-norm" {
                let scale = gw.abs().max().double_value(&[]).max(1.0);
                let dg = diff(g, gw) / scale;
                assert!(dg <= 1e-5, "{name} grad {p}: rel {dg:e}");
                worst_grad = worst_grad.max(dg);
            }
        }
        report.push(format!("grads (rel) {worst_grad:.1e}  weights after step {worst:.1e}"));
        if let Some(th) = r.get(&format!("{name}.topk_threshold")) {
            let d = (t.topk_threshold - th.double_value(&[0])).abs();
            assert!(d <= 1e-6, "{name} topk_threshold {} vs {}", t.topk_threshold, th.double_value(&[0]));
            report.push(format!("topk_threshold {d:.1e}"));
        }
        if name == "standard-unit-norm" {
            let norms = t.parameter("W_dec").unwrap().norm_scalaropt_dim(2, [-1i64].as_slice(), false);
            assert!(diff(&norms, &norms.ones_like()) < 1e-6);
        }
        eprintln!("{:28} {}", format!("{name}{}", if dense { " (dense)" } else { "" }), report.join("  "));
    }
}

#[test]
fn learning_rate_schedule_matches_sae_lens() {
    let r = reference("sae-train.safetensors");
    for (sched, warm, decay) in [("cosineannealing", 5, 6), ("constant", 4, 0)] {
        let mut cfg = config("standard");
        cfg.lr_scheduler = sched.into();
        cfg.lr_warm_up_steps = warm;
        cfg.lr_decay_steps = decay;
        cfg.total_steps = 40;
        let want = Vec::<f64>::try_from(&r[&format!("lr.{sched}")]).unwrap();
        for (step, w) in want.iter().enumerate() {
            let got = cfg.lr_at(step as i64);
            // The reference file holds float32 (the reader's dtype): 1e-7 relative is its rounding.
            assert!((got - w).abs() <= 1e-7 * w, "{sched} step {step}: {got} vs {w}");
        }
    }
}

fn data() -> Tensor {
    // Real activations (vit-tiny-cls, 3 images x 17 tokens), repeated with noise to 2040 rows.
    let r = reference("vit-tiny-cls.safetensors");
    let x = r["blocks.1.hook_resid_post"].reshape([-1, 32]);
    tch::manual_seed(7);
    let rep = x.repeat([40, 1]);
    &rep + rep.randn_like() * 0.05
}

fn run_opts(dir: Option<std::path::PathBuf>, every: i64) -> RunOptions {
    RunOptions { batch_size: 64, buffer_rows: 512, seed: 3, checkpoint_every: every, checkpoint_dir: dir }
}

fn cfgs() -> Vec<SaeTrainConfig> {
    let mut a = config("topk");
    a.total_steps = 24;
    a.k = Some(4.0);
    a.b_dec_init = "geometric_median".into();
    let mut b = config("standard");
    b.total_steps = 24;
    b.l1_warm_up_steps = 5;
    b.lr_warm_up_steps = 3;
    b.lr_scheduler = "cosineannealing".into();
    b.normalize_activations = "expected_average_only_in".into();
    vec![a, b]
}

fn weights(saes: &[prisma_core::sae::Sae]) -> Vec<Tensor> {
    saes.iter().flat_map(|s| s.named_tensors().into_iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>()).collect()
}

#[test]
fn runs_are_deterministic_train_several_saes_and_resume_identically() {
    let d = data();
    let mut log: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let full = train(&mut TensorSource::new(d.shallow_clone(), 100), &cfgs(), &run_opts(None, 0), &mut |i, m| {
        log.entry(i).or_default().push(m.loss);
        assert!(m.explained_variance.is_finite() && m.l0 >= 0.0);
        Ok(())
    })
    .unwrap();
    assert_eq!(full.len(), 2);
    assert_eq!(log[&0].len(), 24);
    assert_eq!(log[&1].len(), 24);
    // Training reduces the loss.
    assert!(log[&0][23] < log[&0][0] && log[&1][23] < log[&1][0], "{log:?}");
    // Same seed, same weights.
    let again = train(&mut TensorSource::new(d.shallow_clone(), 100), &cfgs(), &run_opts(None, 0), &mut |_, _| Ok(())).unwrap();
    for (a, b) in weights(&full).iter().zip(weights(&again)) {
        assert_eq!(diff(a, &b), 0.0);
    }
    // A run stopped at step 10 (after its checkpoint at 10), then resumed, ends with the same weights.
    let dir = std::env::temp_dir().join(format!("prisma-sae-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stopped = train(&mut TensorSource::new(d.shallow_clone(), 100), &cfgs(), &run_opts(Some(dir.clone()), 5), &mut |_, m| {
        if m.step == 10 {
            return Err(prisma_core::PrismaError::Internal("killed".into()));
        }
        Ok(())
    });
    assert!(stopped.is_err());
    let mut steps = vec![];
    let resumed = train(&mut TensorSource::new(d.shallow_clone(), 100), &cfgs(), &run_opts(Some(dir.clone()), 5), &mut |i, m| {
        if i == 0 {
            steps.push(m.step);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(steps.first(), Some(&10), "resumes at the step after the last checkpoint");
    for (a, b) in weights(&full).iter().zip(weights(&resumed)) {
        assert_eq!(diff(a, &b), 0.0, "resumed weights differ");
    }
    // A checkpoint of other configs is refused, not silently mixed.
    let mut other = cfgs();
    other[0].k = Some(5.0);
    let e = train(&mut TensorSource::new(d.shallow_clone(), 100), &other, &run_opts(Some(dir.clone()), 5), &mut |_, _| Ok(())).unwrap_err();
    assert_eq!(e.code(), "E_TENSOR_FILE", "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    // The trained SAEs are ordinary SAELens SAEs (TopK saved with its decoder norms folded).
    let x = d.narrow(0, 0, 16);
    let topk = &full[0];
    assert!(topk.encode(&x).unwrap().ne(0.0).sum(Kind::Int64).int64_value(&[]) <= 16 * 4);
    let norms = topk.decoder_norms().unwrap();
    assert!(diff(&norms, &norms.ones_like()) < 1e-5);
}

#[test]
fn geometric_median_is_the_weiszfeld_fixed_point() {
    // Four corners of a square plus a far outlier: the mean is dragged, the median barely moves.
    let pts = Tensor::from_slice(&[0.0f32, 0.0, 2.0, 0.0, 0.0, 2.0, 2.0, 2.0, 100.0, 100.0]).reshape([5, 2]);
    let m = prisma_core::sae::train::geometric_median(&pts, 200, 1e-20).unwrap();
    let pts = pts.to_kind(Kind::Double);
    let m = m.to_kind(Kind::Double);
    let obj = |c: &Tensor| (&pts - c).norm_scalaropt_dim(2, [-1i64].as_slice(), false).sum(Kind::Double).double_value(&[]);
    let mean = pts.mean_dim([0i64].as_slice(), false, Kind::Double);
    assert!(obj(&m) < obj(&mean));
    // No point nearby does better (a naive search around it).
    for dx in [-1e-2f64, 1e-2] {
        for dy in [-1e-2f64, 1e-2] {
            let probe = &m + Tensor::from_slice(&[dx, dy]);
            assert!(obj(&m) <= obj(&probe) + 1e-7, "{} vs {}", obj(&m), obj(&probe));
        }
    }
}

#[test]
fn bad_training_configs_are_refused_with_one_message() {
    let mut c = config("hyper");
    assert_eq!(SaeTrainer::new(c.clone()).err().unwrap().code(), "E_ARGUMENT");
    c = config("topk");
    c.k = Some(0.0);
    assert!(SaeTrainer::new(c.clone()).err().unwrap().to_string().contains("k must be"));
    c = config("topk");
    c.normalize_activations = "layer_norm".into();
    assert_eq!(SaeTrainer::new(c).err().unwrap().code(), "E_ARGUMENT");
    let mut t = SaeTrainer::new(config("standard")).unwrap();
    assert_eq!(t.train_step(&Tensor::zeros([4, 31], (Kind::Float, tch::Device::Cpu))).unwrap_err().code(), "E_SHAPE");
}

#[test]
fn resampling_reinitialises_dead_relu_features_from_badly_reconstructed_inputs() {
    let x = data().narrow(0, 0, 64);
    let mut cfg = config("standard");
    cfg.resample_every = 1;
    // Features 0..10 can never fire (a bias far below any pre-activation).
    let fresh = SaeTrainer::new(cfg.clone()).unwrap();
    let named: Vec<(&'static str, Tensor)> =
        ["W_enc", "b_enc", "W_dec", "b_dec"].iter().map(|n| (*n, fresh.parameter(n).unwrap().detach().copy())).collect();
    let _ = named[1].1.narrow(0, 0, 10).fill_(-1e6);
    let mut t = SaeTrainer::from_tensors(cfg, named).unwrap();
    // ... and have been silent for longer than the dead-feature window; the others have not.
    let since = Tensor::zeros([64], (Kind::Float, tch::Device::Cpu));
    let _ = since.narrow(0, 0, 10).fill_(2000.0);
    t.set_steps_since_fired(&since).unwrap();
    t.train_step(&x).unwrap();
    let b_dec = t.parameter("b_dec").unwrap().detach();
    let inputs = &x - &b_dec;
    let unit = &inputs / inputs.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
    let w_dec = t.parameter("W_dec").unwrap().detach();
    for j in 0..64 {
        // Resampled rows are some input's direction; the others are not.
        let best = unit.matmul(&w_dec.get(j)).max().double_value(&[]);
        let norm = w_dec.get(j).norm().double_value(&[]);
        if j < 10 {
            assert!((best - 1.0).abs() < 1e-5 && (norm - 1.0).abs() < 1e-5, "feature {j}: cos {best}, norm {norm}");
            assert_eq!(t.parameter("b_enc").unwrap().double_value(&[j]), 0.0);
        } else {
            assert!(best < 0.999, "feature {j} was alive and should keep its direction");
        }
    }
    // Resampling is refused for other architectures.
    let mut c = config("topk");
    c.resample_every = 10;
    assert_eq!(SaeTrainer::new(c).err().unwrap().code(), "E_ARGUMENT");
}
