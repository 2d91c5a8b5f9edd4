"""The trainer's checkpoints: written atomically, verified, resumed from the newest intact one.

A checkpoint is a folder ``<run>/checkpoints/epoch_NNNNN/`` holding

* ``trainer_state.pt``  LoRA, optimiser, LR schedule, stat trackers, the shared numpy RNG,
                        counters, configs and the algorithm's own state (main process);
* ``rng_rank<r>.pt``    each process's sampling-noise generator and torch RNG state;
* the LoRA in diffusers format (``pytorch_lora_weights.safetensors``, ``alignzoo_lora.json``);
* ``COMPLETE``          written last: a manifest ``{"epoch": N, "files": {name: {"bytes", "sha256"}}}``.

The folder is written under a temporary name and renamed, so a kill never leaves a half-written
``epoch_*``. A checkpoint can still be damaged *after* it was completed (a copy cut short by a
full disk, a bad rsync): a resume checks the manifest's sizes and checksums, and a checkpoint
that fails them (or cannot be unpickled) is moved aside to ``damaged_epoch_NNNNN`` with a
warning naming it, and the run resumes from the newest intact one (the log lines of later epochs
are dropped, and those epochs rerun to the same numbers: exact resume, see the trainer). Older
checkpoints whose ``COMPLETE`` holds only the epoch number have no checksums; they load as
before, and only an unreadable file marks them damaged. Pruning (``keep_checkpoints``) never
deletes the newest intact checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from alignzoo.runlog import atomic_write_text

MANIFEST = "COMPLETE"
STATE = "trainer_state.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, epoch: int) -> None:
    """Records every file of the checkpoint (all processes' files must be written already)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    atomic_write_text(folder / MANIFEST, json.dumps({"epoch": epoch, "files": files}, indent=1))


def damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint (one phrase), or None if its files match its manifest.
    A checkpoint without checksums (written before they existed) passes."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST} marker"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"its {MANIFEST} marker is unreadable"
    if not isinstance(manifest, dict):
        return None  # the old marker: just the epoch number
    for name, want in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size} bytes, its manifest says {want['bytes']} (truncated?)"
        if _sha256(path) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def completed(ckpt_dir: Path) -> list[Path]:
    """Checkpoint folders with a COMPLETE marker, oldest first."""
    return [p for p in sorted(Path(ckpt_dir).glob("epoch_*")) if (p / MANIFEST).exists()]


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest completed checkpoint (not verified: :func:`resume` does that)."""
    done = completed(ckpt_dir)
    return done[-1] if done else None


def prune(ckpt_dir: Path, keep: int) -> list[Path]:
    """Deletes all but the ``keep`` newest checkpoints, except that the newest intact one always
    stays (were the kept ones all damaged, it would be the only way to resume). Usually checks
    only the newest checkpoint. Returns the deleted folders."""
    ckpts = sorted(Path(ckpt_dir).glob("epoch_*"), reverse=True)
    kept, older = ckpts[:keep], ckpts[keep:]
    spare = None
    if not any(damage(c) is None for c in kept):
        spare = next((c for c in older if damage(c) is None), None)
    gone = [c for c in older if c != spare]
    for c in gone:
        shutil.rmtree(c, ignore_errors=True)
    return gone


# --------------------------------------------------------------------------- the trainer's
def trainer_state(trainer) -> dict:
    from peft.utils import get_peft_model_state_dict

    return {
        "epoch": trainer.epoch,
        "lora": {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(trainer.model.unet).items()},
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "tracker": trainer.tracker.state_dict(),
        "shared_rng": trainer.shared_rng.bit_generator.state,
        "totals": dict(trainer.totals),
        "algo_config": dataclasses.asdict(trainer.algo.config),
        "algo_state": trainer.algo.state_dict(),
        "train_config": dataclasses.asdict(trainer.config),
    }


def save_checkpoint(trainer) -> Path:
    """Collective: every process writes its own RNG state; the main process the rest, then the
    manifest of everyone's files, then renames the folder into place and prunes old ones."""
    acc, ckpt_dir = trainer.accelerator, trainer.ckpt_dir
    final = ckpt_dir / f"epoch_{trainer.epoch:05d}"
    tmp = ckpt_dir / f".tmp_epoch_{trainer.epoch:05d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save({"noise_gen": trainer.noise_gen.get_state(), "torch_rng": torch.random.get_rng_state()}, tmp / f"rng_rank{trainer.rank}.pt")
    if acc.is_main_process:
        torch.save(trainer._state(), tmp / STATE)
        trainer.model.save_lora(tmp)
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_manifest(tmp, trainer.epoch)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(ckpt_dir, trainer.config.keep_checkpoints)
    acc.wait_for_everyone()
    return final


