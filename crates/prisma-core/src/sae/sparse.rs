//! TopK and BatchTopK steps with sparse products: only k of d_sae activations per token are
//! non-zero, so the decoder, its gradient and the encoder's weight gradient touch k rows per
//! token instead of d_sae. The only dense product left is the encoder's forward x·W_enc.
//!
//! The gradients are written out by hand and equal what autograd gives for SAELens's TopK
//! training forward (tested against it). With decoder-norm rescaling the decode is
//! Σ_j (relu(h_j s_j) / s_j) W_j = Σ_j h_j W_j over the selected j with h_j > 0 (s_j = ‖W_j‖ > 0),
//! so s only moves the selection, and the gradients are those of Σ_j h_j W_j: ∂W_j = Σ_b h_bj g_b,
//! ∂h_bj = g_b·W_j. AuxK's activations skip the ReLU but decode the same way.

use crate::error::Result;
use tch::{Kind, Tensor};

/// Per-token selected features: flat (row, feature, value) triples with the rows ascending, and
/// the offsets of each row's run (for embedding_bag).
pub(crate) struct Selection {
    pub rows: Tensor,
    pub cols: Tensor,
    pub vals: Tensor,
    pub offsets: Tensor,
}

/// Rows of x̂ = Σ_j v_j W[j] for each bag, without materialising the gathered rows.
pub(crate) fn bag_sum(weight: &Tensor, sel: &Selection) -> Result<Tensor> {
    let (out, _, _, _) = Tensor::f_embedding_bag(weight, &sel.cols, &sel.offsets, false, 0, false, Some(&sel.vals), false)?;
    Ok(out)
}

/// Σ over selected (b, j) of v_bj · y[b] into row j of a [n, d] accumulator, in chunks so the
/// [entries, d] products stay small.
pub(crate) fn scatter_rows(acc: &mut Tensor, sel: &Selection, y: &Tensor) -> Result<()> {
    let n = sel.cols.size()[0];
    let chunk = 1 << 16;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let rows = sel.rows.f_narrow(0, start, len)?;
        let cols = sel.cols.f_narrow(0, start, len)?;
        let vals = sel.vals.f_narrow(0, start, len)?;
        let contrib = y.f_index_select(0, &rows)?.f_mul(&vals.f_unsqueeze(1)?)?;
        let _ = acc.f_index_add_(0, &cols, &contrib)?;
        start += len;
    }
    Ok(())
}

/// For each selected (b, j): g[b] · W[j], chunked.
pub(crate) fn row_dots(weight: &Tensor, sel: &Selection, g: &Tensor) -> Result<Tensor> {
    let n = sel.cols.size()[0];
    let chunk = 1 << 16;
    let mut parts = Vec::new();
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let w = weight.f_index_select(0, &sel.cols.f_narrow(0, start, len)?)?;
        let gb = g.f_index_select(0, &sel.rows.f_narrow(0, start, len)?)?;
        parts.push(w.f_mul(&gb)?.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?);
        start += len;
    }
    if parts.is_empty() {
        return Ok(Tensor::f_zeros([0], (Kind::Float, tch::Device::Cpu))?);
    }
    Ok(Tensor::f_cat(&parts, 0)?)
}

/// A selection from per-row top-k indices [B, k] and their values.
pub(crate) fn from_topk(indices: &Tensor, values: &Tensor) -> Result<Selection> {
    let (b, k) = (indices.size()[0], indices.size()[1]);
    let rows = Tensor::f_arange(b, (tch::Kind::Int64, tch::Device::Cpu))?.f_unsqueeze(1)?.f_expand([b, k], false)?.f_reshape([-1i64])?;
    let offsets = Tensor::f_arange(b, (tch::Kind::Int64, tch::Device::Cpu))?.f_mul_scalar(k)?;
    Ok(Selection { rows, cols: indices.f_reshape([-1i64])?, vals: values.f_reshape([-1i64])?, offsets })
}

/// A selection from flat indices into a [B, n] matrix (any order) and their values.
pub(crate) fn from_flat(flat: &Tensor, values: &Tensor, b: i64, n: i64) -> Result<Selection> {
    let (sorted, order) = flat.f_sort(0, false)?;
    let vals = values.f_index_select(0, &order)?;
    let rows = sorted.f_div_scalar_mode(n, "floor")?;
    let cols = sorted.f_remainder(n)?;
    let counts = rows.f_bincount(None::<Tensor>, b)?;
    let offsets = counts.f_cumsum(0, Kind::Int64)?.f_sub(&counts)?;
    Ok(Selection { rows, cols, vals, offsets })
}
