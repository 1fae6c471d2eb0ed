"""Activation patching the way a careful PyTorch user would write it, on a Hugging Face ViT.

Two reference forwards (clean, corrupted) cache every layer's input hidden state (and, for the head
sweep, every layer's z = input of attention.output.dense). The sweep then never reruns the layers
below the patch: for each layer l, patches are batched (`--chunk` per forward, each batch entry
patches a different position / head) on top of the cached *corrupted* activation at layer l, and only
model.vit.encoder.layer[l:] (called directly), model.vit.layernorm and model.classifier (token 0)
are run.

  resid: x = corrupt_resid_pre[l] repeated B times; x[b, p_b, :] = clean_resid_pre[l][p_b];
         run layer[l:], layernorm, classifier on token 0.
  head:  z = corrupt_z[l] repeated B times; z[b, :, h_b*dh:(h_b+1)*dh] = clean_z[l][..same..];
         finish layer l by hand (attention.output.dense, + corrupt_resid_pre[l], layernorm_after,
         intermediate, output), then layer[l+1:], layernorm, classifier on token 0.

Usage: see README.md.  python patch_best.py --model DIR --sweep resid|head (--pixels F | --random-224 S)
       --out result.json [--chunk B --target T --baseline U --max-layers N --sample K]
"""
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patch_common as pc  # noqa: E402

DEFAULT_CHUNK = 16  # tuned on ViT-B/16 resid, 2 threads (8..197 tried; 16..66 within noise); see README
# On a GPU a careful user batches a whole layer's patches: a batch of 197 ViT-B rows is far from
# filling the card, and every extra forward is launch overhead.
DEFAULT_CHUNK_GPU = 256


def cached_run(model, pixels, want_z):
    """One forward with pre-hooks: every layer's input hidden state (and z if want_z), and the logits."""
    layers = model.vit.encoder.layer
    resid, z = [None] * len(layers), [None] * len(layers)
    handles = []
    for l, blk in enumerate(layers):
        def save_resid(x, l=l):
            resid[l] = x.detach().clone()
        handles.append(pc.pre_hook(blk, save_resid))
        if want_z:
            def save_z(x, l=l):
                z[l] = x.detach().clone()
            handles.append(pc.pre_hook(blk.attention.output.dense, save_z))
    logits = model(pixel_values=pixels).logits
    for h in handles:
        h.remove()
    return resid, z, logits


def finish(model, x, start):
    """Run layer[start:] on hidden states x [B, P, d], then the final layernorm and classifier on token 0."""
    for blk in model.vit.encoder.layer[start:]:
        x = blk(x)
        x = x[0] if isinstance(x, tuple) else x  # older transformers return (hidden_states,)
    return model.classifier(model.vit.layernorm(x[:, 0]))


def finish_from_z(model, l, z, resid_pre):
    """Finish layer l from its (patched) z [B, P, d] and its input resid_pre [1, P, d], then the rest."""
    blk = model.vit.encoder.layer[l]
    mid = blk.attention.output.dense(z) + resid_pre
    x = blk.output(blk.intermediate(blk.layernorm_after(mid)), mid)
    return finish(model, x, l + 1)


def main():
    args = pc.parse_args(__doc__.splitlines()[0])
    pc.setup(args)
    model = pc.load_model(args.model, args.attn, args.dtype)
    clean, corrupt = pc.load_pixels(args, model)
    n_rows, n_cols = pc.dims(model, args)
    dh = model.config.hidden_size // model.config.num_attention_heads
    chunk = args.chunk or (DEFAULT_CHUNK if pc.DEVICE.type == "cpu" else DEFAULT_CHUNK_GPU)
    want_z = args.sweep == "head"
    if not args.no_warmup:
        model(pixel_values=corrupt)  # untimed warm-up (allocator, kernels)

    patches, sampled = pc.patch_list(n_rows, n_cols, args)
    by_layer = defaultdict(list)
    for l, c in patches:
        by_layer[l].append(c)

    def run_once():
        # -- reference runs: clean and corrupted, both cached
        t = pc.Timer()
        clean_resid, clean_z, clean_logits = cached_run(model, clean, want_z)
        corrupt_resid, corrupt_z, corrupt_logits = cached_run(model, corrupt, want_z)
        seconds_cache = t.elapsed()
        target, baseline = pc.resolve_metric(args, clean_logits, corrupt_logits)

        # -- the sweep: per layer, batches of patches on the cached corrupted activation at that layer
        out = {}
        forwards = 0
        t = pc.Timer()
        for l in sorted(by_layer):
            cols = by_layer[l]
            for i in range(0, len(cols), chunk):
                cs = torch.tensor(cols[i:i + chunk], device=pc.DEVICE)
                b = len(cs)
                if args.sweep == "resid":
                    x = corrupt_resid[l].expand(b, -1, -1).clone()
                    x[torch.arange(b, device=pc.DEVICE), cs] = clean_resid[l][0, cs]
                    logits = finish(model, x, l)
                else:
                    z = corrupt_z[l].expand(b, -1, -1).clone()
                    zc = clean_z[l][0]
                    for j, h in enumerate(cs.tolist()):
                        z[j, :, h * dh:(h + 1) * dh] = zc[:, h * dh:(h + 1) * dh]
                    logits = finish_from_z(model, l, z, corrupt_resid[l])
                forwards += 1
                for c, v in zip(cols[i:i + chunk], pc.metric(logits, target, baseline).tolist()):
                    out[(l, c)] = v
        return pc.sweep_result(t, [out[p] for p in patches], seconds_cache=seconds_cache, target=target,
                               baseline=baseline, clean_logits=clean_logits, corrupt_logits=corrupt_logits,
                               forwards=forwards)

    r = pc.repeat(args, run_once)
    pc.print_metrics(r)
    pc.write_result(args, "best_python", model, n_rows=n_rows, n_cols=n_cols, patches=patches,
                    sampled=sampled, extra={"chunk": chunk}, **r)


if __name__ == "__main__":
    main()
