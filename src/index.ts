/**
 * vit-prisma library API.
 *
 *   const model = await loadModel('models/vit-base', { device: 'cpu', dtype: 'f32' });
 *   const { output, cache } = await model.run(['cat.png'], { cache: ['blocks.*.hook_resid_post'] });
 *   topK(output, 5, model.info.labels);
 */
export { PrismaError, usageError, isPrismaError, type ErrorJson } from './errors.js';
export {
  loadInputs,
  planInputs,
  preprocessImage,
  parsePreprocessorConfig,
  defaultPreprocessSpec,
  readPreprocessSpec,
  expandInputs,
  type ExpandOptions,
  type SkippedEntry,
  type PreprocessSpec,
  type LoadInputsOptions,
  type InputPlan,
  type InputTarget,
  type Resample,
} from './image/preprocess.js';
export { serializeInterventions, type Intervention, type Select, type TensorLike, type TensorRef } from './interventions.js';
export type { HookShape, ModelInfo, TensorData } from './native.js';
export type { Tensor, TensorInput, PixelBatch } from './tensor.js';
export type { Dtype } from './options.js';
export { VERSION } from './version.js';
export { SafetensorsWriter, type TensorSpec } from './safetensors-writer.js';
export * from './analysis/index.js';
export type { LensSite, PatchWhat, PatchBy, MetricValue, DlaComponent, LensImage, PatchResult, DlaResult } from './native.js';
export { cudaAvailable, libtorchVersion } from './native.js';

export { Model, loadModel, classPrompts, type LoadOptions, type RunOptions, type RunResult, type SplicedSae } from './model.js';
export { Sae, loadSae, convertSae, parseSaeSpec, type SaeInfo, type SaeLoadOptions, type SaeTokens } from './sae/index.js';
export { evaluateSae, type SaeEvaluation, type SaeEvalOptions, type ReconstructionMetrics, type DownstreamMetrics } from './sae/eval.js';
export { softmax, topK, type Prediction } from './tensor.js';
export { readTensors, saveTensors } from './tensor-files.js';
