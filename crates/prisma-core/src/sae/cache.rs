//! The activation cache: a model's activations at some hooks, for the chosen tokens of every image,
//! written to fixed-size shards that training reads back sequentially from a memory map.
//!
//! ```text
//! DIR/metadata.json              CacheMeta: identity (what made the activations), parts, counts
//! DIR/shard-00000.safetensors    one tensor per hook, [images_in_shard × tokens_per_image, d]
//! ```
//!
//! A shard is a plain safetensors file (its `__metadata__` repeats the identity, so a shard from
//! another cache is recognised), pre-sized and filled in place as batches arrive, then renamed from
//! `.tmp` when full: memory stays one batch whatever the folder size, and a killed run resumes at
//! the first missing shard (the partial one is written again from its first image). Every shard
//! holds `images_per_shard` images except the last of each part, so image i of a part lives in
//! shard i / images_per_shard. Caches of the same identity made from separate parts of the inputs
//! (`--shard k/n` on several machines) merge into one by linking their shards.

use crate::device::{dtype_name, parse_dtype};
use crate::error::{PrismaError, Result};
use crate::hooks::HookPoint;
use crate::model::{Model, RunRequest};
use crate::sae::run::ActivationSource;
use crate::sae::TokenSelection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub const META_FILE: &str = "metadata.json";
pub const FORMAT: &str = "vit-prisma sae activation cache";
const IDENTITY_KEY: &str = "cache";
const IMAGES_KEY: &str = "images";

/// What the activations are: two caches of equal identity hold interchangeable rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct CacheIdentity {
    /// A fingerprint of the model's files (the caller's; equal models give equal fingerprints on
    /// any machine).
    pub model: String,
    /// A fingerprint of how images become pixels (the caller's).
    pub preprocessing: String,
    pub hooks: Vec<String>,
    /// Each hook's width, in `hooks` order.
    pub widths: Vec<i64>,
    pub tokens: String,
    pub tokens_per_image: i64,
    pub dtype: String,
    pub images_per_shard: i64,
}

/// One run of `prisma sae cache` over its inputs (all of them, or shard k of n).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct CachePart {
    /// `k/n` when the inputs were partitioned.
    pub shard: Option<String>,
    /// Images in this part.
    pub images: i64,
    /// A fingerprint of this part's input list, in order.
    pub inputs: String,
    /// Shard files of this part (merged caches list several parts).
    #[serde(default)]
    #[ts(as = "Option<_>", optional)]
    pub shards: i64,
}

/// metadata.json of a cache folder.
#[derive(Debug, Clone, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct CacheMeta {
    pub format: String,
    pub version: u32,
    pub identity: CacheIdentity,
    pub parts: Vec<CachePart>,
    pub complete: bool,
    pub shards: i64,
    pub images: i64,
    /// Activation vectors per hook.
    pub rows: i64,
    /// Free-form description of the model and inputs (folder, architecture, command line).
    #[serde(default)]
    #[ts(type = "Record<string, unknown>")]
    pub info: serde_json::Value,
}

/// What to cache.
#[derive(Debug, Clone)]
pub struct CacheSpec {
    pub hooks: Vec<String>,
    pub tokens: TokenSelection,
    /// `f32`, `f16` or `bf16`.
    pub dtype: String,
    pub images_per_shard: i64,
    pub model_fingerprint: String,
    pub preprocessing: String,
    /// This run's inputs: `shard` k/n, image count, fingerprint.
    pub part: CachePart,
    pub info: serde_json::Value,
}

/// What to cache, as the binding takes it (JSON).
#[derive(Debug, Clone, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
pub struct CacheRequest {
    pub hooks: Vec<String>,
    /// all, cls or patches.
    pub tokens: String,
    /// f32, f16 or bf16.
    pub dtype: String,
    pub images_per_shard: i64,
    pub model_fingerprint: String,
    pub preprocessing: String,
    /// `k/n`, or null for all the inputs.
    pub shard: Option<String>,
    /// Images in this run's inputs.
    pub images: i64,
    /// A fingerprint of this run's input list.
    pub inputs: String,
    #[serde(default)]
    #[ts(optional, type = "Record<string, unknown>")]
    pub info: serde_json::Value,
}

