"""The report's sections on uncertainty, held-out rewards, compute, provenance and health.

Each function writes its files into ``out`` and returns the Markdown lines for ``report.md``:

=====================================  =====================================================
``pairwise_<set>.md / .csv``           A − B with 95% paired-bootstrap intervals (pairwise.py)
``heldout_<set>_<reward>.md / .csv``   runs trained on a reward, on every reward + diversity
``compute.md / .csv``                  images, reward queries, UNet fwd/bwd, VAE, updates, time
``provenance.md / .csv``               the evaluation settings (setting_hash) of every column
``control.md / .csv``                  each gain beside the random-reward control's (control.py)
``flags.md / .csv``                    health flags per run and report-level flags
=====================================  =====================================================
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from alignzoo.reports import compute, control, flags, heldout, pairwise, provenance
from alignzoo.reports.results import Results, slug
from alignzoo.runlog import CONTROL


def pairwise_sections(results: Results, out: Path, algos: list[str], rewards: list[str]) -> tuple[dict, list[str]]:
    """({prompt set: pairwise frame}, Markdown) for every prompt set."""
    frames, md = {}, []
    rewards = [r for r in rewards if r != CONTROL]  # ranking algorithms on the random control reward means nothing
    for ps in results.prompt_sets:
        frame = pairwise.pairwise_frame(results, ps, algos, rewards)
        if frame.empty:
            continue
        frames[ps] = frame
        text = pairwise.pairwise_markdown(frame, rewards)
        (out / f"pairwise_{slug(ps)}.md").write_text(text + "\n\n" + pairwise.PAIRWISE_NOTE + "\n")
        frame.to_csv(out / f"pairwise_{slug(ps)}.csv", index=False)
        md += [f"### {ps} prompts", "", text, ""]
    if md:
        md = ["## Pairwise differences between algorithms", "", pairwise.PAIRWISE_NOTE, ""] + md
    return frames, md


def heldout_sections(results: Results, out: Path, algos: list[str], rewards: list[str]) -> tuple[list[dict], list[str]]:
    """(held-out/diversity flags, Markdown) for every (prompt set, trained reward)."""
    md, found = [], []
    space = heldout.diversity_space(results)
    for ps in results.prompt_sets:
        for reward in rewards:
            frame = heldout.heldout_frame(results, ps, reward, algos)
            if frame.empty:
                continue
            name = f"heldout_{slug(ps)}_{slug(reward)}"
            text, note = heldout.heldout_markdown(frame), heldout.heldout_note(frame, space)
            (out / f"{name}.md").write_text(text + "\n\n" + note + "\n")
            frame.to_csv(out / f"{name}.csv", index=False)
            md += [f"### Trained on {reward}, {ps} prompts", "", text, "", note, ""]
            found += heldout.hacking_flags(results, ps, reward, algos)
    if md:
        md = [
            "## Every evaluated reward and diversity",
            "",
            "A gain on the trained reward with a loss on a held-out reward, or a fall in diversity, is reward hacking or collapse (flagged under Health).",
            "",
        ] + md
    return found, md


def control_section(frame: pd.DataFrame, out: Path) -> list[str]:
    """Each algorithm's gain minus its random-reward control's (``control.control_frame``); [] when
    the suite has no control."""
    if frame.empty:
        return []
    text = control.control_markdown(frame)
    (out / "control.md").write_text(text + "\n\n" + control.CONTROL_NOTE + "\n")
    frame.to_csv(out / "control.csv", index=False)
    return ["## Gain over the random-reward control", "", control.CONTROL_NOTE, "", text, ""]


def compute_section(results: Results, out: Path, algos: list[str], rewards: list[str]) -> list[str]:
    frame = compute.compute_frame(results.logs, algos, rewards)
    text = compute.compute_markdown(frame)
    notes = [n for n in (compute.updates_note(frame), compute.images_note(frame)) if n] if not frame.empty else []
    body = text + "".join("\n\n" + n for n in notes) + "\n\n" + compute.COMPUTE_NOTE
    (out / "compute.md").write_text(body + "\n")
    frame.to_csv(out / "compute.csv", index=False)
    return ["## Compute", "", body, ""]


def provenance_section(results: Results, out: Path) -> list[str]:
    """Checks one setting per column (raises :class:`provenance.ProvenanceError`), then the table."""
    provenance.check_settings(results.evals)
    frame = provenance.provenance_frame(results.evals)
    text = provenance.provenance_markdown(frame, provenance.unprovenanced_count(results.evals))
    body = text + ("\n\n" + provenance.PROVENANCE_NOTE if not frame.empty else "")
    (out / "provenance.md").write_text(body + "\n")
    frame.to_csv(out / "provenance.csv", index=False)
    return ["## Evaluation provenance", "", body, ""]


def flags_section(results: Results, out: Path, control_frame: pd.DataFrame, report_flags: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    cells = flags.cell_flags(results)
    report_flags = flags.control_flags(results, control_frame) + list(report_flags)
    checked = len(set(results.health) | set(results.log_records))
    text = flags.flags_markdown(cells, report_flags, checked)
    (out / "flags.md").write_text(text + "\n\n" + flags.FLAGS_NOTE + "\n")
    rows = [{"scope": r.cell, "flag": r.flag, "message": r.message} for r in cells.itertuples(index=False)] + report_flags
    pd.DataFrame(rows, columns=["scope", "flag", "message"]).to_csv(out / "flags.csv", index=False)
    return cells, ["## Health", "", text, "", flags.FLAGS_NOTE, ""]
