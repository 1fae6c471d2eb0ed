//! Pre-processed pixel tensors and other arrays users bring: `.npy` and `.safetensors`.

use crate::error::{PrismaError, Result};
use crate::weights::store::read_safetensors_f32;
use std::path::Path;
use tch::{Kind, Tensor};

pub fn read_tensor_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "npy" => Ok(vec![("pixel_values".to_string(), read_npy(path)?)]),
        "safetensors" => {
            let tensors = read_safetensors_f32(path)?;
            tensors.into_iter().map(|(n, t)| Ok((n, t.f_to_kind(Kind::Float)?))).collect()
        }
        _ => Err(PrismaError::TensorFile { path: path.into(), reason: "expected a .npy or .safetensors file".into() }),
    }
}

fn read_npy(path: &Path) -> Result<Tensor> {
    let bad = |reason: String| PrismaError::TensorFile { path: path.into(), reason };
    let bytes = std::fs::read(path).map_err(|e| PrismaError::Io { path: path.into(), reason: e.to_string() })?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(format!("not a valid .npy file ({e})")))?;
    if npy.order() != npyz::Order::C {
        return Err(bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    let type_str = npy.dtype().descr();
    let values: Vec<f32> = if type_str.ends_with("f4") {
        npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?
    } else if type_str.ends_with("f8") {
        npy.into_vec::<f64>().map_err(|e| bad(e.to_string()))?.into_iter().map(|v| v as f32).collect()
    } else {
        return Err(bad(format!("dtype {type_str} is not supported; use float32")));
    };
    Ok(Tensor::from_slice(&values).f_reshape(shape)?)
}

/// A float32 tensor held in plain memory: name, shape, values (row-major).
pub type NamedF32 = (String, Vec<i64>, Vec<f32>);

/// Writes float32 tensors as safetensors atomically: a temp file beside the target, then rename,
/// so an interrupted run never leaves a half-written file under the final name.
pub fn save_safetensors(
    path: &Path,
    tensors: &[NamedF32],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    use safetensors::tensor::TensorView;
    let io = |e: String| PrismaError::Io { path: path.into(), reason: e };
    let mut views = Vec::with_capacity(tensors.len());
    let byte_buffers: Vec<&[u8]> = tensors
        .iter()
        .map(|(_, _, data)| {
            // SAFETY: f32 has no padding; viewing its bytes is sound and little-endian on supported targets.
            unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, data.len() * 4) }
        })
        .collect();
    for ((name, shape, data), bytes) in tensors.iter().zip(&byte_buffers) {
        let expected: i64 = shape.iter().product();
        if expected as usize != data.len() {
            return Err(PrismaError::Shape(format!("tensor '{name}': shape {shape:?} needs {expected} values, got {}", data.len())));
        }
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let view = TensorView::new(safetensors::Dtype::F32, shape, bytes).map_err(|e| io(e.to_string()))?;
        views.push((name.clone(), view));
    }
    // Streamed to the temp file: activation files can be gigabytes.
    write_atomically(path, |tmp| safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| io(e.to_string())))
}

/// Writes `path` through `write(temp)` on a temp file beside it, then a rename, so an interrupted
/// run never leaves a half-written file under the final name. Creates the parent folder.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let io = |e: std::io::Error| PrismaError::Io { path: path.into(), reason: e.to_string() };
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(io));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
