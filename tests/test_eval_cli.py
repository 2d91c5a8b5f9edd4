"""`alignzoo eval`: the paired gain of a saved LoRA over its pretrained model."""

import json

import numpy as np
import torch

from alignzoo.benchmarks.evaluation import evaluation_noise
from alignzoo.cli import main
from alignzoo.models import load_model
from alignzoo.models.sampling import generate
from alignzoo.rewards import get_reward


def _nonzero_lora(folder, out):
    model = load_model(str(folder))
    model.add_lora(rank=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)  # lora_B too: the adapter changes the model
    model.save_lora(out)


def test_eval_reports_paired_gain_of_a_saved_lora(tiny_random_folders, prompt_file, tmp_path, capsys):
    folder = tiny_random_folders["sd"]
    _nonzero_lora(folder, tmp_path / "lora")
    rc = main(
        [
            "eval",
            str(tmp_path / "lora"),
            "--model",
            str(folder),
            "--reward",
            "jpeg_compressibility",
            "--steps",
            "1,2",
            "--prompts",
            str(prompt_file),
            "--images-per-prompt",
            "2",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "eval.json"),
        ]
    )
    assert rc == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [(r["reward"], r["steps"]) for r in rows] == [("jpeg_compressibility", 1), ("jpeg_compressibility", 2)]
    assert "| jpeg_compressibility" in capsys.readouterr().out
    # independently: the pretrained model (no adapter at all) and the LoRA model on the same held-out noise
    prompts = [line.strip() for line in prompt_file.read_text().splitlines() if line.strip()]
    expanded = [p for p in prompts for _ in range(2)]
    reward = get_reward("jpeg_compressibility")
    base, tuned = load_model(str(folder)), load_model(str(folder))
    tuned.load_lora(tmp_path / "lora")
    for row in rows:
        noise = evaluation_noise(base.latent_shape, len(prompts), 2, 4321, "eval")
        b = reward(generate(base, expanded, row["steps"], init_noise=noise), expanded).numpy()
        t = reward(generate(tuned, expanded, row["steps"], init_noise=noise), expanded).numpy()
        assert np.isclose(row["before"], b.mean(), atol=1e-5) and np.isclose(row["after"], t.mean(), atol=1e-5)
        assert np.isclose(row["gain"], (t - b).mean(), atol=1e-5) and np.isclose(row["se"], (t - b).std(ddof=1) / np.sqrt(len(b)), rtol=1e-4)
        assert abs(row["gain"]) > 0 and row["n"] == len(expanded)


def test_eval_errors_name_the_problem(tiny_random_folders, tmp_path, capsys):
    rc = main(["eval", str(tmp_path / "missing"), "--model", str(tiny_random_folders["sd"]), "--reward", "jpeg_compressibility", "--device", "cpu"])
    assert rc == 2 and "no LoRA weights at" in capsys.readouterr().err
    rc = main(["eval", str(tmp_path), "--model", str(tiny_random_folders["sd"]), "--reward", "jpeg_compressibility", "--steps", "1,x"])
    assert rc == 2 and "--steps must be comma-separated integers" in capsys.readouterr().err
    rc = main(["eval", str(tmp_path), "--model", str(tiny_random_folders["sd"]), "--reward", "jpeg_compresibility"])
    err = capsys.readouterr().err
    assert rc == 2 and "jpeg_compressibility" in err  # the unknown name's close match
