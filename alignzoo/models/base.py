"""The model adapter protocol every algorithm and the sampler talk to.

A :class:`DiffusionModel` wraps one diffusers UNet, VAE, text encoder, tokenizer and
scheduler, and offers exactly what RL fine-tuning needs:

* ``encode_prompts``        prompt embeddings (and negative embeddings when CFG is on),
* ``predict_noise``         ε̂(x_t, t, c) with classifier-free or w-embedding guidance,
* ``timesteps(N)``          the N-step schedule (trailing DDIM or LCM's skipping schedule),
* ``decode``                latents → images in [0, 1], shape (B, 3, H, W), batched,
* ``add_lora`` / ``trainable_parameters`` / ``save_lora`` / ``load_lora``  (PEFT LoRA saved
  in the format diffusers' ``load_lora_weights`` reads),
* ``reference()``           a context in which the UNet is the pretrained model (the LoRA
  adapter disabled): the reference/old policy without a second UNet copy.

Concrete classes: :class:`~alignzoo.models.stable_diffusion.StableDiffusionModel` (DDIM
step kernel) and :class:`~alignzoo.models.lcm.LatentConsistencyModel` (LCM step kernel).
Registered entries (``alignzoo list models``) name a hub id or a packaged folder plus the
sampling defaults of that model.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from alignzoo.hf import quiet
from alignzoo.hub import resolve_snapshot
from alignzoo.registry import Registry

MODELS: Registry = Registry("model")

# Files a diffusers text-to-image folder must hold (weights are checked by from_pretrained).
PIPELINE_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer_config.json",
    "scheduler/scheduler_config.json",
)
PIPELINE_PATTERNS = ("*.json", "*.txt", "unet/*.safetensors", "vae/*.safetensors", "text_encoder/*.safetensors")

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def doubles_batch_for_guidance(kind: str, guidance_scale: float) -> bool:
    """Classifier-free guidance doubles the UNet batch (and the UNet evaluations the log counts);
    LCM's guidance is a w-embedding instead."""
    return kind == "sd" and guidance_scale > 1.0


@dataclass
class ModelSpec:
    """A registered model: where its weights are and how it samples by default."""

    name: str
    source: str  # hub id or a local folder
    kind: str  # "sd" (DDIM kernel) or "lcm" (LCM kernel)
    summary: str
    resolution: int | None = None  # pixels; None: the UNet's sample_size × VAE factor
    guidance_scale: float = 1.0
    train_steps: int = 50  # default trajectory length for training
    train_prompts: str = "seen"  # default training prompt set (the compositional world's models: geneval_train)
    original_inference_steps: int = 50  # LCM only
    lcm_schedule: str = "diffusers"  # LCM only: "diffusers" or "rlcm" timesteps (alignzoo/models/lcm.py)
    env_var: str | None = None  # env var pointing at a local folder
    builder: Any = None  # callable(dest) -> folder, for architectures built from configs

    def resolve(self, local_path: str | os.PathLike | None = None) -> Path:
        if self.builder is not None and local_path is None:
            return Path(self.builder())
        return resolve_snapshot(
            self.source,
            PIPELINE_FILES,
            what=f"model {self.name}",
            option="--model-path",
            env_var=self.env_var,
            local_path=local_path,
            allow_patterns=PIPELINE_PATTERNS,
        )


def register_model(spec: ModelSpec) -> ModelSpec:
    MODELS.register(spec.name, spec.summary)(spec)
    return spec


def _import_builtin_models() -> None:
    import alignzoo.models.registry  # noqa: F401


def list_models() -> list[str]:
    _import_builtin_models()
    return MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    """A registered model's spec; ``NAME@rlcm`` selects an LCM schedule (alignzoo/models/lcm.py)."""
    from alignzoo.models.lcm import split_schedule, with_schedule

    _import_builtin_models()
    name, schedule = split_schedule(name)
    return with_schedule(MODELS.get(name), schedule)


