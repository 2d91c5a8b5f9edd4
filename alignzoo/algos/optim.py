"""The policy's optimiser and learning-rate schedule from an algorithm's config."""

from __future__ import annotations

import torch


def make_optimizer(acfg, params):
    """(optimizer, lr_scheduler): AdamW or Adam (RLCM: Adam, no weight decay); a constant LR, or
    RLCM's linear decay 1 → 0 over ``lr_schedule_epochs`` (stepped once per epoch)."""
    opt_cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(acfg.optimizer)
    if opt_cls is None:
        raise ValueError(f"unknown optimizer {acfg.optimizer!r}: choose adamw or adam")
    optimizer = opt_cls(list(params), lr=acfg.learning_rate, betas=(acfg.adam_beta1, acfg.adam_beta2), weight_decay=acfg.weight_decay, eps=acfg.adam_epsilon)
    if acfg.lr_schedule == "linear":
        return optimizer, torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=acfg.lr_schedule_epochs)
    if acfg.lr_schedule == "constant":
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown lr_schedule {acfg.lr_schedule!r}: choose constant or linear")