impl CacheRequest {
    pub fn into_spec(self) -> Result<CacheSpec> {
        Ok(CacheSpec {
            hooks: self.hooks,
            tokens: TokenSelection::parse(&self.tokens)?,
            dtype: self.dtype,
            images_per_shard: self.images_per_shard,
            model_fingerprint: self.model_fingerprint,
            preprocessing: self.preprocessing,
            part: CachePart { shard: self.shard, images: self.images, inputs: self.inputs, shards: 0 },
            info: self.info,
        })
    }
}

fn mismatch(path: &Path, reason: String) -> PrismaError {
    PrismaError::CacheMismatch { path: path.into(), reason }
}

fn corrupt(path: &Path, reason: String) -> PrismaError {
    PrismaError::CacheCorrupt { path: path.into(), reason }
}

fn io_err(path: &Path, e: std::io::Error) -> PrismaError {
    PrismaError::Io { path: path.into(), reason: e.to_string() }
}

fn shard_name(index: i64) -> String {
    format!("shard-{index:05}.safetensors")
}

fn safetensors_dtype(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        _ => "F32",
    }
}

/// Which identity fields differ, for the error line.
fn identity_diff(a: &CacheIdentity, b: &CacheIdentity) -> String {
    let mut diff = Vec::new();
    if a.model != b.model {
        diff.push("made with another model".to_string());
    }
    if a.preprocessing != b.preprocessing {
        diff.push("other preprocessing".to_string());
    }
    if a.hooks != b.hooks || a.widths != b.widths {
        diff.push(format!("hooks {} instead of {}", a.hooks.join(","), b.hooks.join(",")));
    }
    if a.tokens != b.tokens || a.tokens_per_image != b.tokens_per_image {
        diff.push(format!("tokens '{}' instead of '{}'", a.tokens, b.tokens));
    }
    if a.dtype != b.dtype {
        diff.push(format!("dtype {} instead of {}", a.dtype, b.dtype));
    }
    if a.images_per_shard != b.images_per_shard {
        diff.push(format!("{} images per shard instead of {}", a.images_per_shard, b.images_per_shard));
    }
    diff.join("; ")
}

pub fn read_meta(dir: &Path) -> Result<CacheMeta> {
    let path = dir.join(META_FILE);
    let text = fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PrismaError::Io { path: dir.into(), reason: format!("not an activation cache (no {META_FILE})") },
        _ => io_err(&path, e),
    })?;
    let meta: CacheMeta = serde_json::from_str(&text).map_err(|e| corrupt(&path, format!("not an activation cache's metadata ({e})")))?;
    if meta.format != FORMAT || meta.version != 1 {
        return Err(corrupt(&path, format!("not an activation cache of this version ({} v{})", meta.format, meta.version)));
    }
    Ok(meta)
}

fn write_meta(dir: &Path, meta: &CacheMeta) -> Result<()> {
    let path = dir.join(META_FILE);
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    let text = serde_json::to_string_pretty(meta).map_err(|e| PrismaError::Internal(e.to_string()))?;
    fs::write(&tmp, text + "\n").map_err(|e| io_err(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))
}

/// A shard's header, checked against its cache: image count, and where each hook's rows start.
struct ShardHeader {
    images: i64,
    /// Hook name -> (byte offset of its data in the file, rows).
    tensors: HashMap<String, (u64, i64)>,
}

