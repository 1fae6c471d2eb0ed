/** Reading and writing whole tensor files (`.npy`, `.safetensors`) through the addon. */
import { readTensorFile, saveSafetensors, type TensorData } from './native.js';
import { checkTensor, type Tensor, type TensorInput } from './tensor.js';

/** Read the tensors of a `.npy` / `.safetensors` file as float32. */
export function readTensors(path: string): Tensor[] {
  return readTensorFile(path);
}

/** Write float32 tensors to a `.safetensors` file atomically (temp file + rename). */
export async function saveTensors(
  path: string,
  tensors: readonly (TensorInput | TensorData)[],
  metadata: Record<string, string> = {},
): Promise<void> {
  const inputs = tensors.map((t) => ({ name: t.name, shape: [...t.shape], data: t.data }));
  for (const t of inputs) checkTensor(t);
  await saveSafetensors(path, inputs, metadata);
}
