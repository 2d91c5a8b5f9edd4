"""The GenEval judge of the compositional tiny world: a small CNN "detector" and GenEval's rules
on its outputs.

Per shape class s the net predicts ``count:s`` (softmax over 0..MAX_COUNT), ``colour:s``
(softmax over COLOURS: the colour of the shape's instances) and the centre of mass of its
instances as two softmax distributions over the pixel columns ``x:s`` and rows ``y:s``.
GenEval's rules on these outputs, per criterion of ``grammar.criteria``:

===============  =========================================  ================================
criterion        probability (soft)                         decision (strict)
===============  =========================================  ================================
present:s        P(count_s >= 1)                            P > 0.5
count:s          P(count_s = N)                             argmax count = N
colour           prod over prompted shapes of P(colour)     argmax colour = prompted, each
relation         P(sign (x_a - x_b) > MARGIN) (independent   P > 0.5
                 column / row distributions of a and b)
===============  =========================================  ================================

The soft score (the training reward) is the product of the criteria's probabilities: 1 only
when every criterion is surely met, near 0 when any is surely broken (GenEval's "all right",
made smooth). The strict score is 1 iff every decision is right.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from alignzoo.tinyworld.compose import grammar as g

SIZE = g.IMAGE_SIZE


def head_sizes() -> dict[str, int]:
    out = {}
    for s in g.SHAPES:
        out.update({f"count:{s}": g.MAX_COUNT + 1, f"colour:{s}": len(g.COLOURS), f"x:{s}": SIZE, f"y:{s}": SIZE})
    return out


class JudgeNet(nn.Module):
    """Five 3x3 conv blocks (GroupNorm, SiLU; 32 -> 16 -> 8 -> 4 px), an MLP on the flattened
    4x4 map (keeps where things are) and one linear head per output group."""

    def __init__(self, width: int = 24, hidden: int = 128):
        super().__init__()
        w = width

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.features = nn.Sequential(*block(3, w, 1), *block(w, w, 2), *block(w, 2 * w, 1),
                                      *block(2 * w, 2 * w, 2), *block(2 * w, 2 * w, 2))
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, hidden), nn.SiLU())
        self.heads = nn.ModuleDict({k.replace(":", "_"): nn.Linear(hidden, n) for k, n in head_sizes().items()})
        self.config = {"arch": "JudgeNet", "width": width, "hidden": hidden}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, hidden): the judge's view of an image (diversity column)."""
        return self.mlp(self.features(images * 2 - 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.embed(images)
        return {k: self.heads[k.replace(":", "_")](h) for k in head_sizes()}


def save_judge(net: JudgeNet, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """``path`` (.safetensors, fp16: half the bytes, no measurable change) + ``.json`` config."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous().cpu() for k, v in net.state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({**net.config, **(extra or {})}, indent=2) + "\n")
    return path


def load_judge(path: str | os.PathLike) -> tuple[JudgeNet, dict]:
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads(path.with_suffix(".json").read_text())
    net = JudgeNet(width=cfg["width"], hidden=cfg["hidden"])
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    net.eval()
    return net, cfg


# ------------------------------------------------------------------------------ targets

def scene_targets(scenes: Sequence[g.Scene]) -> dict[str, torch.Tensor]:
    """Per head the class index (long); -1 where it is undefined (colour / centre of an absent
    shape). Centres: the pixel column / row holding the instances' mean centre."""
    out = {k: torch.full((len(scenes),), -1, dtype=torch.long) for k in head_sizes()}
    for i, sc in enumerate(scenes):
        for s in g.SHAPES:
            obs = [o for o in sc.objects if o.shape == s]
            out[f"count:{s}"][i] = len(obs)
            if obs:
                out[f"colour:{s}"][i] = g.COLOURS.index(obs[0].colour)
                cx = sum(o.cx for o in obs) / len(obs)
                cy = sum(o.cy for o in obs) / len(obs)
                out[f"x:{s}"][i] = min(SIZE - 1, max(0, int(cx)))
                out[f"y:{s}"][i] = min(SIZE - 1, max(0, int(cy)))
    return out


# ------------------------------------------------------------------------------ GenEval's rules

def _relation_prob(px_a: torch.Tensor, px_b: torch.Tensor, relation: str) -> torch.Tensor:
    """P(sign (a - b) > MARGIN) for independent distributions over pixel bins (B, SIZE)."""
    _, sign = g.RELATION_AXIS[relation]
    idx = torch.arange(SIZE, device=px_a.device, dtype=torch.float32)
    diff = sign * (idx[:, None] - idx[None, :])  # a's bin i, b's bin j
    mask = (diff > g.MARGIN).float()
    return torch.einsum("bi,ij,bj->b", px_a, mask, px_b)


def _criterion(spec: g.PromptSpec, key: str, probs: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability, decision) of one criterion for image ``i``."""
    o = spec.objects
    if key.startswith("present:"):
        p = 1 - probs[f"count:{key[8:]}"][i, 0]
        return p, p > 0.5
    if key.startswith("count:"):
        pc = probs[key][i]
        return pc[o[0].count], pc.argmax() == o[0].count
    if key == "colour":
        ps = [probs[f"colour:{x.shape}"][i] for x in o]
        cols = [g.COLOURS.index(x.colour) for x in o]
        p = torch.stack([q[c] for q, c in zip(ps, cols)]).prod()
        return p, torch.stack([q.argmax() == c for q, c in zip(ps, cols)]).all()
    axis = "x" if g.RELATION_AXIS[spec.relation][0] == "x" else "y"
    pa, pb = probs[f"{axis}:{o[0].shape}"][i : i + 1], probs[f"{axis}:{o[1].shape}"][i : i + 1]
    p = _relation_prob(pa, pb, spec.relation)[0]
    return p, p > 0.5


_KEYS_CACHE: dict[str, tuple[g.PromptSpec, tuple[str, ...]]] = {}


def spec_and_keys(prompt: str) -> tuple[g.PromptSpec, tuple[str, ...]]:
    """The prompt's spec and criteria keys (those of ``grammar.criteria``), cached."""
    if prompt not in _KEYS_CACHE:
        spec = g.parse_prompt(prompt)
        _KEYS_CACHE[prompt] = (spec, tuple(g.criteria(spec, g.Scene(()))))
    return _KEYS_CACHE[prompt]


def judge_outputs(logits: dict[str, torch.Tensor], prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """GenEval's rules on the net's logits: ``soft`` (B,), ``strict`` (B,) 0/1 and per criterion
    ``p:<key>`` / ``ok:<key>`` (NaN where the prompt has no such criterion)."""
    probs = {k: v.float().softmax(-1) for k, v in logits.items()}
    b = len(prompts)
    dev = next(iter(probs.values())).device
    soft, strict_ = [], []
    per: dict[str, list] = {}
    for i, prompt in enumerate(prompts):
        spec, keys = spec_and_keys(prompt)
        ps, oks = [], []
        for key in keys:
            p, ok = _criterion(spec, key, probs, i)
            ps.append(p)
            oks.append(ok)
            per.setdefault(key, [None] * b)[i] = (p, ok)
        soft.append(torch.stack(ps).prod())
        strict_.append(torch.stack(oks).all().float())
    out = {"soft": torch.stack(soft), "strict": torch.stack(strict_)}
    nan = torch.tensor(float("nan"), device=dev)
    for key, vals in per.items():
        out[f"p:{key}"] = torch.stack([v[0].detach() if v else nan for v in vals])
        out[f"ok:{key}"] = torch.stack([v[1].float() if v else nan for v in vals])
    return out
