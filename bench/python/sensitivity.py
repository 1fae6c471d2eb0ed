"""How much a ViT's logits move under tiny input changes: the reason the bench's init-0.2 ViT-B can
only be matched to 1e-4 by kernels that round exactly as transformers' do (docs/benchmarks.md).
For each model folder: the logits' spread, and the largest logit change when the pixels are scaled
by (1 + 1e-6) and when N(0, 1e-3) noise is added.
Usage: sensitivity.py PIXELS.safetensors MODEL_DIR [MODEL_DIR ...]   (pixels: pixel_values [N,3,H,W])"""
import sys

import torch
from safetensors.torch import load_file
from transformers import ViTForImageClassification


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    pixels = load_file(sys.argv[1])["pixel_values"][:1]
    torch.set_grad_enabled(False)
    for folder in sys.argv[2:]:
        torch.manual_seed(1)
        model = ViTForImageClassification.from_pretrained(folder).eval()
        logits = model(pixel_values=pixels).logits
        scaled = model(pixel_values=pixels * (1 + 1e-6)).logits
        noisy = model(pixel_values=pixels + 1e-3 * torch.randn_like(pixels)).logits
        print(f"{folder}: logit std {logits.std().item():.3g}; max |change|: pixels x (1+1e-6) "
              f"{(scaled - logits).abs().max().item():.3g}, noise 1e-3 {(noisy - logits).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
