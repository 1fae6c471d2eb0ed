//! How well single units (SAE features, or neurons of the layer they read) detect a labelled
//! concept on tokens: the unit is chosen on one split by AUROC (how well its value ranks the
//! concept's tokens above the rest) and its threshold there by F1, then both are judged on a
//! held-out split by precision, recall, F1 and AUROC. The same rule for features and neurons, so
//! the neuron baseline gets the same chance a feature does (neurons may also fire negatively).
//!
//! Units are columns of a row-major [rows, units] matrix. For sparse units (SAE features, mostly
//! 0) only values above 0 are thresholds: a feature detects a concept where it fires.

use serde::Serialize;
use std::cmp::Ordering;

/// A unit chosen for a concept and how it does on the held-out rows.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnitScore {
    pub unit: usize,
    /// +1: the unit's value rises with the concept; -1: it falls (neurons only).
    pub sign: i32,
    /// Predicted positive when sign * value >= threshold.
    pub threshold: f32,
    /// AUROC on the selection rows (what chose this unit).
    pub select_auroc: f64,
    /// F1 on the selection rows at `threshold` (what chose the threshold).
    pub select_f1: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Probability that a random positive row scores above a random negative one (ties: 1/2).
    pub auroc: f64,
}

/// The threshold t maximising F1 of `score >= t`, over the distinct values of the listed
/// (score, row) pairs given in descending order of score, and that F1. Rows not listed are never
/// predicted positive (for sparse units: zeros, below every threshold tried).
fn best_threshold<'a>(descending: impl Iterator<Item = (f32, u32)> + 'a, labels: &[bool], positives: usize) -> (f32, f64) {
    let (mut tp, mut predicted) = (0usize, 0usize);
    let (mut best_t, mut best_f1) = (f32::INFINITY, 0.0f64);
    let mut descending = descending.peekable();
    while let Some((v, r)) = descending.next() {
        tp += usize::from(labels[r as usize]);
        predicted += 1;
        // Score the threshold once its whole tie group is in.
        if descending.peek().is_some_and(|n| n.0 == v) {
            continue;
        }
        let f1 = 2.0 * tp as f64 / (positives + predicted) as f64;
        if f1 > best_f1 {
            (best_t, best_f1) = (v, f1);
        }
    }
    (best_t, best_f1)
}

/// AUROC from (score, row) pairs in descending order of score; `rest` rows (not listed) score
/// below all of them, `rest_pos` of them positive.
fn auroc_descending(descending: impl Iterator<Item = (f32, u32)>, labels: &[bool], positives: usize, rest: usize, rest_pos: usize) -> f64 {
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return f64::NAN;
    }
    let (mut wins, mut neg_above) = (0.0f64, 0usize);
    let (mut pos_g, mut neg_g) = (0usize, 0usize);
    let mut descending = descending.peekable();
    let close = |pos_g: usize, neg_g: usize, neg_above: usize| {
        let neg_below = negatives - neg_above - neg_g;
        pos_g as f64 * neg_below as f64 + 0.5 * pos_g as f64 * neg_g as f64
    };
    while let Some((v, r)) = descending.next() {
        if labels[r as usize] {
            pos_g += 1;
        } else {
            neg_g += 1;
        }
        if descending.peek().is_some_and(|n| n.0 == v) {
            continue;
        }
        wins += close(pos_g, neg_g, neg_above);
        neg_above += neg_g;
        (pos_g, neg_g) = (0, 0);
    }
    wins += close(rest_pos, rest - rest_pos, neg_above);
    wins / (positives as f64 * negatives as f64)
}

/// Mann-Whitney AUROC of `scores` against `labels` (average ranks for ties).
pub fn auroc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|l| **l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return f64::NAN;
    }
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]].total_cmp(&scores[order[i]]) == Ordering::Equal {
            j += 1;
        }
        // Ranks i+1..=j share their mean.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * order[i..j].iter().filter(|&&r| labels[r]).count() as f64;
        i = j;
    }
    (rank_sum - (positives * (positives + 1)) as f64 / 2.0) / (positives as f64 * negatives as f64)
}

/// Precision, recall and F1 of `sign * value >= threshold` for one column.
fn judge(values: &[f32], labels: &[bool], sign: i32, threshold: f32) -> (f64, f64, f64) {
    let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
    for (&v, &l) in values.iter().zip(labels) {
        let predicted = sign as f32 * v >= threshold;
        match (predicted, l) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fneg += 1,
            _ => {}
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (p, r) = (ratio(tp, tp + fp), ratio(tp, tp + fneg));
    (p, r, if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) })
}

/// Column `u` of a row-major [rows, units] matrix.
fn column(m: &[f32], units: usize, u: usize) -> Vec<f32> {
    m.iter().skip(u).step_by(units).copied().collect()
}

