//! Modules spliced into the forward pass (hooks/splice.rs) against the same module applied by hand.
//! The module is a tiny linear encoder / ReLU / linear decoder written here with fixed weights; the
//! expected values come from its naive computation in float64 on activations recorded by a plain
//! run, put back into a plain run with a `set` intervention. Checks: the output equals the module
//! applied at the hook (all tokens, class token, patches; an SAE at a head site; a transcoder that
//! reads one hook and writes another); with the error term the model's output is unchanged; the
//! module's sub-hooks are listed, shaped, cached and edited like any hook; misuse is refused with
//! its code. Needs fixtures/models/vit-tiny-cls and its reference pixels.

mod common;
use common::{load, reference};
use prisma_core::analysis::dla::{direct_logit_attribution, DlaOptions};
use prisma_core::analysis::lens::{logit_lens, LensOptions, LensSite};
use prisma_core::analysis::metric::MetricSpec;
use prisma_core::analysis::patching::{activation_patching, PatchBy, PatchOptions, PatchWhat};
use prisma_core::hooks::{HookModule, HookPoint, SpliceSpec, SubHook, SubHooks, Tokens};
use prisma_core::interventions::{ActionKind, InterventionSpec, Selection};
use prisma_core::{Model, RunOutput, RunRequest};
use std::collections::HashMap;
use tch::{IndexOp, Kind, Tensor};

/// Float rounding between the spliced run and the run with the hand-computed value set in.
const TOL: f64 = 1e-5;

/// ReLU(x W_enc + b_enc) W_dec + b_dec, weights fixed by a formula (no random state shared across
/// tests).
struct TinySae {
    w_enc: Tensor,
    b_enc: Tensor,
    w_dec: Tensor,
    b_dec: Tensor,
    /// Leaves out the ActsPre hook (a module breaking the contract).
    skip_acts_pre: bool,
}

fn fixed(shape: &[i64], phase: f64, scale: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    Tensor::arange(n, (Kind::Float, tch::Device::Cpu))
        .f_mul_scalar(0.731)
        .unwrap()
        .f_add_scalar(phase)
        .unwrap()
        .sin()
        .f_mul_scalar(scale)
        .unwrap()
        .reshape(shape)
}

impl TinySae {
    fn new(d_in: i64, d_sae: i64, d_out: i64) -> Self {
        TinySae {
            w_enc: fixed(&[d_in, d_sae], 0.1, 0.4),
            b_enc: fixed(&[d_sae], 1.3, 0.2),
            w_dec: fixed(&[d_sae, d_out], 2.9, 0.3),
            b_dec: fixed(&[d_out], 0.7, 0.1),
            skip_acts_pre: false,
        }
    }

    fn share(&self) -> Self {
        TinySae {
            w_enc: self.w_enc.shallow_clone(),
            b_enc: self.b_enc.shallow_clone(),
            w_dec: self.w_dec.shallow_clone(),
            b_dec: self.b_dec.shallow_clone(),
            skip_acts_pre: self.skip_acts_pre,
        }
    }

    /// The naive computation, in float64: (pre-activations, activations, reconstruction).
    fn by_hand(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let d = |t: &Tensor| t.to_kind(Kind::Double);
        let pre = d(x).matmul(&d(&self.w_enc)) + d(&self.b_enc);
        let post = pre.relu();
        let recons = self.decode_by_hand(&post);
        (pre, post, recons)
    }

    fn decode_by_hand(&self, acts: &Tensor) -> Tensor {
        acts.to_kind(Kind::Double).matmul(&self.w_dec.to_kind(Kind::Double)) + self.b_dec.to_kind(Kind::Double)
    }
}

impl HookModule for TinySae {
    fn d_in(&self) -> i64 {
        self.w_enc.size()[0]
    }
    fn d_sae(&self) -> i64 {
        self.w_enc.size()[1]
    }
    fn d_out(&self) -> i64 {
        self.w_dec.size()[1]
    }
    fn encode(&self, x: &Tensor, hooks: &mut SubHooks) -> prisma_core::Result<Tensor> {
        let pre = x.f_matmul(&self.w_enc)?.f_add(&self.b_enc)?;
        let pre = if self.skip_acts_pre { pre } else { hooks.hook(SubHook::ActsPre, pre)? };
        hooks.hook(SubHook::ActsPost, pre.f_relu()?)
    }
    fn decode(&self, acts: &Tensor, hooks: &mut SubHooks) -> prisma_core::Result<Tensor> {
        hooks.hook(SubHook::Recons, acts.f_matmul(&self.w_dec)?.f_add(&self.b_dec)?)
    }
}

