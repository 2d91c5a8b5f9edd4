"""Checkpoints: a damaged latest checkpoint is skipped with a warning, the run resumes from the
newest intact one to the same final LoRA, old checkpoints without checksums still load, and
pruning never deletes the only intact checkpoint."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from alignzoo.algos import checkpoints, get_algorithm
from alignzoo.algos.trainer import TrainConfig, Trainer, read_log

SAMPLES = 24  # 3 epochs of 8 images; checkpoints epoch_00002 and epoch_00003 are kept


def _trainer(folder, prompts, out):
    cfg = get_algorithm("sdpo").Config(num_steps=3, samples_per_epoch=8, train_batch_size=2, learning_rate=0.01)
    return Trainer(
        TrainConfig(algo="sdpo", reward="jpeg_compressibility", model=str(folder), prompts=str(prompts), out=str(out), samples=SAMPLES, progress=False), cfg
    )


def _lora(out):
    return load_file(str(out / "final" / "pytorch_lora_weights.safetensors"))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])  # what a full disk or a cut copy leaves


@pytest.fixture(scope="module")
def finished_run(tiny_random_folders, prompt_file, tmp_path_factory):
    """One uninterrupted run (copied by each test, which damages the copy)."""
    out = tmp_path_factory.mktemp("ckpt") / "full"
    _trainer(tiny_random_folders["sd"], prompt_file, out).train()
    return out


def _copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    shutil.rmtree(out / "final")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["checksums", "old-epoch-only"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(marker, finished_run, tiny_random_folders, prompt_file, tmp_path):
    out = _copy(finished_run, tmp_path)
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_00002", "epoch_00003"]
    if marker == "old-epoch-only":  # checkpoints written before the manifest: no checksums, still loaded
        for c in ckpts.iterdir():
            (c / "COMPLETE").write_text(str(int(c.name.split("_")[1])))
    else:
        manifest = json.loads((ckpts / "epoch_00003" / "COMPLETE").read_text())
        assert manifest["epoch"] == 3 and {"trainer_state.pt", "rng_rank0.pt", "pytorch_lora_weights.safetensors"} <= set(manifest["files"])
    _truncate(ckpts / "epoch_00003" / "trainer_state.pt")
    with pytest.warns(UserWarning, match=r"checkpoint \S*epoch_00003 is damaged: .*(trainer_state.pt has \d+ bytes|cannot be read).*damaged_epoch_00003"):
        tr = _trainer(tiny_random_folders["sd"], prompt_file, out)
    assert tr.resumed_from == ckpts / "epoch_00002" and tr.epoch == 2
    assert [r["epoch"] for r in read_log(out)] == [1, 2]  # the damaged epoch's line is dropped: it is rerun
    assert (ckpts / "damaged_epoch_00003").is_dir() and tr.latest_checkpoint() == ckpts / "epoch_00002"
    records = tr.train()
    assert [r["epoch"] for r in records] == [3]
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds")}  # noqa: E731
    assert [drop(r) for r in read_log(out)] == [drop(r) for r in read_log(finished_run)]
    a, b = _lora(finished_run), _lora(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoints.damage(ckpts / "epoch_00003") is None  # rewritten intact


@pytest.mark.slow
def test_every_checkpoint_damaged_is_a_clear_error(finished_run, tiny_random_folders, prompt_file, tmp_path):
    out = _copy(finished_run, tmp_path)
    for c in (out / "checkpoints").iterdir():
        _truncate(c / "trainer_state.pt")
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match=r"every checkpoint in \S+ is damaged \(epoch_00003: .*; epoch_00002: .*\); delete the folder"),
    ):
        _trainer(tiny_random_folders["sd"], prompt_file, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_00002", "epoch_00003"]  # left for a rerun to find


def _fake_checkpoint(root, epoch):
    d = root / f"epoch_{epoch:05d}"
    d.mkdir(parents=True)
    (d / "trainer_state.pt").write_bytes(bytes(range(256)) * (epoch + 1))
    (d / "rng_rank0.pt").write_bytes(b"rng")
    checkpoints.write_manifest(d, epoch)
    return d


def test_damage_names_what_is_wrong(tmp_path):
    d = _fake_checkpoint(tmp_path, 1)
    assert checkpoints.damage(d) is None
    _truncate(d / "trainer_state.pt")
    assert checkpoints.damage(d) == "trainer_state.pt has 256 bytes, its manifest says 512 (truncated?)"
    (d / "trainer_state.pt").write_bytes(bytes(512))  # the right size, other bytes
    assert checkpoints.damage(d) == "trainer_state.pt does not match its checksum"
    (d / "rng_rank0.pt").unlink()
    assert checkpoints.damage(d) == "rng_rank0.pt is missing"
    (d / "COMPLETE").write_text("7")  # the old marker: nothing to check against
    assert checkpoints.damage(d) is None


def test_pruning_never_deletes_the_only_intact_checkpoint(tmp_path):
    ck = [_fake_checkpoint(tmp_path, e) for e in (1, 2, 3)]
    _truncate(ck[2] / "trainer_state.pt")  # the newest is damaged, the older ones intact
    assert checkpoints.prune(tmp_path, keep=1) == [ck[0]]  # epoch 2, the newest intact one, is spared
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_00002", "epoch_00003"]
    _fake_checkpoint(tmp_path, 4)
    assert checkpoints.prune(tmp_path, keep=1) == [ck[2], ck[1]]  # the newest is intact: the usual rule
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_00004"]
