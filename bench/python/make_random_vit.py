"""Write a random-init ViT-B/16 (224², 12 layers, d=768, 1000 classes) as a Hugging Face folder,
for benchmarks only (346 MB; never committed). Usage: make_random_vit.py OUT_DIR
Uses the same pinned torch/transformers as fixtures/requirements.txt."""
import json
import sys
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

out = Path(sys.argv[1])
if (out / "model.safetensors").exists():
    print(f"{out}: exists")
    sys.exit(0)
torch.manual_seed(0)
cfg = ViTConfig(num_labels=1000, id2label={i: f"class_{i}" for i in range(1000)},
                label2id={f"class_{i}": i for i in range(1000)}, initializer_range=0.2)
model = ViTForImageClassification(cfg).eval()
out.mkdir(parents=True, exist_ok=True)
model.save_pretrained(out, safe_serialization=True)
ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)
print(f"{out}: written")
