"""``alignzoo score``: table + mean ± std, prompts as lines or JSON, clear errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from alignzoo.cli import main

from helpers import without_weights


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("b.png", (32, 32)), ("a.png", (32, 32)), ("c.jpg", (40, 24))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def _jpeg_kb(path):
    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=95)
    return buf.tell() / 1000


def test_score_jpeg_prints_table_and_summary(folder, capsys):
    assert main(["score", "--reward", "jpeg_incompressibility", "--images", str(folder), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("a.png", "b.png", "c.jpg"))]
    assert [r[0] for r in rows] == ["a.png", "b.png", "c.jpg"]  # sorted filename order
    expected = [_jpeg_kb(folder / n) for n in ("a.png", "b.png", "c.jpg")]
    assert [float(r[-1]) for r in rows] == pytest.approx(expected, abs=1e-3)
    mean, std = np.mean(expected), np.std(expected, ddof=1)
    assert f"mean {mean:.4f} ± {std:.4f}" in out


def test_prompts_as_lines_and_as_json(folder, tmp_path, capsys):
    lines = tmp_path / "prompts.txt"
    lines.write_text("a red cat\na blue dog\na green frog\n")
    assert main(["score", "--reward", "random", "--images", str(folder), "--prompts", str(lines)]) == 0
    out_lines = capsys.readouterr().out
    assert "a red cat" in out_lines and "a green frog" in out_lines
    js = tmp_path / "prompts.json"
    js.write_text(json.dumps({"c.jpg": "a green frog", "a.png": "a red cat", "b.png": "a blue dog"}))
    assert main(["score", "--reward", "random", "--images", str(folder), "--prompts", str(js)]) == 0
    out_json = capsys.readouterr().out
    assert out_json == out_lines  # same pairing either way
    row = next(line for line in out_json.splitlines() if line.startswith("a.png"))
    assert "a red cat" in row


def test_clear_errors(folder, tmp_path, capsys):
    assert main(["score", "--reward", "random", "--images", str(tmp_path / "nope"), "--prompts", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("only one\n")
    assert main(["score", "--reward", "random", "--images", str(folder), "--prompts", str(short)]) == 2
    err = capsys.readouterr().err
    assert "1 lines" in err and "3 images" in err
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"a.png": "x"}))
    assert main(["score", "--reward", "random", "--images", str(folder), "--prompts", str(js)]) == 2
    assert "no prompt for 2 of 3" in capsys.readouterr().err
    assert main(["score", "--reward", "random", "--images", str(folder)]) == 2
    assert "--prompts" in capsys.readouterr().err
    assert main(["score", "--reward", "jpeg_compressibility", "--images", str(folder), "--weights", "w.pt"]) == 2
    assert "does not take --weights" in capsys.readouterr().err
    assert main(["score", "--reward", "aesthetik", "--images", str(folder)]) == 2
    assert "aesthetic" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["score", "--reward", "jpeg_compressibility", "--images", str(empty)]) == 2
    assert "no images" in capsys.readouterr().err


def test_missing_weights_is_a_clear_error(folder, tmp_path, monkeypatch, capsys):
    without_weights(monkeypatch, tmp_path, "ALIGNZOO_HPSV2")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\n")
    assert main(["score", "--reward", "hpsv2", "--images", str(folder), "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert "HPS_v2.1_compressed.pt" in err and "--weights" in err


def test_options_are_passed_to_the_reward(folder, tmp_path, capsys):
    p = tmp_path / "p.txt"
    p.write_text("a\nb\nc\n")
    assert main(["score", "--reward", "random", "--images", str(folder), "--prompts", str(p)]) == 0
    base = capsys.readouterr().out
    assert main(["score", "--reward", "random", "--images", str(folder), "--prompts", str(p), "--option", "seed=7"]) == 0
    assert capsys.readouterr().out != base
    assert main(["score", "--reward", "random", "--images", str(folder), "--prompts", str(p), "--option", "colour=1"]) == 2
    assert "seed" in capsys.readouterr().err