def load_model(
    name_or_path: str,
    *,
    model_path: str | os.PathLike | None = None,
    kind: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> "DiffusionModel":
    """Loads a registered model (``tiny-sd``, ``sd-turbo``…) or any diffusers folder.

    A folder path that is not a registered name is loaded as SD-layout (``kind="sd"``) unless
    its scheduler is an LCMScheduler or ``kind="lcm"`` is given. ``NAME@rlcm`` (or
    ``lcm_schedule="rlcm"``) selects RLCM's LCM timestep schedule (alignzoo/models/lcm.py).
    """
    from alignzoo.models.lcm import LatentConsistencyModel
    from alignzoo.models.stable_diffusion import StableDiffusionModel

    spec = model_spec(name_or_path, kind, **overrides)
    folder = spec.resolve(model_path)
    cls = LatentConsistencyModel if spec.kind == "lcm" else StableDiffusionModel
    return cls.from_folder(folder, spec=spec, device=device, dtype=dtype)


def model_spec(name_or_path: str, kind: str | None = None, **overrides) -> ModelSpec:
    """The spec :func:`load_model` loads, without loading it: a registered model's, or a diffusers
    folder's (its kind from its scheduler unless given, its ``alignzoo.json`` defaults)."""
    from alignzoo.models.lcm import split_schedule, with_schedule

    _import_builtin_models()
    name_or_path, schedule = split_schedule(name_or_path)
    if name_or_path in MODELS:
        spec = MODELS.get(name_or_path)
    elif Path(name_or_path).is_dir():
        folder = Path(name_or_path)
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text()) if (folder / "scheduler" / "scheduler_config.json").exists() else {}
        guessed = "lcm" if sched.get("_class_name") == "LCMScheduler" else "sd"
        spec = ModelSpec(name=folder.name, source=str(folder), kind=kind or guessed, summary="local folder")
        spec = _with_folder_defaults(spec, folder)
    else:
        MODELS.get(name_or_path)  # raises the unknown-name error with the known models
        raise AssertionError  # unreachable
    if overrides:
        spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    return with_schedule(spec, schedule)


def _with_folder_defaults(spec: ModelSpec, folder: Path) -> ModelSpec:
    """Reads ``alignzoo.json`` (sampling defaults shipped beside a model folder), if any."""
    meta = folder / "alignzoo.json"
    if meta.exists():
        known = {f for f in ModelSpec.__dataclass_fields__}
        data = {k: v for k, v in json.loads(meta.read_text()).items() if k in known}
        spec = replace(spec, **data)
    return spec


