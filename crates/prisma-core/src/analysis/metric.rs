//! The quantity a technique tracks: the target's logit (or target minus baseline, the logit
//! difference), and the target's probability.

use super::to_vec_f64;
use crate::error::{PrismaError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    pub target: i64,
    pub baseline: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
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

    pub fn values(&self, logits: &Tensor) -> Result<Vec<MetricValue>> {
        let logits = logits.f_to_kind(Kind::Double)?;
        let value = to_vec_f64(&self.tensor(&logits)?)?;
        let prob = to_vec_f64(&logits.f_softmax(-1, None::<Kind>)?.f_select(1, self.target)?)?;
        Ok(value.into_iter().zip(prob).map(|(value, prob)| MetricValue { value, prob }).collect())
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
