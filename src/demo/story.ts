/**
 * The demo's written findings, computed from the numbers in the reports (never from what the
 * experiment was expected to show): where patching restores the answer, which heads matter, what
 * DLA credits, and when the logit lens first reads out the answer.
 */
import type { DlaAnalysis } from '../analysis/dla.js';
import type { LogitLensResult } from '../analysis/lens.js';
import type { PatchAnalysis } from '../analysis/patch.js';
import type { DemoPair } from './pick.js';

/** A share as a whole percentage; never "-0%" (a value that rounds to zero is 0%). */
export const pct = (x: number): string => {
  const v = Math.round(x * 100);
  return `${v === 0 ? 0 : v}%`;
};
const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);

export interface LayerRestoration {
  layer: number;
  classToken: number;
  objectPatches: number;
  otherPatches: number;
  bestPosition: number;
  bestValue: number;
}

export function restorationByLayer(p: PatchAnalysis, objectTokens: number[]): LayerRestoration[] {
  const m = p.exact;
  if (!m) return [];
  const [nLayers, nPos] = m.dims as [number, number];
  const rows: LayerRestoration[] = [];
  for (let i = 0; i < nLayers; i++) {
    const row = m.normalised.slice(i * nPos, (i + 1) * nPos);
    const others = row
      .map((v, pos) => ({ v, pos }))
      .filter(({ pos }) => pos > 0 && !objectTokens.includes(pos))
      .map(({ v }) => v);
    let best = 0;
    row.forEach((v, pos) => {
      if (v > row[best]!) best = pos;
    });
    rows.push({
      layer: m.layers[i]!,
      classToken: row[0]!,
      objectPatches: mean(objectTokens.map((t) => row[t]!)),
      otherPatches: mean(others),
      bestPosition: best,
      bestValue: row[best]!,
    });
  }
  return rows;
}

export function patchingStory(pair: DemoPair, resid: PatchAnalysis, heads: PatchAnalysis): string[] {
  const rows = restorationByLayer(resid, pair.objectTokens);
  const lines: string[] = [];
  const metric =
    resid.metric === 'logit_diff' ? `logit('${resid.target.label}') - logit('${resid.baseline?.label}')` : `logit('${resid.target.label}')`;
  lines.push(
    `Clean image: the largest object is ${pair.from} and the model answers '${pair.cleanPrediction}'; in the corrupted image only that object is recoloured ${pair.to}, and the model answers '${pair.corruptPrediction}'. Metric: ${metric} (clean ${resid.clean.metric.value.toFixed(2)}, corrupted ${resid.corrupt.metric.value.toFixed(2)}).`,
  );
  lines.push(
    `The recoloured object covers token positions ${pair.objectTokens.join(', ')} (of ${resid.exact?.dims[1]} tokens; 0 is the class token).`,
  );
  for (const r of rows) {
    const where =
      r.bestPosition === 0
        ? 'the class token'
        : pair.objectTokens.includes(r.bestPosition)
          ? `position ${r.bestPosition} (on the object)`
          : `position ${r.bestPosition} (off the object)`;
    lines.push(
      `Layer ${r.layer} resid_pre: patching one object patch restores ${pct(r.objectPatches)} of the clean metric on average, any other patch ${pct(r.otherPatches)}, the class token ${pct(r.classToken)}; the best single position is ${where} at ${pct(r.bestValue)}.`,
    );
  }
  const handover = rows.find((r) => r.classToken >= 0.5);
  // Layers where patching one object patch still restores at least 10% on average.
  const objectLayers = rows.filter((r) => r.objectPatches >= 0.1).map((r) => r.layer);
  const objectClause =
    objectLayers.length === 0
      ? ''
      : objectLayers.length === 1
        ? `; a single object patch restores 10% or more only at layer ${objectLayers[0]}'s input`
        : `; a single object patch restores 10% or more at the inputs of layers ${objectLayers[0]} to ${objectLayers.at(-1)}`;
  lines.push(
    handover
      ? `The answer reaches the class token by layer ${handover.layer}${objectClause}: the colour is read from the object's patches and moved to the class token by attention.`
      : `No single class-token patch restores half of the clean metric at any layer's resid_pre; the answer is assembled late or spread over positions.`,
  );
  if (resid.attribution && resid.exact) {
    const a = resid.attribution.normalised;
    const e = resid.exact.normalised;
    const r = correlation(a, e);
    lines.push(
      `Attribution patching (one forward + one backward) correlates with exact patching at r = ${r.toFixed(2)} over all (layer, position).`,
    );
  }
  if (heads.exact) {
    const [, nHeads] = heads.exact.dims as [number, number];
    const ranked = heads.exact.normalised
      .map((v, i) => ({ v, layer: heads.exact!.layers[Math.floor(i / nHeads)]!, head: i % nHeads }))
      .sort((x, y) => y.v - x.v);
    lines.push(
      `Patching single heads' outputs (z): the strongest are ${ranked
        .slice(0, 3)
        .map((h) => `L${h.layer}H${h.head} (${pct(h.v)})`)
        .join(', ')}.`,
    );
  }
  return lines;
}

export function correlation(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  const ma = mean(a.slice(0, n));
  const mb = mean(b.slice(0, n));
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    sab += (a[i]! - ma) * (b[i]! - mb);
    saa += (a[i]! - ma) ** 2;
    sbb += (b[i]! - mb) ** 2;
  }
  return sab / Math.sqrt(saa * sbb);
}

export function dlaStory(d: DlaAnalysis): string[] {
  const top = [...d.components].sort((x, y) => Math.abs(y.value) - Math.abs(x.value)).slice(0, 4);
  return [
    `Direct logit attribution for '${d.target.label}'${d.baseline ? ` vs '${d.baseline.label}'` : ''}: the largest direct contributions are ${top.map((c) => `${c.name} (${c.value >= 0 ? '+' : ''}${c.value.toFixed(2)})`).join(', ')}; components sum to ${d.sumOfComponents.toFixed(3)} + constant ${d.constant.toFixed(3)} = ${(d.sumOfComponents + d.constant).toFixed(3)}, the model's own value ${d.logit.toFixed(3)}.`,
  ];
}

export function lensStory(what: string, results: LogitLensResult[], truth?: number[]): string[] {
  if (results.length === 0) return [];
  const nLayers = results[0]!.layers.length;
  const lines: string[] = [];
  if (truth) {
    const perLayer = Array.from({ length: nLayers }, (_, l) =>
      mean(results.map((r, i) => (r.layers[l]!.topK[0]?.index === truth[i] ? 1 : 0))),
    );
    const final = mean(results.map((r, i) => (r.logitsTopK[0]?.index === truth[i] ? 1 : 0)));
    lines.push(
      `${what}: logit-lens top-1 accuracy at the class token after each layer: ${perLayer.map((a, l) => `L${results[0]!.layers[l]!.layer} ${pct(a)}`).join(', ')} (model output: ${pct(final)}, ${results.length} images).`,
    );
  }
  for (const r of results.slice(0, truth ? 0 : 1)) {
    const first = r.layers.find((l) => l.targetRank === 0);
    lines.push(
      `${what}: the lens first ranks '${r.target.label}' top at the class token after layer ${first ? first.layer : 'none'}; its probability by layer: ${r.layers.map((l) => pct(l.targetProb)).join(' -> ')}.`,
    );
  }
  return lines;
}