fn spec(sae: &TinySae, hook: &str, tokens: Tokens, use_error_term: bool) -> SpliceSpec {
    SpliceSpec { tokens, use_error_term, ..SpliceSpec::new(sae.share(), hook) }
}

fn pixels() -> Tensor {
    reference("vit-tiny-cls.safetensors").remove("pixel_values").unwrap()
}

#[derive(Default)]
struct Run {
    cache: Vec<&'static str>,
    interventions: Vec<InterventionSpec>,
    tensors: Vec<(&'static str, Tensor)>,
    splices: Vec<SpliceSpec>,
}

fn run(model: &Model, pixels: &Tensor, r: Run) -> prisma_core::Result<RunOutput> {
    model.run(RunRequest {
        pixels: Some(pixels.shallow_clone()),
        cache: r.cache.iter().map(|s| s.to_string()).collect(),
        interventions: r.interventions,
        tensors: r.tensors.into_iter().map(|(k, t)| (k.to_string(), t)).collect::<HashMap<_, _>>(),
        splices: r.splices,
        ..Default::default()
    })
}

fn cached(out: &RunOutput, name: &str) -> Tensor {
    let found: Vec<&Tensor> = out.cache.iter().filter(|(p, _)| p.to_string() == name).map(|(_, t)| t).collect();
    assert_eq!(found.len(), 1, "'{name}' recorded {} times", found.len());
    found[0].shallow_clone()
}

fn names(out: &RunOutput) -> Vec<String> {
    out.cache.iter().map(|(p, _)| p.to_string()).collect()
}

/// Fails on a shape mismatch, on any difference over `tol`, and on NaN (a NaN difference is not <= tol).
fn assert_close(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let worst = (got.to_kind(Kind::Double) - want.to_kind(Kind::Double)).abs().max().double_value(&[]);
    assert!(worst <= tol, "{what}: differs by {worst:e}");
}

fn set(hook: &str, tensor: &str) -> InterventionSpec {
    InterventionSpec {
        hook: hook.into(),
        select: Selection::default(),
        action: ActionKind::Set,
        factor: None,
        tensor: Some(tensor.into()),
        coeff: None,
    }
}

/// The logits of a plain run with `value` set at `hook`.
fn logits_with(model: &Model, pixels: &Tensor, hook: &'static str, value: &Tensor) -> Tensor {
    run(model, pixels, Run { interventions: vec![set(hook, "v")], tensors: vec![("v", value.to_kind(Kind::Float))], ..Default::default() })
        .unwrap()
        .output
}

fn plain_value(model: &Model, pixels: &Tensor, hook: &'static str) -> Tensor {
    cached(&run(model, pixels, Run { cache: vec![hook], ..Default::default() }).unwrap(), hook)
}

const RESID: &str = "blocks.0.hook_resid_post";

/// The fixture model, its pixels, a 32 → 48 → 32 module, and the model's own value at `RESID`.
fn at_resid() -> (Model, Tensor, TinySae, Tensor) {
    let model = load("vit-tiny-cls");
    let px = pixels();
    let x = plain_value(&model, &px, RESID);
    (model, px, TinySae::new(32, 48, 32), x)
}

#[test]
fn output_equals_the_module_applied_at_the_hook() {
    let (model, px, sae, x) = at_resid();
    let (pre, post, recons) = sae.by_hand(&x);
    let spliced =
        run(&model, &px, Run { cache: vec!["blocks.*"], splices: vec![spec(&sae, RESID, Tokens::All, false)], ..Default::default() })
            .unwrap();
    // The model's own hook keeps the value the module reads; the module's values are its sub-hooks.
    assert_close(&cached(&spliced, RESID), &x, TOL, "hook_resid_post");
    assert_close(&cached(&spliced, &format!("{RESID}.hook_sae_input")), &x, TOL, "hook_sae_input");
    assert_close(&cached(&spliced, &format!("{RESID}.hook_sae_acts_pre")), &pre, TOL, "hook_sae_acts_pre");
    assert_close(&cached(&spliced, &format!("{RESID}.hook_sae_acts_post")), &post, TOL, "hook_sae_acts_post");
    assert_close(&cached(&spliced, &format!("{RESID}.hook_sae_recons")), &recons, TOL, "hook_sae_recons");
    assert_close(&cached(&spliced, &format!("{RESID}.hook_sae_output")), &recons, TOL, "hook_sae_output");
    // What goes on is the reconstruction.
    assert_close(&cached(&spliced, "blocks.1.hook_resid_pre"), &recons, TOL, "next block's input");
    assert!(!names(&spliced).iter().any(|n| n.ends_with("hook_sae_error")), "no error term was asked for");
    let expected = logits_with(&model, &px, RESID, &recons);
    assert_close(&spliced.output, &expected, TOL, "logits");
    // Not a no-op: the reconstruction changes the output.
    let plain = run(&model, &px, Run::default()).unwrap().output;
    assert!((&spliced.output - &plain).abs().max().double_value(&[]) > 1e-2);
}

#[test]
fn with_the_error_term_the_output_is_unchanged() {
    let model = load("vit-tiny-cls");
    let px = pixels();
    let sae = TinySae::new(32, 48, 32);
    let plain = run(&model, &px, Run { cache: vec!["*"], ..Default::default() }).unwrap();
    let spliced =
        run(&model, &px, Run { cache: vec!["*"], splices: vec![spec(&sae, RESID, Tokens::All, true)], ..Default::default() }).unwrap();
    assert_close(&spliced.output, &plain.output, TOL, "logits");
    for (point, value) in &plain.cache {
        assert_close(&cached(&spliced, &point.to_string()), value, TOL, &point.to_string());
    }
    let x = cached(&plain, RESID);
    let (_, _, recons) = sae.by_hand(&x);
    assert_close(&cached(&spliced, &format!("{RESID}.hook_sae_error")), &(x.to_kind(Kind::Double) - &recons), TOL, "hook_sae_error");
    assert_eq!(spliced.cache.len(), plain.cache.len() + 6, "the six sub-hooks are recorded besides the model's");
}

#[test]
fn an_edit_of_the_features_changes_the_output_as_computed_by_hand() {
    let (model, px, sae, x) = at_resid();
    let (_, post, recons) = sae.by_hand(&x);
    // Scale every feature of the class token by 2.5 and zero feature 5 at patch 3, keeping the error term.
    let acts = format!("{RESID}.hook_sae_acts_post");
    let edits = vec![
        InterventionSpec {
            hook: acts.clone(),
            select: Selection { pos: Some(vec![0]), ..Default::default() },
            action: ActionKind::Scale,
            factor: Some(2.5),
            tensor: None,
            coeff: None,
        },
        InterventionSpec {
            hook: acts.clone(),
            select: Selection { pos: Some(vec![3]), ..Default::default() },
            action: ActionKind::Set,
            factor: None,
            tensor: Some("feature5".into()),
            coeff: None,
        },
    ];
    let feature5 = post.i((.., 3..4, ..)).copy();
    let _ = feature5.i((.., .., 5)).fill_(0.0);
    let spliced = run(
        &model,
        &px,
        Run {
            cache: vec![Box::leak(acts.clone().into_boxed_str()), "blocks.1.hook_resid_pre"],
            interventions: edits,
            tensors: vec![("feature5", feature5.to_kind(Kind::Float))],
            splices: vec![spec(&sae, RESID, Tokens::All, true)],
        },
    )
    .unwrap();
    let edited = post.copy();
    let _ = edited.i((.., 0..1, ..)).g_mul_scalar_(2.5);
    let _ = edited.i((.., 3, 5)).fill_(0.0);
    assert_close(&cached(&spliced, &acts), &edited, TOL, "edited acts_post is what is recorded");
    let by_hand = sae.decode_by_hand(&edited) + (x.to_kind(Kind::Double) - &recons);
    assert_close(&cached(&spliced, "blocks.1.hook_resid_pre"), &by_hand, TOL, "next block's input");
    assert_close(&spliced.output, &logits_with(&model, &px, RESID, &by_hand), TOL, "logits");
    // Heads are not an axis of the features.
    let head = InterventionSpec { select: Selection { head: Some(vec![0]), ..Default::default() }, ..set(&acts, "feature5") };
    let e = run(&model, &px, Run { interventions: vec![head], splices: vec![spec(&sae, RESID, Tokens::All, true)], ..Default::default() });
    assert_eq!(e.err().map(|e| e.code()), Some("E_INTERVENTION"));
}

#[test]
fn token_selection_applies_the_module_to_those_tokens_only() {
    let mut model = load("vit-tiny-cls");
    let plain = load("vit-tiny-cls");
    let px = pixels();
    let batch = px.size()[0];
    let sae = TinySae::new(32, 48, 32);
    let x = plain_value(&plain, &px, RESID).to_kind(Kind::Double);
    for (tokens, range) in [(Tokens::Class, 0..1), (Tokens::Patches, 1..17), (Tokens::All, 0..17)] {
        model.clear_splices();
        model.splice(&spec(&sae, RESID, tokens, false)).unwrap();
        // The sub-hooks are listed right after their point, in SAELens's order.
        let points: Vec<String> = model.hook_points().iter().map(HookPoint::to_string).collect();
        let at = points.iter().position(|p| p == RESID).unwrap();
        let subs = ["hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output"];
        assert_eq!(points[at + 1..at + 6], subs.map(|s| format!("{RESID}.{s}")));
        assert_eq!(points.len(), plain.hook_points().len() + 5);
        let out =
            run(&model, &px, Run { cache: vec!["blocks.0.hook_resid_post*", "blocks.1.hook_resid_pre"], ..Default::default() }).unwrap();
        assert_eq!(out.cache.len(), 7, "{tokens:?}: a glob sees the sub-hooks: {:?}", names(&out));
        for (point, value) in &out.cache {
            assert_eq!(value.size(), model.hook_shape(*point, batch), "{tokens:?}: shape of {point}");
        }
        let n = range.end - range.start;
        assert_eq!(model.hook_shape(HookPoint::parse(&format!("{RESID}.hook_sae_acts_post")).unwrap(), batch), vec![batch, n, 48]);
        let (_, _, recons) = sae.by_hand(&x.i((.., range.clone(), ..)));
        let expected = Tensor::cat(&[x.i((.., 0..range.start, ..)), recons, x.i((.., range.end.., ..))], 1);
        assert_close(&cached(&out, "blocks.1.hook_resid_pre"), &expected, TOL, &format!("{tokens:?}: next block's input"));
        assert_close(&out.output, &logits_with(&plain, &px, RESID, &expected), TOL, &format!("{tokens:?}: logits"));
    }
    model.clear_splices();
    assert_eq!(model.hook_points(), plain.hook_points());
}

#[test]
fn a_module_at_a_head_site_reads_the_heads_flattened() {
    let model = load("vit-tiny-cls");
    let px = pixels();
    let z = "blocks.1.attn.hook_z";
    // 4 heads × 8 = 32 values per token.
    let sae = TinySae::new(32, 40, 32);
    let x = plain_value(&model, &px, z);
    let size = x.size();
    let (_, post, recons) = sae.by_hand(&x.reshape([size[0], size[1], 32]));
    let out = run(
        &model,
        &px,
        Run { cache: vec!["blocks.1.attn.hook_z.*"], splices: vec![spec(&sae, z, Tokens::All, false)], ..Default::default() },
    )
    .unwrap();
    assert_close(&cached(&out, &format!("{z}.hook_sae_acts_post")), &post, TOL, "acts_post");
    assert_close(&cached(&out, &format!("{z}.hook_sae_recons")), &recons, TOL, "recons [batch, pos, 32]");
    let back = recons.reshape(size.as_slice());
    assert_close(&cached(&out, &format!("{z}.hook_sae_output")), &back, TOL, "output [batch, pos, heads, d_head]");
    assert_close(&out.output, &logits_with(&model, &px, "blocks.1.attn.hook_z", &back), TOL, "logits");
}

#[test]
fn a_transcoder_reads_one_hook_and_writes_another() {
    let model = load("vit-tiny-cls");
    let px = pixels();
    let (read, write) = ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out");
    let tc = TinySae::new(32, 64, 32);
    let x = plain_value(&model, &px, read);
    let (_, _, recons) = tc.by_hand(&x);
    let transcoder = |error_term| SpliceSpec { out: Some(write.into()), ..spec(&tc, read, Tokens::All, error_term) };
    let out = run(&model, &px, Run { cache: vec!["blocks.0.*"], splices: vec![transcoder(false)], ..Default::default() }).unwrap();
    let recorded = names(&out);
    let at = |n: &str| recorded.iter().position(|r| r == n).unwrap_or_else(|| panic!("{n} not recorded"));
    // The encoder's hooks at the point read, the decoder's at the point written; all named after the point read.
    assert!(at(read) < at(&format!("{read}.hook_sae_acts_post")));
    assert!(at(&format!("{read}.hook_sae_acts_post")) < at("blocks.0.mlp.hook_pre"));
    assert!(at(write) < at(&format!("{read}.hook_sae_recons")));
    assert!(at(&format!("{read}.hook_sae_output")) < at("blocks.0.hook_resid_post"));
    assert_close(&cached(&out, write), &plain_value(&model, &px, write), TOL, "the MLP still runs: its own output is recorded");
    assert_close(&cached(&out, &format!("{read}.hook_sae_output")), &recons, TOL, "output");
    assert_close(&out.output, &logits_with(&model, &px, write, &recons), TOL, "logits");
    // With the error term (true MLP output − reconstruction) the output is the model's.
    let kept = run(&model, &px, Run { splices: vec![transcoder(true)], ..Default::default() }).unwrap();
    assert_close(&kept.output, &run(&model, &px, Run::default()).unwrap().output, TOL, "logits with the error term");
}

#[test]
fn misuse_is_refused_with_its_code() {
    let mut model = load("vit-tiny-cls");
    let px = pixels();
    let sae = TinySae::new(32, 48, 32);
    let code = |r: prisma_core::Result<RunOutput>| r.err().map(|e| e.code());
    let with = |splices: Vec<SpliceSpec>, cache: Vec<&'static str>| Run { cache, splices, ..Default::default() };
    // Widths that do not fit the hook.
    assert_eq!(code(run(&model, &px, with(vec![spec(&TinySae::new(31, 48, 31), RESID, Tokens::All, false)], vec![]))), Some("E_SHAPE"));
    assert_eq!(code(run(&model, &px, with(vec![spec(&TinySae::new(32, 48, 64), RESID, Tokens::All, false)], vec![]))), Some("E_SHAPE"));
    // Hooks the model lacks, or a layer it lacks.
    assert_eq!(code(run(&model, &px, with(vec![spec(&sae, "blocks.0.hook_resid", Tokens::All, false)], vec![]))), Some("E_UNKNOWN_HOOK"));
    assert_eq!(
        code(run(&model, &px, with(vec![spec(&sae, "blocks.7.hook_resid_post", Tokens::All, false)], vec![]))),
        Some("E_LAYER_RANGE")
    );
    // Sub-hooks exist only where a module is spliced (and the error only with the error term).
    assert_eq!(code(run(&model, &px, with(vec![], vec!["blocks.0.hook_resid_post.hook_sae_acts_post"]))), Some("E_UNKNOWN_HOOK"));
    let spliced = || vec![spec(&sae, RESID, Tokens::All, false)];
    assert_eq!(code(run(&model, &px, with(spliced(), vec!["blocks.1.hook_resid_post.hook_sae_acts_post"]))), Some("E_UNKNOWN_HOOK"));
    assert_eq!(code(run(&model, &px, with(spliced(), vec!["blocks.0.hook_resid_post.hook_sae_error"]))), Some("E_UNKNOWN_HOOK"));
    // One module per hook; a module cannot write a hook before the one it reads; token selection needs a token axis.
    let twice = vec![spec(&sae, RESID, Tokens::All, false), spec(&sae, RESID, Tokens::Class, false)];
    assert_eq!(code(run(&model, &px, with(twice, vec![]))), Some("E_ARGUMENT"));
    let backwards = SpliceSpec { out: Some("blocks.0.hook_resid_pre".into()), ..spec(&sae, RESID, Tokens::All, false) };
    assert_eq!(code(run(&model, &px, with(vec![backwards], vec![]))), Some("E_ARGUMENT"));
    let logits = spec(&TinySae::new(5, 8, 5), "hook_logits", Tokens::Class, false);
    assert_eq!(code(run(&model, &px, with(vec![logits], vec![]))), Some("E_ARGUMENT"));
    // A module that skips one of its hooks would leave a listed hook unrecorded.
    let mut broken = TinySae::new(32, 48, 32);
    broken.skip_acts_pre = true;
    assert_eq!(code(run(&model, &px, with(vec![spec(&broken, RESID, Tokens::All, false)], vec![]))), Some("E_INTERNAL"));
    // Techniques that run their own forwards refuse a spliced model instead of leaving the module out.
    model.splice(&spec(&sae, RESID, Tokens::All, true)).unwrap();
    assert_eq!(model.splice(&spec(&sae, RESID, Tokens::All, true)).err().map(|e| e.code()), Some("E_ARGUMENT"));
    let (clean, corrupt) = (px.i(0..1), px.i(1..2));
    let metric = MetricSpec { target: 2, baseline: None };
    let patch = PatchOptions { what: PatchWhat::ResidPost, by: PatchBy::LayerPos, metric, chunk: None, layers: None, fast_linear: false };
    assert_eq!(activation_patching(&model, &clean, &corrupt, &patch).err().map(|e| e.code()), Some("E_UNSUPPORTED"));
    let lens = LensOptions { target: Some(2), sites: vec![LensSite::ResidPost], top_k: 3 };
    assert_eq!(logit_lens(&model, &clean, &[None], &lens).err().map(|e| e.code()), Some("E_UNSUPPORTED"));
    let dla = DlaOptions { metric, per_position: false };
    assert_eq!(direct_logit_attribution(&model, &clean, &dla).err().map(|e| e.code()), Some("E_UNSUPPORTED"));
    model.clear_splices();
    assert!(activation_patching(&model, &clean, &corrupt, &patch).is_ok());
}
