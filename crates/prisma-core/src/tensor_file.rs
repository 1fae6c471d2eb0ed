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
    // Matched on the parsed type, not on `descr()`, which is the Python literal with its quotes
    // ("'<f4'"). Either byte order reads.
    let float_bytes = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float => Some(t.size_field()),
        _ => None,
    };
    let unreadable = |e: std::io::Error| bad(format!("unreadable or truncated data ({e})"));
    let values: Vec<f32> = match float_bytes {
        Some(4) => npy.into_vec::<f32>().map_err(unreadable)?,
        Some(8) => npy.into_vec::<f64>().map_err(unreadable)?.into_iter().map(|v| v as f32).collect(),
        _ => return Err(bad(format!("dtype {} is not supported; use float32 (or float64)", npy.dtype().descr()))),
    };
    Ok(Tensor::from_slice(&values).f_reshape(shape)?)
}

/// A float32 tensor held in plain memory: name, shape, values (row-major).
pub type NamedF32 = (String, Vec<i64>, Vec<f32>);

/// Writes float32 tensors as safetensors atomically: a temp file beside the target, then rename,
/// so an interrupted run never leaves a half-written file under the final name.
pub fn save_safetensors(path: &Path, tensors: &[NamedF32], metadata: Option<std::collections::HashMap<String, String>>) -> Result<()> {
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
    let several_keys = metadata.as_ref().is_some_and(|m| m.len() > 1);
    // Streamed to the temp file: activation files can be gigabytes.
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| io(e.to_string()))?;
        if several_keys {
            sort_header_keys(tmp).map_err(|e| io(format!("rewriting the header: {e}")))?;
        }
        Ok(())
    })
}

/// The safetensors crate writes `__metadata__` in hash order, so two runs with the same inputs
/// could differ in bytes. Rewrites the header with its keys sorted: the same JSON values, compact,
/// so no longer than before; the padding keeps its length and with it every data offset.
fn sort_header_keys(path: &Path) -> std::result::Result<(), String> {
    use std::collections::BTreeMap;
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(len) as usize;
    let mut header = vec![0u8; n];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let parsed: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header).map_err(|e| e.to_string())?;
    let sorted: BTreeMap<&String, serde_json::Value> = parsed
        .iter()
        .map(|(k, v)| match v.as_object() {
            Some(obj) if k == "__metadata__" => (k, serde_json::json!(obj.iter().collect::<BTreeMap<_, _>>())),
            _ => (k, v.clone()),
        })
        .collect();
    let mut text = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    if text.len() > n {
        return Err(format!("sorted header is {} bytes, the original {n}", text.len()));
    }
    text.resize(n, b' ');
    file.seek(SeekFrom::Start(8)).map_err(|e| e.to_string())?;
    file.write_all(&text).map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn identical_inputs_write_identical_bytes_with_sorted_metadata() {
        let dir = std::env::temp_dir().join(format!("prisma-tensor-file-{}", std::process::id()));
        let tensors: Vec<NamedF32> =
            vec![("b".into(), vec![2, 3], (0..6).map(|i| i as f32).collect()), ("a".into(), vec![4], vec![1.5; 4])];
        // Each HashMap has its own random hash order, so unsorted headers would differ between files.
        let metadata = || (0..12).map(|i| (format!("key{i}"), format!("value {i} ü"))).collect::<HashMap<String, String>>();
        let files: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let path = dir.join(format!("t{i}.safetensors"));
                save_safetensors(&path, &tensors, Some(metadata())).unwrap();
                std::fs::read(&path).unwrap()
            })
            .collect();
        assert!(files.windows(2).all(|w| w[0] == w[1]));
        let (n, meta) = safetensors::SafeTensors::read_metadata(&files[0]).unwrap();
        let header = std::str::from_utf8(&files[0][8..8 + n]).unwrap();
        let positions: Vec<usize> = (0..12).map(|i| header.find(&format!("\"key{i}\"")).unwrap()).collect();
        let mut names: Vec<(String, usize)> = (0..12).map(|i| (format!("key{i}"), positions[i])).collect();
        names.sort();
        assert!(names.windows(2).all(|w| w[0].1 < w[1].1), "metadata keys are not in sorted order: {header}");
        assert_eq!(meta.metadata().as_ref().map(|m| m.len()), Some(12));
        let read = read_safetensors_f32(&dir.join("t0.safetensors")).unwrap();
        let b = read.iter().find(|(name, _)| name == "b").unwrap();
        assert_eq!(Vec::<f32>::try_from(&b.1.f_reshape([-1i64].as_slice()).unwrap()).unwrap(), tensors[0].2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
