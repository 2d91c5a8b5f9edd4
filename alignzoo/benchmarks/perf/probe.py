"""Timers and memory gauges for ``alignzoo perf``. :class:`Probe` wraps the calls an epoch is made
of (UNet, backward, VAE decode, text encoder, reward model, the algorithm's own networks, and the
rollout phase) on one trainer, accumulating seconds and rows per component and removing its
wrappers afterwards; :class:`PeakMemory` reads the peak memory of a window (CUDA's allocator, or
the process RSS high-water mark on CPU). docs/perf.md says how the epoch's time is split.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work, so that a timer around it measures the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Probe:
    """Accumulates time and rows per component; nested component calls count once (outermost)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.depth = 0
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()

    @contextlib.contextmanager
    def component(self, name: str, rows: int = 0, count_as: str | None = None) -> Iterator[None]:
        if count_as:
            self.counts[count_as] += rows
        if self.depth:
            yield
            return
        self.depth += 1
        t0 = self.now()
        try:
            yield
        finally:
            self.seconds[name] += self.now() - t0
            self.depth -= 1

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = self.now()
        try:
            yield
        finally:
            self.seconds["phase_" + name] += self.now() - t0

    # -- installation (instance attributes shadow the class methods; removed afterwards) --------
    def wrap(self, obj, attr: str, make: Callable[[Callable], Callable]) -> None:
        had = attr in vars(obj)
        orig = getattr(obj, attr)
        setattr(obj, attr, make(orig))

        def undo():
            if had:
                setattr(obj, attr, orig)
            else:
                delattr(obj, attr)

        self._undo.append(undo)

    def time_calls(self, obj, attr: str, component: str, count_as: str | Callable[[], str] | None = None) -> None:
        """Times ``obj.attr`` as ``component``; with ``count_as`` (a counter's name, or a function
        that picks it at call time), also counts the rows of the call's first argument there."""

        def make(orig):
            def timed(*args, **kwargs):
                counter = count_as() if callable(count_as) else count_as
                with self.component(component, len(args[0]) if counter else 0, counter):
                    return orig(*args, **kwargs)

            return timed

        self.wrap(obj, attr, make)

    def install(self, trainer) -> None:
        model = trainer.model
        self.time_calls(model, "predict_noise", "unet", lambda: "unet_rows_grad" if torch.is_grad_enabled() else "unet_rows_nograd")
        self.time_calls(model, "decode", "vae", "vae_rows")
        self.time_calls(model, "encode_prompts", "text_encoder", "text_rows")
        self.time_calls(trainer.reward, "forward", "reward", "reward_images")
        self.wrap(trainer, "rollout", self._sampling_phase)
        for value in list(vars(trainer.algo).values()):  # networks the algorithm owns (LaSRO's surrogate)
            if isinstance(value, torch.nn.Module):
                self.time_calls(value, "forward", "algo_nets")
        # the losses are elementwise in the UNet's outputs, so every backward is the UNet's
        self.time_calls(torch.Tensor, "backward", "backward")

    def _sampling_phase(self, rollout: Callable) -> Callable:
        def timed_rollout(*args, **kwargs):
            with self.phase("sampling"):
                traj = rollout(*args, **kwargs)
            self.counts["trajectories"] += traj.batch_size
            return traj

        return timed_rollout

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()


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
