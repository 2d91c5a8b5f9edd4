"""Builds a benchmark report from a results folder (``alignzoo bench`` output) alone.

Reads ``runs/<suite>/`` (layout in :mod:`alignzoo.benchmarks.runner`) and writes:

* ``table_<prompt set>.{md,tex,csv}``  Table-1 style: rows = pretrained + algorithms, column
  groups = rewards (each algorithm row uses the cells trained on that reward), columns = step
  counts; mean ± std over seeds of the final evaluation (one seed: ± standard error); best per
  column in bold;
* ``gain_<prompt set>.md``             paired gain over the pretrained model (same prompts/noise);
* ``learning_curves.png``              training reward vs cumulative samples (Fig. 3 style);
* ``stepgen_<reward>_<set>.png``       eval reward vs samples, one panel per step count (Fig. 4, 8–11),
  and ``final_vs_steps_<set>.png``     final reward vs step count per algorithm;
* ``grid_<reward>.png``                rows = pretrained + algorithms, columns = step counts (Fig. 1);
* ``cost.md``                          wall clock, UNet evaluations, VAE decodes, reward queries;
* ``report.md``                        all of the above, with observations computed from the numbers.
"""
from __future__ import annotations

import json
import math
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

PRETRAINED = "pretrained"


# ------------------------------------------------------------------------------------ loading
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{i + 1}: skipped a malformed line")
    return rows


