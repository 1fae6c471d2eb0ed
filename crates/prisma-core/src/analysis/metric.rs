//! The quantity a technique tracks: the target's logit (or target minus baseline, the logit
//! difference), and the target's probability.

use super::to_vec_f64;
use crate::error::{PrismaError, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(optional_fields)]
pub struct MetricSpec {
    pub target: i64,
    pub baseline: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, ts_rs::TS)]
pub struct MetricValue {
    /// logit[target] - logit[baseline], or logit[target] without a baseline.
    pub value: f64,
    pub prob: f64,
}

impl MetricSpec {
    pub fn check(&self, n_classes: i64) -> Result<()> {
        for (what, c) in [("target", Some(self.target)), ("baseline", self.baseline)] {
            if let Some(c) = c {
                if c < 0 || c >= n_classes {
                    return Err(PrismaError::Argument(format!("{what} class {c} is out of range (0..{})", n_classes - 1)));
                }
            }
        }
        Ok(())
    }

    /// Differentiable metric per row of logits [N, C] -> [N].
    pub fn tensor(&self, logits: &Tensor) -> Result<Tensor> {
        let t = logits.f_select(1, self.target)?;
        Ok(match self.baseline {
            Some(b) => t.f_sub(&logits.f_select(1, b)?)?,
            None => t,
        })
    }

    /// The metric of each row of logits [N, C]. One copy of the logits to the host, then the
    /// arithmetic here in f64 (the softmax as torch computes it: shifted by the row's maximum):
    /// a handful of numbers per row, where each libtorch op would cost microseconds.
    pub fn values(&self, logits: &Tensor) -> Result<Vec<MetricValue>> {
        let n_classes = logits.size().get(1).copied().unwrap_or(0).max(1) as usize;
        let flat = to_vec_f64(logits)?;
        let pick = |row: &[f64], c: i64| {
            row.get(c as usize).copied().ok_or_else(|| PrismaError::Argument(format!("class {c} is out of range (0..{})", row.len() - 1)))
        };
        flat.chunks(n_classes)
            .map(|row| {
                let target = pick(row, self.target)?;
                let value = match self.baseline {
                    Some(b) => target - pick(row, b)?,
                    None => target,
                };
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = row.iter().map(|x| (x - max).exp()).sum();
                Ok(MetricValue { value, prob: (target - max).exp() / total })
            })
            .collect()
    }
}

/// TransformerLens's normalisation for patching: corrupted = 0, clean = 1.
pub fn normalise(value: f64, clean: f64, corrupt: f64) -> f64 {
    let span = clean - corrupt;
    if span.abs() < 1e-12 {
        0.0
    } else {
        (value - corrupt) / span
    }
}
