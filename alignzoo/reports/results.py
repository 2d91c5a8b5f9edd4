"""Loading a benchmark folder (``runs/<suite>/``, written by :mod:`alignzoo.benchmarks.runner`).

Layout read here::

    suite.toml                        the suite (name, model, eval.steps, eval.prompt_sets, rewards, algorithms)
    pretrained/eval.jsonl             the pretrained model's evaluations
    pretrained/images/steps_<N>.png   a strip of K square images per step count N
    <algo>__<reward>__seed<S>/        one cell per (algorithm, trained reward, seed):
        log.jsonl                     training log, one line per epoch (cumulative counts and seconds)
        eval.jsonl                    one line per (evaluation point, prompt set, evaluated reward, steps)
        images/steps_<N>.png          the final checkpoint's strips (same prompts and noise as pretrained)
        scores.json                   per-image scores of the final evaluation point (optional):
                                      {"<prompt_set>|<eval_reward>|<steps>": [scores, row = prompt·K + k]}
        health.json                   {"flags": [...]} written by the trainer (optional)
        DONE                          present when the cell finished

:func:`load_results` gives a :class:`Results`: the evaluation lines and the training logs as
tidy DataFrames (one row per JSON line), the suite dict and the orders (algorithms, rewards,
prompt sets, step counts) every table and figure uses. Malformed lines (a run killed while
writing) are skipped with a warning.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import tomllib

from alignzoo.runlog import parse_cell_name, read_jsonl

PRETRAINED = "pretrained"
EVAL_KEYS = ("algo", "samples", "prompt_set", "eval_reward", "steps", "mean")
EVAL_COLUMNS = ["cell", "algo", "train_reward", "seed", "samples", "prompt_set", "eval_reward", "steps", "mean", "std", "n", "diff_mean", "diff_se"]
LOG_COUNTS = [
    "samples",
    "seconds_total",
    "seconds_sampling",
    "seconds_decoding",
    "seconds_reward",
    "seconds_update",
    "unet_evals_sampling",
    "unet_evals_training",
    "vae_decodes",
    "reward_queries",
    "log_reward_queries",
    "unet_forward",
    "unet_backward",
    "updates",
    "clipfrac",
    "first_log_ratio_abs",
]


class ResultsError(ValueError):
    """A results folder that cannot be reported on (exists but holds nothing usable)."""


def slug(text: str) -> str:
    """A file-name-safe version of a reward or prompt-set name (``[A-Za-z0-9._-]``)."""
    s = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text)).strip("-.")
    return s or "x"


def _ordered(preferred, present) -> list:
    """``preferred`` entries that are present (in that order), then the rest sorted."""
    present = list(dict.fromkeys(present))
    head = [x for x in dict.fromkeys(preferred or []) if x in present]
    return head + sorted((x for x in present if x not in head), key=str)


@dataclass
class Results:
    """Everything a report needs from one benchmark folder."""

    run_dir: Path
    evals: pd.DataFrame  # one row per eval line (EVAL_COLUMNS first, extra keys kept)
    logs: pd.DataFrame  # one row per training-log line, with cell / algo / train_reward / seed
    suite: dict = field(default_factory=dict)
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)  # cell, algo, train_reward, seed, done
    scores: dict = field(default_factory=dict)  # cell (or "pretrained") → {"set|reward|steps": np.ndarray}
    log_records: dict = field(default_factory=dict)  # cell → its raw log.jsonl records (health checks)
    health: dict = field(default_factory=dict)  # cell → the flags of its health.json, when present

    @property
    def name(self) -> str:
        return str(self.suite.get("name") or self.run_dir.name)

    @property
    def model(self) -> str | None:
        return self.suite.get("model")

    @property
    def algorithms(self) -> list[str]:
        """Algorithms with results: suite order, then alphabetical."""
        present = [a for a in self.evals["algo"] if a != PRETRAINED]
        if not self.logs.empty:
            present += list(self.logs["algo"])
        return _ordered(self.suite.get("algorithms"), present)

    @property
    def rewards(self) -> list[str]:
        """Trained rewards with results (suite order, then alphabetical); evaluated ones when nothing was trained."""
        trained = list(self.evals["train_reward"].dropna())
        if not self.logs.empty:
            trained += list(self.logs["train_reward"].dropna())
        return _ordered(self.suite.get("rewards"), trained or list(self.evals["eval_reward"].dropna()))

    @property
    def prompt_sets(self) -> list[str]:
        return _ordered((self.suite.get("eval") or {}).get("prompt_sets"), self.evals["prompt_set"])

    @property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.evals["steps"].unique())

    @property
    def seeds(self) -> list[int]:
        return sorted(int(s) for s in self.evals["seed"].dropna().unique())

    def final(self) -> pd.DataFrame:
        """Each cell's final evaluation (its largest ``samples``); pretrained lines kept (computed once)."""
        if "_final" not in self.__dict__:
            self.__dict__["_final"] = final_evals(self.evals)
        return self.__dict__["_final"]


def final_evals(evals: pd.DataFrame) -> pd.DataFrame:
    """The rows of each cell's last evaluation point (largest ``samples``)."""
    if evals.empty:
        return evals
    last = evals.groupby("cell")["samples"].transform("max")
    return evals[evals["samples"] == last].reset_index(drop=True)


def score_key(prompt_set: str, reward: str, steps: int) -> str:
    """The key of one evaluation's per-image scores in ``scores.json``."""
    return f"{prompt_set}|{reward}|{int(steps)}"


