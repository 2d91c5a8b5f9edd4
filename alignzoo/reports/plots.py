"""Figures from stored results (matplotlib's Agg canvas, no pyplot state) and image grids.

* :func:`plot_learning_curves`   training reward vs cumulative samples (SDPO Fig. 3)
* :func:`plot_step_curves`       evaluation reward vs samples, one panel per step count (Figs. 4, 8–11)
* :func:`plot_final_vs_steps`    final reward vs sampling steps, one panel per reward
* :func:`reward_grid`            rows = pretrained + algorithms, columns = step counts (Fig. 1)

Every figure colours an algorithm the same way; the pretrained model is a dashed grey line.
Files are small (dpi 100) so a committed report stays well under 2 MB.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from alignzoo.reports.compute import X_AXES, evals_with_x, logs_with_x
from alignzoo.reports.results import PRETRAINED, Results, slug
from alignzoo.reports.tables import table1_frame

DPI = 100
PRETRAINED_STYLE = {"color": "0.35", "ls": "--", "lw": 1.2}


def _figure(nrows: int, ncols: int, panel: tuple[float, float] = (3.4, 2.6)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def algo_colors(algos: list[str]) -> dict[str, tuple]:
    """A fixed colour per algorithm (tab10 in the report's algorithm order)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {a: cmap(i % 10) for i, a in enumerate(algos)}


def _finish(fig, axes, out: Path, title: str | None) -> Path:
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, out)


def save_png(fig, out: str | Path) -> Path:
    """Save a figure as a 256-colour palette PNG (a third of the RGBA size, same look for line plots)."""
    import io

    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png", facecolor="white")
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out


