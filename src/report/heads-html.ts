/**
 * A self-contained HTML viewer for attention heads: no network, the image as a data URL, the
 * patterns inline. Each pattern row (one query's attention) is stored as bytes scaled to the row's
 * maximum (plus that maximum), base64-encoded, which keeps 12 layers × 12 heads × 197² entries
 * near 7 MB. A head selector picks the head; hovering a patch shows that patch's attention. The
 * compact page (`compact`, the default of `prisma heads`) keeps only the chosen query's row per head
 * (a few kB), so hovering is off there. Video
 * models get a time-slice selector: the image shows one slice's patches (keys), and hovering picks
 * queries in that slice.
 */
import { esc } from './svg.js';

export interface HeadsHtmlInput {
  title: string;
  imageDataUrl: string;
  /** Video: a frame per time slice (its first frame), shown with that slice's attention. */
  sliceImageDataUrls?: string[];
  grid: readonly [number, number];
  nPos: number;
  /** Token index of the first patch (1 with a class token). */
  firstPatch: number;
  /** Token shown when no patch is hovered. */
  defaultQuery: number;
  layers: number[];
  nHeads: number;
  /** Per analysed layer, [H, pos, pos] row-major. */
  patterns: Float32Array[];
  /** Keep only `defaultQuery`'s row of each pattern (no hovering): a small page. */
  compact?: boolean;
  stats: {
    layer: number;
    head: number;
    entropy: number;
    meanEntropy: number;
    clsAttention: number | null;
    registerAttention: number | null;
    meanDistance: number;
    selfShare: number;
  }[];
}

/** The rows `queries` of one head's [pos, pos] pattern, each as bytes scaled to its maximum. */
function encodeHead(data: Float32Array, offset: number, nPos: number, queries: readonly number[]): { bytes: string; rowMax: number[] } {
  const bytes = new Uint8Array(queries.length * nPos);
  const rowMax: number[] = [];
  queries.forEach((q, r) => {
    let m = 0;
    for (let k = 0; k < nPos; k++) m = Math.max(m, data[offset + q * nPos + k]!);
    rowMax.push(Number(m.toPrecision(5)));
    for (let k = 0; k < nPos; k++) bytes[r * nPos + k] = m > 0 ? Math.round((data[offset + q * nPos + k]! / m) * 255) : 0;
  });
  return { bytes: Buffer.from(bytes).toString('base64'), rowMax };
}

