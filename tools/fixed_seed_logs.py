"""Fixed-seed training logs of every built-in algorithm, and their comparison: the check that a
refactor leaves results unchanged (issue 14).

    python tools/fixed_seed_logs.py run OUT [ALGO ...]          # one short run per algorithm
    python tools/fixed_seed_logs.py run OUT --old-pair-order    # pairs drawn a-half/b-half, then
                                                                # permuted to prompt-major rows
    python tools/fixed_seed_logs.py compare BEFORE AFTER        # fields that differ, per run

Run it with the checkout under test first on PYTHONPATH (PYTHONPATH=$PWD OMP_NUM_THREADS=1).
``--old-pair-order`` reproduces the noise draws of the layout before groups (rows i and i + B/2
were a pair), so that a comparison against a pre-group checkout isolates everything else.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

SPECS = [("ddpo", "tiny-sd-v2"), ("rebel", "tiny-sd-v2"), ("d3po", "tiny-sd-v2"), ("sdpo", "tiny-sd-v2"),
         ("rlcm-ddpo", "tiny-lcm-v2"), ("rlcm-rebel", "tiny-lcm-v2"), ("sdpo", "tiny-lcm-v2"), ("lasro", "tiny-lcm-v2"), ("reward-backprop", "tiny-sd-v2")]  # fmt: skip


def old_pair_order() -> None:
    import torch

    from alignzoo.algos import rollouts
    from alignzoo.models.sampling import Trajectory, sample

    groups = rollouts.sample_groups

    def drawn_as_before(model, prompts, group_size, num_steps, eta=1.0, generator=None, shared_noise=True, keep_means=False):
        if group_size != 2:
            return groups(model, prompts, group_size, num_steps, eta, generator, shared_noise=shared_noise, keep_means=keep_means)
        prompts, p = list(prompts), len(prompts)
        init = None
        if shared_noise:
            x = model.init_noise(p, generator)
            init = torch.cat([x, x])
        t = sample(model, prompts + prompts, num_steps, eta, generator, init_noise=init, keep_means=keep_means)
        perm = torch.stack([torch.arange(p), torch.arange(p) + p], 1).reshape(-1)
        pick = lambda v: None if v is None else v[perm.to(v.device)]  # noqa: E731
        return Trajectory(prompts=[t.prompts[i] for i in perm.tolist()], prompt_embeds=pick(t.prompt_embeds), neg_embeds=pick(t.neg_embeds),
                          timesteps=t.timesteps, prev_timesteps=t.prev_timesteps, latents=pick(t.latents), pred_x0=pick(t.pred_x0),
                          log_probs=pick(t.log_probs), eta=t.eta, kernel=t.kernel, step_etas=t.step_etas, stds=t.stds, means=pick(t.means))  # fmt: skip

    rollouts.sample_groups = drawn_as_before


def run(out: Path, only: list[str]) -> None:
    import torch

    from alignzoo.algos.base import get_algorithm
    from alignzoo.algos.config_strings import config_from_strings
    from alignzoo.algos.trainer import TrainConfig, Trainer

    torch.set_num_threads(1)
    for algo, model in SPECS:
        if only and algo not in only:
            continue
        folder = out / f"{algo}-{model}"
        shutil.rmtree(folder, ignore_errors=True)
        cls = get_algorithm(algo)
        sets = {"num_steps": "2" if algo == "lasro" else "4", "samples_per_epoch": "16", "train_batch_size": "4", "gradient_accumulation_steps": "1"}
        config = config_from_strings(cls.Config, cls.Config(), sets)
        Trainer(TrainConfig(algo=algo, reward="tiny_preference", model=model, samples=64, seed=3, out=str(folder), progress=False), config).train()
        print(folder.name, "done", flush=True)


def compare(before: Path, after: Path) -> None:
    for folder in sorted(p for p in before.iterdir() if (p / "log.jsonl").exists()):
        other = after / folder.name / "log.jsonl"
        if not other.exists():
            continue
        a, b = ([json.loads(x) for x in f.read_text().splitlines()] for f in (folder / "log.jsonl", other))
        differ = sorted({k for ra, rb in zip(a, b) for k in set(ra) | set(rb) if not k.startswith("seconds") and ra.get(k) != rb.get(k)})
        print(f"{folder.name}: {len(a)} vs {len(b)} lines;", "identical" if not differ and len(a) == len(b) else f"differ in {', '.join(differ)}")


if __name__ == "__main__":
    command, *args = sys.argv[1:] or ["--help"]
    if command == "run":
        if "--old-pair-order" in args:
            args.remove("--old-pair-order")
            old_pair_order()
        run(Path(args[0]), args[1:])
    elif command == "compare":
        compare(Path(args[0]), Path(args[1]))
    else:
        print(__doc__)
