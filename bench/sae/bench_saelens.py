"""sae-lens 6.54.12's training step on the bench activations, timed: SAETrainer._train_step's work
per step (training_forward_pass, backward, clip_grad_norm_(1.0), Adam, zero_grad, the dead-feature
counters), batches read sequentially from the memory-mapped data/acts.f32.

    python bench/sae/bench_saelens.py ARCH EXPANSION K BATCH STEPS   (ARCH: topk | standard)
Prints one JSON line: tokens/s over the timed steps (after one warm-up step).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

arch, expansion, k, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(int(__import__("os").environ.get("THREADS", "2")))
torch.manual_seed(0)
data = Path(__file__).resolve().parent / "data"
meta = json.loads((data / "acts.json").read_text())
acts = np.memmap(data / "acts.f32", dtype="<f4", mode="r", shape=(meta["rows"], meta["d"]))
d_in = meta["d"]
d_sae = d_in * expansion
if arch == "topk":
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    coefficients = {}
else:
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=5.0))
    coefficients = {"l1": 5.0}
opt = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.9, 0.999))
since_fired = torch.zeros(d_sae)
pos = 0


def next_batch():
    global pos
    if pos + batch > acts.shape[0]:
        pos = 0
    b = torch.from_numpy(np.array(acts[pos : pos + batch]))
    pos += batch
    return b


def step():
    x = next_batch()
    sae.train()
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients, dead_neuron_mask=since_fired > 1000, n_training_steps=0, is_logging_step=False))
    with torch.no_grad():
        did_fire = out.feature_acts.bool().float().sum(-2).bool()
        since_fired.add_(1)
        since_fired[did_fire] = 0
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    return out.losses["mse_loss"].item()


step()
t0 = time.perf_counter()
for _ in range(steps):
    mse = step()
elapsed = time.perf_counter() - t0
print(json.dumps({"impl": "sae-lens", "arch": arch, "expansion": expansion, "k": k, "batch": batch, "steps": steps,
                  "seconds": elapsed, "tokens_per_s": steps * batch / elapsed, "last_mse": mse}))
