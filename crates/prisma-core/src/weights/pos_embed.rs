//! Position-embedding tables: resizing a learned table to another patch grid the way each reference
//! library does it, and the fixed sinusoid table of VideoMAE.

use crate::error::{PrismaError, Result};
use crate::models::vit::{ViTConfig, ViTWeights};
use std::path::Path;
use tch::{Kind, Tensor};

/// How a reference library resamples the patch part of a learned table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GridResample {
    /// `F.interpolate(mode="bicubic", align_corners=False)` (HF ViT, CLIP, ViViT, Dinov2Model).
    Bicubic,
    /// The same with `antialias=True` (HF Dinov2WithRegistersModel, timm `resample_abs_pos_embed`).
    BicubicAntialias,
}

/// `table` [1, prefix + gh*gw, d] (prefix = class/distillation entries, kept as they are) → the same
/// for the grid `to`. Computed in float32 like the references, returned in the table's dtype.
pub fn resize_grid(table: &Tensor, prefix: i64, from: [i64; 2], to: [i64; 2], how: GridResample) -> Result<Tensor> {
    if from == to {
        return Ok(table.shallow_clone());
    }
    let size = table.size();
    let d = size[2];
    if size[1] != prefix + from[0] * from[1] {
        return Err(PrismaError::Internal(format!("position table {size:?} does not hold a {}x{} grid", from[0], from[1])));
    }
    let kind = table.kind();
    let head = table.f_narrow(1, 0, prefix)?;
    let grid = table
        .f_narrow(1, prefix, from[0] * from[1])?
        .f_reshape([1, from[0], from[1], d].as_slice())?
        .f_permute([0i64, 3, 1, 2].as_slice())?
        .f_to_kind(Kind::Float)?;
    let resized = match how {
        GridResample::Bicubic => grid.f_upsample_bicubic2d(to.as_slice(), false, None, None)?,
        GridResample::BicubicAntialias => grid.f_internal_upsample_bicubic2d_aa(to.as_slice(), false, None, None)?,
    };
    let resized = resized.f_permute([0i64, 2, 3, 1].as_slice())?.f_reshape([1, to[0] * to[1], d].as_slice())?.f_to_kind(kind)?;
    Ok(Tensor::f_cat(&[head, resized], 1)?)
}

/// VideoMAE's fixed table [1, n, d]: angle(p, j) = p / 10000^(2⌊j/2⌋/d), sin on even j, cos on odd j
/// (computed in float64 as the reference does with numpy, then float32).
pub fn sinusoid_table(n: i64, d: i64) -> Result<Tensor> {
    let mut values = Vec::with_capacity((n * d) as usize);
    for p in 0..n {
        for j in 0..d {
            let angle = p as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / d as f64);
            values.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    Ok(Tensor::from_slice(&values).f_reshape([1, n, d].as_slice())?)
}

/// Resizes a loaded model's position table to run at `size` (a no-op at the native size).
pub fn set_image_size(cfg: &mut ViTConfig, weights: &mut ViTWeights, size: [i64; 2], how: GridResample, config_path: &Path) -> Result<()> {
    if size == cfg.image_size {
        return Ok(());
    }
    if cfg.num_frames > 0 {
        return Err(PrismaError::Argument(format!(
            "{}: video models run at their training size ({}x{}); --image-size is for image models",
            config_path.display(),
            cfg.image_size[0],
            cfg.image_size[1]
        )));
    }
    let p = cfg.patch_size;
    if size[0] < p || size[1] < p || size[0] % p != 0 || size[1] % p != 0 {
        return Err(PrismaError::Argument(format!("image size {}x{} is not a multiple of the patch size {p}", size[0], size[1])));
    }
    let from = cfg.grid();
    let to = [size[0] / p, size[1] / p];
    fits_in_memory(cfg, size, to)?;
    weights.pos_embed = resize_grid(&weights.pos_embed, cfg.n_prefix_tokens(), from, to, how)?;
    cfg.image_size = size;
    Ok(())
}

/// Refuses a size at which even one image's forward cannot fit in this machine's memory. The table
/// is resized here, before any image is read, and at an absurd size (100000 typed for 1000) the
/// interpolation alone would have the process killed by the OS, with no message. The estimate is a
/// floor, in f32: four copies of the pixels (on the way from Node: the JS array, the binding's copy,
/// the tensor, one conversion), the position table, and one block's widest activations (the residual
/// stream and its layer-norm output, q, k, v, z and the attention output; the MLP's hidden layer
/// before and after its activation). Sizes that pass may still be slow: attention is quadratic in
/// the number of positions.
fn fits_in_memory(cfg: &ViTConfig, size: [i64; 2], grid: [i64; 2]) -> Result<()> {
    let Some(memory) = physical_memory() else { return Ok(()) };
    let n_pos = (grid[0] * grid[1] + cfg.n_prefix_tokens()) as f64;
    let pixels = (cfg.num_channels * size[0] * size[1]) as f64;
    let needed = 4.0 * (4.0 * pixels + n_pos * (9 * cfg.d_model + 2 * cfg.d_mlp) as f64);
    if needed <= memory as f64 {
        return Ok(());
    }
    let gb = |bytes: f64| bytes / (1u64 << 30) as f64;
    Err(PrismaError::Argument(format!(
        "image size {}x{} ({} positions): one image's forward needs at least {:.1} GB, more than this machine's {:.1} GB of memory; use a smaller image size",
        size[0],
        size[1],
        n_pos as u64,
        gb(needed),
        gb(memory as f64)
    )))
}

/// Physical memory in bytes, where the system reports it.
fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads the system's configuration.
        let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        (pages > 0 && page_size > 0).then(|| pages as u64 * page_size as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}
