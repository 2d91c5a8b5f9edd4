"""Timers and memory gauges for ``alignzoo perf``. :class:`Probe` times the parts an epoch is
made of on one trainer, accumulating seconds and rows per component: the UNet, the VAE decoder,
the text encoder, the reward model and the networks the algorithm owns through forward hooks on
their modules, and every backward pass and the rollout phase as the trainer's timer (the trainer
calls it there: alignzoo/algos/timer.py). :meth:`Probe.uninstall` removes the hooks and gives the
trainer back its :class:`~alignzoo.algos.timer.NullTimer`. :class:`PeakMemory` reads the peak
memory of a window (CUDA's allocator, or the process RSS high-water mark on CPU). docs/perf.md
says how the epoch's time is split.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import torch

from alignzoo.algos.timer import NullTimer


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that a timer around it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _unet_rows() -> str:
    return "unet_rows_grad" if torch.is_grad_enabled() else "unet_rows_nograd"


def _batch_rows(args: tuple, kwargs: dict) -> int:
    """The rows of a module call's first argument (positional, or else the first keyword)."""
    first = args[0] if args else next(iter(kwargs.values()))
    return len(first)


class Probe:
    """Accumulates time and rows per component; nested component calls count once (outermost).
    The trainer's timer (alignzoo/algos/timer.py) while installed."""

    def __init__(self, device: torch.device):
        self.device = device
        self.depth = 0
        self._t0 = 0.0
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._handles: list = []
        self._trainer = None

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()

    # -- the timer: components (outermost only) and phases ---------------------------------------
    def start(self, rows: int = 0, count_as: str | None = None) -> None:
        if count_as:
            self.counts[count_as] += rows
        self.depth += 1
        if self.depth == 1:
            self._t0 = self.now()

    def stop(self, name: str) -> None:
        """Ends the innermost open component; only the outermost's time counts (as ``name``)."""
        self.depth -= 1
        if self.depth == 0:
            self.seconds[name] += self.now() - self._t0

    @contextlib.contextmanager
    def component(self, name: str, rows: int = 0, count_as: str | None = None) -> Iterator[None]:
        self.start(rows, count_as)
        try:
            yield
        finally:
            self.stop(name)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = self.now()
        try:
            yield
        finally:
            self.seconds["phase_" + name] += self.now() - t0

    def count(self, counter: str, n: int) -> None:
        self.counts[counter] += n

    # -- installation ------------------------------------------------------------------------------
    def hook(self, module: torch.nn.Module, name: str, count_as: str | Callable[[], str] | None = None) -> None:
        """Times ``module``'s forward calls as ``name``; with ``count_as`` (a counter's name, or a
        function that picks it at call time), also counts the rows of each call's first argument."""

        # compiled modules (--compile) run their hooks eagerly: the clock is read at call time
        @torch.compiler.disable
        def before(_module, args, kwargs):
            counter = count_as() if callable(count_as) else count_as
            self.start(_batch_rows(args, kwargs) if counter else 0, counter)

        @torch.compiler.disable
        def after(_module, _args, _kwargs, _output):
            self.stop(name)

        self._handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        self._handles.append(module.register_forward_hook(after, with_kwargs=True, always_call=True))

    def install(self, trainer) -> None:
        """Hooks the trainer's networks and becomes its timer (backward passes, the rollout phase).
        UNet rows are its batch rows: twice the images under classifier-free guidance."""
        model = trainer.model
        self.hook(model.unet, "unet", _unet_rows)
        vae = model.vae
        if getattr(vae, "post_quant_conv", None) is not None:  # the decode's first layer, then the decoder
            self.hook(vae.post_quant_conv, "vae")
        self.hook(vae.decoder, "vae", "vae_rows")
        self.hook(model.text_encoder, "text_encoder", "text_rows")
        self.hook(trainer.reward, "reward", "reward_images")
        for value in list(vars(trainer.algo).values()):  # networks the algorithm owns (LaSRO's surrogate)
            if isinstance(value, torch.nn.Module):
                self.hook(value, "algo_nets")
        self._trainer, trainer.timer = trainer, self

    def uninstall(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        if self._trainer is not None:
            self._trainer.timer, self._trainer = NullTimer(), None


class PeakMemory:
    """Peak memory over a window: CUDA max_memory_allocated, or the process RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_allocated" if self.cuda else "rss_peak"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            self.kind = "rss_peak_since_start"

    def peak_mb(self) -> float | None:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except Exception:  # noqa: BLE001
            return None