/// Reads and checks a shard's header and size without reading its data: a truncated or foreign
/// shard is one error naming the file.
fn read_shard_header(path: &Path, identity: &CacheIdentity, identity_text: &str) -> Result<ShardHeader> {
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|_| corrupt(path, "truncated shard (no header)".into()))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || 8 + n > len {
        return Err(corrupt(path, "not a shard (bad header length)".into()));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|_| corrupt(path, "truncated shard header".into()))?;
    let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| corrupt(path, format!("not a shard (header: {e})")))?;
    let meta = header.get("__metadata__").ok_or_else(|| corrupt(path, "not a cache shard (no metadata)".into()))?;
    let own = meta.get(IDENTITY_KEY).and_then(|v| v.as_str()).ok_or_else(|| corrupt(path, "not a cache shard".into()))?;
    if own != identity_text {
        let theirs: Option<CacheIdentity> = serde_json::from_str(own).ok();
        let why = theirs.map(|t| identity_diff(&t, identity)).unwrap_or_else(|| "unreadable identity".into());
        return Err(mismatch(path, format!("a shard of another cache ({why})")));
    }
    let images = meta
        .get(IMAGES_KEY)
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| corrupt(path, "shard metadata has no image count".into()))?;
    let mut tensors = HashMap::new();
    let mut end = 0u64;
    for (hook, width) in identity.hooks.iter().zip(&identity.widths) {
        let t = header.get(hook).ok_or_else(|| corrupt(path, format!("shard has no tensor '{hook}'")))?;
        let offsets: Vec<u64> = t
            .get("data_offsets")
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| corrupt(path, format!("tensor '{hook}' has no data offsets")))?;
        let rows = images * identity.tokens_per_image;
        let bytes = (rows * width) as u64 * parse_dtype(&identity.dtype)?.elt_size_in_bytes() as u64;
        if offsets[1] < offsets[0] || offsets[1] - offsets[0] != bytes {
            return Err(corrupt(path, format!("tensor '{hook}' does not hold {rows} rows of {width}")));
        }
        end = end.max(offsets[1]);
        tensors.insert(hook.clone(), (8 + n + offsets[0], rows));
    }
    if len != 8 + n + end {
        return Err(corrupt(path, format!("truncated shard ({len} bytes, expected {})", 8 + n + end)));
    }
    Ok(ShardHeader { images, tensors })
}

