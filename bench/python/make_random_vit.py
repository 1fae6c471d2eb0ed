"""Write a random-init ViT-B/16 (224², 12 layers, d=768, 1000 classes) as a Hugging Face folder,
for benchmarks only (346 MB; never committed). Usage: make_random_vit.py OUT_DIR [INITIALIZER_RANGE]
INITIALIZER_RANGE (std of the random weights) defaults to 0.2, ten times transformers' 0.02, which
makes patching effects large and the network chaotic: a 1e-6 relative change of the pixels moves a
logit by ~0.04, so only kernels that round exactly as transformers' do reproduce its values to 1e-4.
Uses the same pinned torch/transformers as fixtures/requirements.txt."""
import json
import sys
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

out = Path(sys.argv[1])
init_range = float(sys.argv[2]) if len(sys.argv) > 2 else 0.2
if (out / "model.safetensors").exists():
    print(f"{out}: exists")
    sys.exit(0)
torch.manual_seed(0)
cfg = ViTConfig(num_labels=1000, id2label={i: f"class_{i}" for i in range(1000)},
                label2id={f"class_{i}": i for i in range(1000)}, initializer_range=init_range)
model = ViTForImageClassification(cfg).eval()
out.mkdir(parents=True, exist_ok=True)
model.save_pretrained(out)  # safetensors (the default; transformers 5 dropped safe_serialization)
ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
print(f"{out}: written")
