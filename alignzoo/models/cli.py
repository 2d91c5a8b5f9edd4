"""``alignzoo sample``: an image grid over step counts (rows: prompts × seeds)."""

from __future__ import annotations

import torch


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"{what} must be non-empty and non-negative, got {text!r}")
    return values


def add_sample_arguments(p) -> None:
    p.add_argument("--model", default="tiny-sd", help="registered model name or a diffusers folder")
    p.add_argument("--model-path", default=None, help="local folder with the model's weights (hub layout)")
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several rows)")
    p.add_argument("--steps", default="1,2,4,8,16,50", help="comma-separated step counts (columns)")
    p.add_argument("--seeds", default="0", help="comma-separated noise seeds (rows per prompt)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--lora", default=None, help="folder with LoRA weights to apply")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="output PNG")


def run_sample(args) -> int:
    from alignzoo.images import image_grid
    from alignzoo.models import load_model
    from alignzoo.models.sampling import generate

    steps = parse_int_list(args.steps, "--steps")
    if min(steps) < 1:
        raise ValueError("--steps must be >= 1")
    seeds = parse_int_list(args.seeds, "--seeds")
    model = load_model(args.model, model_path=args.model_path, device=args.device, guidance_scale=args.guidance)
    if args.lora:
        model.load_lora(args.lora)
    rows, labels = [], []
    for prompt in args.prompt:
        for seed in seeds:
            noise = model.init_noise(1, torch.Generator().manual_seed(seed))
            rows.append(torch.stack([generate(model, [prompt], n, eta=args.eta, init_noise=noise)[0] for n in steps]))
            labels.append(f"{prompt} (seed {seed})" if len(seeds) > 1 else prompt)
    title = f"{args.model}" + (f" + {args.lora}" if args.lora else "") + f", eta {args.eta}"
    out = image_grid(torch.stack(rows), labels, [f"{n} step" + ("s" if n > 1 else "") for n in steps], args.out, title=title)
    print(f"wrote {out}")
    return 0