/// A safetensors header for a shard of `images` images (padded to 8 bytes, as safetensors does).
fn shard_header(identity: &CacheIdentity, identity_text: &str, images: i64, kind: Kind) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ IDENTITY_KEY: identity_text, IMAGES_KEY: images.to_string() }));
    let rows = images * identity.tokens_per_image;
    let mut offset = 0u64;
    let mut starts = Vec::new();
    for (hook, width) in identity.hooks.iter().zip(&identity.widths) {
        let bytes = (rows * width) as u64 * kind.elt_size_in_bytes() as u64;
        header.insert(
            hook.clone(),
            serde_json::json!({ "dtype": safetensors_dtype(kind), "shape": [rows, width], "data_offsets": [offset, offset + bytes] }),
        );
        starts.push(offset);
        offset += bytes;
    }
    let mut text = serde_json::to_vec(&header).map_err(|e| PrismaError::Internal(e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    let base = out.len() as u64;
    Ok((out, starts.into_iter().map(|s| s + base).collect()))
}

/// The shard files of a cache, in order, each checked.
fn list_shards(dir: &Path, meta: &CacheMeta, identity_text: &str) -> Result<Vec<(PathBuf, ShardHeader)>> {
    let mut shards = Vec::new();
    loop {
        let path = dir.join(shard_name(shards.len() as i64));
        if !path.is_file() {
            break;
        }
        let header = read_shard_header(&path, &meta.identity, identity_text)?;
        shards.push((path, header));
    }
    Ok(shards)
}

struct OpenShard {
    index: i64,
    file: File,
    tmp: PathBuf,
    images: i64,
    filled: i64,
    /// Byte offset of each hook's data in the file.
    starts: Vec<u64>,
}

/// Writes a cache batch by batch; `images_done` says where a resumed run starts.
pub struct CacheWriter {
    dir: PathBuf,
    meta: CacheMeta,
    identity_text: String,
    points: Vec<HookPoint>,
    stop_at_layer: Option<usize>,
    /// (start, len) along the position axis, when not all tokens.
    range: Option<(i64, i64)>,
    kind: Kind,
    done: i64,
    shards: i64,
    current: Option<OpenShard>,
}

impl CacheWriter {
    /// Opens `dir` for `spec`: a new cache, or one a killed run left (it must be for the same
    /// activations and inputs, else E_CACHE_MISMATCH). Complete shards are kept, partial ones dropped.
    pub fn open(dir: &Path, model: &Model, spec: CacheSpec) -> Result<CacheWriter> {
        if spec.images_per_shard < 1 {
            return Err(PrismaError::Argument("images per shard must be at least 1".into()));
        }
        let kind = parse_dtype(&spec.dtype)?;
        let selection = model.resolve_hooks(&spec.hooks)?;
        let points: Vec<HookPoint> = model.hook_points().into_iter().filter(|p| selection.contains(p)).collect();
        if points.is_empty() {
            return Err(PrismaError::UnknownHook(format!("no hook matches {}", spec.hooks.join(", "))));
        }
        let c = &model.vit.cfg;
        let n_pos = c.n_pos();
        let mut widths = Vec::new();
        for p in &points {
            let shape = model.hook_shape(*p, 1);
            let axes = p.site.axes();
            if p.sub.is_some() || axes.pos != Some(1) || axes.head.is_some() || shape.len() != 3 || shape[1] != n_pos {
                return Err(PrismaError::Shape(format!("the cache holds [token, d] vectors of image tokens; '{p}' has shape {shape:?}")));
            }
            widths.push(shape[2]);
        }
        let range = match spec.tokens {
            TokenSelection::All => None,
            TokenSelection::Cls if c.has_class_token => Some((0, 1)),
            TokenSelection::Cls => return Err(PrismaError::Argument("this model has no class token (use --tokens all or patches)".into())),
            TokenSelection::Patches => Some((c.n_prefix_tokens(), n_pos - c.n_prefix_tokens())),
        };
        let tokens_per_image = range.map_or(n_pos, |r| r.1);
        let stop_at_layer =
            if points.iter().all(|p| p.layer.is_some()) { points.iter().filter_map(|p| p.layer).max().map(|l| l + 1) } else { None };
        let identity = CacheIdentity {
            model: spec.model_fingerprint,
            preprocessing: spec.preprocessing,
            hooks: points.iter().map(|p| p.to_string()).collect(),
            widths,
            tokens: spec.tokens.name().into(),
            tokens_per_image,
            dtype: dtype_name(kind).into(),
            images_per_shard: spec.images_per_shard,
        };
        let identity_text = serde_json::to_string(&identity).map_err(|e| PrismaError::Internal(e.to_string()))?;
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let fresh = CacheMeta {
            format: FORMAT.into(),
            version: 1,
            identity,
            parts: vec![CachePart { shards: 0, ..spec.part.clone() }],
            complete: false,
            shards: 0,
            images: 0,
            rows: 0,
            info: spec.info,
        };
        let (meta, done, shards) = if dir.join(META_FILE).is_file() {
            let old = read_meta(dir)?;
            if old.identity != fresh.identity {
                return Err(mismatch(
                    dir,
                    format!("holds a cache of other activations ({})", identity_diff(&old.identity, &fresh.identity)),
                ));
            }
            let same_part = old.parts.len() == 1
                && old.parts[0].shard == spec.part.shard
                && old.parts[0].images == spec.part.images
                && old.parts[0].inputs == spec.part.inputs;
            if !same_part {
                return Err(mismatch(dir, "holds a cache of other inputs; use another folder".into()));
            }
            let shards = list_shards(dir, &old, &identity_text)?;
            let done: i64 = shards.iter().map(|(_, h)| h.images).sum();
            (CacheMeta { info: fresh.info.clone(), ..old }, done, shards.len() as i64)
        } else {
            let stray = fs::read_dir(dir).map_err(|e| io_err(dir, e))?.filter_map(|e| e.ok()).any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("shard-")
            });
            if stray {
                return Err(mismatch(dir, format!("holds shards but no {META_FILE}; use another folder")));
            }
            write_meta(dir, &fresh)?;
            (fresh, 0, 0)
        };
        for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".safetensors.tmp") {
                fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
            }
        }
        Ok(CacheWriter { dir: dir.into(), meta, identity_text, points, stop_at_layer, range, kind, done, shards, current: None })
    }

    /// Images already in complete shards: a resumed run skips that many inputs.
    pub fn images_done(&self) -> i64 {
        self.done - self.current.as_ref().map_or(0, |s| s.filled)
    }

    pub fn total_images(&self) -> i64 {
        self.meta.parts[0].images
    }

    pub fn meta(&self) -> &CacheMeta {
        &self.meta
    }

    /// The block the forward stops before (after the last hooked block), or None for a full one.
    pub fn stop_at_layer(&self) -> Option<usize> {
        self.stop_at_layer
    }

    fn open_shard(&mut self) -> Result<OpenShard> {
        let ips = self.meta.identity.images_per_shard;
        let images = ips.min(self.total_images() - self.shards * ips);
        let tmp = self.dir.join(format!("{}.tmp", shard_name(self.shards)));
        let (header, starts) = shard_header(&self.meta.identity, &self.identity_text, images, self.kind)?;
        let mut file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        file.write_all(&header).map_err(|e| io_err(&tmp, e))?;
        let rows = images * self.meta.identity.tokens_per_image;
        let data: i64 = self.meta.identity.widths.iter().map(|w| rows * w).sum::<i64>() * self.kind.elt_size_in_bytes() as i64;
        file.set_len(header.len() as u64 + data as u64).map_err(|e| io_err(&tmp, e))?;
        Ok(OpenShard { index: self.shards, file, tmp, images, filled: 0, starts })
    }

    fn commit(&mut self, shard: OpenShard) -> Result<()> {
        shard.file.sync_all().map_err(|e| io_err(&shard.tmp, e))?;
        let path = self.dir.join(shard_name(shard.index));
        fs::rename(&shard.tmp, &path).map_err(|e| io_err(&path, e))?;
        self.shards += 1;
        Ok(())
    }

    /// Runs the model on `pixels` [B, C, H, W] (stopping after the last hooked block) and appends
    /// the chosen tokens of each hook.
    pub fn append(&mut self, model: &Model, pixels: &Tensor) -> Result<()> {
        let b = pixels.size().first().copied().unwrap_or(0);
        if self.done + b > self.total_images() {
            return Err(PrismaError::Argument(format!(
                "{} images more than the {} this cache was opened for",
                self.done + b - self.total_images(),
                self.total_images()
            )));
        }
        let out = model.run(RunRequest {
            pixels: Some(pixels.shallow_clone()),
            cache: self.meta.identity.hooks.clone(),
            stop_at_layer: self.stop_at_layer,
            ..Default::default()
        })?;
        let recorded: HashMap<HookPoint, Tensor> = out.cache.into_iter().collect();
        let tpi = self.meta.identity.tokens_per_image;
        let elt = self.kind.elt_size_in_bytes() as i64;
        let mut bytes = Vec::with_capacity(self.points.len());
        for p in &self.points {
            let t = recorded.get(p).ok_or_else(|| PrismaError::Internal(format!("hook '{p}' was not recorded")))?;
            let t = match self.range {
                Some((start, len)) => t.f_narrow(1, start, len)?,
                None => t.shallow_clone(),
            };
            let t = t.f_to_device(tch::Device::Cpu)?.f_to_kind(self.kind)?.f_contiguous()?;
            let mut buf = vec![0u8; t.numel() * elt as usize];
            t.f_copy_data_u8(&mut buf, t.numel())?;
            bytes.push(buf);
        }
        let mut i = 0;
        while i < b {
            let mut shard = match self.current.take() {
                Some(s) => s,
                None => self.open_shard()?,
            };
            let m = (shard.images - shard.filled).min(b - i);
            for ((buf, width), start) in bytes.iter().zip(&self.meta.identity.widths).zip(&shard.starts) {
                let per_image = (tpi * width * elt) as usize;
                let src = &buf[i as usize * per_image..(i + m) as usize * per_image];
                let at = start + (shard.filled * tpi * width * elt) as u64;
                shard.file.write_all_at(src, at).map_err(|e| io_err(&shard.tmp, e))?;
            }
            shard.filled += m;
            self.done += m;
            i += m;
            if shard.filled == shard.images {
                self.commit(shard)?;
            } else {
                self.current = Some(shard);
            }
        }
        Ok(())
    }

    /// Marks the cache complete (every input written).
    pub fn finish(mut self) -> Result<CacheMeta> {
        if let Some(shard) = self.current.take() {
            return Err(PrismaError::Internal(format!("shard {} is partly written", shard.index)));
        }
        if self.done != self.total_images() {
            return Err(PrismaError::Argument(format!("{} of {} images written", self.done, self.total_images())));
        }
        self.meta.parts[0].shards = self.shards;
        self.meta.shards = self.shards;
        self.meta.images = self.done;
        self.meta.rows = self.done * self.meta.identity.tokens_per_image;
        self.meta.complete = true;
        write_meta(&self.dir, &self.meta)?;
        Ok(self.meta)
    }
}

