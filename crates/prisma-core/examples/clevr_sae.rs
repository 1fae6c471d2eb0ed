//! The shipped SAE (models/clevr-sae): several SAEs trained in one pass (sae::run::train) on the
//! patch tokens of models/clevr-vit at blocks.1.hook_resid_post over clevr-lite scenes, the one
//! whose single features detect the scene's concepts best on the selection scenes kept, and each
//! concept's best feature judged on held-out scenes against the best single neuron of the layer.
//!
//! node scripts/cargo-example.mjs clevr_sae -- DATA ACTS OUT
//!   DATA: `prisma dataset clevr-lite ... --patch-size 8` folder (labels.jsonl, patch-labels/)
//!   ACTS: `prisma run models/clevr-vit DATA/images --cache blocks.1.hook_resid_post --out ACTS`
//!   OUT:  the SAELens folder, plus concepts.json and MODEL_CARD.md
//!
//! Everything is seeded and runs on one libtorch thread, so a rerun gives identical weights.

use prisma_core::sae::concepts::{best_units, UnitScore};
use prisma_core::sae::metrics::{DensityOptions, ReconstructionMetrics, ReconstructionReport};
use prisma_core::sae::run::{train, ActivationSource, RunOptions};
use prisma_core::sae::train::SaeTrainConfig;
use prisma_core::sae::{Sae, TokenSelection};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

type Error = Box<dyn std::error::Error>;

const HOOK: &str = "blocks.1.hook_resid_post";
/// Scenes used for training and for choosing features; the rest are held out.
const SELECT_SCENES: i64 = 2400;
const D_SAE: i64 = 256;
const BATCH: i64 = 512;
const STEPS: i64 = 2000;
const SEED: i64 = 0;
/// The candidates trained together: (architecture, k).
const CANDIDATES: [(&str, f64); 4] = [("topk", 4.0), ("topk", 8.0), ("topk", 16.0), ("batchtopk", 8.0)];
const COLOURS: [&str; 6] = ["red", "green", "blue", "yellow", "purple", "cyan"];
const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
const SIZES: [&str; 2] = ["small", "large"];

/// Rows of a tensor, `batch` at a time, cycling through it for as many epochs as asked for.
struct Epochs {
    data: Tensor,
    batch: i64,
    next: u64,
}

impl ActivationSource for Epochs {
    fn next_batch(&mut self) -> prisma_core::Result<Option<Tensor>> {
        let n = self.data.size()[0];
        let per_epoch = n / self.batch;
        let i = (self.next % per_epoch as u64) as i64;
        self.next += 1;
        Ok(Some(self.data.f_narrow(0, i * self.batch, self.batch)?))
    }
    fn position(&self) -> u64 {
        self.next
    }
    fn seek(&mut self, position: u64) -> prisma_core::Result<()> {
        self.next = position;
        Ok(())
    }
}

/// Concept names and, per patch token (scene-major, row-major patches), whether it holds each.
fn concept_labels(data: &Path, scenes: i64, grid: i64) -> Result<(Vec<String>, Vec<Vec<bool>>), Error> {
    let mut names: Vec<String> = vec!["object".into()];
    names.extend(COLOURS.iter().map(|c| format!("colour={c}")));
    names.extend(SHAPES.iter().map(|s| format!("shape={s}")));
    names.extend(SIZES.iter().map(|s| format!("size={s}")));
    let mut labels = vec![Vec::with_capacity((scenes * grid * grid) as usize); names.len()];
    let records = std::fs::read_to_string(data.join("labels.jsonl"))?;
    for (i, line) in records.lines().take(scenes as usize).enumerate() {
        let record: Value = serde_json::from_str(line)?;
        let objects = record["objects"].as_array().ok_or("labels.jsonl: no objects")?;
        let stem = format!("{i:06}");
        let patch: Value = serde_json::from_str(&std::fs::read_to_string(data.join("patch-labels").join(format!("{stem}.json")))?)?;
        let ids = patch["labels"].as_array().ok_or("patch labels: no labels")?;
        if ids.len() as i64 != grid * grid {
            return Err(format!("patch labels of {stem}: {} patches, the model has {}", ids.len(), grid * grid).into());
        }
        for id in ids {
            let id = id.as_u64().ok_or("patch label not an integer")? as usize;
            let object = id.checked_sub(1).map(|o| &objects[o]);
            let attr = |key: &str| object.and_then(|o| o[key].as_str()).unwrap_or("");
            let mut c = 0;
            labels[c].push(id != 0);
            c += 1;
            for v in COLOURS {
                labels[c].push(attr("colour") == v);
                c += 1;
            }
            for v in SHAPES {
                labels[c].push(attr("shape") == v);
                c += 1;
            }
            for v in SIZES {
                labels[c].push(attr("size") == v);
                c += 1;
            }
        }
    }
    Ok((names, labels))
}

