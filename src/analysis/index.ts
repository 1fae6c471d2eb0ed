/** Analysis functions on a loaded model; each returns a typed result (the CLI writes them as reports). */
export {
  logitLens,
  parseLensSite,
  LENS_SITES,
  type LogitLensOptions,
  type LogitLensResult,
  type LensLayerResult,
  type RankedClass,
  checkPatchLabels,
  scorePatches,
  sumPatchScores,
  type PatchScore,
} from './lens.js';
export {
  patch,
  parsePatchWhat,
  parsePatchBy,
  parsePatchMethod,
  checkWhatBy,
  largestEffect,
  PATCH_WHATS,
  PATCH_BYS,
  HEAD_WHATS,
  type PatchOptions,
  type PatchAnalysis,
  type PatchMatrix,
  type PatchMethod,
  type PatchSide,
} from './patch.js';
export { dla, dlaCheck, type DlaOptions, type DlaAnalysis, type DlaCheck } from './dla.js';
export {
  ablate,
  ablateSweep,
  resolveAblations,
  parseAblationMode,
  ABLATION_MODES,
  type AblateOptions,
  type AblateCommon,
  type AblateAnalysis,
  type AblateSweepAnalysis,
  type AblationMode,
  type ResampleChoice,
} from './ablate.js';
export { parseAblateSpec, formatAblateSpec, type AblateSpec } from './ablate-spec.js';
export {
  heads,
  headStats,
  entropy,
  parseHeadsQuery,
  type HeadsOptions,
  type HeadsQuery,
  type HeadStats,
  type HeadsAnalysis,
  type HeadsResult,
} from './heads.js';
export { resolveClass, checkLayers, pearson, seededRandom, patchGrid, type ClassRef, type ClassInfo } from './common.js';