def load_results(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(evaluations, training logs, suite) of a benchmark folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no results folder at {str(run_dir)!r}: run `alignzoo bench` first")
    evals, logs = [], []
    for cell in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        if (cell / "eval.jsonl").exists():
            evals += _read_jsonl(cell / "eval.jsonl")
        if (cell / "log.jsonl").exists():
            for r in _read_jsonl(cell / "log.jsonl"):
                algo, reward, seed = cell.name.split("__")
                logs.append({"cell": cell.name, "algo": algo, "train_reward": reward, "seed": int(seed.removeprefix("seed")), **r})
    if not evals:
        raise ValueError(f"{str(run_dir)!r} holds no evaluation results (no */eval.jsonl lines)")
    suite = tomllib.loads((run_dir / "suite.toml").read_text()) if (run_dir / "suite.toml").exists() else {}
    return pd.DataFrame(evals), pd.DataFrame(logs), suite


def _algo_order(ev: pd.DataFrame, suite: dict) -> list[str]:
    present = [a for a in ev["algo"].unique() if a != PRETRAINED]
    order = [a for a in suite.get("algorithms", []) if a in present]
    return order + sorted(a for a in present if a not in order)


def final_evals(ev: pd.DataFrame) -> pd.DataFrame:
    """Each cell's last evaluation point (pretrained rows kept)."""
    last = ev.groupby("cell")["samples"].transform("max")
    return ev[ev["samples"] == last]


# ------------------------------------------------------------------------------------ tables
def table_frame(ev: pd.DataFrame, prompt_set: str, algos: list[str]) -> pd.DataFrame:
    """Rows = pretrained + algorithms; columns MultiIndex (reward, steps) → (mean, err, n_seeds)."""
    fin = final_evals(ev)
    fin = fin[fin["prompt_set"] == prompt_set]
    trained = fin[(fin["algo"] != PRETRAINED) & (fin["eval_reward"] == fin["train_reward"])]
    rewards = [r for r in dict.fromkeys(trained["eval_reward"]) ] or list(dict.fromkeys(fin["eval_reward"]))
    steps = sorted(fin["steps"].unique())
    records = []
    for algo in [PRETRAINED] + algos:
        for reward in rewards:
            for n in steps:
                if algo == PRETRAINED:
                    sub = fin[(fin["algo"] == PRETRAINED) & (fin["eval_reward"] == reward) & (fin["steps"] == n)]
                else:
                    sub = trained[(trained["algo"] == algo) & (trained["eval_reward"] == reward) & (trained["steps"] == n)]
                if sub.empty:
                    continue
                means = sub["mean"].to_numpy(float)
                if len(means) > 1:
                    err = float(np.std(means, ddof=1))
                else:
                    err = float(sub["std"].iloc[0] / math.sqrt(max(int(sub["n"].iloc[0]), 1)))
                records.append({"algo": algo, "reward": reward, "steps": int(n), "mean": float(means.mean()), "err": err, "seeds": len(means)})
    return pd.DataFrame(records)


def _fmt(mean: float, err: float, bold: bool, latex: bool = False) -> str:
    text = f"{mean:.3f} ± {err:.3f}" if not latex else f"{mean:.3f} $\\pm$ {err:.3f}"
    if bold:
        return f"\\textbf{{{text}}}" if latex else f"**{text}**"
    return text


def render_table(frame: pd.DataFrame, algos: list[str]) -> tuple[str, str, pd.DataFrame]:
    """(markdown, latex, csv frame) of a Table-1 frame; the best mean per column is bold."""
    from tabulate import tabulate

    rewards = list(dict.fromkeys(frame["reward"]))
    steps = sorted(frame["steps"].unique())
    best = frame.groupby(["reward", "steps"])["mean"].transform("max")
    frame = frame.assign(best=np.isclose(frame["mean"], best))
    rows_md, rows_tex = [], []
    for algo in [PRETRAINED] + algos:
        md, tex = [algo], [algo.replace("_", "\\_")]
        for reward in rewards:
            for n in steps:
                hit = frame[(frame["algo"] == algo) & (frame["reward"] == reward) & (frame["steps"] == n)]
                if hit.empty:
                    md.append("–")
                    tex.append("--")
                else:
                    h = hit.iloc[0]
                    md.append(_fmt(h["mean"], h["err"], bool(h["best"])))
                    tex.append(_fmt(h["mean"], h["err"], bool(h["best"]), latex=True))
        rows_md.append(md)
        rows_tex.append(tex)
    headers = ["method"] + [f"{r} {n}s" for r in rewards for n in steps]
    markdown = tabulate(rows_md, headers=headers, tablefmt="pipe", disable_numparse=True)
    cols = "l" + "c" * (len(rewards) * len(steps))
    group = " & ".join(f"\\multicolumn{{{len(steps)}}}{{c}}{{{r.replace('_', chr(92) + '_')}}}" for r in rewards)
    sub = " & ".join(f"{n}s" for _ in rewards for n in steps)
    latex = "\n".join([f"\\begin{{tabular}}{{{cols}}}", "\\toprule", f" & {group} \\\\", f"method & {sub} \\\\", "\\midrule"]
                      + [" & ".join(r) + " \\\\" for r in rows_tex] + ["\\bottomrule", "\\end{tabular}"])
    csv = frame.drop(columns=["best"]).sort_values(["reward", "steps", "algo"])
    return markdown, latex, csv


def gain_table(ev: pd.DataFrame, prompt_set: str, algos: list[str]) -> str:
    from tabulate import tabulate

    fin = final_evals(ev)
    fin = fin[(fin["prompt_set"] == prompt_set) & (fin["algo"] != PRETRAINED) & (fin["eval_reward"] == fin["train_reward"])]
    rewards = list(dict.fromkeys(fin["eval_reward"]))
    steps = sorted(fin["steps"].unique())
    rows = []
    for algo in algos:
        row = [algo]
        for reward in rewards:
            for n in steps:
                sub = fin[(fin["algo"] == algo) & (fin["eval_reward"] == reward) & (fin["steps"] == n)]
                if sub.empty or sub["diff_mean"].isna().all():
                    row.append("–")
                    continue
                d, se = float(sub["diff_mean"].mean()), float(sub["diff_se"].mean())
                z = d / se if se > 0 else float("inf")
                row.append(f"{d:+.3f} ± {se:.3f}" + (" *" if abs(z) > 3 else ""))
        rows.append(row)
    headers = ["method"] + [f"{r} {n}s" for r in rewards for n in steps]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def cost_table(logs: pd.DataFrame, algos: list[str]) -> tuple[str, pd.DataFrame]:
    from tabulate import tabulate

    if logs.empty:
        return "(no training logs)", pd.DataFrame()
    last = logs.loc[logs.groupby("cell")["epoch"].idxmax()]
    cols = ["samples", "seconds_total", "seconds_sampling", "seconds_decoding", "seconds_reward", "seconds_update",
            "unet_evals_sampling", "unet_evals_training", "vae_decodes", "reward_queries", "log_reward_queries"]
    cols = [c for c in cols if c in last.columns]
    agg = last.groupby(["algo", "train_reward"])[cols].mean().reset_index()
    rows = []
    for _, r in agg.sort_values(["train_reward", "algo"], key=lambda s: s.map({a: i for i, a in enumerate(algos)}) if s.name == "algo" else s).iterrows():
        k = 1000.0 / r["samples"] if r.get("samples") else float("nan")
        unet = r.get("unet_evals_sampling", 0) + r.get("unet_evals_training", 0)
        rows.append([r["algo"], r["train_reward"], f"{r['seconds_total']:.1f}", f"{r['seconds_sampling']:.1f} / {r['seconds_decoding']:.1f} / {r['seconds_reward']:.1f} / {r['seconds_update']:.1f}",
                     f"{unet:,.0f}", f"{r.get('vae_decodes', 0):,.0f}", f"{r.get('reward_queries', 0):,.0f} (+{r.get('log_reward_queries', 0):,.0f})",
                     f"{r['seconds_total'] * k:.1f}", f"{unet * k:,.0f}", f"{r.get('reward_queries', 0) * k:,.0f}"])
    headers = ["method", "reward", "wall s", "sampling / decoding / reward / update s", "UNet evals", "VAE decodes",
               "reward queries (+logging)", "s per 1k samples", "UNet evals per 1k", "reward queries per 1k"]
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True), agg


