"""Evaluation provenance: one evaluation setting per table column, and the table of hashes.

Every evaluation line written by a current runner carries ``provenance`` (what determines its
number: model and LoRA checksums, reward and its weights, steps, eta, guidance, resolution,
prompt-set contents, images per prompt, noise seed, scheduler), ``hash`` (sha256 of its canonical
JSON, 16 hex) and ``setting_hash`` (the same without ``lora_checksum``). Within one column of a
table — one (prompt set, evaluated reward, step count) — every line must share the
``setting_hash``: otherwise the pretrained model and the algorithms were not measured with the
same instrument, and the report refuses (:class:`ProvenanceError`, naming the column, the hashes
and the provenance keys that differ). Lines without provenance (folders written before it
existed) are accepted, and the report says how many.
"""

from __future__ import annotations

import pandas as pd
from tabulate import tabulate

COLUMN = ["prompt_set", "eval_reward", "steps"]
SHOWN = ["model", "scheduler", "eta", "guidance", "resolution", "images_per_prompt", "noise_seed", "prompts_checksum", "reward_checksum"]


class ProvenanceError(ValueError):
    """Lines with different evaluation settings in one table column."""


def _short(v) -> str:
    text = str(v)
    return text[:12] + "…" if len(text) > 16 else text


def _has(evals: pd.DataFrame) -> pd.Series:
    if "setting_hash" not in evals.columns:
        return pd.Series(False, index=evals.index)
    return evals["setting_hash"].map(lambda h: isinstance(h, str) and h != "")


def differing_keys(a: dict, b: dict) -> list[str]:
    """``key: a-value vs b-value`` for every provenance key whose values differ (missing = None)."""
    a, b = a if isinstance(a, dict) else {}, b if isinstance(b, dict) else {}
    keys = [k for k in dict.fromkeys(list(a) + list(b)) if k != "lora_checksum" and a.get(k) != b.get(k)]
    return [f"{k}: {_short(a.get(k))} vs {_short(b.get(k))}" for k in keys]


def check_settings(evals: pd.DataFrame) -> None:
    """Raise :class:`ProvenanceError` when a column mixes ``setting_hash`` values."""
    lines = evals[_has(evals)]
    if lines.empty:
        return
    for (ps, reward, n), g in lines.groupby(COLUMN, sort=False):
        hashes = list(dict.fromkeys(g["setting_hash"]))
        if len(hashes) < 2:
            continue
        first = g[g["setting_hash"] == hashes[0]].iloc[0]
        other = g[g["setting_hash"] == hashes[1]].iloc[0]
        prov = "provenance" in g.columns
        diff = differing_keys(first["provenance"], other["provenance"]) if prov else []
        cells = {h: ", ".join(sorted(set(g.loc[g["setting_hash"] == h, "cell"].astype(str)))[:3]) for h in hashes[:2]}
        raise ProvenanceError(
            f"column (prompt set {ps!r}, reward {reward!r}, {int(n)} steps) mixes evaluation settings: setting_hash {hashes[0]} "
            f"({cells[hashes[0]]}) vs {hashes[1]} ({cells[hashes[1]]})"
            + (f" and {len(hashes) - 2} more" if len(hashes) > 2 else "")
            + "; provenance keys that differ: "
            + ("; ".join(diff) if diff else "none recorded")
            + ". Re-evaluate the odd runs with the same settings, or report them from separate folders."
        )


def provenance_frame(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per (column, setting_hash): lines, runs, distinct full hashes (LoRA included) and
    the main provenance values."""
    cols = COLUMN + ["setting_hash", "lines", "runs", "hashes"] + SHOWN
    lines = evals[_has(evals)]
    if lines.empty:
        return pd.DataFrame(columns=cols)
    records = []
    for (ps, reward, n, sh), g in lines.groupby(COLUMN + ["setting_hash"], sort=False):
        prov = next((p for p in g.get("provenance", []) if isinstance(p, dict)), {})
        rec = {
            "prompt_set": ps,
            "eval_reward": reward,
            "steps": int(n),
            "setting_hash": sh,
            "lines": int(len(g)),
            "runs": int(g["cell"].nunique()),
            "hashes": int(g["hash"].nunique()) if "hash" in g.columns else 0,
        }
        rec.update({k: prov.get(k) for k in SHOWN})
        records.append(rec)
    return pd.DataFrame(records, columns=cols)


def provenance_markdown(frame: pd.DataFrame, unprovenanced: int) -> str:
    note = (
        f"{unprovenanced} evaluation line(s) carry no provenance (written before it was recorded): accepted without the one-setting-per-column check."
        if unprovenanced
        else ""
    )
    if frame.empty:
        return note or "(no evaluation line carries provenance)"
    headers = ["prompt set", "reward", "steps", "setting_hash", "lines", "runs", "hashes"] + SHOWN
    rows = [
        [r["prompt_set"], r["eval_reward"], str(r["steps"]), f"`{r['setting_hash']}`", str(r["lines"]), str(r["runs"]), str(r["hashes"])]
        + ["–" if r[k] is None or (isinstance(r[k], float) and r[k] != r[k]) else _short(r[k]) for k in SHOWN]
        for _, r in frame.iterrows()
    ]
    table = tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)
    return table + ("\n\n" + note if note else "")


PROVENANCE_NOTE = (
    "One row per table column (prompt set, evaluated reward, step count) and evaluation setting: `setting_hash` is the "
    "first 16 hex digits of the sha256 of the line's provenance without its LoRA checksum (every line of a column must "
    "share it); `hashes` counts the distinct full hashes (one per trained checkpoint, plus the pretrained model)."
)


def unprovenanced_count(evals: pd.DataFrame) -> int:
    return int((~_has(evals)).sum())