/// A complete cache, its shards checked.
pub struct CacheReader {
    pub dir: PathBuf,
    pub meta: CacheMeta,
    shards: Vec<(PathBuf, ShardHeader)>,
}

impl CacheReader {
    pub fn open(dir: &Path) -> Result<CacheReader> {
        let meta = read_meta(dir)?;
        if !meta.complete {
            return Err(PrismaError::Argument(format!(
                "{}: the cache is not finished; run the same `prisma sae cache` command again to finish it",
                dir.display()
            )));
        }
        let identity_text = serde_json::to_string(&meta.identity).map_err(|e| PrismaError::Internal(e.to_string()))?;
        let shards = list_shards(dir, &meta, &identity_text)?;
        if shards.len() as i64 != meta.shards {
            let missing = dir.join(shard_name(shards.len() as i64));
            return Err(corrupt(&missing, format!("missing: the cache has {} shards", meta.shards)));
        }
        let images: i64 = shards.iter().map(|(_, h)| h.images).sum();
        if images != meta.images {
            return Err(corrupt(&dir.join(META_FILE), format!("shards hold {images} images, metadata says {}", meta.images)));
        }
        Ok(CacheReader { dir: dir.into(), meta, shards })
    }

    /// Rows of `hook`, `batch` at a time, shard after shard.
    pub fn source(&self, hook: &str, batch: i64) -> Result<CacheSource> {
        let index = self.meta.identity.hooks.iter().position(|h| h == hook).ok_or_else(|| {
            mismatch(&self.dir, format!("holds no activations at '{hook}' (it has {})", self.meta.identity.hooks.join(", ")))
        })?;
        let shards = self
            .shards
            .iter()
            .map(|(path, h)| {
                let (offset, rows) = h.tensors.get(hook).copied().unwrap_or((0, 0));
                (path.clone(), offset, rows)
            })
            .collect();
        Ok(CacheSource {
            shards,
            width: self.meta.identity.widths[index],
            kind: parse_dtype(&self.meta.identity.dtype)?,
            batch: batch.max(1),
            position: 0,
            map: None,
        })
    }
}