# ------------------------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(logs: pd.DataFrame, algos: list[str], out: Path) -> Path | None:
    if logs.empty:
        return None
    plt = _plt()
    rewards = list(dict.fromkeys(logs["train_reward"]))
    fig, axes = plt.subplots(1, len(rewards), figsize=(4.2 * len(rewards), 3.2), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        for algo in algos:
            sub = logs[(logs["algo"] == algo) & (logs["train_reward"] == reward)]
            if sub.empty:
                continue
            g = sub.groupby("samples")["reward_mean"]
            x = g.mean().index.to_numpy()
            ax.plot(x, g.mean().to_numpy(), marker="o", ms=3, label=algo)
            if sub["seed"].nunique() > 1:
                ax.fill_between(x, g.min().to_numpy(), g.max().to_numpy(), alpha=0.2)
        ax.set_title(f"training reward: {reward}")
        ax.set_xlabel("training samples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_step_generalization(ev: pd.DataFrame, algos: list[str], reward: str, prompt_set: str, out: Path) -> Path | None:
    plt = _plt()
    sub = ev[(ev["prompt_set"] == prompt_set) & (ev["eval_reward"] == reward)]
    steps = sorted(sub["steps"].unique())
    if not steps:
        return None
    fig, axes = plt.subplots(1, len(steps), figsize=(2.6 * len(steps), 2.6), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], steps):
        s = sub[sub["steps"] == n]
        pre = s[s["algo"] == PRETRAINED]["mean"]
        if not pre.empty:
            ax.axhline(float(pre.mean()), color="gray", ls="--", lw=1, label="pretrained")
        for algo in algos:
            a = s[(s["algo"] == algo) & (s["train_reward"] == reward)]
            if a.empty:
                continue
            g = a.groupby("samples")["mean"].mean()
            ax.plot([0] + list(g.index), ([float(pre.mean())] if not pre.empty else [np.nan]) + list(g.to_numpy()), marker="o", ms=3, label=algo)
        ax.set_title(f"{n} step" + ("s" if n > 1 else ""), fontsize=9)
        ax.set_xlabel("samples", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(reward)
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(f"step generalization: {reward} on {prompt_set} prompts", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def plot_final_vs_steps(ev: pd.DataFrame, algos: list[str], prompt_set: str, out: Path) -> Path | None:
    plt = _plt()
    fin = final_evals(ev)
    fin = fin[fin["prompt_set"] == prompt_set]
    rewards = [r for r in dict.fromkeys(fin["train_reward"].dropna())]
    if not rewards:
        return None
    fig, axes = plt.subplots(1, len(rewards), figsize=(4.2 * len(rewards), 3.2), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        for algo in [PRETRAINED] + algos:
            if algo == PRETRAINED:
                s = fin[(fin["algo"] == PRETRAINED) & (fin["eval_reward"] == reward)]
            else:
                s = fin[(fin["algo"] == algo) & (fin["train_reward"] == reward) & (fin["eval_reward"] == reward)]
            if s.empty:
                continue
            g = s.groupby("steps")["mean"].mean()
            ax.plot(g.index, g.to_numpy(), marker="o", ms=3, label=algo, ls="--" if algo == PRETRAINED else "-")
        ax.set_xscale("log")
        steps = sorted(fin["steps"].unique())
        ax.set_xticks(steps)
        ax.set_xticklabels([str(s) for s in steps])
        ax.set_xlabel("sampling steps")
        ax.set_title(f"final {reward} ({prompt_set})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def image_grid_for_reward(run_dir: Path, ev: pd.DataFrame, algos: list[str], reward: str, out: Path, per_cell: int = 2) -> Path | None:
    """Rows = pretrained + algorithms (first seed), columns = step counts; ``per_cell`` images side by side."""
    import torch
    from PIL import Image

    from alignzoo.reports.grids import image_grid

    steps = sorted(ev["steps"].unique())
    rows, labels = [], []
    cells = [(PRETRAINED, run_dir / PRETRAINED)]
    for algo in algos:
        seeds = sorted(ev[(ev["algo"] == algo) & (ev["train_reward"] == reward)]["seed"].dropna().unique())
        if seeds:
            cells.append((algo, run_dir / f"{algo}__{reward}__seed{int(seeds[0])}"))
    for label, folder in cells:
        tiles = []
        for n in steps:
            f = folder / "images" / f"steps_{n}.png"
            if not f.exists():
                break
            strip = np.asarray(Image.open(f).convert("RGB"))
            h = strip.shape[0]
            k = min(per_cell, strip.shape[1] // h)
            tile = np.concatenate([strip[:, i * h:(i + 1) * h] for i in range(k)], axis=1)
            tiles.append(torch.from_numpy(tile).permute(2, 0, 1).float() / 255)
        if len(tiles) == len(steps):
            rows.append(torch.stack(tiles))
            labels.append(label)
    if not rows:
        return None
    imgs = torch.stack(rows)
    h, w = imgs.shape[-2:]
    return image_grid(imgs, labels, [f"{n} step" + ("s" if n > 1 else "") for n in steps], out, cell=None if h >= 96 else None, title=f"trained on {reward}")


# ------------------------------------------------------------------------------------ report
def observations(frames: dict[str, pd.DataFrame], algos: list[str]) -> list[str]:
    lines = []
    for prompt_set, frame in frames.items():
        if frame.empty:
            continue
        for reward in dict.fromkeys(frame["reward"]):
            f = frame[frame["reward"] == reward]
            winners = []
            for n in sorted(f["steps"].unique()):
                col = f[f["steps"] == n]
                best = col.loc[col["mean"].idxmax()]
                winners.append(f"{n}: {best['algo']}")
            lines.append(f"- {reward} on {prompt_set} prompts, best per step count: " + ", ".join(winners) + ".")
            pre = f[f["algo"] == PRETRAINED].set_index("steps")["mean"]
            for algo in algos:
                a = f[f["algo"] == algo].set_index("steps")["mean"]
                gains = (a - pre).dropna()
                if not gains.empty:
                    lines.append(f"  - {algo}: gain over pretrained largest at {int(gains.idxmax())} steps ({gains.max():+.3f}), smallest at {int(gains.idxmin())} steps ({gains.min():+.3f}).")
    return lines


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    ev, logs, suite = load_results(run_dir)
    algos = _algo_order(ev, suite)
    name = suite.get("name", run_dir.name)
    md = [f"# Benchmark report: {name}", "", f"Model: `{suite.get('model', '?')}`; algorithms: {', '.join(algos)}; "
          f"seeds: {suite.get('seeds', '?')}; training budget: {suite.get('samples', '?')} images per run; "
          f"evaluation eta {suite.get('eval', {}).get('eta', '?')}, the same prompts and initial noise for every method.", ""]
    frames = {}
    for prompt_set in dict.fromkeys(ev["prompt_set"]):
        frame = table_frame(ev, prompt_set, algos)
        frames[prompt_set] = frame
        if frame.empty:
            continue
        mk, tex, csv = render_table(frame, algos)
        (out / f"table_{prompt_set}.md").write_text(mk + "\n")
        (out / f"table_{prompt_set}.tex").write_text(tex + "\n")
        csv.to_csv(out / f"table_{prompt_set}.csv", index=False)
        one_seed = int(frame["seeds"].max()) == 1
        md += [f"## Reward at each sampling step count: {prompt_set} prompts", "", mk, "",
               ("Mean ± standard error of the evaluation (one seed)." if one_seed else "Mean ± std over seeds.")
               + " Each algorithm row uses the runs trained on that column's reward; best per column in bold.", ""]
        gain = gain_table(ev, prompt_set, algos)
        (out / f"gain_{prompt_set}.md").write_text(gain + "\n")
        md += [f"Paired gain over the pretrained model (same prompts and noise), ± its standard error; * = more than 3 SE:", "", gain, ""]
    md += ["## Observations (computed from the tables)", ""] + observations(frames, algos) + [""]
    figs = []
    if plot_learning_curves(logs, algos, out / "learning_curves.png"):
        figs.append(("Learning curves (training reward vs samples)", "learning_curves.png"))
    for prompt_set in dict.fromkeys(ev["prompt_set"]):
        if plot_final_vs_steps(ev, algos, prompt_set, out / f"final_vs_steps_{prompt_set}.png"):
            figs.append((f"Final reward vs sampling steps ({prompt_set})", f"final_vs_steps_{prompt_set}.png"))
        for reward in dict.fromkeys(ev["train_reward"].dropna()):
            f = f"stepgen_{reward}_{prompt_set}.png"
            if plot_step_generalization(ev, algos, reward, prompt_set, out / f):
                figs.append((f"Step generalization: {reward}, {prompt_set}", f))
    md += ["## Figures", ""] + [f"### {t}\n\n![{t}]({f})\n" for t, f in figs]
    grids = []
    for reward in dict.fromkeys(ev["train_reward"].dropna()):
        g = image_grid_for_reward(run_dir, ev, algos, reward, out / f"grid_{reward}.png")
        if g:
            grids.append((reward, g.name))
    if grids:
        md += ["## Image grids (same prompts and noise in every row)", ""] + [f"![grid {r}]({f})\n" for r, f in grids]
    cost_md, _ = cost_table(logs, algos)
    (out / "cost.md").write_text(cost_md + "\n")
    md += ["## Cost", "", cost_md, "", "Seconds are wall clock on the machine that ran the suite; UNet evaluations count sampling and training forwards; reward queries exclude the logging-only queries in parentheses.", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
