"""Where a fine-tuned tiny-sd-v2 LoRA moved the samples: latent norm and brightness against the
pretrained model (the same UNet with its adapter disabled), same prompts and initial noise.

    python tools/latent_drift.py RUN/final [--prompts geneval_seen] [--n 64] [--steps 4]

Prints the pixel mean of the VAE's decoding of zero latents, then for the pretrained and the
fine-tuned model the final x̂0 latents' RMS and mean and the decoded images' mean pixel (DDIM, η 0).
Used for the random-control probes in docs/tiny-presets.md (fourth round, third probe round).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from alignzoo.models import load_model
from alignzoo.models.sampling import sample
from alignzoo.prompts import get_prompts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lora", help="a run's final/ (or checkpoint) folder with alignzoo_lora.json")
    ap.add_argument("--model", default="tiny-sd-v2")
    ap.add_argument("--prompts", default="geneval_seen")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    m = load_model(args.model, device="cpu")
    with torch.no_grad():
        print(f"decode(0) mean pixel {float(m.decode(torch.zeros(2, *m.latent_shape)).mean()):.3f}")
    cfg = json.loads((Path(args.lora) / "alignzoo_lora.json").read_text())
    m.add_lora(rank=cfg["r"], alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"])
    m.load_lora(args.lora)
    prompts = get_prompts(args.prompts)[: args.n]
    noise = torch.randn(len(prompts), *m.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name in ("pretrained", "fine-tuned"):
            if name == "pretrained":
                with m.reference():
                    x0 = sample(m, prompts, args.steps, eta=0.0, init_noise=noise).pred_x0[:, -1]
            else:
                x0 = sample(m, prompts, args.steps, eta=0.0, init_noise=noise).pred_x0[:, -1]
            rms, mean, pix = float(x0.pow(2).mean().sqrt()), float(x0.mean()), float(m.decode(x0).mean())
            print(f"{name}: x0 latent RMS {rms:.3f} mean {mean:+.3f}; mean pixel {pix:.3f}")


if __name__ == "__main__":
    main()
