//! The activation cache: rows read back equal the activations a plain run records (exact in f32,
//! the f16 cast of them in f16), a run interrupted mid-shard resumes to the same bytes, parts merge
//! into the whole, and foreign, truncated or mismatched caches are refused with one error.

mod common;

use prisma_core::model::RunRequest;
use prisma_core::sae::cache::{merge, CachePart, CacheReader, CacheSpec, CacheWriter};
use prisma_core::sae::run::ActivationSource;
use prisma_core::sae::TokenSelection;
use prisma_core::Model;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

const HOOKS: [&str; 2] = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"];

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("prisma-sae-cache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn pixels(model: &Model, n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    let c = &model.vit.cfg;
    Tensor::randn([n, c.num_channels, c.image_size[0], c.image_size[1]], (Kind::Float, tch::Device::Cpu))
}

fn spec(hooks: &[&str], tokens: TokenSelection, dtype: &str, per_shard: i64, images: i64, inputs: &str) -> CacheSpec {
    CacheSpec {
        hooks: hooks.iter().map(|h| h.to_string()).collect(),
        tokens,
        dtype: dtype.into(),
        images_per_shard: per_shard,
        model_fingerprint: "model-a".into(),
        preprocessing: "pre".into(),
        part: CachePart { shard: None, images, inputs: inputs.into(), shards: 0 },
        info: serde_json::Value::Null,
    }
}

/// Writes `px` in batches of `batch` images.
fn write(dir: &Path, model: &Model, spec: CacheSpec, px: &Tensor, batch: i64) {
    let mut w = CacheWriter::open(dir, model, spec).unwrap();
    let n = px.size()[0];
    let mut i = w.images_done();
    while i < n {
        let m = batch.min(n - i);
        w.append(model, &px.narrow(0, i, m)).unwrap();
        i += m;
    }
    w.finish().unwrap();
}

fn read_all(dir: &Path, hook: &str, batch: i64) -> Tensor {
    let reader = CacheReader::open(dir).unwrap();
    let mut source = reader.source(hook, batch).unwrap();
    let mut parts = Vec::new();
    while let Some(b) = source.next_batch().unwrap() {
        assert!(b.size()[0] <= batch);
        parts.push(b);
    }
    Tensor::cat(&parts, 0)
}

/// What plain runs over `px` in batches of `batch` record at `hook`, at the selected tokens, as
/// [images × tokens, d] rows (the same batches as the cache's: a product over other rows may take
/// another kernel and round differently).
fn recorded(model: &Model, px: &Tensor, hook: &str, tokens: TokenSelection, batch: i64) -> Tensor {
    let n = px.size()[0];
    let parts: Vec<Tensor> = (0..n)
        .step_by(batch as usize)
        .map(|i| {
            let chunk = px.narrow(0, i, batch.min(n - i));
            let out = model.run(RunRequest { pixels: Some(chunk), cache: vec![hook.into()], ..Default::default() }).unwrap();
            out.cache[0].1.shallow_clone()
        })
        .collect();
    let t = Tensor::cat(&parts, 0);
    let c = &model.vit.cfg;
    let t = match tokens {
        TokenSelection::All => t,
        TokenSelection::Cls => t.narrow(1, 0, 1),
        TokenSelection::Patches => t.narrow(1, c.n_prefix_tokens(), c.n_pos() - c.n_prefix_tokens()),
    };
    let d = t.size()[2];
    t.reshape([-1, d])
}

fn bytes_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    files.sort();
    files.iter().map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(p).unwrap())).collect()
}

