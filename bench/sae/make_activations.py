"""Activations for bench/sae: N x 768 float32, raw little-endian rows in data/acts.f32 (read by both
sides through a memory map, sequentially), plus data/acts.json with the shape.

No pretrained ViT-B is reachable here and a random-init one is too slow to run for this many
tokens on the machine's two cores, so the rows are synthetic with the structure SAEs are built for:
each is a sparse combination (32 of 24576 random unit directions, exponential magnitudes) plus
Gaussian noise and a shared offset. Throughput does not depend on the values beyond that.

    python bench/sae/make_activations.py [N_TOKENS]   (default 65536)
"""
import json
import sys
from pathlib import Path

import numpy as np

n = int(sys.argv[1]) if len(sys.argv) > 1 else 65536
d, atoms, k = 768, 24576, 32
rng = np.random.default_rng(0)
dictionary = rng.standard_normal((atoms, d), dtype=np.float32)
dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
offset = rng.standard_normal(d, dtype=np.float32)
out = Path(__file__).resolve().parent / "data"
out.mkdir(exist_ok=True)
with open(out / "acts.f32", "wb") as f:
    for start in range(0, n, 512):
        m = min(512, n - start)
        idx = rng.integers(0, atoms, size=(m, k))
        mag = rng.exponential(1.0, size=(m, k)).astype(np.float32)
        rows = np.einsum("mk,mkd->md", mag, dictionary[idx]) + 0.1 * rng.standard_normal((m, d), dtype=np.float32) + offset
        f.write(rows.astype("<f4").tobytes())
(out / "acts.json").write_text(json.dumps({"rows": n, "d": d}))
print(f"wrote {n} x {d} to {out / 'acts.f32'}")