/// An `ActivationSource` over one hook of a cache, read sequentially from memory maps.
pub struct CacheSource {
    /// (file, byte offset of the hook's rows, rows).
    shards: Vec<(PathBuf, u64, i64)>,
    width: i64,
    kind: Kind,
    batch: i64,
    /// Rows served so far.
    position: u64,
    map: Option<(usize, memmap2::Mmap)>,
}

impl CacheSource {
    pub fn rows(&self) -> i64 {
        self.shards.iter().map(|s| s.2).sum()
    }
}

impl ActivationSource for CacheSource {
    fn next_batch(&mut self) -> Result<Option<Tensor>> {
        let mut skip = self.position as i64;
        let mut index = 0;
        while index < self.shards.len() && skip >= self.shards[index].2 {
            skip -= self.shards[index].2;
            index += 1;
        }
        if index == self.shards.len() {
            return Ok(None);
        }
        let (path, offset, rows) = &self.shards[index];
        if self.map.as_ref().map(|m| m.0) != Some(index) {
            self.map = None;
            let file = File::open(path).map_err(|e| io_err(path, e))?;
            // Safety: shards are immutable once renamed into place; the map is read only.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
            let _ = map.advise(memmap2::Advice::Sequential);
            self.map = Some((index, map));
        }
        let map = match &self.map {
            Some((_, m)) => m,
            None => return Err(PrismaError::Internal("shard map missing".into())),
        };
        let n = self.batch.min(rows - skip);
        let row_bytes = (self.width * self.kind.elt_size_in_bytes() as i64) as usize;
        let start = *offset as usize + skip as usize * row_bytes;
        let end = start + n as usize * row_bytes;
        let bytes = map.get(start..end).ok_or_else(|| corrupt(path, "shorter than its header says".into()))?;
        let t = Tensor::f_from_data_size(bytes, &[n, self.width], self.kind)?;
        self.position += n as u64;
        Ok(Some(t))
    }

