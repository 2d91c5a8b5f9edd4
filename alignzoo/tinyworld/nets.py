"""The tiny reward networks (small CNNs on 32x32 images) and their config/weights I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """conv 32 -> 16 -> 8 -> 4 px, then an MLP on the flattened 4x4 map (it keeps position
    information, which both rewards need), then one linear head per output group.

    Input: images (B, 3, 32, 32) in [0, 1]. Output: dict head -> logits (B, n).
    GroupNorm (not BatchNorm) keeps the output independent of the batch.
    """

    def __init__(self, heads: dict[str, int], width: int = 32, hidden: int = 128):
        super().__init__()
        w = width

        def block(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *block(3, w, 1),
            *block(w, w, 2),  # 16
            *block(w, 2 * w, 1),
            *block(2 * w, 2 * w, 2),  # 8
            *block(2 * w, 4 * w, 2),  # 4
        )
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, hidden), nn.SiLU())
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, n) for k, n in heads.items()})
        self.config = {"heads": dict(heads), "width": width, "hidden": hidden}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.mlp(self.features(images * 2 - 1))
        return {k: head(h) for k, head in self.heads.items()}


def save_net(net: TinyConvNet, folder: str | os.PathLike, name: str, extra: dict | None = None) -> Path:
    """Writes ``name.safetensors`` (fp32) and ``name.json`` (architecture + ``extra``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(folder / f"{name}.safetensors"))
    cfg = {"arch": "TinyConvNet", **net.config, **(extra or {})}
    (folder / f"{name}.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder / f"{name}.safetensors"


def load_net(weights_file: str | os.PathLike) -> tuple[TinyConvNet, dict]:
    """Loads a net saved by :func:`save_net` (the json sits next to the safetensors file)."""
    from safetensors.torch import load_file

    weights_file = Path(weights_file)
    cfg = json.loads(weights_file.with_suffix(".json").read_text())
    net = TinyConvNet(cfg["heads"], width=cfg["width"], hidden=cfg["hidden"])
    net.load_state_dict(load_file(str(weights_file)))
    net.eval()
    return net, cfg
