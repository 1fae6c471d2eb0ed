//! Per-feature statistics of an SAE over a dataset, from one streaming pass in constant memory:
//! density (tokens and images), mean and max activation, the top-k images by max and by mean
//! activation with their per-token maps, samples from activation bands, a log-spaced histogram and
//! the features each one co-fires with. States merge exactly (shards, or a run resumed from a
//! saved state): every kept list is ordered by (score descending, image ascending) and quantile
//! samples are the smallest hash keys of their band, so which process saw an image does not matter.
//! Sums are f64 and merged by addition (equal to a single pass up to rounding).

use crate::error::{PrismaError, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Edges of the histogram of positive activations: 10^(LOG_MIN + i / BINS_PER_DECADE).
pub const LOG_MIN: f64 = -3.0;
pub const BINS_PER_DECADE: usize = 5;
pub const DECADES: usize = 6;
/// Bins: below the first edge, the log-spaced ones, at or above the last edge.
pub const HIST_BINS: usize = BINS_PER_DECADE * DECADES + 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureOptions {
    /// Images kept per feature, by max and by mean activation.
    pub top_k: usize,
    /// Samples kept per feature and activation band (one band per decade of the histogram).
    pub samples_per_band: usize,
    /// Co-firing partners listed per feature.
    pub cofire_top: usize,
}

impl Default for FeatureOptions {
    fn default() -> Self {
        FeatureOptions { top_k: 8, samples_per_band: 4, cofire_top: 8 }
    }
}

/// An image kept for a feature, with the feature's activation at each of its tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopImage {
    pub score: f32,
    pub image: u64,
    pub map: Vec<f32>,
}

/// One token's activation, kept as a quantile sample.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub key: u64,
    pub image: u64,
    pub token: u32,
    pub value: f32,
}

/// The running state; `update` per batch, `merge` shards, serde for checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureStats {
    pub options: FeatureOptions,
    pub d_sae: usize,
    pub tokens_per_image: usize,
    pub images: u64,
    pub tokens: u64,
    /// Per feature: tokens where it fired (> 0), images where it fired on some token.
    pub fired_tokens: Vec<u64>,
    pub fired_images: Vec<u64>,
    pub sum: Vec<f64>,
    pub max: Vec<f32>,
    /// [d_sae * HIST_BINS] counts of positive activations.
    pub histogram: Vec<u64>,
    pub top_by_max: Vec<Vec<TopImage>>,
    pub top_by_mean: Vec<Vec<TopImage>>,
    /// [d_sae * DECADES + 2] bands (as histogram bins grouped by decade, plus the two open ends).
    pub samples: Vec<Vec<Sample>>,
    /// [d_sae * d_sae] tokens where both fired.
    pub cofire: Vec<u64>,
}

fn order(a: &TopImage, b: &TopImage) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then(a.image.cmp(&b.image))
}

/// Keeps the best `k` of `list` + `item` under `order`.
fn offer(list: &mut Vec<TopImage>, k: usize, item: TopImage) {
    if list.len() >= k {
        if let Some(last) = list.last() {
            if order(&item, last) != std::cmp::Ordering::Less {
                return;
            }
        }
    }
    let at = list.partition_point(|x| order(x, &item) == std::cmp::Ordering::Less);
    list.insert(at, item);
    list.truncate(k);
}

fn offer_sample(list: &mut Vec<Sample>, k: usize, item: Sample) {
    if list.len() >= k && list.last().is_some_and(|l| item.key >= l.key) {
        return;
    }
    let at = list.partition_point(|x| x.key < item.key);
    list.insert(at, item);
    list.truncate(k);
}

/// SplitMix64 of (image, token, feature): the sample key, the same in every process.
fn key(image: u64, token: u32, feature: usize) -> u64 {
    let mut z = image.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(token) << 32) ^ feature as u64;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Histogram bin of a positive value.
pub fn bin_of(v: f32) -> usize {
    let l = (f64::from(v).log10() - LOG_MIN) * BINS_PER_DECADE as f64;
    if l < 0.0 {
        0
    } else {
        (l.floor() as usize + 1).min(HIST_BINS - 1)
    }
}

