//! Reading safetensors checkpoints (single file or sharded with an index) into named tensors,
//! and handing them out by name with shape checks, so loaders can report missing, misshapen and
//! unexpected tensors with the file they came from.

use crate::error::{PrismaError, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub struct TensorStore {
    tensors: BTreeMap<String, (Tensor, PathBuf)>,
    /// Where a caller should say a missing tensor was looked for.
    primary: PathBuf,
    pub n_params: i64,
    /// Tensors taken that hold NaN or infinities, in the order taken (checked once, at load).
    pub nonfinite: Vec<NonFinite>,
}

/// A weight with NaN or infinite values: where it came from and how many of each.
#[derive(Debug, Clone)]
pub struct NonFinite {
    pub file: PathBuf,
    pub tensor: String,
    pub nan: i64,
    pub inf: i64,
}

impl NonFinite {
    pub fn error(&self) -> PrismaError {
        PrismaError::WeightsNonFinite { file: self.file.clone(), tensor: self.tensor.clone(), nan: self.nan, inf: self.inf }
    }
}

/// NaN and infinity counts of a floating tensor, or None when every value is finite.
fn nonfinite_counts(t: &Tensor) -> Result<Option<(i64, i64)>> {
    if !t.is_floating_point() || t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0 {
        return Ok(None);
    }
    let nan = t.f_isnan()?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let inf = t.f_isinf()?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    Ok(Some((nan, inf)))
}

impl TensorStore {
    /// Opens the weights transformers and timm write, in transformers' order of preference:
    /// `model.safetensors`, the shards of `model.safetensors.index.json`, `pytorch_model.bin`, the
    /// shards of `pytorch_model.bin.index.json`.
    pub fn open_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        let bin_index = dir.join("pytorch_model.bin.index.json");
        let (files, index) = if single.is_file() {
            (vec![single.clone()], single)
        } else if index.is_file() {
            (shard_files(dir, &index)?, index)
        } else if bin.is_file() {
            (vec![bin.clone()], bin)
        } else if bin_index.is_file() {
            (shard_files(dir, &bin_index)?, bin_index)
        } else {
            return Err(PrismaError::WeightsMissing {
                file: single,
                tensor: "(no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json)".into(),
            });
        };
        let mut tensors = BTreeMap::new();
        for file in &files {
            if file.extension().is_some_and(|e| e == "safetensors") {
                read_file_into(file, kind, device, &mut tensors)?;
            } else {
                read_pickle_into(file, kind, device, &mut tensors)?;
            }
        }
        let primary = if files.len() == 1 { files[0].clone() } else { index };
        Ok(TensorStore { tensors, primary, n_params: 0, nonfinite: Vec::new() })
    }

    /// Opens one named safetensors file (open_clip's `open_clip_model.safetensors`).
    pub fn open_file(file: &Path, kind: Kind, device: Device) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        read_file_into(file, kind, device, &mut tensors)?;
        Ok(TensorStore { tensors, primary: file.to_path_buf(), n_params: 0, nonfinite: Vec::new() })
    }

    /// Opens a PyTorch pickle checkpoint (`torch.save` zip format: transformers' `pytorch_model.bin`,
    /// timm and open_clip state dicts and training checkpoints) without running any pickle code;
    /// see `torch_pickle`.
    pub fn open_torch_pickle(file: &Path, kind: Kind, device: Device) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        read_pickle_into(file, kind, device, &mut tensors)?;
        Ok(TensorStore { tensors, primary: file.to_path_buf(), n_params: 0, nonfinite: Vec::new() })
    }

    /// Every tensor name still in the store (loaders use it to count layers).
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor, checking its shape. Counts it as a model parameter.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let (tensor, file) = self
            .tensors
            .remove(name)
            .ok_or_else(|| PrismaError::WeightsMissing { file: self.primary.clone(), tensor: name.to_string() })?;
        if tensor.size() != shape {
            return Err(PrismaError::WeightsShape { file, tensor: name.into(), expected: shape.to_vec(), found: tensor.size() });
        }
        self.n_params += tensor.numel() as i64;
        // A NaN or infinite weight makes every output NaN while the run reports success: noted
        // here (one pass over each weight the model uses), refused by the loader unless allowed.
        if let Some((nan, inf)) = nonfinite_counts(&tensor)? {
            self.nonfinite.push(NonFinite { file, tensor: name.into(), nan, inf });
        }
        Ok(tensor)
    }

    pub fn take_optional(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn shape_of(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(|(t, _)| t.size())
    }

    /// Drops tensors the model does not use (e.g. a pooler) without counting them.
    pub fn discard_prefix(&mut self, prefix: &str) {
        self.tensors.retain(|name, _| !name.starts_with(prefix));
    }

    /// Names left over after loading: reported to the user as unexpected.
    pub fn leftover(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| PrismaError::Io { path: index.into(), reason: e.to_string() })?;
    let parsed: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| PrismaError::WeightsFormat { file: index.into(), reason: format!("not valid JSON: {e}") })?;
    let map = parsed
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| PrismaError::WeightsFormat { file: index.into(), reason: "no \"weight_map\" object".into() })?;
    let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

fn read_pickle_into(file: &Path, kind: Kind, device: Device, out: &mut BTreeMap<String, (Tensor, PathBuf)>) -> Result<()> {
    for (name, tensor) in super::torch_pickle::read_checkpoint(file)? {
        let tensor = if tensor.is_floating_point() { tensor.f_to_kind(kind)? } else { tensor };
        out.insert(name, (tensor.f_to_device(device)?, file.to_path_buf()));
    }
    Ok(())
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn read_file_into(file: &Path, kind: Kind, device: Device, out: &mut BTreeMap<String, (Tensor, PathBuf)>) -> Result<()> {
    let handle = File::open(file).map_err(|e| PrismaError::Io { path: file.into(), reason: e.to_string() })?;
    // SAFETY: the map is read-only and dropped before returning; a file changed under us can only
    // give wrong numbers, which the safetensors header checks make unlikely to go unnoticed.
    let bytes = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| PrismaError::Io { path: file.into(), reason: e.to_string() })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| PrismaError::WeightsFormat { file: file.into(), reason: format!("not a valid safetensors file ({e})") })?;
    for (name, view) in st.tensors() {
        let source_kind = kind_of(view.dtype()).ok_or_else(|| PrismaError::WeightsFormat {
            file: file.into(),
            reason: format!("tensor '{name}' has unsupported dtype {:?}", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, source_kind)?;
        let tensor = if tensor.is_floating_point() { tensor.f_to_kind(kind)? } else { tensor };
        out.insert(name, (tensor.f_to_device(device)?, file.to_path_buf()));
    }
    Ok(())
}

/// Reads every tensor of a safetensors file as float32 (for pixel inputs and references).
pub fn read_safetensors_f32(file: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut map = BTreeMap::new();
    read_file_into(file, Kind::Float, Device::Cpu, &mut map).map_err(|e| match e {
        PrismaError::WeightsFormat { file, reason } => PrismaError::TensorFile { path: file, reason },
        other => other,
    })?;
    Ok(map.into_iter().map(|(k, (t, _))| (k, t)).collect())
}
