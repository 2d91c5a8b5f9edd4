"""The GenEval judge of the compositional tiny world: a small fully convolutional detector and
GenEval's rules on its detections.

The net maps a 32x32 image to a 16x16 grid of 2-px cells (CenterNet in miniature): per cell a
centre heatmap per shape class (sigmoid: "an instance of this shape is centred here") and
colour logits (the colour of the object centred here). Detections are the heatmap's 3x3 local
maxima (objects' centres are >= 3 cells apart). Per shape class s, from its top-K peaks
p_1..p_K (K = 6): the count distribution is Poisson-binomial(p_1..p_K), the colour
distribution is the peaks' colour softmax weighted by p_k, and the centre distribution puts
weight p_k / sum p on each peak's cell. GenEval's rules on these, per criterion of
``grammar.criteria``:

===============  ==========================================  ==============================
criterion        probability (soft)                          decision (strict)
===============  ==========================================  ==============================
present:s        P(count_s >= 1) = 1 - prod(1 - p_k)          some peak > t
count:s          P(count_s = N)                              N peaks > t
colour           prod over prompted shapes of P(colour)      argmax colour = prompted, each
relation         P(sign (x_a - x_b) > MARGIN) over the two    P > 0.5
                 centre distributions (cell centres, px)
===============  ==========================================  ==============================

The soft score (the training reward) is the product of the criteria's probabilities: 1 only
when every criterion is surely met, near 0 when any is surely broken (GenEval's "all right",
made smooth). The strict score is 1 iff every decision is right. The detection threshold t
is calibrated per judge on validation renders by the training stage (``threshold`` in its
.json; 0.5 when absent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from alignzoo.tinyworld.compose import grammar as g

SIZE = g.IMAGE_SIZE
CELL = 2  # px per heatmap cell
GRID = SIZE // CELL
TOP_K = 6
N_SHAPES, N_COLOURS = len(g.SHAPES), len(g.COLOURS)


class JudgeNet(nn.Module):
    """two 3x3 convs at 32 px, a stride-2 conv to 16x16, three 3x3 convs (dilation 1, 2, 4:
    receptive field ~ 35 px) and a 1x1 head: (B, shapes + colours, 16, 16) logits."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width

        def block(cin, cout, stride=1, dil=1):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=dil, dilation=dil), nn.GroupNorm(4, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *block(3, w), *block(w, w), *block(w, 2 * w, stride=2), *block(2 * w, 2 * w), *block(2 * w, 2 * w, dil=2), *block(2 * w, 2 * w, dil=4)
        )
        self.head = nn.Conv2d(2 * w, N_SHAPES + N_COLOURS, 1)
        with torch.no_grad():  # start from "nothing here" (p = 0.01), as CenterNet does
            self.head.bias[:N_SHAPES].fill_(-4.6)
        self.feature_dim = 4 * w
        self.config = {"arch": "JudgeNet-heatmap", "width": width, "grid": GRID, "top_k": TOP_K}
        self.threshold = 0.5  # detection threshold on peaks (calibrated after training)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, 4 width): mean and max over the last map (diversity column)."""
        h = self.features(images * 2 - 1)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images * 2 - 1))


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
    net = JudgeNet(width=cfg["width"])
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    net.threshold = float(cfg.get("threshold", 0.5))
    net.config["threshold"] = net.threshold
    net.eval()
    return net, cfg


# ------------------------------------------------------------------------------ targets