const SCRIPT = `
const D = JSON.parse(document.getElementById('data').textContent);
const [GH, GW] = D.grid;
const img = new Image();
const cv = document.getElementById('cv');
const ctx = cv.getContext('2d');
const sel = document.getElementById('head');
const sliceSel = document.getElementById('slice');
const G = GH * GW;
for (let t = 0; t < D.slices; t++) {
  const o = document.createElement('option');
  o.value = String(t);
  o.textContent = 'slice ' + t;
  sliceSel.appendChild(o);
}
// Start on the slice of the default query when that is a patch.
sliceSel.value = String(D.defaultQuery >= D.firstPatch ? Math.floor((D.defaultQuery - D.firstPatch) / G) : 0);
const info = document.getElementById('info');
const stats = document.getElementById('stats');
const heads = D.heads.map((h) => {
  const bin = atob(h.bytes);
  const a = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i);
  return { ...h, a };
});
heads.forEach((h, i) => {
  const o = document.createElement('option');
  o.value = String(i);
  o.textContent = 'layer ' + h.layer + ', head ' + h.head;
  sel.appendChild(o);
});
const VIR = [[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
function color(t) {
  t = Math.max(0, Math.min(1, t)) * (VIR.length - 1);
  const i = Math.min(VIR.length - 2, Math.floor(t)), f = t - i, a = VIR[i], b = VIR[i + 1];
  return 'rgba(' + [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f)).join(',') + ',0.62)';
}
let query = D.defaultQuery;
function fmt(v) { return v === null ? '-' : Number(v).toPrecision(3); }
function draw() {
  const h = heads[Number(sel.value)];
  const slice = Number(sliceSel.value), keys = D.firstPatch + slice * G;
  const W = cv.width, H = cv.height, cw = W / GW, ch = H / GH;
  ctx.clearRect(0, 0, W, H);
  ctx.drawImage(img, 0, 0, W, H);
  const r = D.compact ? 0 : query;
  const row = r * D.nPos, m = h.rowMax[r];
  for (let p = 0; p < G; p++) {
    ctx.fillStyle = color(h.a[row + keys + p] / 255);
    ctx.fillRect((p % GW) * cw, Math.floor(p / GW) * ch, cw + 0.5, ch + 0.5);
  }
  if (query >= keys && query < keys + G) {
    const p = query - keys;
    ctx.strokeStyle = '#ff00ff'; ctx.lineWidth = 2;
    ctx.strokeRect((p % GW) * cw + 1, Math.floor(p / GW) * ch + 1, cw - 2, ch - 2);
  }
  const qp = (query - D.firstPatch) % G, qt = Math.floor((query - D.firstPatch) / G);
  const qname = query < D.firstPatch ? 'class token' : 'patch ' + (query - D.firstPatch) + ' (' + (D.slices > 1 ? 'slice ' + qt + ', ' : '') + 'row ' + Math.floor(qp / GW) + ', col ' + (qp % GW) + ')';
  const shown = D.slices > 1 ? ' | keys: slice ' + slice : '';
  const toCls = D.firstPatch > 0 ? ', this query to cls ' + fmt(h.a[row] / 255 * m) : '';
  info.textContent = 'query: ' + qname + shown + ' | max attention ' + fmt(m) + toCls + ' | colours: share of the row maximum';
  stats.textContent = 'entropy (--query token) ' + fmt(h.entropy) + ' nats; mean entropy ' + fmt(h.meanEntropy) + '; mean attention to cls (all queries) ' + fmt(h.clsAttention) + (h.registerAttention === null || h.registerAttention === undefined ? '' : '; mean attention to registers ' + fmt(h.registerAttention)) + '; mean distance ' + fmt(h.meanDistance) + ' patches; self-attention ' + fmt(h.selfShare);
}
cv.addEventListener('mousemove', (e) => {
  if (D.compact) return;
  const r = cv.getBoundingClientRect();
  const c = Math.floor(((e.clientX - r.left) / r.width) * GW), rr = Math.floor(((e.clientY - r.top) / r.height) * GH);
  if (c < 0 || c >= GW || rr < 0 || rr >= GH) return;
  const q = D.firstPatch + Number(sliceSel.value) * G + rr * GW + c;
  if (q !== query) { query = q; draw(); }
});
cv.addEventListener('mouseleave', () => { query = D.defaultQuery; draw(); });
sel.addEventListener('change', draw);
// Video: each slice over its own frame.
sliceSel.addEventListener('change', () => {
  const src = D.sliceImages[Number(sliceSel.value)];
  if (src && src !== img.src) img.src = src; else draw();
});
img.onload = draw;
img.src = D.sliceImages[Number(sliceSel.value)] || D.image;
`;

export function headsHtml(input: HeadsHtmlInput): string {
  const heads: { layer: number; head: number; bytes: string; rowMax: number[] }[] = [];
  const queries = input.compact ? [input.defaultQuery] : Array.from({ length: input.nPos }, (_, q) => q);
  input.layers.forEach((layer, li) => {
    const data = input.patterns[li]!;
    for (let h = 0; h < input.nHeads; h++) {
      const s = input.stats.find((x) => x.layer === layer && x.head === h);
      heads.push({ layer, head: h, ...encodeHead(data, h * input.nPos * input.nPos, input.nPos, queries), ...(s ? { ...s } : {}) });
    }
  });
  // Video: patch tokens are time-major, one grid per time slice.
  const slices = Math.max(1, Math.round((input.nPos - input.firstPatch) / (input.grid[0] * input.grid[1])));
  const data = {
    image: input.imageDataUrl,
    grid: input.grid,
    slices,
    sliceImages: input.sliceImageDataUrls && input.sliceImageDataUrls.length === slices ? input.sliceImageDataUrls : [],
    nPos: input.nPos,
    firstPatch: input.firstPatch,
    defaultQuery: input.defaultQuery,
    compact: input.compact === true,
    heads,
  };
  // '<' is escaped so the JSON cannot close the script element.
  const json = JSON.stringify(data).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(input.title)}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
canvas { width: 448px; height: ${Math.round((448 * input.grid[0]) / input.grid[1])}px; image-rendering: auto; border: 1px solid #999; cursor: crosshair; }
select { font: inherit; margin: 0 0 12px 8px; }
#info, #stats { margin-top: 8px; color: #444; }
</style>
</head>
<body>
<h1 style="font-size:18px">${esc(input.title)}</h1>
<label>head <select id="head"></select></label>
<label${slices > 1 ? '' : ' hidden'}>time slice <select id="slice"></select></label>
<div><canvas id="cv" width="448" height="${Math.round((448 * input.grid[0]) / input.grid[1])}"></canvas></div>
<div id="info"></div>
<div id="stats"></div>
<p style="color:#666">${input.compact ? 'The chosen query only (a compact page); `prisma heads --all-heads` writes the page where hovering a patch shows its attention.' : 'Hover a patch to see its attention over the patches; leave the image to return to the chosen query.'}</p>
<script type="application/json" id="data">${json}</script>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