/// Sample band of a histogram bin: the open ends are bands of their own, the rest by decade.
pub fn band_of(bin: usize) -> usize {
    match bin {
        0 => 0,
        b if b == HIST_BINS - 1 => DECADES + 1,
        b => 1 + (b - 1) / BINS_PER_DECADE,
    }
}

pub const BANDS: usize = DECADES + 2;

impl FeatureStats {
    pub fn new(d_sae: usize, tokens_per_image: usize, options: FeatureOptions) -> FeatureStats {
        FeatureStats {
            options,
            d_sae,
            tokens_per_image,
            images: 0,
            tokens: 0,
            fired_tokens: vec![0; d_sae],
            fired_images: vec![0; d_sae],
            sum: vec![0.0; d_sae],
            max: vec![0.0; d_sae],
            histogram: vec![0; d_sae * HIST_BINS],
            top_by_max: vec![Vec::new(); d_sae],
            top_by_mean: vec![Vec::new(); d_sae],
            samples: vec![Vec::new(); d_sae * BANDS],
            cofire: vec![0; d_sae * d_sae],
        }
    }

    /// Adds feature activations `acts` [images, tokens, d_sae] of the images `ids` (one id each).
    pub fn update(&mut self, acts: &Tensor, ids: &[u64]) -> Result<()> {
        let size = acts.size();
        let (n, t, d) = match size[..] {
            [n, t, d] => (n as usize, t as usize, d as usize),
            _ => return Err(PrismaError::Shape(format!("feature statistics take acts [images, tokens, d_sae], got {size:?}"))),
        };
        if d != self.d_sae || t != self.tokens_per_image || ids.len() != n {
            return Err(PrismaError::Shape(format!(
                "feature statistics of {} features over {} tokens per image got acts {size:?} for {} image ids",
                self.d_sae,
                self.tokens_per_image,
                ids.len()
            )));
        }
        let acts = acts.f_to_kind(Kind::Float)?.f_contiguous()?;
        let values = Vec::<f32>::try_from(&acts.f_view([-1])?).map_err(|e| PrismaError::Internal(e.to_string()))?;
        // Token co-firing through one product per batch: counts up to n*t fit f32 exactly.
        let active = acts.f_view([-1, d as i64])?.f_gt(0.0)?.f_to_kind(Kind::Float)?;
        let co = active.f_tr()?.f_matmul(&active)?;
        let co = Vec::<f32>::try_from(&co.f_view([-1])?).map_err(|e| PrismaError::Internal(e.to_string()))?;
        for (c, add) in self.cofire.iter_mut().zip(co) {
            *c += add as u64;
        }
        let k = self.options.top_k;
        let per_band = self.options.samples_per_band;
        for (i, &image) in ids.iter().enumerate() {
            let block = &values[i * t * d..(i + 1) * t * d];
            for f in 0..d {
                let (mut img_max, mut img_sum, mut fired) = (0.0f32, 0.0f64, false);
                for tok in 0..t {
                    let v = block[tok * d + f];
                    if v > 0.0 {
                        fired = true;
                        self.fired_tokens[f] += 1;
                        let bin = bin_of(v);
                        self.histogram[f * HIST_BINS + bin] += 1;
                        let s = Sample { key: key(image, tok as u32, f), image, token: tok as u32, value: v };
                        offer_sample(&mut self.samples[f * BANDS + band_of(bin)], per_band, s);
                    }
                    img_max = img_max.max(v);
                    img_sum += f64::from(v);
                }
                self.sum[f] += img_sum;
                self.max[f] = self.max[f].max(img_max);
                if fired {
                    self.fired_images[f] += 1;
                    let map = || (0..t).map(|tok| block[tok * d + f]).collect::<Vec<f32>>();
                    let mean = (img_sum / t as f64) as f32;
                    let worst =
                        |l: &Vec<TopImage>| if l.len() < k { f32::NEG_INFINITY } else { l.last().map_or(f32::NEG_INFINITY, |x| x.score) };
                    if img_max >= worst(&self.top_by_max[f]) {
                        offer(&mut self.top_by_max[f], k, TopImage { score: img_max, image, map: map() });
                    }
                    if mean >= worst(&self.top_by_mean[f]) {
                        offer(&mut self.top_by_mean[f], k, TopImage { score: mean, image, map: map() });
                    }
                }
            }
        }
        self.images += n as u64;
        self.tokens += (n * t) as u64;
        Ok(())
    }

