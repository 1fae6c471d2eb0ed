//! The TypeScript declarations of every serde type that crosses the binding as JSON are generated
//! from the Rust types (ts-rs) and committed in src/generated/contract/. This test regenerates
//! them and fails when the committed files differ, so the two sides cannot drift;
//! `PRISMA_WRITE_CONTRACT=1` (re)writes them instead. scripts/contract.mjs checks the rest of the
//! contract (napi's declarations, docs/native-api.md).

use prisma_core::analysis::{ablation, dla, lens, patching};
use prisma_core::interventions::InterventionSpec;
use prisma_core::sae;
use prisma_core::training::{clip, EvalReport, StepReport, TrainConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use ts_rs::{Config, TS};

/// The root types; ts-rs writes each with everything it refers to.
fn export(cfg: &Config) -> Result<(), ts_rs::ExportError> {
    lens::LensOptions::export_all(cfg)?;
    lens::LensImage::export_all(cfg)?;
    patching::PatchOptions::export_all(cfg)?;
    patching::PatchResult::export_all(cfg)?;
    dla::DlaOptions::export_all(cfg)?;
    dla::DlaResult::export_all(cfg)?;
    ablation::AblationOptions::export_all(cfg)?;
    InterventionSpec::export_all(cfg)?;
    TrainConfig::export_all(cfg)?;
    StepReport::export_all(cfg)?;
    EvalReport::export_all(cfg)?;
    clip::ClipTrainConfig::export_all(cfg)?;
    clip::ZeroShotTask::export_all(cfg)?;
    clip::ClipStepReport::export_all(cfg)?;
    clip::ClipEvalReport::export_all(cfg)?;
    sae::cache::CacheRequest::export_all(cfg)?;
    sae::cache::CacheMeta::export_all(cfg)?;
    sae::run::TrainRequest::export_all(cfg)?;
    sae::train::StepMetrics::export_all(cfg)?;
    Ok(())
}

fn files(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ts"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

#[test]
fn committed_typescript_contract_matches_the_rust_types() {
    let committed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../src/generated/contract");
    let fresh = std::env::temp_dir().join(format!("prisma-contract-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    // JS numbers for every integer (JSON.parse gives numbers), imports with the .js extension
    // NodeNext resolution wants.
    let cfg = Config::new().with_large_int("number").with_import_extension(Some("js")).with_out_dir(&fresh);
    export(&cfg).expect("export the contract types");
    let new = files(&fresh);
    let _ = std::fs::remove_dir_all(&fresh);
    assert!(new.len() >= 20, "only {} files generated", new.len());
    if std::env::var_os("PRISMA_WRITE_CONTRACT").is_some() {
        let _ = std::fs::remove_dir_all(&committed);
        std::fs::create_dir_all(&committed).unwrap();
        for (name, text) in &new {
            std::fs::write(committed.join(name), text).unwrap();
        }
        return;
    }
    let old = files(&committed);
    let stale: Vec<&String> = new.keys().filter(|k| old.get(*k) != new.get(*k)).collect();
    let extra: Vec<&String> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "src/generated/contract is stale (differs: {stale:?}; no longer generated: {extra:?}); run \
         `PRISMA_WRITE_CONTRACT=1 node scripts/cargo-test.mjs --test contract && node scripts/contract.mjs --write`"
    );
}