def read_scores(path: Path) -> dict[str, np.ndarray]:
    """``scores.json`` → {key: float array}; {} (with a warning when the file exists) if unusable."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {str(k): np.asarray(v, dtype=float) for k, v in raw.items() if isinstance(v, list)}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        warnings.warn(f"{path}: unreadable per-image scores ({err}); the pairwise table falls back to seed means", UserWarning, stacklevel=2)
        return {}


def read_health(path: Path) -> list[dict] | None:
    """The flags of a ``health.json``; None when absent or unreadable (the report recomputes them from the log)."""
    if not path.is_file():
        return None
    try:
        flags = json.loads(path.read_text()).get("flags")
    except (json.JSONDecodeError, AttributeError):
        return None
    return [f for f in flags if isinstance(f, dict)] if isinstance(flags, list) else None


def _eval_frame(rows: list[tuple[dict, str]]) -> pd.DataFrame:
    """(line, source file) pairs → the typed evaluation frame; lines without a required key are skipped."""
    good = []
    for r, src in rows:
        missing = [k for k in EVAL_KEYS if r.get(k) is None]
        if missing:
            warnings.warn(f"{src}: skipped an evaluation line without {', '.join(missing)}", UserWarning, stacklevel=3)
            continue
        good.append(r)
    df = pd.DataFrame(good)
    for col in EVAL_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    df = df[EVAL_COLUMNS + [c for c in df.columns if c not in EVAL_COLUMNS]]
    if df.empty:
        return df
    df["algo"] = df["algo"].astype(str)
    df["cell"] = df["cell"].astype(str)
    df["train_reward"] = df["train_reward"].astype(object).where(df["train_reward"].notna(), None)
    df["samples"] = pd.to_numeric(df["samples"]).astype(int)
    df["steps"] = pd.to_numeric(df["steps"]).astype(int)
    df["seed"] = pd.to_numeric(df["seed"]).astype("Int64")
    for col in ("mean", "std", "n", "diff_mean", "diff_se", "diversity", "drift", "drift_se"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def load_results(run_dir: str | Path) -> Results:
    """Read a benchmark folder. FileNotFoundError if it does not exist, ResultsError (a
    ValueError) if it holds no evaluation lines; both name the folder."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"no results folder at {str(run_dir)!r}: run `alignzoo bench SUITE` first (it writes runs/<suite>/)")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a results folder (not a directory)")
    suite: dict = {}
    if (run_dir / "suite.toml").is_file():
        try:
            suite = tomllib.loads((run_dir / "suite.toml").read_text())
        except tomllib.TOMLDecodeError as err:
            warnings.warn(f"{run_dir / 'suite.toml'}: unreadable ({err}); using the results alone", UserWarning, stacklevel=2)
    eval_rows, log_rows, cells = [], [], []
    scores, log_records, health = {}, {}, {}
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        parsed = parse_cell_name(d.name)
        has_eval, has_log = (d / "eval.jsonl").is_file(), (d / "log.jsonl").is_file()
        if d.name != PRETRAINED and parsed is None:
            continue  # a report folder, checkpoints, anything else
        if has_eval:
            for r in read_jsonl(d / "eval.jsonl"):
                if parsed is not None:  # the folder name is the ground truth of the cell's identity
                    r = {
                        **r,
                        "cell": d.name,
                        "algo": r.get("algo") or parsed[0],
                        "train_reward": r.get("train_reward") or parsed[1],
                        "seed": parsed[2] if r.get("seed") is None else r["seed"],
                    }
                else:
                    r = {**r, "cell": PRETRAINED, "algo": PRETRAINED, "train_reward": None, "seed": None, "samples": r.get("samples", 0)}
                eval_rows.append((r, str(d / "eval.jsonl")))
        if (d / "scores.json").is_file():
            scores[d.name] = read_scores(d / "scores.json")
        if parsed is not None and (flags := read_health(d / "health.json")) is not None:
            health[d.name] = flags
        if has_log and parsed is not None:
            log_records[d.name] = read_jsonl(d / "log.jsonl")
            for r in log_records[d.name]:
                log_rows.append({**r, "cell": d.name, "algo": parsed[0], "train_reward": parsed[1], "seed": parsed[2]})
        if parsed is not None and (has_eval or has_log):
            cells.append({"cell": d.name, "algo": parsed[0], "train_reward": parsed[1], "seed": parsed[2], "done": (d / "DONE").exists()})
    evals = _eval_frame(eval_rows)
    if evals.empty:
        raise ResultsError(f"{str(run_dir)!r} holds no evaluation results (no lines in pretrained/eval.jsonl or <algo>__<reward>__seed<S>/eval.jsonl)")
    # a resumed run may repeat an evaluation: keep the last line of each
    key = ["cell", "samples", "prompt_set", "eval_reward", "steps"]
    evals = evals.drop_duplicates(subset=key, keep="last").reset_index(drop=True)
    logs = pd.DataFrame(log_rows)
    if not logs.empty:
        if "epoch" not in logs.columns:
            logs["epoch"] = logs.groupby("cell").cumcount() + 1
        for col in LOG_COUNTS + ["epoch", "reward_mean", "reward_std", "reward_1step_mean", "loss"]:
            if col in logs.columns:
                logs[col] = pd.to_numeric(logs[col], errors="coerce")
        logs = logs.drop_duplicates(subset=["cell", "epoch"], keep="last").sort_values(["cell", "epoch"]).reset_index(drop=True)
    cells_df = pd.DataFrame(cells, columns=["cell", "algo", "train_reward", "seed", "done"])
    return Results(run_dir=run_dir, evals=evals, logs=logs, suite=suite, cells=cells_df, scores=scores, log_records=log_records, health=health)