    fn position(&self) -> u64 {
        self.position
    }

    fn seek(&mut self, position: u64) -> Result<()> {
        self.position = position;
        Ok(())
    }
}

/// Merges complete caches of one identity (e.g. `--shard k/n` parts from several machines) into a
/// new cache at `dst`, linking (or copying) their shards. Written beside `dst` and renamed into
/// place, so `dst` is whole or absent.
pub fn merge(dst: &Path, srcs: &[PathBuf]) -> Result<CacheMeta> {
    if srcs.is_empty() {
        return Err(PrismaError::Argument("no caches to merge".into()));
    }
    if dst.exists() {
        return Err(PrismaError::Io { path: dst.into(), reason: "already exists; merge into a new folder".into() });
    }
    let readers = srcs.iter().map(|s| CacheReader::open(s)).collect::<Result<Vec<_>>>()?;
    let first = &readers[0];
    let mut parts: Vec<CachePart> = Vec::new();
    for r in &readers {
        if r.meta.identity != first.meta.identity {
            return Err(mismatch(
                &r.dir,
                format!("cannot merge with {}: {}", first.dir.display(), identity_diff(&r.meta.identity, &first.meta.identity)),
            ));
        }
        for p in &r.meta.parts {
            if parts.iter().any(|q| q.inputs == p.inputs && q.shard == p.shard) {
                return Err(mismatch(&r.dir, "holds inputs already merged (the same part twice)".into()));
            }
            parts.push(p.clone());
        }
    }
    let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "cache".into());
    let tmp = dst.with_file_name(format!(".{name}.merging"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    let mut index = 0i64;
    for r in &readers {
        for (path, _) in &r.shards {
            let to = tmp.join(shard_name(index));
            if fs::hard_link(path, &to).is_err() {
                fs::copy(path, &to).map_err(|e| io_err(&to, e))?;
            }
            index += 1;
        }
    }
    let images: i64 = readers.iter().map(|r| r.meta.images).sum();
    let meta = CacheMeta {
        format: FORMAT.into(),
        version: 1,
        identity: first.meta.identity.clone(),
        parts,
        complete: true,
        shards: index,
        images,
        rows: images * first.meta.identity.tokens_per_image,
        info: first.meta.info.clone(),
    };
    write_meta(&tmp, &meta)?;
    fs::rename(&tmp, dst).map_err(|e| io_err(dst, e))?;
    Ok(meta)
}
