/**
 * Choosing the demo's clevr-lite clean/corrupt pair: a scene with several objects where the shipped
 * model answers "colour of the largest object" correctly both before and after that object is
 * recoloured, so the patching experiment contrasts two answers the model actually gives.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { answersFor, editScene, generateScene, patchLabels, renderScene, type Scene } from '../dataset/clevr.js';
import type { Model } from '../model.js';

export interface DemoPair {
  seed: number;
  index: number;
  clean: string;
  corrupt: string;
  scene: Scene;
  object: number;
  from: string;
  to: string;
  /** Token positions (1 + patch index) covered by the recoloured object. */
  objectTokens: number[];
  cleanPrediction: string;
  corruptPrediction: string;
  tried: number;
}

async function predict(model: Model, file: string): Promise<string> {
  const { output } = await model.run([file]);
  let best = 0;
  for (let i = 1; i < output.data.length; i++) if (output.data[i]! > output.data[best]!) best = i;
  return model.info.labels[best] ?? String(best);
}

export async function pickPair(model: Model, dir: string, seed: number, maxTries = 200): Promise<DemoPair> {
  const size = model.info.imageSize[0]!;
  for (let index = 0; index < maxTries; index++) {
    const scene = generateScene(seed, index, { size });
    if (scene.objects.length < 2) continue;
    const edit = editScene(scene, seed, index);
    const clean = join(dir, 'clean.png');
    const corrupt = join(dir, 'corrupt.png');
    writeFileSync(clean, await renderScene(scene));
    writeFileSync(corrupt, await renderScene(edit.scene));
    const [cleanPrediction, corruptPrediction] = [await predict(model, clean), await predict(model, corrupt)];
    if (cleanPrediction !== answersFor(scene).largest_colour || corruptPrediction !== edit.to) continue;
    const labels = patchLabels(scene, size, model.info.patchSize);
    const objectTokens: number[] = [];
    labels.forEach((l, p) => {
      if (l === edit.object + 1) objectTokens.push(p + 1);
    });
    return {
      seed,
      index,
      clean,
      corrupt,
      scene,
      object: edit.object,
      from: edit.from,
      to: edit.to,
      objectTokens,
      cleanPrediction,
      corruptPrediction,
      tried: index + 1,
    };
  }
  throw new Error(`no scene among ${maxTries} where the model answers both clean and recoloured images correctly`);
}