#[test]
fn read_back_equals_recorded_activations() {
    let model = common::load("vit-tiny-cls");
    let px = pixels(&model, 7, 1);
    for tokens in [TokenSelection::All, TokenSelection::Cls, TokenSelection::Patches] {
        let dir = tmp(&format!("readback-{}", tokens.name()));
        // 3 images a shard, batches of 2: batches straddle shard boundaries; the last shard holds 1.
        write(&dir, &model, spec(&HOOKS, tokens, "f32", 3, 7, "in"), &px, 2);
        let meta = CacheReader::open(&dir).unwrap().meta;
        assert_eq!((meta.shards, meta.images), (3, 7));
        for hook in HOOKS {
            let want = recorded(&model, &px, hook, tokens, 2);
            let got = read_all(&dir, hook, 5);
            assert_eq!(got.kind(), Kind::Float);
            assert_eq!(got.size(), want.size());
            assert!(got.equal(&want), "{hook} {}: cache differs from the recorded activations", tokens.name());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn half_precision_caches_hold_the_cast_activations() {
    let model = common::load("vit-tiny-cls");
    let px = pixels(&model, 4, 2);
    for (dtype, kind) in [("f16", Kind::Half), ("bf16", Kind::BFloat16)] {
        let dir = tmp(&format!("half-{dtype}"));
        write(&dir, &model, spec(&HOOKS[..1], TokenSelection::All, dtype, 2, 4, "in"), &px, 3);
        let got = read_all(&dir, HOOKS[0], 8);
        assert_eq!(got.kind(), kind);
        let want = recorded(&model, &px, HOOKS[0], TokenSelection::All, 3).to_kind(kind);
        assert!(got.equal(&want), "{dtype} cache differs from the cast activations");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn stops_after_the_last_hooked_block() {
    let model = common::load("vit-tiny-cls");
    let dir = tmp("stop");
    let w = CacheWriter::open(&dir, &model, spec(&["blocks.0.hook_resid_post"], TokenSelection::All, "f32", 2, 2, "in")).unwrap();
    assert_eq!(w.stop_at_layer(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let model = common::load("vit-tiny-cls");
    let px = pixels(&model, 9, 3);
    let whole = tmp("resume-whole");
    // Batches of 2 in shards of 4: a resumed run (from a shard's start) forwards the same batches.
    write(&whole, &model, spec(&HOOKS, TokenSelection::Patches, "f32", 4, 9, "in"), &px, 2);

    let cut = tmp("resume-cut");
    {
        // Killed after 6 images: shard 0 (4 images) is complete, shard 1 half written (a .tmp).
        let mut w = CacheWriter::open(&cut, &model, spec(&HOOKS, TokenSelection::Patches, "f32", 4, 9, "in")).unwrap();
        for i in [0, 2, 4] {
            w.append(&model, &px.narrow(0, i, 2)).unwrap();
        }
        assert!(cut.join("shard-00001.safetensors.tmp").is_file());
    }
    assert!(CacheReader::open(&cut).is_err(), "an unfinished cache is not read");
    let w = CacheWriter::open(&cut, &model, spec(&HOOKS, TokenSelection::Patches, "f32", 4, 9, "in")).unwrap();
    assert_eq!(w.images_done(), 4, "the complete shard is kept, the partial one written again");
    assert!(!cut.join("shard-00001.safetensors.tmp").exists());
    drop(w);
    write(&cut, &model, spec(&HOOKS, TokenSelection::Patches, "f32", 4, 9, "in"), &px, 2);
    assert_eq!(bytes_of(&cut), bytes_of(&whole));
    for d in [whole, cut] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn parts_merge_into_the_whole() {
    let model = common::load("vit-tiny-cls");
    let px = pixels(&model, 5, 4);
    let (a, b, merged) = (tmp("part-a"), tmp("part-b"), tmp("merged"));
    let part = |images, inputs: &str, shard: &str| {
        let mut s = spec(&HOOKS, TokenSelection::All, "f32", 2, images, inputs);
        s.part.shard = Some(shard.into());
        s
    };
    write(&a, &model, part(3, "a", "0/2"), &px.narrow(0, 0, 3), 3);
    write(&b, &model, part(2, "b", "1/2"), &px.narrow(0, 3, 2), 3);
    let meta = merge(&merged, &[a.clone(), b.clone()]).unwrap();
    assert_eq!((meta.images, meta.shards, meta.parts.len()), (5, 3, 2));
    let want = Tensor::cat(
        &[
            recorded(&model, &px.narrow(0, 0, 3), HOOKS[1], TokenSelection::All, 3),
            recorded(&model, &px.narrow(0, 3, 2), HOOKS[1], TokenSelection::All, 3),
        ],
        0,
    );
    assert!(read_all(&merged, HOOKS[1], 7).equal(&want));
    // The same part twice would double its rows.
    let err = merge(&tmp("merged-twice"), &[a.clone(), a.clone()]).unwrap_err();
    assert_eq!(err.code(), "E_CACHE_MISMATCH");
    for d in [a, b, merged] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn foreign_truncated_and_mismatched_caches_are_refused() {
    let model = common::load("vit-tiny-cls");
    let px = pixels(&model, 4, 5);
    let (a, b) = (tmp("bad-a"), tmp("bad-b"));
    write(&a, &model, spec(&HOOKS, TokenSelection::All, "f32", 2, 4, "in"), &px, 4);
    write(&b, &model, spec(&HOOKS[..1], TokenSelection::All, "f32", 2, 4, "in"), &px, 4);

    // Reopening the folder for another model, hook, token selection or inputs.
    let mut other_model = spec(&HOOKS, TokenSelection::All, "f32", 2, 4, "in");
    other_model.model_fingerprint = "model-b".into();
    for (what, s) in [
        ("model", other_model),
        ("hook", spec(&HOOKS[..1], TokenSelection::All, "f32", 2, 4, "in")),
        ("tokens", spec(&HOOKS, TokenSelection::Cls, "f32", 2, 4, "in")),
        ("inputs", spec(&HOOKS, TokenSelection::All, "f32", 2, 4, "other")),
    ] {
        let err = CacheWriter::open(&a, &model, s).err().unwrap_or_else(|| panic!("another {what} was accepted"));
        assert_eq!(err.code(), "E_CACHE_MISMATCH", "{what}: {err}");
        assert_eq!(err.to_string().lines().count(), 1);
    }
    // A hook the cache lacks.
    let err = CacheReader::open(&b).unwrap().source(HOOKS[1], 4).err().unwrap();
    assert_eq!(err.code(), "E_CACHE_MISMATCH");
    // Caches of other activations do not merge.
    assert_eq!(merge(&tmp("bad-merge"), &[a.clone(), b.clone()]).unwrap_err().code(), "E_CACHE_MISMATCH");

    // A shard of another cache in its place.
    let shard = a.join("shard-00001.safetensors");
    let saved = std::fs::read(&shard).unwrap();
    std::fs::copy(b.join("shard-00001.safetensors"), &shard).unwrap();
    let err = CacheReader::open(&a).err().unwrap();
    assert_eq!(err.code(), "E_CACHE_MISMATCH", "{err}");
    assert!(err.to_string().contains("shard-00001"), "{err}");
    // A truncated shard.
    std::fs::write(&shard, &saved[..saved.len() - 10]).unwrap();
    let err = CacheReader::open(&a).err().unwrap();
    assert_eq!(err.code(), "E_CACHE_CORRUPT", "{err}");
    // Not a shard at all.
    std::fs::write(&shard, b"not a shard").unwrap();
    assert_eq!(CacheReader::open(&a).err().unwrap().code(), "E_CACHE_CORRUPT");
    // A missing shard.
    std::fs::remove_file(&shard).unwrap();
    assert_eq!(CacheReader::open(&a).err().unwrap().code(), "E_CACHE_CORRUPT");
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn trains_from_a_cache_as_from_the_same_rows_in_memory() {
    use prisma_core::sae::run::{train, RunOptions, TensorSource};
    use prisma_core::sae::train::SaeTrainConfig;
    let model = common::load("vit-tiny-cls");
    let px = pixels(&model, 6, 6);
    let dir = tmp("train");
    write(&dir, &model, spec(&HOOKS[..1], TokenSelection::All, "f32", 6, 6, "in"), &px, 6);
    let rows = recorded(&model, &px, HOOKS[0], TokenSelection::All, 6);
    let cfg: SaeTrainConfig = serde_json::from_value(
        serde_json::json!({"architecture": "topk", "dIn": 32, "dSae": 64, "k": 4.0, "lr": 1e-3, "totalSteps": 3, "seed": 1}),
    )
    .unwrap();
    let opts = RunOptions { batch_size: 8, buffer_rows: 16, seed: 1, checkpoint_every: 0, checkpoint_dir: None };
    // The cache source serves rows in batches of the run's size, as TensorSource does.
    let reader = CacheReader::open(&dir).unwrap();
    let mut from_cache = reader.source(HOOKS[0], 8).unwrap();
    let a = train(&mut from_cache, std::slice::from_ref(&cfg), &opts, &mut |_, _| Ok(())).unwrap();
    let mut in_memory = TensorSource::new(rows, 8);
    let b = train(&mut in_memory, std::slice::from_ref(&cfg), &opts, &mut |_, _| Ok(())).unwrap();
    for ((name, x), (_, y)) in a[0].named_tensors().into_iter().zip(b[0].named_tensors()) {
        assert!(x.equal(y), "{name} differs");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
