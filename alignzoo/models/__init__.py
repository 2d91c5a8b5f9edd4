"""Model adapters and the shared dual-state sampler."""

from alignzoo.models.base import MODELS, DiffusionModel, ModelSpec, get_model_spec, list_models, load_model, model_spec, register_model  # noqa: F401
from alignzoo.models.sampling import Trajectory, decode_steps, recompute_log_probs, sample, sample_groups  # noqa: F401
