"""``alignzoo score``: score a folder of images with a reward.

    alignzoo score --reward NAME --images DIR [--prompts FILE] [--weights PATH] [--device cpu]
                   [--option KEY=VALUE ...] [--batch-size N]

Images are read in sorted filename order (png, jpg, jpeg, webp, bmp). The prompts file has one
line per image in that order, or is a JSON object mapping filename -> prompt. Prints one row per
image (filename, prompt, score) and the mean ± std.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reward", required=True, help="reward name (see `alignzoo list rewards`)")
    parser.add_argument("--images", required=True, help="folder of images to score")
    parser.add_argument(
        "--prompts",
        help="text file with one prompt per image (sorted filename order) or a JSON object filename -> prompt; required for rewards that read the prompt",
    )
    parser.add_argument("--weights", help="local weights of the reward (file or folder; see docs/rewards.md)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per reward call (default: 8)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra reward constructor argument, e.g. --option raw=true --option clip_path=/models/clip (repeatable)",
    )


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    return files


def read_prompts(path: str | Path, files: list[Path]) -> list[str]:
    """One prompt per image: a text file (line i -> i-th file in sorted order) or a JSON mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"prompts file {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(mapping, dict):
            raise ValueError(f"prompts JSON {str(path)!r} must be an object mapping filename -> prompt")
        missing = [f.name for f in files if f.name not in mapping]
        if missing:
            raise ValueError(f"prompts JSON {str(path)!r} has no prompt for {len(missing)} of {len(files)} images, e.g. {missing[:3]}")
        return [str(mapping[f.name]) for f in files]
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines
        lines.pop()
    if len(lines) != len(files):
        raise ValueError(
            f"prompts file {str(path)!r} has {len(lines)} lines but the folder has {len(files)} images; "
            "give one line per image in sorted filename order, or a JSON object filename -> prompt"
        )
    return lines


def parse_options(options: list[str]) -> dict:
    out = {}
    for opt in options:
        if "=" not in opt:
            raise ValueError(f"--option expects KEY=VALUE, got {opt!r}")
        key, value = opt.split("=", 1)
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
            continue
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def load_image(path: Path):
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def format_table(rows: list[tuple[str, str, float]]) -> str:
    def clip(s: str, n: int = 60) -> str:
        s = s.replace("\n", " ")
        return s if len(s) <= n else s[: n - 1] + "…"

    body = [(name, clip(prompt), f"{score:.4f}") for name, prompt, score in rows]
    heads = ("filename", "prompt", "score")
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(heads)]
    fmt = lambda r: "  ".join(  # noqa: E731
        c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
    ).rstrip()
    lines = [fmt(heads), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
    return "\n".join(lines)


def score_folder(reward, files: list[Path], prompts: list[str], batch_size: int = 8) -> list[float]:
    """Scores ``files`` in batches of consecutive images of equal size."""
    import torch

    scores: list[float] = []
    i = 0
    while i < len(files):
        batch = [load_image(files[i])]
        j = i + 1
        while j < len(files) and len(batch) < batch_size:
            img = load_image(files[j])
            if img.shape != batch[0].shape:
                break
            batch.append(img)
            j += 1
        out = reward(torch.stack(batch).to(reward.device), prompts[i:j])
        scores.extend(float(s) for s in out.detach().cpu())
        i = j
    return scores


def run(args: argparse.Namespace) -> int:
    from alignzoo.rewards import REWARDS, check_reward_kwargs, get_reward, reward_arguments

    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    files = list_images(args.images)
    cls = REWARDS.get(args.reward)
    if args.prompts:
        prompts = read_prompts(args.prompts, files)
    elif cls.reads_prompt:
        raise ValueError(f"reward {args.reward!r} reads the prompt: pass --prompts FILE (one line per image, or JSON)")
    else:
        prompts = [""] * len(files)
    kwargs = parse_options(args.option)
    if args.weights:
        kwargs["weights"] = args.weights
    accepted = reward_arguments(args.reward)
    if args.weights and accepted is not None and "weights" not in accepted:
        raise ValueError(f"reward {args.reward!r} does not take --weights; its options: {', '.join(accepted) or '(none)'}")
    check_reward_kwargs(args.reward, kwargs)  # --option device=... too: --device sets it
    reward = get_reward(args.reward, device=args.device, **kwargs)
    scores = score_folder(reward, files, prompts, args.batch_size)
    print(format_table([(f.name, p, s) for f, p, s in zip(files, prompts, scores)]))
    n = len(scores)
    mean = sum(scores) / n
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1)) if n > 1 else 0.0
    print(f"\n{args.reward}: mean {mean:.4f} ± {std:.4f} (std over {n} image{'s' if n != 1 else ''})")
    return 0