def scene_targets(scenes: Sequence[g.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """(heat (B, shapes, 16, 16) 0/1 at each object's centre cell, colour (B, 16, 16) long:
    the object's colour index on the 3x3 cells around its centre, -1 elsewhere)."""
    heat = torch.zeros(len(scenes), N_SHAPES, GRID, GRID)
    colour = torch.full((len(scenes), GRID, GRID), -1, dtype=torch.long)
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            cx, cy = min(GRID - 1, int(o.cx // CELL)), min(GRID - 1, int(o.cy // CELL))
            heat[i, g.SHAPES.index(o.shape), cy, cx] = 1
            colour[i, max(0, cy - 1) : cy + 2, max(0, cx - 1) : cx + 2] = g.COLOURS.index(o.colour)
    return heat, colour


def detector_loss(logits: torch.Tensor, heat: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Heatmap BCE summed over cells and divided by the number of objects (CenterNet's
    normalisation: each object weighs the same however empty the image) + colour CE on the
    cells around objects' centres."""
    n_obj = heat.sum().clamp_min(1.0)
    h = F.binary_cross_entropy_with_logits(logits[:, :N_SHAPES], heat, reduction="sum") / n_obj
    c = F.cross_entropy(logits[:, N_SHAPES:], colour, ignore_index=-1) if (colour >= 0).any() else 0.0
    return h + c


# ------------------------------------------------------------------------------ detections


def detections(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per shape class the top-K heatmap peaks: ``p`` (B, S, K), cell ``x`` / ``y`` centres in
    px (B, S, K) and colour probabilities ``colour`` (B, S, K, C)."""
    b = logits.shape[0]
    heat = torch.sigmoid(logits[:, :N_SHAPES].float())
    peak = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1)).float()
    p, idx = peak.flatten(2).topk(TOP_K, dim=-1)  # (B, S, K)
    col = logits[:, N_SHAPES:].float().softmax(1).flatten(2)  # (B, C, G*G)
    colour = torch.gather(col[:, None].expand(b, N_SHAPES, N_COLOURS, GRID * GRID), 3, idx[:, :, None, :].expand(b, N_SHAPES, N_COLOURS, TOP_K)).permute(
        0, 1, 3, 2
    )
    x = (idx % GRID).float() * CELL + CELL / 2
    y = torch.div(idx, GRID, rounding_mode="floor").float() * CELL + CELL / 2
    return {"p": p, "x": x, "y": y, "colour": colour}


def count_distribution(p: torch.Tensor) -> torch.Tensor:
    """Poisson-binomial distribution of the number of detections: (..., K) -> (..., K + 1)."""
    dist = torch.zeros(*p.shape[:-1], p.shape[-1] + 1, device=p.device)
    dist[..., 0] = 1
    for k in range(p.shape[-1]):
        q = p[..., k : k + 1]
        dist = torch.cat([dist[..., :1] * (1 - q), dist[..., 1:] * (1 - q) + dist[..., :-1] * q], -1)
    return dist


# ------------------------------------------------------------------------------ GenEval's rules


def rule_tables(logits: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Every quantity GenEval's rules read, for all shapes at once: ``present_p`` / ``present_ok``
    (B, S), ``count_p`` (B, S, K + 1), ``n_det`` (B, S), ``colour_p`` (B, S, C), ``colour_arg``
    (B, S) and ``relation_p`` (B, R, S, S): P(first shape's centre on relation r's side of the
    second's by > MARGIN)."""
    det = detections(logits)
    p = det["p"]
    hit = p > threshold
    w = p / p.sum(-1, keepdim=True).clamp_min(1e-6)
    colour_p = (w[..., None] * det["colour"]).sum(2)
    rel = []
    for r in g.RELATIONS:
        axis, sign = g.RELATION_AXIS[r]
        c = det[axis]
        mask = (sign * (c[:, :, None, :, None] - c[:, None, :, None, :]) > g.MARGIN).float()
        rel.append(torch.einsum("bik,bijkl,bjl->bij", w, mask, w))
    return {
        "present_p": 1 - (1 - p).prod(-1),
        "present_ok": hit.any(-1),
        "count_p": count_distribution(p),
        "n_det": hit.sum(-1),
        "colour_p": colour_p,
        "colour_arg": colour_p.argmax(-1),
        "relation_p": torch.stack(rel, 1),
    }


def _criterion(spec: g.PromptSpec, key: str, t: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probability, decision) of one criterion for image ``i`` from :func:`rule_tables`."""
    o = spec.objects
    if key.startswith("present:"):
        s = g.SHAPES.index(key[8:])
        return t["present_p"][i, s], t["present_ok"][i, s]
    if key.startswith("count:"):
        s = g.SHAPES.index(key[6:])
        return t["count_p"][i, s, o[0].count], t["n_det"][i, s] == o[0].count
    if key == "colour":
        s = [g.SHAPES.index(x.shape) for x in o]
        c = [g.COLOURS.index(x.colour) for x in o]
        p = t["colour_p"][i, s, c]
        return p.prod(), (t["colour_arg"][i, s] == torch.tensor(c, device=p.device)).all()
    a, b = g.SHAPES.index(o[0].shape), g.SHAPES.index(o[1].shape)
    p = t["relation_p"][i, g.RELATIONS.index(spec.relation), a, b]
    return p, p > 0.5


_KEYS_CACHE: dict[str, tuple[g.PromptSpec, tuple[str, ...]]] = {}


def spec_and_keys(prompt: str) -> tuple[g.PromptSpec, tuple[str, ...]]:
    """The prompt's spec and criteria keys (those of ``grammar.criteria``), cached."""
    if prompt not in _KEYS_CACHE:
        spec = g.parse_prompt(prompt)
        _KEYS_CACHE[prompt] = (spec, tuple(g.criteria(spec, g.Scene(()))))
    return _KEYS_CACHE[prompt]


def judge_outputs(logits: torch.Tensor, prompts: Sequence[str], threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """GenEval's rules on the net's logits: ``soft`` (B,), ``strict`` (B,) 0/1 and per criterion
    ``p:<key>`` / ``ok:<key>`` (NaN where the prompt has no such criterion). ``threshold``: the
    peak height that counts as a detection (each judge's is calibrated by its training stage)."""
    tables = rule_tables(logits, threshold)
    b = len(prompts)
    dev = logits.device
    soft, strict_ = [], []
    per: dict[str, list] = {}
    for i, prompt in enumerate(prompts):
        spec, keys = spec_and_keys(prompt)
        ps, oks = [], []
        for key in keys:
            p, ok = _criterion(spec, key, tables, i)
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