def _load(ckpt: Path, rank: int) -> tuple[dict, dict | None]:
    """The trainer state and this process's RNG state (None if this process has no file there)."""
    state = torch.load(ckpt / STATE, weights_only=False)
    rng_file = ckpt / f"rng_rank{rank}.pt"
    return state, (torch.load(rng_file, weights_only=False) if rng_file.exists() else None)


def resume(trainer) -> Path | None:
    """Loads the newest intact checkpoint into ``trainer``; returns it (None: a fresh run).

    Every process checks the same files, so all reach the same choice without talking."""
    from peft.utils import set_peft_model_state_dict

    acc = trainer.accelerator
    damaged: list[tuple[Path, str]] = []
    chosen = state = rng = None
    for ckpt in reversed(completed(trainer.ckpt_dir)):
        problem = damage(ckpt)
        if problem is None:
            try:
                state, rng = _load(ckpt, trainer.rank)
            except Exception as err:  # any unreadable file (truncated zip, bad pickle) means damaged
                problem = f"it cannot be read ({type(err).__name__}: {str(err).split('. ')[0][:160]})"
        if problem is None:
            chosen = ckpt
            break
        damaged.append((ckpt, problem))
        if acc.is_main_process:
            warnings.warn(
                f"checkpoint {ckpt} is damaged: {problem}; moving it aside to damaged_{ckpt.name} and resuming from an older checkpoint",
                UserWarning,
                stacklevel=3,
            )
    if chosen is None:
        if damaged:  # left in place: a rerun must not quietly start over
            raise ValueError(
                f"every checkpoint in {trainer.ckpt_dir} is damaged ({'; '.join(f'{c.name}: {p}' for c, p in damaged)}); "
                "delete the folder to start over or use another --out"
            )
        return None
    cfg = state["train_config"]
    if cfg["algo"] != trainer.config.algo or cfg["reward"] != trainer.config.reward:
        raise ValueError(f"{trainer.out} holds a run of {cfg['algo']}/{cfg['reward']}; use another --out")
    if rng is None:
        raise ValueError(f"checkpoint {chosen} was written by fewer processes than this run has ({trainer.world})")
    acc.wait_for_everyone()
    if acc.is_main_process:
        for ckpt, _ in damaged:  # out of the way of latest_checkpoint() and pruning; kept for inspection
            aside = ckpt.with_name(f"damaged_{ckpt.name}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(ckpt, aside)
    set_peft_model_state_dict(trainer.model.unet, state["lora"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    trainer.tracker.load_state_dict(state["tracker"])
    trainer.algo.load_state_dict(state.get("algo_state", {}))
    trainer.shared_rng.bit_generator.state = state["shared_rng"]
    trainer.totals = state["totals"]
    trainer.epoch = state["epoch"]
    trainer.noise_gen.set_state(rng["noise_gen"])
    torch.random.set_rng_state(rng["torch_rng"])
    if acc.is_main_process and trainer.log_path.exists():
        _drop_log_lines_after(trainer.log_path, trainer.epoch)
    acc.wait_for_everyone()
    return chosen


def _drop_log_lines_after(log_path: Path, epoch: int) -> None:
    """Keeps the log lines of the epochs the checkpoint holds (later ones will be rerun)."""
    kept = []
    for line in log_path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epoch:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut by a kill
    atomic_write_text(log_path, "".join(x + "\n" for x in kept))
