/**
 * Figures of `prisma heads`, per input: each head's attention from the chosen query over the
 * image, a layer × head grid of thumbnails, and a self-contained HTML viewer of every pattern.
 */
import { firstPatchToken, slicePanels, sumOverSlices, timeSlices } from '../../analysis/common.js';
import type { HeadsResult } from '../../analysis/heads.js';
import { PrismaError } from '../../errors.js';
import type { ModelInfo } from '../../native.js';
import type { ColorScale } from '../colormap.js';
import type { Figure, FigureInput, FigureWriter } from '../figures.js';
import { headsHtml } from '../heads-html.js';
import { displayImage, overlaySvg, type DisplaySource } from '../overlay.js';
import { fmt } from '../svg.js';

/** Video: the first frame of each time slice at the viewer's size (none for images). */
async function sliceFrames(info: ModelInfo, display: DisplaySource): Promise<string[]> {
  const slices = timeSlices(info);
  if (slices < 2) return [];
  const [h, w] = display.imageSize as [number, number];
  const frame = 3 * h * w;
  const tubelet = Math.max(1, info.tubeletSize);
  // The file shows the whole input; a slice's frame comes from the pixels.
  const { path: _whole, ...pixelsOnly } = display;
  const frames: string[] = [];
  for (let t = 0; t < slices; t++) {
    frames.push(
      (await displayImage({ ...pixelsOnly, pixels: display.pixels.subarray(t * tubelet * frame, (t * tubelet + 1) * frame) }, 448)).dataUrl,
    );
  }
  return frames;
}

/**
 * The figures of one input: the layer x head grid and the HTML viewer; with `allHeads`, also one
 * PNG per head and the full viewer (every query's attention), which for ViT-B is 146 files and
 * 38 MB an image, so it is opt-in (`--all-heads`).
 */
/** One overlay panel per frame slice, marking the chosen query's patch. */
function overlayPanels(panels: { title?: string; values: number[] }[], mark: number | undefined) {
  return panels.map((p) => ({ ...(p.title ? { title: p.title.trim() } : {}), values: p.values, ...(mark === undefined ? {} : { mark }) }));
}

export async function headsFigures(
  info: ModelInfo,
  item: FigureInput,
  r: HeadsResult,
  w: FigureWriter,
  allHeads = false,
): Promise<Figure[]> {
  const first = firstPatchToken(info);
  const dir = `heads/${item.name}`;
  const image = await displayImage(item.display, 224);
  const mark = r.query.patch ?? undefined;
  const qname = r.query.kind === 'cls' ? 'the class token' : `patch ${r.query.patch}`;
  const figures: Figure[] = [];
  for (const s of allHeads ? r.heads : []) {
    const panels = slicePanels(info, s.queryAttention, '');
    const max = Math.max(...panels.flatMap((p) => p.values), 1e-6);
    const scale: ColorScale = { kind: 'sequential', min: 0, max };
    figures.push(
      await w.png(
        `${dir}/L${s.layer}H${s.head}.png`,
        'heads-head',
        overlaySvg({
          title: `Layer ${s.layer} head ${s.head}: attention from ${qname}`,
          subtitle: `entropy ${fmt(s.entropy)} nats (mean ${fmt(s.meanEntropy)}); mean attention to cls ${s.clsAttention === null ? '-' : fmt(s.clsAttention)}${s.registerAttention === null ? '' : `, to registers ${fmt(s.registerAttention)}`} (all queries); distance ${fmt(s.meanDistance)}; self ${fmt(s.selfShare)}`,
          image,
          grid: r.grid,
          panels: overlayPanels(panels, mark),
          scale,
          colorbarLabel: 'attention',
          columns: panels.length,
          panelSize: 320,
        }),
      ),
    );
  }
  // Grid: each thumbnail scaled to its own maximum, so heads with diffuse attention stay readable.
  const nL = r.layers.length;
  const nH = info.nHeads;
  const panelSize = Math.max(56, Math.min(120, Math.floor(1200 / nH)));
  const small = await displayImage(item.display, panelSize * 2);
  figures.push(
    await w.png(
      `${dir}/heads-grid.png`,
      'heads-grid',
      overlaySvg({
        title: `Attention from ${qname}, every layer and head: ${item.name}`,
        subtitle: `each thumbnail scaled to its own maximum, the number above it; class token not drawn`,
        image: small,
        grid: r.grid,
        panels: r.heads.map((s) => {
          // Video: attention summed over time slices, per spatial patch.
          const values = sumOverSlices(info, s.queryAttention);
          const max = Math.max(...values, 1e-9);
          return {
            // Only the maximum: longer titles ran into their neighbours on 56-120 px thumbnails.
            title: fmt(max, 2),
            values: values.map((v) => v / max),
            ...(mark === undefined ? {} : { mark }),
          };
        }),
        scale: { kind: 'sequential', min: 0, max: 1 },
        colorbarLabel: 'attention / thumbnail max',
        columns: nH,
        panelSize,
        rowNames: r.layers.map((l) => `L${l}`),
        colNames: Array.from({ length: nH }, (_, h) => `H${h}`),
      }),
    ),
  );
  if (nL === 0) throw new PrismaError('E_INTERNAL', 'no layers analysed');
  {
    const panels = slicePanels(info, r.rollout, '');
    const max = Math.max(...panels.flatMap((p) => p.values), 1e-9);
    figures.push(
      await w.png(
        `${dir}/rollout.png`,
        'heads-rollout',
        overlaySvg({
          title: `Attention rollout from ${qname}: ${item.name}`,
          subtitle: `layers ${r.layers[0]}-${r.layers.at(-1)}: heads averaged, identity added for the residual stream, multiplied down the layers (Abnar & Zuidema 2020)${first > 0 ? `; to cls ${fmt(r.rollout[0]!, 2)}, not drawn` : ''}`,
          image,
          grid: r.grid,
          panels: overlayPanels(panels, mark),
          scale: { kind: 'sequential', min: 0, max },
          colorbarLabel: 'rollout',
          columns: panels.length,
          panelSize: 320,
        }),
      ),
    );
  }
  figures.push(
    await w.html(
      `${dir}/heads.html`,
      'heads-html',
      headsHtml({
        title: `Attention heads: ${item.input}`,
        imageDataUrl: (await displayImage(item.display, 448)).dataUrl,
        sliceImageDataUrls: await sliceFrames(info, item.display),
        grid: r.grid,
        nPos: r.nPos,
        firstPatch: first,
        defaultQuery: r.query.token,
        layers: r.layers,
        nHeads: nH,
        patterns: r.patterns.map((p) => p.data),
        stats: r.heads,
        compact: !allHeads,
      }),
    ),
  );
  return figures;
}