def seed_band(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(mean over the columns (seeds), standard error across seeds) per row; SE NaN with one seed."""
    mean = table.mean(axis=1, skipna=True).to_numpy(float)
    k = table.notna().sum(axis=1).to_numpy(float)
    se = table.std(axis=1, ddof=1, skipna=True).to_numpy(float) / np.sqrt(np.where(k > 1, k, np.nan))
    return mean, se


def _band(ax, x, table: pd.DataFrame, color, label: str, marker: str | None = None) -> None:
    """Mean over the columns (seeds) as a line, mean ± the standard error across seeds shaded."""
    mean, se = seed_band(table)
    ax.plot(x, mean, color=color, lw=1.5, label=label, marker=marker, ms=3)
    if table.shape[1] > 1 and np.isfinite(se).any():
        ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.2, lw=0)


def _seed_table(sub: pd.DataFrame, value: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(value per training point × seed, x per point): points are the cumulative ``samples``; x is
    the mean over seeds of the ``x`` column (wall seconds differ between seeds)."""
    table = sub.pivot_table(index="samples", columns="seed", values=value, aggfunc="mean").sort_index()
    xs = sub.groupby("samples")["x"].mean().reindex(table.index).to_numpy(float)
    return table, xs


def _steps_title(n: int) -> str:
    return f"{n} step" + ("" if n == 1 else "s")


# ------------------------------------------------------------------------------- learning curves
def plot_learning_curves(logs: pd.DataFrame, algos: list[str], rewards: list[str], out: str | Path, x: str = "images") -> Path | None:
    """One panel per trained reward: training ``reward_mean`` vs training progress (``x``: images,
    UNet evaluations or seconds), mean over seeds with a ± standard-error-across-seeds band; a
    second row with the first-step reward when the logs hold it."""
    if logs is None or logs.empty or "reward_mean" not in logs.columns:
        return None
    logs = logs_with_x(logs, x)
    rewards = [r for r in rewards if (logs["train_reward"] == r).any()]
    if not rewards:
        return None
    metrics = [("reward_mean", "training reward (final image)")]
    if "reward_1step_mean" in logs.columns and pd.to_numeric(logs["reward_1step_mean"], errors="coerce").notna().any():
        metrics.append(("reward_1step_mean", "first-step x̂0 reward"))
    colors = algo_colors(algos)
    fig, axes = _figure(len(metrics), len(rewards))
    for j, reward in enumerate(rewards):
        for i, (metric, ylabel) in enumerate(metrics):
            ax = axes[i, j]
            for algo in algos:
                sub = logs[(logs["algo"] == algo) & (logs["train_reward"] == reward)]
                if sub.empty or sub[metric].notna().sum() == 0:
                    continue
                table, xs = _seed_table(sub, metric)
                _band(ax, xs, table, colors[algo], algo)
            ax.set_title(reward if i == 0 else f"{reward}: first step", fontsize=9)
            ax.set_xlabel(X_AXES[x], fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    return _finish(fig, axes, out, "Learning curves (mean over seeds, band = ± standard error across seeds)")


# ------------------------------------------------------------------------------- step generalization
def plot_step_curves(
    evals: pd.DataFrame, algos: list[str], reward: str, prompt_set: str, out: str | Path, max_cols: int = 3, logs: pd.DataFrame | None = None, x: str = "images"
) -> Path | None:
    """Figs. 4, 8–11: for each step count, the evaluation mean on ``reward`` vs training progress
    (``x``; evaluation points joined to the log records by cell and samples) of the runs trained
    on ``reward`` (mean over seeds, ± standard-error band), starting from the pretrained model at
    0; the pretrained model as a dashed line."""
    evals = evals_with_x(evals, logs, x)
    ev = evals[(evals["prompt_set"] == prompt_set) & (evals["eval_reward"] == reward)]
    trained = ev[(ev["algo"] != PRETRAINED) & (ev["train_reward"] == reward)]
    if trained.empty:
        return None
    steps = sorted(int(s) for s in ev["steps"].unique())
    ncols = min(max_cols, len(steps))
    nrows = math.ceil(len(steps) / ncols)
    colors = algo_colors(algos)
    fig, axes = _figure(nrows, ncols, panel=(3.0, 2.3))
    for k, n in enumerate(steps):
        ax = axes[k // ncols, k % ncols]
        pre = ev[(ev["algo"] == PRETRAINED) & (ev["steps"] == n)]["mean"]
        base = float(pre.mean()) if not pre.empty else np.nan
        if np.isfinite(base):
            ax.axhline(base, label=PRETRAINED, **PRETRAINED_STYLE)
        for algo in algos:
            sub = trained[(trained["algo"] == algo) & (trained["steps"] == n)]
            if sub.empty:
                continue
            table, xs = _seed_table(sub.dropna(subset=["x"]), "mean")
            if np.isfinite(base) and 0 not in table.index:
                table.loc[0] = base  # the model before training is the pretrained model (same prompts and noise)
                xs = np.append(xs, 0.0)
                order = np.argsort(table.index.to_numpy())
                table, xs = table.iloc[order], xs[order]
            _band(ax, xs, table, colors[algo], algo, marker="o")
        ax.set_title(_steps_title(n), fontsize=9)
        ax.set_xlabel(X_AXES[x], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel(reward, fontsize=8)
    for k in range(len(steps), nrows * ncols):
        axes[k // ncols, k % ncols].set_visible(False)
    return _finish(fig, axes, out, f"{reward} on {prompt_set} prompts at each step count, trained on {reward}")


def plot_final_vs_steps(evals: pd.DataFrame, algos: list[str], rewards: list[str], prompt_set: str, out: str | Path) -> Path | None:
    """One panel per reward: the final checkpoints' reward vs sampling steps (log x, ticks at the
    step counts), error bars = the table's ± (standard error across seeds, or the evaluation's for one seed)."""
    frame = table1_frame(evals, prompt_set, algos, rewards)
    if frame.empty or not (frame["method"] != PRETRAINED).any():
        return None
    rewards = [r for r in rewards if (frame["reward"] == r).any()]
    colors = algo_colors(algos)
    steps = sorted(int(s) for s in frame["steps"].unique())
    fig, axes = _figure(1, len(rewards), panel=(3.6, 2.8))
    for ax, reward in zip(axes[0], rewards):
        for method in [PRETRAINED] + list(algos):
            s = frame[(frame["method"] == method) & (frame["reward"] == reward)].sort_values("steps")
            if s.empty:
                continue
            style = dict(PRETRAINED_STYLE) if method == PRETRAINED else {"color": colors[method], "lw": 1.5}
            ax.errorbar(
                s["steps"].to_numpy(float),
                s["mean"].to_numpy(float),
                yerr=s["std"].fillna(0).to_numpy(float),
                marker="o",
                ms=3,
                capsize=2,
                label=method,
                **style,
            )
        ax.set_xscale("log")
        ax.set_xticks(steps)
        ax.set_xticklabels([str(n) for n in steps])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps", fontsize=8)
        ax.set_ylabel(reward, fontsize=8)
        ax.set_title(f"trained and evaluated on {reward}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return _finish(fig, axes, out, f"Final checkpoints on {prompt_set} prompts")


# ------------------------------------------------------------------------------- image grids
def _tile_size(h: int) -> int:
    """Small images are upscaled (nearest, whole factor) to about 96 px; large ones shrunk to 128 px."""
    return h * max(1, math.ceil(96 / h)) if h < 96 else min(h, 128)


def block_shape(k: int) -> tuple[int, int]:
    """(rows, cols) of the near-square block that holds ``k`` images in one grid cell (4 → 2×2)."""
    cols = math.ceil(math.sqrt(k))
    return math.ceil(k / cols), cols


def read_strip(path: Path, k: int, size: int | None = None) -> np.ndarray | None:
    """The first ``k`` square images of a strip, each resized to ``size`` px, arranged in a
    near-square block (:func:`block_shape`; 1 px white gaps, blank where the strip has fewer):
    uint8 (rows·size, cols·size, 3). None when the file is missing or unreadable."""
    from PIL import Image

    try:
        strip = Image.open(path).convert("RGB")
    except (OSError, ValueError):
        return None
    w, h = strip.size
    available = w // h if h else 0
    size = size or h
    rows, cols = block_shape(k)
    gap = 1 if k > 1 else 0
    block = np.full((rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap, 3), 255, np.uint8)
    for i in range(min(k, available)):
        img = strip.crop((i * h, 0, (i + 1) * h, h))
        if size != h:
            img = img.resize((size, size), Image.NEAREST if size > h else Image.LANCZOS)
        r, c = divmod(i, cols)
        block[r * (size + gap) : r * (size + gap) + size, c * (size + gap) : c * (size + gap) + size] = np.asarray(img)
    return block


def grid_rows(results: Results, reward: str, algos: list[str]) -> list[tuple[str, Path]]:
    """(label, folder) of the grid's rows: pretrained, then the first seed of each algorithm trained on ``reward``."""
    rows = [(PRETRAINED, results.run_dir / PRETRAINED)]
    cells = results.cells
    for algo in algos:
        seeds = sorted(cells[(cells["algo"] == algo) & (cells["train_reward"] == reward)]["seed"]) if not cells.empty else []
        for seed in seeds:
            folder = results.run_dir / f"{algo}__{reward}__seed{int(seed)}"
            if (folder / "images").is_dir():
                rows.append((algo if len(seeds) == 1 else f"{algo} (seed {int(seed)})", folder))
                break
    return rows


def _strip_geometry(paths) -> tuple[int, int] | None:
    """(height, images per strip): the smallest among the readable strips, None if none is."""
    from PIL import Image

    heights, counts = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                heights.append(im.size[1])
                counts.append(im.size[0] // max(im.size[1], 1))
        except OSError:
            continue
    return (min(heights), min(counts)) if heights else None


def reward_grid(results: Results, reward: str, algos: list[str], out_dir: str | Path, grid_images: int = 4) -> Path | None:
    """Fig. 1 style grid of the stored strips: rows = pretrained + each algorithm trained on
    ``reward`` (its first seed), columns = step counts, the first ``grid_images`` images of each
    strip in each cell (a 2×2 block for 4). Small images are upscaled (nearest) to about 96 px,
    large ones shrunk to keep the grid near 1.2 megapixels. PNG for small images (the tiny world),
    JPEG for large ones (file size)."""
    import torch
    from PIL import Image

    from alignzoo.images import image_grid

    steps = results.steps
    rows = grid_rows(results, reward, algos)
    found = {(label, n): folder / "images" / f"steps_{n}.png" for label, folder in rows for n in steps}
    found = {key: p for key, p in found.items() if p.is_file()}
    if not any(label != PRETRAINED for label, _ in found):
        return None
    geometry = _strip_geometry(found.values())
    if geometry is None:
        return None
    h, count = geometry
    k = max(1, min(grid_images, count))
    n_tiles = len(rows) * len(steps) * k
    size = _tile_size(h)
    if h > 64:  # photographs: keep the grid near 1.2 megapixels
        size = int(max(64, min(size, math.sqrt(1.2e6 / n_tiles))))
    br, bc = block_shape(k)
    gap = 1 if k > 1 else 0
    block_hw = (br * size + (br - 1) * gap, bc * size + (bc - 1) * gap)
    images, labels = [], []
    for label, _folder in rows:
        cells = []
        for n in steps:
            arr = read_strip(found[(label, n)], k, size) if (label, n) in found else None
            if arr is None or arr.shape[:2] != block_hw:
                arr = np.full((*block_hw, 3), 230, np.uint8)  # missing strip: a light grey cell
            cells.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255)
        if any((label, n) in found for n in steps):
            images.append(torch.stack(cells))
            labels.append(label)
    suffix = ".png" if h <= 64 else ".jpg"
    out = Path(out_dir) / f"grid_{slug(reward)}{suffix}"
    image_grid(
        torch.stack(images),
        labels,
        [_steps_title(n) for n in steps],
        out,
        cell=block_hw[0],
        title=f"trained on {reward}; same prompts and initial noise in every row ({k} image{'s' if k > 1 else ''} per cell)",
    )
    if suffix == ".jpg":  # image_grid saves by extension; re-save with a moderate JPEG quality
        Image.open(out).convert("RGB").save(out, quality=85, optimize=True)
    return out
