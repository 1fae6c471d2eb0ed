"""Activation patching the TransformerLens way, on a Hugging Face ViT.

One clean forward caches the clean activations (forward pre-hooks), one corrupted forward gives the
corrupted metric; then, for every patch, one *full* forward of the corrupted image with a hook that
overwrites the activation at that (layer, position) or (layer, head) with the clean value: what
`transformer_lens.patching.get_act_patch_resid_pre` / `get_act_patch_attn_head_out_all_pos` do
(hook added, run_with_hooks, hook removed, per patch).

  resid: pre-hook on model.vit.encoder.layer[l] (its input = HF hidden_states[l] = resid_pre l),
         [:, p, :] <- clean.
  head:  pre-hook on model.vit.encoder.layer[l].attention.output.dense (its input = z, heads
         concatenated), [:, :, h*dh:(h+1)*dh] <- clean, at every position.

Usage: see README.md.  python patch_tl_way.py --model DIR --sweep resid|head (--pixels F | --random-224 S)
       --out result.json [--target T --baseline U --max-layers N --sample K]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import patch_common as pc  # noqa: E402


def hook_module(model, sweep, layer):
    blk = model.vit.encoder.layer[layer]
    return blk if sweep == "resid" else blk.attention.output.dense


def main():
    args = pc.parse_args(__doc__.splitlines()[0])
    pc.setup(args)
    model = pc.load_model(args.model, args.attn, args.dtype)
    clean, corrupt = pc.load_pixels(args, model)
    n_layers_all = model.config.num_hidden_layers
    n_rows, n_cols = pc.dims(model, args)
    dh = model.config.hidden_size // model.config.num_attention_heads
    if not args.no_warmup:
        model(pixel_values=corrupt)  # untimed warm-up (allocator, kernels)

    patches, sampled = pc.patch_list(n_rows, n_cols, args)

    def run_once():
        # -- reference runs: clean forward with caching hooks, corrupted forward for its metric
        t = pc.Timer()
        cache = {}
        handles = []
        for l in range(n_layers_all):
            def save(x, l=l):
                cache[l] = x.detach().clone()
            handles.append(pc.pre_hook(hook_module(model, args.sweep, l), save))
        clean_logits = model(pixel_values=clean).logits
        for h in handles:
            h.remove()
        corrupt_logits = model(pixel_values=corrupt).logits
        seconds_cache = t.elapsed()
        target, baseline = pc.resolve_metric(args, clean_logits, corrupt_logits)

        # -- the sweep: one full forward per patch
        values = []
        t = pc.Timer()
        for (l, c) in patches:
            src = cache[l]
            if args.sweep == "resid":
                def hook(x, src=src, p=c):
                    x[:, p, :] = src[:, p, :]  # in place, as TransformerLens's patching hooks do
            else:
                lo, hi = c * dh, (c + 1) * dh

                def hook(z, src=src, lo=lo, hi=hi):
                    z[..., lo:hi] = src[..., lo:hi]
            handle = pc.pre_hook(hook_module(model, args.sweep, l), hook)
            logits = model(pixel_values=corrupt).logits
            handle.remove()
            values.append(float(pc.metric(logits, target, baseline)[0]))
        return pc.sweep_result(t, values, seconds_cache=seconds_cache, target=target, baseline=baseline,
                               clean_logits=clean_logits, corrupt_logits=corrupt_logits)

    r = pc.repeat(args, run_once)
    pc.print_metrics(r)
    extra = {}
    if n_rows < n_layers_all:  # every patch is one full forward: the per-patch cost is layer-independent
        extra["seconds_extrapolated_all_layers"] = r["seconds"] / len(patches) * n_layers_all * n_cols
    pc.write_result(args, "tl_way", model, n_rows=n_rows, n_cols=n_cols, patches=patches, sampled=sampled,
                    forwards=len(patches), extra=extra, **r)


if __name__ == "__main__":
    main()