def diffusers_pipeline(kind: str, vae, text_encoder, tokenizer, unet, scheduler):
    """A ``StableDiffusionPipeline`` (``kind`` "sd") or ``LatentConsistencyModelPipeline`` ("lcm")
    of these components, without a safety checker (no model alignzoo builds or trains has one)."""
    from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

    cls = LatentConsistencyModelPipeline if kind == "lcm" else StableDiffusionPipeline
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    return cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class DiffusionModel:
    """Shared part of the SD and LCM adapters. Subclasses set ``kind`` and the step kernel."""

    kind: str = "sd"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, spec: ModelSpec, device="cpu", dtype=torch.float32):
        self.unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler = unet, vae, text_encoder, tokenizer, scheduler
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype  # dtype of the frozen weights; LoRA parameters stay fp32
        for m in (unet, vae, text_encoder):
            m.requires_grad_(False)
            m.eval()
            m.to(self.device)
            if m.dtype != dtype:
                m.to(dtype=dtype)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.guidance_scale = float(spec.guidance_scale)
        self.lora_config = None

    # ----------------------------------------------------------------------------- fast paths
    def enable_fast_paths(
        self, channels_last: bool = False, compile: bool = False, gradient_checkpointing: bool = False, compile_mode: str | None = None
    ) -> dict[str, bool]:
        """Opt-in speed/memory options (each measured by ``alignzoo perf``; all off by default).

        * ``channels_last``: UNet and VAE convolution weights in NHWC layout (faster convolutions
          on tensor cores under bf16/fp16 autocast; on CPU it often is not);
        * ``compile``: ``torch.compile`` of the UNet in place (``nn.Module.compile``: the module,
          its config and its LoRA adapter stay as they are; toggling the adapter for reference
          log-probs recompiles once per state). Call it after the LoRA adapter is attached;
        * ``gradient_checkpointing``: recompute the UNet's activations during backward (less
          memory, about one extra forward of time: for large models and batches).

        Options already enabled stay enabled; returns the current state.
        """
        state = getattr(self, "fast_paths", {"channels_last": False, "compile": False, "gradient_checkpointing": False})
        if channels_last and not state["channels_last"]:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
            state["channels_last"] = True
        if gradient_checkpointing and not state["gradient_checkpointing"]:
            self.unet.enable_gradient_checkpointing()
            state["gradient_checkpointing"] = True
        if compile and not state["compile"]:
            self.unet.compile(**({"mode": compile_mode} if compile_mode else {}))
            state["compile"] = True
        self.fast_paths = state
        return dict(state)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_folder(cls, folder, spec: ModelSpec, device="cpu", dtype=torch.float32):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        with quiet():
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        if len(tokenizer) < 10:  # transformers can return an empty tokenizer offline
            raise ValueError(f"the tokenizer in {folder / 'tokenizer'} is empty: the folder is incomplete")
        scheduler = cls.make_scheduler(folder)
        spec = _with_folder_defaults(spec, folder) if spec.source == str(folder) else spec
        return cls(unet, vae, text_encoder, tokenizer, scheduler, spec, device=device, dtype=dtype)

    @classmethod
    def make_scheduler(cls, folder: Path):
        raise NotImplementedError

    def to_pipeline(self):
        """A diffusers pipeline of these components (for users' own inference). An LCM's scheduler
        spaces steps as modern diffusers does; for ``lcm_schedule="rlcm"`` call the pipeline with
        ``timesteps=model.timesteps(N).tolist()`` to sample the same schedule."""
        return diffusers_pipeline(self.kind, self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler)

    # ----------------------------------------------------------------------------- geometry
    @property
    def resolution(self) -> int:
        return int(self.spec.resolution or self.unet.config.sample_size * self.vae_scale)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.resolution // self.vae_scale
        return (int(self.unet.config.in_channels), s, s)

    # ----------------------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        out = self.text_encoder(tok.input_ids.to(self.device))[0]
        return out.to(self.dtype)

    @property
    def uses_cfg(self) -> bool:
        return doubles_batch_for_guidance(self.kind, self.guidance_scale)

    def negative_embeds(self, batch: int) -> torch.Tensor | None:
        if not self.uses_cfg:
            return None
        return self.encode_prompts([""]).expand(batch, -1, -1)

    # ----------------------------------------------------------------------------- schedule
    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The N-step schedule, first (noisiest) step first, as a long tensor on the device."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.scheduler.set_timesteps(num_steps, device="cpu")
        return self.scheduler.timesteps.to(self.device, torch.long).clone()

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, neg_embeds: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def init_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Initial latents x_T ~ N(0, I), drawn on the CPU generator for bit-identical runs."""
        noise = torch.randn((batch, *self.latent_shape), generator=generator, dtype=torch.float32)
        return noise.to(self.device)

    # ----------------------------------------------------------------------------- decoding
    def decode(self, latents: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """Latents (B, C, h, w) → images (B, 3, H, W) in [0, 1]; gradients kept if enabled."""
        sf = float(self.vae.config.scaling_factor)
        out = []
        for part in latents.split(chunk):
            img = self.vae.decode(part.to(self.dtype) / sf).sample
            out.append((img.float() / 2 + 0.5).clamp(0, 1))
        return torch.cat(out)

    # ----------------------------------------------------------------------------- LoRA
    def add_lora(
        self,
        rank: int = 4,
        alpha: float | None = None,
        target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
        init: str | bool = "gaussian",
        seed: int | None = None,
    ) -> None:
        """Attaches a PEFT LoRA adapter named ``default``; its parameters are fp32 and trainable."""
        from peft import LoraConfig

        if self.lora_config is not None:
            raise ValueError("a LoRA adapter is already attached")
        self.lora_config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights=init, target_modules=list(target_modules))
        state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        self.unet.add_adapter(self.lora_config)
        torch.random.set_rng_state(state)
        for p in self.trainable_parameters():
            p.data = p.data.float()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "lora_" in n]

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA weights in diffusers' key format (``unet.``-prefixed, as load_lora_weights reads)."""
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        return {f"unet.{k}": v.detach().cpu().contiguous() for k, v in sd.items()}

    def save_lora(self, directory: str | os.PathLike) -> Path:
        """Writes ``pytorch_lora_weights.safetensors``: ``pipe.load_lora_weights(directory)`` reads it."""
        from safetensors.torch import save_file

        if self.lora_config is None:
            raise ValueError("no LoRA adapter to save: call add_lora first")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "pytorch_lora_weights.safetensors.tmp"
        save_file(self.lora_state_dict(), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, d / "pytorch_lora_weights.safetensors")
        cfg = {"r": self.lora_config.r, "lora_alpha": self.lora_config.lora_alpha, "target_modules": sorted(self.lora_config.target_modules)}
        (d / "alignzoo_lora.json").write_text(json.dumps(cfg, indent=1))
        return d

    def load_lora(self, directory: str | os.PathLike) -> None:
        """Loads LoRA weights saved by :meth:`save_lora` (or any diffusers-format UNet LoRA)."""
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(directory)
        file = path / "pytorch_lora_weights.safetensors" if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"no LoRA weights at {file}: expected a folder written by save_lora / save_lora_weights")
        sd = load_file(str(file))
        sd = {k[len("unet.") :]: v for k, v in sd.items() if k.startswith("unet.")}
        if not sd:
            raise ValueError(f"{file} holds no 'unet.' LoRA weights")
        if self.lora_config is None:
            meta = path / "alignzoo_lora.json" if path.is_dir() else None
            if meta is not None and meta.exists():
                cfg = json.loads(meta.read_text())
                self.add_lora(rank=cfg["r"], alpha=cfg["lora_alpha"], target_modules=cfg["target_modules"])
            else:
                ranks = {v.shape[0] for k, v in sd.items() if "lora_A" in k or "lora.down" in k}
                self.add_lora(rank=max(ranks), target_modules=DEFAULT_LORA_TARGETS)
        result = set_peft_model_state_dict(self.unet, convert_unet_state_dict_to_peft(sd))
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise ValueError(f"LoRA file {file} does not match this model's adapter: unexpected keys {unexpected[:5]}")

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """The pretrained model: the LoRA adapter disabled for the duration (one UNet in memory)."""
        if self.lora_config is None:
            yield
            return
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()