/// For each concept (a label per row), the unit with the highest AUROC on `select`, at the
/// threshold with the best F1 there, scored on `held_out`. `sparse_zero`: units are non-negative and mostly zero (SAE features):
/// only thresholds above 0 (where it fires) and the positive direction are tried. Otherwise
/// (neurons) both directions are tried. Ties between units go to the lower index.
pub fn best_units(
    select: &[f32],
    select_labels: &[Vec<bool>],
    held_out: &[f32],
    held_out_labels: &[Vec<bool>],
    units: usize,
    sparse_zero: bool,
) -> Vec<Option<UnitScore>> {
    let rows = select.len() / units.max(1);
    // Per unit, the listed (value, row) pairs: nonzero ones for sparse units, all for dense.
    let mut listed: Vec<Vec<(f32, u32)>> = vec![Vec::new(); units];
    for r in 0..rows {
        for (u, list) in listed.iter_mut().enumerate() {
            let v = select[r * units + u];
            if !sparse_zero || v > 0.0 {
                list.push((v, r as u32));
            }
        }
    }
    for list in listed.iter_mut() {
        list.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    }
    select_labels
        .iter()
        .zip(held_out_labels)
        .map(|(labels, test_labels)| {
            let positives = labels.iter().filter(|l| **l).count();
            if positives == 0 {
                return None;
            }
            // (unit, sign, selection AUROC); ties go to the earlier unit and the positive sign.
            let mut best: Option<(usize, i32, f64)> = None;
            for (u, list) in listed.iter().enumerate() {
                let listed_pos = list.iter().filter(|(_, r)| labels[*r as usize]).count();
                let (rest, rest_pos) = (rows - list.len(), positives - listed_pos);
                let up = auroc_descending(list.iter().copied(), labels, positives, rest, rest_pos);
                let mut tries = vec![(1, up)];
                if !sparse_zero {
                    tries.push((-1, auroc_descending(list.iter().rev().map(|&(v, r)| (-v, r)), labels, positives, rest, rest_pos)));
                }
                for (sign, a) in tries {
                    if best.is_none_or(|b| a > b.2) {
                        best = Some((u, sign, a));
                    }
                }
            }
            let (unit, sign, select_auroc) = best?;
            let list = &listed[unit];
            let (threshold, select_f1) = if sign > 0 {
                best_threshold(list.iter().copied(), labels, positives)
            } else {
                best_threshold(list.iter().rev().map(|&(v, r)| (-v, r)), labels, positives)
            };
            let values = column(held_out, units, unit);
            let (precision, recall, f1) = judge(&values, test_labels, sign, threshold);
            let signed: Vec<f32> = values.iter().map(|v| sign as f32 * v).collect();
            Some(UnitScore { unit, sign, threshold, select_auroc, select_f1, precision, recall, f1, auroc: auroc(&signed, test_labels) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny deterministic generator for test data.
    fn lcg(state: &mut u64) -> f32 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*state >> 40) as f32) / (1u64 << 24) as f32
    }

    fn naive_auroc(scores: &[f32], labels: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] && !labels[j] {
                    pairs += 1.0;
                    wins += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        wins / pairs
    }

    /// Best F1 over every threshold tried one by one (the values present).
    fn naive_best(values: &[f32], labels: &[bool], strictly_positive: bool) -> f64 {
        let mut best = 0.0f64;
        for &t in values {
            if strictly_positive && t <= 0.0 {
                continue;
            }
            best = best.max(judge(values, labels, 1, t).2);
        }
        best
    }

    #[test]
    fn auroc_equals_pair_counting_with_ties() {
        let mut s = 7u64;
        let scores: Vec<f32> = (0..200).map(|_| (lcg(&mut s) * 5.0).floor()).collect();
        let labels: Vec<bool> = scores.iter().map(|v| *v + lcg(&mut s) * 3.0 > 3.5).collect();
        assert!((auroc(&scores, &labels) - naive_auroc(&scores, &labels)).abs() < 1e-12);
    }

    #[test]
    fn selection_equals_naive_auroc_and_threshold_search() {
        let mut s = 11u64;
        for sparse in [false, true] {
            let (rows, units) = (150, 5);
            let m: Vec<f32> = (0..rows * units)
                .map(|_| {
                    let v = (lcg(&mut s) * 8.0).floor() - if sparse { 4.0 } else { 2.0 };
                    if sparse {
                        v.max(0.0)
                    } else {
                        v
                    }
                })
                .collect();
            // Unit 3 falls with the concept (found by neurons through the negative sign).
            let labels: Vec<bool> = (0..rows).map(|r| m[r * units + 2] - 0.5 * m[r * units + 3] + lcg(&mut s) * 4.0 > 3.0).collect();
            let got = best_units(&m, std::slice::from_ref(&labels), &m, std::slice::from_ref(&labels), units, sparse);
            let got = got[0].clone().expect("a unit");
            // Naive: every unit and sign by pair counting; the first best wins.
            let mut want: Option<(usize, i32, f64)> = None;
            for u in 0..units {
                let col = column(&m, units, u);
                let signs: &[i32] = if sparse { &[1] } else { &[1, -1] };
                for &sign in signs {
                    let signed: Vec<f32> = col.iter().map(|v| sign as f32 * v).collect();
                    let a = naive_auroc(&signed, &labels);
                    if want.is_none_or(|w| a > w.2 + 1e-12) {
                        want = Some((u, sign, a));
                    }
                }
            }
            let (u, sign, a) = want.expect("a unit");
            assert_eq!((got.unit, got.sign), (u, sign), "sparse {sparse}");
            assert!((got.select_auroc - a).abs() < 1e-12, "sparse {sparse}: {} vs {a}", got.select_auroc);
            let signed: Vec<f32> = column(&m, units, u).iter().map(|v| sign as f32 * v).collect();
            assert!((got.select_f1 - naive_best(&signed, &labels, sparse)).abs() < 1e-12);
            // Judged on the same rows, the held-out numbers are the selection ones.
            assert!((got.f1 - got.select_f1).abs() < 1e-12 && (got.auroc - got.select_auroc).abs() < 1e-12);
        }
    }
}
