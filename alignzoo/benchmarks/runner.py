"""The benchmark runner: every (algorithm, reward, seed) cell of a suite, evaluated head to head.

Layout of ``runs/<suite>/`` (read by :mod:`alignzoo.reports`)::

    suite.toml                     the parsed suite
    pretrained/eval.jsonl          the pretrained model's evaluation (+ scores.json, diversity.json,
                                   thumbnails.npz (drift's reference), images/)
    <algo>__<reward>__seed<S>/     log.jsonl (trainer), eval.jsonl, checkpoints/, final/, images/,
                                   scores.json, diversity.json, drift.json (final evaluation point), DONE

``scores.json`` = ``{"<prompt_set>|<eval_reward>|<steps>": [per-image scores]}`` in evaluation row
order (row = prompt_index · images_per_prompt + k), for paired bootstraps over seeds and
prompts × noises; ``diversity.json`` = ``{"<prompt_set>|<steps>": [per-prompt diversity]}``;
``drift.json`` = ``{"<prompt_set>|<steps>": [per-image drift]}`` (:func:`.evaluation.image_drift`).
Every cell is evaluated on every reward of the suite (its trained one and the held-out ones), and
each line carries ``provenance``/``hash``/``setting_hash`` (:mod:`.provenance`) and the diversity
of its (prompt set, steps) in the suite's one feature space (:func:`.evaluation.feature_space`).

Each evaluation point's lines are appended in one write and fsync'ed, so a kill never leaves a
half-written line; rerunning skips finished cells (DONE) and resumes an unfinished one from its
last checkpoint (one per epoch), dropping evaluation lines newer than that checkpoint. The final
point writes scores.json before its lines, so a cell whose final lines exist has its scores.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignzoo.benchmarks.evaluation import evaluate, feature_space
from alignzoo.benchmarks.suites import Suite, suite_to_toml
from alignzoo.images import save_strip
from alignzoo.prompts import get_prompts
from alignzoo.runlog import append_lines, cell_name, read_lines, rewrite_lines, write_json


@dataclass
class EvalOutput:
    """One evaluation point: the eval.jsonl lines, scores.json's, diversity.json's and
    drift.json's contents, the images' thumbnails (drift's reference when the model is the
    pretrained one) and the image strips."""

    lines: list = field(default_factory=list)
    scores: dict = field(default_factory=dict)
    diversity: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    thumbnails: dict = field(default_factory=dict)
    strips: dict = field(default_factory=dict)


class BenchmarkRunner:
    def __init__(self, suite: Suite, root: str | Path = "runs", device: str | None = None, progress: bool = True, log=print):
        self.suite = suite
        self.dir = Path(root) / suite.name
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device_requested = device  # Ray: None lets each task's GPUs decide
        self.progress = progress
        self.log = log
        ev = suite.eval
        self.prompt_sets = {}
        for name in ev.prompt_sets:
            prompts = get_prompts(name)
            self.prompt_sets[name] = prompts[: ev.prompts_per_set] if ev.prompts_per_set else prompts
        self._rewards = None

    # ---------------------------------------------------------------------------- helpers
    def rewards(self) -> dict:
        if self._rewards is None:
            from alignzoo.rewards import get_reward
            from alignzoo.rewards.combined import component_kwargs

            names = list(dict.fromkeys(self.suite.rewards + self.suite.eval.rewards))  # trained, then evaluation-only
            self._rewards = {r: get_reward(r, device=self.device, **component_kwargs(r, self.suite.reward_args)).to(self.device) for r in names}
        return self._rewards

    def load_model(self):
        from alignzoo.models import load_model

        return load_model(self.suite.model, model_path=self.suite.model_path, device=self.device)

    def eval_eta(self, algo_cfg=None) -> float:
        eta = self.suite.eval.eta
        if eta == "train":
            return float(algo_cfg.eta if algo_cfg is not None else 1.0)
        return float(eta)

    def run_eval(self, model, eta: float, keep_images: bool, fields: dict, baseline: dict | None = None) -> EvalOutput:
        """Evaluates ``model`` on every prompt set × reward × step count of the suite, paired with
        ``baseline`` (the pretrained model's :meth:`pretrained`) when given."""
        ev = self.suite.eval
        rewards = self.rewards()
        for r in rewards.values():
            r.reset_counters()
        from alignzoo.benchmarks.provenance import ProvenanceBuilder

        # before sampling: the LoRA checksum of the weights that make these images
        prov = ProvenanceBuilder(model, rewards, self.suite.reward_args, self.prompt_sets, ev.images_per_prompt, eta, ev.seed, ev.batch_size)
        base_scores, base_thumbs = (baseline or {}).get("scores", {}), (baseline or {}).get("thumbnails")
        t0 = time.perf_counter()
        results, strips = evaluate(
            model,
            rewards,
            self.prompt_sets,
            ev.steps,
            ev.images_per_prompt,
            eta,
            ev.seed,
            ev.batch_size,
            keep_images=ev.grid_images if keep_images else 0,
            features=feature_space(rewards),
            reference_thumbnails=base_thumbs,
        )
        seconds = round(time.perf_counter() - t0, 3)
        out = EvalOutput(strips=strips)
        for r in results:
            key, point = _key(r.prompt_set, r.reward, r.steps), f"{r.prompt_set}|{r.steps}"
            base = base_scores.get(key)
            out.lines.append(
                {**fields, **r.summary(np.asarray(base) if base is not None else None), "eval_seconds": seconds, **prov.line(r.prompt_set, r.reward, r.steps)}
            )
            out.scores[key] = r.scores.tolist()
            if r.diversity is not None:
                out.diversity[point] = r.diversity.tolist()
            if r.drift is not None:
                out.drift[point] = r.drift.tolist()
            out.thumbnails[point] = r.thumbnails
        return out

    # ---------------------------------------------------------------------------- the run
    def run(self, only: dict[str, set[str]] | None = None, workers: int | None = None, executor: str = "local", ray_address: str | None = None) -> Path:
        """Runs the selected cells: in this process (default), on ``workers`` one-thread processes,
        or as Ray tasks (:mod:`alignzoo.benchmarks.executors`). Finished cells (DONE) are skipped;
        a failed cell does not stop the others, and :class:`CellsFailed` names it at the end."""
        from alignzoo.benchmarks.executors import CellsFailed, attempt_cell, run_local_pool, run_ray

        workers = _checked_workers(executor, workers, ray_address)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "suite.toml").write_text(suite_to_toml(self.suite))
        cost = self.suite.estimated_cost()
        self.log(
            f"suite {self.suite.name}: {cost['cells']} cells on {self.suite.model}; estimated UNet evaluations "
            f"{cost['unet_evals_training']:,} (training) + {cost['unet_evals_evaluation']:,} (evaluation), reward queries "
            f"{cost['reward_queries_training']:,} + {cost['reward_queries_evaluation']:,}"
        )
        start = time.perf_counter()
        cells = [c for c in self.suite.cells() if _selected(c, only)]
        todo = [c for c in cells if not (self.dir / cell_name(*c) / "DONE").exists()]
        if len(todo) < len(cells):
            self.log(f"{len(cells) - len(todo)} of {len(cells)} cells finished before (DONE): not rerun")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"bench {self.suite.name}", unit="cell", position=0, dynamic_ncols=True)
        say = bar.write if bar is not None else self.log
        finished, failed = [], []

        def on_result(res: dict) -> None:
            finished.append(res)
            where = f"[{len(finished)}/{len(todo)}] {res['cell']}"
            if res["ok"]:
                say(f"{where} done in {res['seconds']:.0f} s")
            else:
                failed.append(res)
                say(f"{where} FAILED after {res['seconds']:.0f} s: {res['error']} (traceback: {self.dir / res['cell'] / 'error.txt'})")
            if bar is not None:
                bar.update(1)

        if executor == "ray" and todo:
            run_ray(self.suite, self.dir, self.device_requested, todo, ray_address, on_result)
        elif workers > 1 and todo:
            say(f"{len(todo)} cells on {min(workers, len(todo))} worker processes, one thread each")
            run_local_pool(self.suite, self.dir, self.device, todo, min(workers, len(todo)), on_result)
        else:
            baseline = self.pretrained()
            for cell in todo:
                if bar is not None:
                    bar.set_postfix_str(cell_name(*cell))
                on_result(attempt_cell(self, cell, baseline))
        if bar is not None:
            bar.close()
        if failed:
            names = "; ".join(f"{r['cell']} ({r['error']})" for r in failed)
            raise CellsFailed(
                f"{len(failed)} of {len(todo)} cells failed: {names}. Tracebacks in <cell>/error.txt; "
                f"rerun the same command to retry them (finished cells are kept)"
            )
        self.log(f"suite {self.suite.name} done in {time.perf_counter() - start:.0f} s: {self.dir}")
        return self.dir

    def pretrained(self) -> dict:
        """Evaluates the pretrained model once; returns the cells' baseline: ``{"scores": per-image
        scores (paired diffs), "thumbnails": per-image thumbnails (drift)}``."""
        d = self.dir / "pretrained"
        scores_path, thumbs_path = d / "scores.json", d / "thumbnails.npz"
        if (d / "DONE").exists():
            thumbs = dict(np.load(thumbs_path)) if thumbs_path.exists() else None  # a suite evaluated before drift existed
            return {"scores": json.loads(scores_path.read_text()), "thumbnails": thumbs}
        d.mkdir(parents=True, exist_ok=True)
        model = self.load_model()
        fields = {"cell": "pretrained", "algo": "pretrained", "train_reward": None, "seed": None, "samples": 0}
        out = self.run_eval(model, self.eval_eta(), keep_images=True, fields=fields)
        for n, imgs in out.strips.items():
            save_strip(imgs, d / "images" / f"steps_{n}.png")
        rewrite_lines(d / "eval.jsonl", out.lines)
        write_json(scores_path, out.scores)
        write_json(d / "diversity.json", out.diversity)
        thumbs = {k: v.numpy() for k, v in out.thumbnails.items()}
        np.savez_compressed(thumbs_path, **thumbs)
        (d / "DONE").write_text("ok")
        return {"scores": out.scores, "thumbnails": thumbs}

    def train_config(self, algo: str, reward: str, seed: int, out: Path):
        """The cell's TrainConfig: the suite's model, budget and prompts, the cell's algorithm, reward and seed."""
        from alignzoo.algos.trainer import TrainConfig
        from alignzoo.rewards.combined import component_kwargs

        suite = self.suite
        trained = suite.trained_reward(algo, reward)  # the control `random` may become random_direction
        return TrainConfig(
            algo=algo,
            reward=trained,
            model=suite.model,
            model_path=suite.model_path,
            out=str(out),
            samples=suite.samples,
            seed=seed,
            prompts=suite.train_prompts,
            reward_kwargs=component_kwargs(trained, suite.reward_args),
            progress=self.progress,
            cpu=self.device == "cpu",
        )

    def run_cell(self, algo: str, reward: str, seed: int, baseline: dict) -> Path:
        from alignzoo.algos import get_algorithm
        from alignzoo.algos.trainer import Trainer

        d = self.dir / cell_name(algo, reward, seed)
        if (d / "DONE").exists():
            return d
        algo_cfg = self.suite.algo_config(algo, reward)
        cfg = self.train_config(algo, reward, seed, d)
        rewards, own = self.rewards(), get_algorithm(algo).needs_reward_grad  # reward backprop: the trainer builds its own, differentiable
        trainer = Trainer(cfg, algo_cfg, model=self.load_model(), reward=None if own else rewards[reward])
        eval_path = d / "eval.jsonl"
        done_samples = trainer.totals["samples"]
        kept = [r for r in read_lines(eval_path) if r["samples"] <= done_samples]
        rewrite_lines(eval_path, kept)  # drop evaluations newer than the checkpoint we resume from
        evaluated = {r["samples"] for r in kept}
        eta = self.eval_eta(algo_cfg)

        def evaluate_now(tr, prev, samples):
            final, due = self.suite.evaluation_due(prev, samples)
            if samples in evaluated or not due:
                return
            tr.model.unet.eval()
            fields = {"cell": d.name, "algo": algo, "train_reward": reward, "seed": seed, "samples": samples, "epoch": tr.epoch}
            out = self.run_eval(tr.model, eta, keep_images=final, fields=fields, baseline=baseline)
            if final:  # per-image scores before the lines: a cell with final lines always has them
                for n, imgs in out.strips.items():
                    save_strip(imgs, d / "images" / f"steps_{n}.png")
                write_json(d / "scores.json", out.scores)
                write_json(d / "diversity.json", out.diversity)
                write_json(d / "drift.json", out.drift)
            append_lines(eval_path, out.lines)
            evaluated.add(samples)

        from alignzoo.runlog import read_log

        done = [r["samples"] for r in read_log(d)]
        if done:  # a kill between the checkpoint and its evaluation
            evaluate_now(trainer, done[-2] if len(done) > 1 else 0, done[-1])
        previous = {"samples": done_samples}

        def after_epoch(tr, rec):
            evaluate_now(tr, previous["samples"], rec["samples"])
            previous["samples"] = rec["samples"]

        trainer.train(callback=after_epoch)
        (d / "DONE").write_text("ok")
        return d