    /// Adds another state over other images (a shard); same SAE, tokens and options.
    pub fn merge(&mut self, other: &FeatureStats) -> Result<()> {
        if other.d_sae != self.d_sae || other.tokens_per_image != self.tokens_per_image || other.options != self.options {
            return Err(PrismaError::Argument("feature statistics of another SAE, token count or options cannot be merged".into()));
        }
        self.images += other.images;
        self.tokens += other.tokens;
        let add = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.fired_tokens, &other.fired_tokens);
        add(&mut self.fired_images, &other.fired_images);
        add(&mut self.histogram, &other.histogram);
        add(&mut self.cofire, &other.cofire);
        self.sum.iter_mut().zip(&other.sum).for_each(|(x, y)| *x += y);
        self.max.iter_mut().zip(&other.max).for_each(|(x, y)| *x = x.max(*y));
        let k = self.options.top_k;
        for (mine, theirs) in [(&mut self.top_by_max, &other.top_by_max), (&mut self.top_by_mean, &other.top_by_mean)] {
            for (a, b) in mine.iter_mut().zip(theirs) {
                for item in b {
                    offer(a, k, item.clone());
                }
            }
        }
        for (a, b) in self.samples.iter_mut().zip(&other.samples) {
            for s in b {
                offer_sample(a, self.options.samples_per_band, s.clone());
            }
        }
        Ok(())
    }

    /// The `cofire_top` features firing most often on the same tokens as `f`, with the fraction
    /// of `f`'s tokens where they fire too (ties to the lower index).
    pub fn cofiring(&self, f: usize) -> Vec<(usize, f64)> {
        let row = &self.cofire[f * self.d_sae..(f + 1) * self.d_sae];
        let mut partners: Vec<usize> = (0..self.d_sae).filter(|&g| g != f && row[g] > 0).collect();
        partners.sort_by(|&a, &b| row[b].cmp(&row[a]).then(a.cmp(&b)));
        partners.truncate(self.options.cofire_top);
        let own = self.fired_tokens[f].max(1) as f64;
        partners.into_iter().map(|g| (g, row[g] as f64 / own)).collect()
    }

    /// Mean activation over all tokens seen.
    pub fn mean(&self, f: usize) -> f64 {
        self.sum[f] / self.tokens.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acts(seed: i64, n: i64, t: i64, d: i64) -> Tensor {
        tch::manual_seed(seed);
        // Sparse non-negative values spanning several decades, with repeated values for ties.
        let v = Tensor::randn([n, t, d], (Kind::Float, tch::Device::Cpu)).exp().f_sub_scalar(1.5).unwrap().relu();
        v.f_mul_scalar(4.0).unwrap().round().f_div_scalar(4.0).unwrap()
    }

    fn naive(a: &[f32], n: usize, t: usize, d: usize, ids: &[u64], o: &FeatureOptions) -> FeatureStats {
        let mut s = FeatureStats::new(d, t, o.clone());
        s.images = n as u64;
        s.tokens = (n * t) as u64;
        let at = |i: usize, tok: usize, f: usize| a[(i * t + tok) * d + f];
        for f in 0..d {
            let mut by_max = Vec::new();
            let mut by_mean = Vec::new();
            let mut samples = vec![Vec::new(); BANDS];
            for (i, &id) in ids.iter().enumerate().take(n) {
                let map: Vec<f32> = (0..t).map(|tok| at(i, tok, f)).collect();
                let mx = map.iter().copied().fold(0.0f32, f32::max);
                let sm: f64 = map.iter().map(|v| f64::from(*v)).sum();
                s.sum[f] += sm;
                s.max[f] = s.max[f].max(mx);
                if mx > 0.0 {
                    s.fired_images[f] += 1;
                    by_max.push(TopImage { score: mx, image: id, map: map.clone() });
                    by_mean.push(TopImage { score: (sm / t as f64) as f32, image: id, map: map.clone() });
                }
                for (tok, &v) in map.iter().enumerate() {
                    if v > 0.0 {
                        s.fired_tokens[f] += 1;
                        s.histogram[f * HIST_BINS + bin_of(v)] += 1;
                        samples[band_of(bin_of(v))].push(Sample { key: key(id, tok as u32, f), image: id, token: tok as u32, value: v });
                        for g in 0..d {
                            if at(i, tok, g) > 0.0 {
                                s.cofire[f * d + g] += 1;
                            }
                        }
                    }
                }
            }
            for l in [&mut by_max, &mut by_mean] {
                l.sort_by(order);
                l.truncate(o.top_k);
            }
            s.top_by_max[f] = by_max;
            s.top_by_mean[f] = by_mean;
            for (b, mut band) in samples.into_iter().enumerate() {
                band.sort_by_key(|x| x.key);
                band.truncate(o.samples_per_band);
                s.samples[f * BANDS + b] = band;
            }
        }
        s
    }

    fn close_sums(a: &FeatureStats, b: &FeatureStats) -> bool {
        a.sum.iter().zip(&b.sum).all(|(x, y)| (x - y).abs() <= 1e-9 * x.abs().max(1.0))
    }

    fn without_sums(mut s: FeatureStats) -> FeatureStats {
        s.sum.clear();
        s
    }

    #[test]
    fn streaming_and_merged_shards_equal_a_naive_loop() {
        let (n, t, d) = (12usize, 5usize, 7usize);
        let o = FeatureOptions { top_k: 3, samples_per_band: 2, cofire_top: 3 };
        let x = acts(3, n as i64, t as i64, d as i64);
        let flat = Vec::<f32>::try_from(&x.view([-1])).unwrap();
        let ids: Vec<u64> = (100..100 + n as u64).collect();
        let want = naive(&flat, n, t, d, &ids, &o);
        // One pass in batches of 5, 5, 2.
        let mut one = FeatureStats::new(d, t, o.clone());
        for (start, len) in [(0, 5), (5, 5), (10, 2)] {
            one.update(&x.narrow(0, start as i64, len as i64), &ids[start..start + len]).unwrap();
        }
        assert!(close_sums(&one, &want));
        assert_eq!(without_sums(one.clone()), without_sums(want.clone()));
        // Shards over interleaved images, merged in another order.
        let mut shards: Vec<FeatureStats> = (0..3).map(|_| FeatureStats::new(d, t, o.clone())).collect();
        for i in 0..n {
            shards[i % 3].update(&x.narrow(0, i as i64, 1), &ids[i..=i]).unwrap();
        }
        let mut merged = shards[2].clone();
        merged.merge(&shards[0]).unwrap();
        merged.merge(&shards[1]).unwrap();
        assert!(close_sums(&merged, &want));
        assert_eq!(without_sums(merged), without_sums(want.clone()));
        // The state survives JSON (checkpoints, shard files).
        let back: FeatureStats = serde_json::from_str(&serde_json::to_string(&one).unwrap()).unwrap();
        assert_eq!(back, one);
        // Co-firing partners: naive ranking of the counts.
        for f in 0..d {
            let mut partners: Vec<usize> = (0..d).filter(|&g| g != f && want.cofire[f * d + g] > 0).collect();
            partners.sort_by(|&a, &b| want.cofire[f * d + b].cmp(&want.cofire[f * d + a]).then(a.cmp(&b)));
            partners.truncate(3);
            assert_eq!(one.cofiring(f).iter().map(|p| p.0).collect::<Vec<_>>(), partners);
        }
    }

    #[test]
    fn bins_and_bands_follow_the_edges() {
        assert_eq!(bin_of(1e-4), 0);
        assert_eq!(bin_of(1e-3), 1);
        assert_eq!(bin_of(1.0), 1 + 3 * BINS_PER_DECADE);
        assert_eq!(bin_of(1e4), HIST_BINS - 1);
        assert_eq!(band_of(bin_of(1.0)), 4);
    }
}