/// The activations' rows must be the scenes in index order (`prisma run` records its inputs).
fn check_order(acts: &Path, data: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(acts)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let inputs = header.metadata().as_ref().and_then(|m| m.get("inputs").cloned()).ok_or("activations: no inputs in the metadata")?;
    let inputs: Vec<String> = serde_json::from_str(&inputs)?;
    for (i, input) in inputs.iter().enumerate() {
        let want = data.join("images").join(format!("{i:06}.png"));
        if Path::new(input).file_name() != want.file_name() {
            return Err(format!("activation row {i} is {input}, expected {}", want.display()).into());
        }
    }
    Ok(())
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>, Error> {
    Ok(Vec::<f32>::try_from(&t.f_contiguous()?.f_view([-1])?)?)
}

/// Feature activations of `x` [rows, d_in], row-major, encoded in chunks.
fn features(sae: &Sae, x: &Tensor) -> Result<Vec<f32>, Error> {
    let mut out = Vec::new();
    for chunk in x.f_split(8192, 0)? {
        out.extend(to_vec(&sae.encode(&chunk)?)?);
    }
    Ok(out)
}

fn metrics(sae: &Sae, x: &Tensor) -> Result<ReconstructionReport, Error> {
    let mut m = ReconstructionMetrics::new(sae.d_sae())?;
    for chunk in x.f_split(256, 0)? {
        m.update_with(sae, &chunk, None)?;
    }
    Ok(m.finish(&DensityOptions::default())?)
}

fn config(arch: &str, k: f64) -> Result<SaeTrainConfig, Error> {
    Ok(serde_json::from_value(json!({
        "architecture": arch, "dIn": 64, "dSae": D_SAE, "k": k, "lr": 1e-3, "totalSteps": STEPS,
        "lrWarmUpSteps": 100, "lrScheduler": "cosineannealing", "lrDecaySteps": 0,
        "normalizeActivations": "expected_average_only_in", "bDecInit": "geometric_median",
        "deadFeatureWindow": 500, "seed": SEED, "hookName": HOOK, "tokens": "patches", "modelName": "models/clevr-vit",
    }))?)
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

pub fn run(data: &Path, acts: &Path, out: &Path) -> Result<Value, Error> {
    tch::set_num_threads(1);
    check_order(acts, data)?;
    let tensors = prisma_core::weights::store::read_safetensors_f32(acts)?;
    let all = tensors.into_iter().find(|(n, _)| n == HOOK).map(|(_, t)| t).ok_or(format!("{}: no {HOOK}", acts.display()))?;
    let (scenes, tokens, d_in) = match all.size()[..] {
        [s, t, d] => (s, t, d),
        _ => return Err(format!("{HOOK}: expected [images, tokens, d_in]").into()),
    };
    if scenes <= SELECT_SCENES {
        return Err(format!("{scenes} scenes: need more than the {SELECT_SCENES} used for selection").into());
    }
    let grid = ((tokens - 1) as f64).sqrt() as i64;
    // Patch tokens only (the class token is token 0).
    let patches = all.f_narrow(1, 1, tokens - 1)?;
    let select_x = patches.f_narrow(0, 0, SELECT_SCENES)?.f_reshape([-1, d_in])?;
    let held_x3 = patches.f_narrow(0, SELECT_SCENES, scenes - SELECT_SCENES)?.f_contiguous()?;
    let held_x = held_x3.f_reshape([-1, d_in])?;
    let (names, labels) = concept_labels(data, scenes, grid)?;
    let split = (SELECT_SCENES * grid * grid) as usize;
    let select_labels: Vec<Vec<bool>> = labels.iter().map(|l| l[..split].to_vec()).collect();
    let held_labels: Vec<Vec<bool>> = labels.iter().map(|l| l[split..].to_vec()).collect();

    let configs: Vec<SaeTrainConfig> = CANDIDATES.iter().map(|(a, k)| config(a, *k)).collect::<Result<_, _>>()?;
    let opts = RunOptions { batch_size: BATCH, buffer_rows: 8 * BATCH, seed: SEED, checkpoint_every: 0, checkpoint_dir: None };
    let mut source = Epochs { data: select_x.shallow_clone(), batch: BATCH, next: 0 };
    let saes = train(&mut source, &configs, &opts, &mut |i, m| {
        if (m.step + 1) % 500 == 0 && i == 0 {
            eprintln!("step {} of {STEPS}", m.step + 1);
        }
        Ok(())
    })?;

    // The neuron baseline: the layer's own dimensions, same rule, both signs.
    let neurons = best_units(&to_vec(&select_x)?, &select_labels, &to_vec(&held_x)?, &held_labels, d_in as usize, false);
    let mut candidates = Vec::new();
    for ((arch, k), sae) in CANDIDATES.iter().zip(&saes) {
        let feats = best_units(&features(sae, &select_x)?, &select_labels, &features(sae, &held_x)?, &held_labels, D_SAE as usize, true);
        let report = metrics(sae, &held_x3)?;
        let score = mean(feats.iter().map(|f| f.as_ref().map_or(0.0, |f| f.select_auroc)));
        candidates.push((format!("{arch} k={k}"), score, report, feats));
    }
    // The best: highest mean AUROC of its concepts' best features on the selection scenes.
    let best = (0..candidates.len()).reduce(|a, b| if candidates[b].1 > candidates[a].1 { b } else { a }).ok_or("no candidates")?;
    let mut sae = saes[best].to_kind(Kind::Float)?;
    sae.cfg.set_tokens(TokenSelection::Patches);
    std::fs::create_dir_all(out)?;
    prisma_core::sae::save(&sae, out)?;

    let unit_json = |u: &Option<UnitScore>| serde_json::to_value(u).unwrap_or(Value::Null);
    let (name, _, report, feats) = &candidates[best];
    let table: Vec<Value> = names
        .iter()
        .zip(feats.iter().zip(&neurons))
        .zip(&held_labels)
        .map(|((n, (f, nr)), l)| {
            json!({"concept": n, "heldOutPatches": l.len(), "positives": l.iter().filter(|x| **x).count(),
                   "feature": unit_json(f), "neuron": unit_json(nr)})
        })
        .collect();
    let summary = json!({
        "schemaVersion": 1,
        "model": "models/clevr-vit", "hook": HOOK, "tokens": "patches", "dSae": D_SAE,
        "selectScenes": SELECT_SCENES, "heldOutScenes": scenes - SELECT_SCENES, "patchesPerScene": grid * grid,
        "chosen": name,
        "rule": "per concept, the unit with the best AUROC on the selection scenes at the threshold with the best F1 there, judged on held-out scenes; feature thresholds are > 0 (where it fires), neurons may fire in either direction",
        "heldOut": {"l0PerToken": report.l0_per_token, "explainedVariance": report.explained_variance, "deadFraction": report.dead as f64 / D_SAE as f64},
        "concepts": table,
        "candidates": candidates.iter().map(|(n, s, r, _)| json!({"sae": n, "meanSelectAuroc": s, "l0PerToken": r.l0_per_token,
            "explainedVariance": r.explained_variance, "deadFraction": r.dead as f64 / D_SAE as f64})).collect::<Vec<_>>(),
        "training": {"configs": configs, "run": {"batchSize": BATCH, "bufferRows": 8 * BATCH, "seed": SEED}, "threads": 1},
    });
    std::fs::write(out.join("concepts.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    std::fs::write(out.join("MODEL_CARD.md"), card(&summary, &names, feats, &neurons, &candidates))?;
    Ok(summary)
}

type Candidate = (String, f64, ReconstructionReport, Vec<Option<UnitScore>>);

fn card(summary: &Value, names: &[String], feats: &[Option<UnitScore>], neurons: &[Option<UnitScore>], candidates: &[Candidate]) -> String {
    let h = &summary["heldOut"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut s = String::new();
    s += "# clevr-sae: a TopK SAE on clevr-vit's residual stream\n\n";
    s += &format!(
        "A sparse autoencoder (SAELens folder) reading `{HOOK}` of `models/clevr-vit` on patch tokens only: \
         d_in 64, d_sae {D_SAE}, `{}`. Written by `crates/prisma-core/examples/clevr_sae.rs`; `concepts.json` holds every number below.\n\n",
        summary["chosen"].as_str().unwrap_or("")
    );
    s += "## How it was made\n\n```sh\n";
    s += "prisma dataset clevr-lite --n 3000 --seed 7 --patch-size 8 --out /tmp/clevr-sae\n";
    s += "prisma run models/clevr-vit /tmp/clevr-sae/images --cache blocks.1.hook_resid_post --stop-at-layer 2 --out /tmp/clevr-sae/acts.safetensors\n";
    s += "node scripts/cargo-example.mjs clevr_sae -- /tmp/clevr-sae /tmp/clevr-sae/acts.safetensors models/clevr-sae\n";
    s += "```\n\n";
    s += &format!(
        "- Data: 3000 clevr-lite scenes (seed 7); the patch tokens (36 per scene) of the first {SELECT_SCENES} train the SAEs and choose \
         features, the last {} are held out.\n",
        f(&summary["heldOutScenes"])
    );
    s += &format!(
        "- Training: {} SAEs in one pass (`sae::run::train`), {STEPS} steps of {BATCH} tokens (shuffle buffer {} rows, seed {SEED}), Adam lr 1e-3, \
         100 warm-up steps then cosine decay, `expected_average_only_in` normalisation (folded into the weights), b_dec at the geometric median, \
         AuxK over features dead for 500 steps. One libtorch thread: a rerun on the same libtorch build gives identical weights (tested).\n",
        CANDIDATES.len(),
        8 * BATCH
    );
    s += "- Chosen: the candidate whose concepts' best features have the highest mean AUROC on the selection scenes (held-out scenes play no part).\n\n";
    s += "| candidate | mean selection AUROC | L0 per token | explained variance | dead |\n|---|---|---|---|---|\n";
    for (n, sc, r, _) in candidates {
        s += &format!("| {n} | {sc:.3} | {:.2} | {:.3} | {} |\n", r.l0_per_token, r.explained_variance, pct(r.dead as f64 / D_SAE as f64));
    }
    s += &format!(
        "\n## Held-out quality\n\n- L0: **{:.2}** features per patch token\n- Explained variance: **{:.3}** (pooled over tokens, SAELens's definition)\n- Dead features: **{}** (never fire on held-out patches)\n\n",
        f(&h["l0PerToken"]),
        f(&h["explainedVariance"]),
        pct(f(&h["deadFraction"]))
    );
    s += "## Concepts: best single feature vs best single neuron (held-out scenes)\n\n";
    s += "Each patch is labelled with the object covering most of it (`object`: any object; else background) and that object's colour, shape and size. \
          For each concept the unit with the best AUROC on the selection scenes is chosen, with the threshold giving the best F1 there (a feature's \
          threshold is above 0: it fires); the table gives precision, recall, F1 and AUROC of that unit and threshold on the held-out patches. \
          Neurons are the layer's 64 dimensions, either sign ((−): the neuron falls with the concept).\n\n";
    s += "| concept | feature | precision | recall | F1 | AUROC | neuron | precision | recall | F1 | AUROC |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    let cells = |u: &Option<UnitScore>, neuron: bool| match u {
        Some(u) => format!(
            "{}{} | {:.3} | {:.3} | {:.3} | {:.3}",
            u.unit,
            if neuron && u.sign < 0 { " (−)" } else { "" },
            u.precision,
            u.recall,
            u.f1,
            u.auroc
        ),
        None => "– | – | – | – | –".into(),
    };
    for (n, (fe, ne)) in names.iter().zip(feats.iter().zip(neurons)) {
        s += &format!("| {n} | {} | {} |\n", cells(fe, false), cells(ne, true));
    }
    let get = |u: &Option<UnitScore>, f1: bool| u.as_ref().map_or(0.0, |u| if f1 { u.f1 } else { u.auroc });
    for (what, f1) in [("F1", true), ("AUROC", false)] {
        let wins = feats.iter().zip(neurons).filter(|(a, b)| get(a, f1) > get(b, f1)).count();
        s += &format!(
            "\nThe best feature beats the best neuron on held-out {what} for {wins} of {} concepts (mean {what} {:.3} vs {:.3}).\n",
            names.len(),
            mean(feats.iter().map(|u| get(u, f1))),
            mean(neurons.iter().map(|u| get(u, f1)))
        );
    }
    s
}

#[allow(dead_code)]
fn main() -> Result<(), Error> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [data, acts, out] = args.as_slice() else {
        return Err("usage: clevr_sae DATA ACTS OUT".into());
    };
    let summary = run(data, acts, out)?;
    println!("{}", serde_json::to_string(&summary["heldOut"])?);
    Ok(())
}