def _key(prompt_set: str, reward: str, steps: int) -> str:
    return f"{prompt_set}|{reward}|{steps}"


def _selected(cell, only) -> bool:
    if not only:
        return True
    algo, reward, seed = cell
    values = {"algo": algo, "reward": reward, "seed": str(seed)}
    return all(values[k] in allowed for k, allowed in only.items())


def parse_only(text: str | None) -> dict[str, set[str]] | None:
    """``algo=sdpo,reward=tiny_alignment`` (repeat a key for several values: algo=sdpo,algo=ddpo)."""
    if not text:
        return None
    out: dict[str, set[str]] = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"--only expects key=value pairs (keys: algo, reward, seed), got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in ("algo", "reward", "seed"):
            raise ValueError(f"--only key {k!r} is unknown; use algo, reward or seed")
        out.setdefault(k, set()).add(v)
    return out


def _checked_workers(executor: str, workers: int | None, ray_address: str | None) -> int:
    """The local executor's worker count, after checking the executor options fit together."""
    from alignzoo.benchmarks.executors import EXECUTORS

    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; known executors: {', '.join(EXECUTORS)}")
    if workers is not None and (executor != "local" or workers < 1):
        raise ValueError("--workers must be >= 1 and applies to the local executor (Ray runs as many cells at once as the cluster's CPUs/GPUs allow)")
    if ray_address and executor != "ray":
        raise ValueError("--ray-address needs --executor ray")
    return workers or 1
