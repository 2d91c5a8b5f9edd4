"""The Markdown report of ``alignzoo perf`` (stdout and ``perf.md``), built from the result that
also goes to ``perf.json``: a heading with the model and machine, the per-algorithm table with a
note on what its columns mean, then the budgets, the fast paths and the option ablations, each
section present only when that part was run.
"""

from __future__ import annotations


def _fmt_number(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v)


def _pass(ok) -> str:
    return f"**{'PASS' if ok else 'FAIL'}**"


def to_markdown(result: dict) -> str:
    lines = _heading(result) + _rows_table(result["rows"])
    if result.get("budgets"):
        lines += _budgets(result["budgets"])
    if result.get("fast_paths"):
        lines += _fast_paths_table(result["fast_paths"])
    if result.get("ablations"):
        lines += _ablations_table(result["ablations"], result["config"]["ablate_algo"])
    return "\n".join(lines) + "\n"


def _heading(result: dict) -> list[str]:
    m, mach, c = result["model"], result["machine"], result["config"]
    where = mach.get("gpu") or f"{mach.get('cpu', 'CPU')}, {mach.get('torch_threads')} thread(s)"
    return [
        f"### alignzoo perf: {m['name']} ({m['kind']}, {m['resolution']} px), reward {result['reward']}, {where}",
        "",
        f"{c['batch']} images per epoch, median of {c['repeats']} epochs after {c['warmup']} warm-up; mixed precision {c['mixed_precision']}"
        + ("; channels_last" if c["channels_last"] else "")
        + ("; torch.compile" if c["compile"] else "")
        + ("; gradient checkpointing" if c["grad_checkpointing"] else "")
        + ".",
        "",
    ]


def _rows_table(rows: list[dict]) -> list[str]:
    f = _fmt_number
    lines = [
        "| algo | T | rollout traj/s | train transitions/s | reward queries/traj | VAE decodes/traj | UNet evals/traj "
        "| s/1k sampling | s/1k decoding | s/1k reward | s/1k update | s/1k total | peak mem MB | trainer overhead |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["sec_per_1k"]
        overhead = f(100 * r["overhead_fraction"], 2) + " %" if r["overhead_fraction"] is not None else "–"
        lines.append(
            f"| {r['label']} | {r['num_steps']} | {f(r['rollout_traj_per_s'])} | {f(r['train_transitions_per_s'])} "
            f"| {f(r['reward_queries_per_traj'])} | {f(r['vae_decodes_per_traj'])} | {f(r['unet_evals_per_traj'])} "
            f"| {f(s['sampling'])} | {f(s['decoding'])} | {f(s['reward'])} | {f(s['update'])} | {f(s['total'])} "
            f"| {f(r['peak_memory_mb'], 4)} | {overhead} |"
        )
    mem = rows[0]["memory_kind"] if rows else ""
    lines += [
        "",
        f"Peak memory: {'torch.cuda.max_memory_allocated' if mem.startswith('cuda') else 'process RSS high-water mark (whole process)'}. "
        "Train transitions/s: log-prob recomputations with backward per second of the update phase. "
        "Trainer overhead: the share of the epoch spent outside UNet (forward and backward), VAE and reward-model calls "
        "(an algorithm's own reward network, LaSRO's surrogate, counts as a reward model; the text encoder counts as overhead).",
    ]
    return lines


def _budgets(b: dict) -> list[str]:
    f = _fmt_number
    lines = ["", "#### Budgets", ""]
    o = b.get("trainer_overhead")
    if o:
        worst = f(100 * o["worst"], 2) if o["worst"] is not None else "–"
        per_algo = ", ".join(f"{k} {100 * v:.1f} %" for k, v in o["per_algo"].items() if v is not None)
        lines.append(f"- {o['budget']} ({o['applies']}): worst {worst} % ({per_algo}) → {_pass(o['pass'])}")
    s = b.get("sdpo_reward")
    if s and s.get("ratio") is not None:
        lines.append(
            f"- {s['budget']}: reward s/1k {f(s['reward_s_per_1k_adaptive'])} (3 queries) vs {f(s['reward_s_per_1k_all'])} "
            f"(all), ratio {s['ratio']:.3f} {'≤' if s['pass'] else '>'} limit {s['limit']:.3f} → {_pass(s['pass'])}"
        )
    elif s:
        lines.append(f"- SDPO reward budget: {s['budget']}")
    return lines


def _fast_paths_table(fp: dict) -> list[str]:
    f = _fmt_number
    lp, d, rb, ref = fp["logprob_batching"], fp["decode"], fp["reward_batching"], fp["reference"]
    after = next(v for k, v in lp.items() if k.startswith("batched_"))
    return [
        "",
        f"#### Fast paths, before → after ({fp['trajectories']} trajectories × {fp['num_steps']} steps)",
        "",
        "| fast path | before | after | gain |",
        "|---|---|---|---|",
        f"| batched log-prob recomputation + backward (transitions/s) | {f(lp['one_per_forward_per_s'])} (1 per forward) "
        f"| {f(after)} ({lp['batch']} per forward) | {lp['speedup']:.1f}× |",
        f"| decode only requested steps (ms per trajectory) | {f(1000 * d['all_steps_s_per_traj'])} (all {d['decodes_per_traj'][0]}) "
        f"| {f(1000 * d['requested_s_per_traj'])} ({d['decodes_per_traj'][1]}) | {d['speedup']:.1f}× |",
        f"| batched decoding (ms per trajectory, {d['decodes_per_traj'][1]} decodes) | {f(1000 * d['one_per_call_s_per_traj'])} (1 per call) "
        f"| {f(1000 * d['requested_s_per_traj'])} (batched) | {d['batching_speedup']:.1f}× |",
        f"| batched reward on device (ms per image) | {f(1000 * rb['one_per_call_s_per_image'])} (1 per call) "
        f"| {f(1000 * rb['batched_s_per_image'])} (batched) | {rb['speedup']:.1f}× |",
        f"| reference log-probs: LoRA toggle vs second UNet (s; extra MB) | {f(ref['second_copy_s'])} s; +{f(ref['second_copy_extra_mb'], 4)} MB "
        f"(copy) | {f(ref['toggle_s'])} s; +0 MB (toggle) | {f(ref['second_copy_extra_mb'], 4)} MB saved |",
    ]


def _ablations_table(ab: dict, algo: str) -> list[str]:
    f = _fmt_number
    lines = [
        "",
        f"#### Options ({algo}, each in a fresh process)",
        "",
        "| option | flags | epoch s | rollout traj/s | train transitions/s | s/1k total | peak mem MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in ab.items():
        if "error" in r:
            lines.append(f"| {name} | – | error: {' '.join(r['error'])} | | | | |")
            continue
        lines.append(
            f"| {name} | `{r['flags']}` | {f(r['epoch_seconds'])} | {f(r['rollout_traj_per_s'])} | {f(r['train_transitions_per_s'])} "
            f"| {f(r['sec_per_1k_total'])} | {f(r['peak_memory_mb'], 4)} |"
        )
    return lines
