"""Real-size architectures with random weights, built from configs shipped in the package.

``sd-turbo-arch`` (SD 2.1 / SD-Turbo: 865.9M-parameter UNet, 83.7M VAE, 340M OpenCLIP-ViT-H
text encoder) and ``lcm-arch`` (LCM-Dreamshaper-v7: SD 1.5 UNet with a 256-d w-embedding
projection, 859.6M; CLIP ViT-L/14 text encoder, 123M) measure throughput and memory at real
size on any machine without downloads. The configs under ``alignzoo/models/configs/<name>/``
are the published ones; the weights are random (seeded) and the tokenizer is a small hand-made
CLIP BPE with the real ``model_max_length`` 77 (the text encoder keeps the real 49,408-entry
embedding table), so nothing here depends on the vocabulary.

The pipeline is materialised once, lazily, in the diffusers folder layout under
``$ALIGNZOO_CACHE/arch/<name>`` (default ``~/.cache/alignzoo/arch/<name>``) and then loaded by
the ordinary adapter classes. Weights are stored in fp16 (about 2.6 GB for sd-turbo-arch);
``load_model`` upcasts them to the dtype it is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"
ARCHS = {"sd-turbo-arch": "sd-turbo", "lcm-arch": "lcm-dreamshaper-v7"}
COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")
BUILD_VERSION = 1  # bump to invalidate cached builds

# Tokenizer words: the tiny world's and the DDPO/SDPO animal prompts' (any other lowercase
# word still tokenizes, letter by letter).
_EXTRA_WORDS = ("a", "an", "the", "of", "on", "in", "and", "photo", "picture", "park", "moon", "colored", "four", "two", "three")


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNZOO_CACHE") or Path.home() / ".cache" / "alignzoo")


def config_dir(name: str) -> Path:
    """The packaged config folder of an arch entry (``sd-turbo-arch`` → configs/sd-turbo)."""
    return CONFIGS / ARCHS.get(name, name)


def _fingerprint(src: Path) -> str:
    h = hashlib.sha256(f"v{BUILD_VERSION}".encode())
    for f in sorted(src.rglob("*.json")):
        h.update(str(f.relative_to(src)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _words() -> list[str]:
    from alignzoo.models.tiny_random import WORDS
    from alignzoo.prompts import SIMPLE_ANIMALS, UNSEEN_ANIMALS

    words = list(WORDS) + list(_EXTRA_WORDS) + list(SIMPLE_ANIMALS)
    words += [w.lower() for p in UNSEEN_ANIMALS for w in p.split()]
    try:
        from alignzoo.tinyworld import grammar

        words += [w for p in grammar.seen_prompts() for w in p.lower().split()]
    except Exception:  # noqa: BLE001 - the tiny world's words are a nicety here
        pass
    seen, out = set(), []
    for w in words:
        if w.isalpha() and w.islower() and w not in seen:
            seen.add(w)
            out.append(w)
    return out


def build_arch_pipeline(name: str, dest: str | os.PathLike | None = None, seed: int = 0, dtype: str = "float16") -> Path:
    """Builds (once) the random-weight pipeline of ``name`` and returns its folder.

    Re-uses the folder if it holds a complete build of the same configs. Memory: the fp32
    UNet is built on the CPU (3.5 GB for SD-Turbo) and cast to ``dtype`` before saving.
    """
    import torch

    src = config_dir(name)
    if not (src / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"no packaged configs for {name!r} under {src}")
    dest = Path(dest) if dest is not None else cache_root() / "arch" / name
    stamp = dest / "alignzoo_build.json"
    fp = _fingerprint(src)
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()).get("fingerprint") == fp:
                return dest
        except json.JSONDecodeError:
            pass
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from alignzoo.hf import quiet
    from alignzoo.models.tiny_random import write_word_tokenizer

    tdtype = getattr(torch, dtype)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp_{dest.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"alignzoo: building the random-weight {name} pipeline in {dest} (once; a few minutes for SD size)", flush=True)
    with torch.random.fork_rng(devices=[]), quiet():
        torch.manual_seed(seed)
        tok = write_word_tokenizer(tmp / "tokenizer", _words(), max_length=77)
        te_cfg = CLIPTextConfig.from_pretrained(src / "text_encoder")
        if len(tok) > te_cfg.vocab_size:
            raise ValueError(f"tokenizer has {len(tok)} tokens, more than the text encoder's {te_cfg.vocab_size}")
        CLIPTextModel(te_cfg).to(tdtype).save_pretrained(tmp / "text_encoder")
        AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae")).to(tdtype).save_pretrained(tmp / "vae")
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet"))
        unet.to(tdtype).save_pretrained(tmp / "unet")
        del unet
    (tmp / "scheduler").mkdir()
    shutil.copy(src / "scheduler" / "scheduler_config.json", tmp / "scheduler" / "scheduler_config.json")
    shutil.copy(src / "model_index.json", tmp / "model_index.json")
    meta = {"note": f"random weights in the real {ARCHS.get(name, name)} architecture: for throughput and memory only, not for images"}
    (tmp / "alignzoo.json").write_text(json.dumps(meta, indent=1))
    (tmp / "alignzoo_build.json").write_text(json.dumps({"name": name, "fingerprint": fp, "seed": seed, "dtype": dtype}, indent=1))
    if dest.exists():  # an older or partial build (or another process finished first)
        shutil.rmtree(dest, ignore_errors=True)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process put a complete build there in the meantime
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def arch_builder(name: str):
    """A zero-argument builder for ``ModelSpec.builder``."""

    def build() -> Path:
        return build_arch_pipeline(name)

    build.__name__ = f"build_{name.replace('-', '_')}"
    return build


def parameter_counts(name: str) -> dict[str, int]:
    """Parameter counts of the packaged configs, computed on the meta device (no memory, fast)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from alignzoo.hf import quiet

    src = config_dir(name)
    with torch.device("meta"), quiet():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(src / "vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(src / "text_encoder"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"unet": count(unet), "vae": count(vae), "text_encoder": count(te)}
