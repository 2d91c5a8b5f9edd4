"""Algorithms. Importing this package registers the built-in ones."""

from alignzoo.algos import d3po, ddpo, diffusion_dpo, diffusion_nft, dpok, grpo, hybrid, lasro, rebel, reward_backprop, rlcm, sdpo  # noqa: F401,E402
from alignzoo.algos.base import ALGORITHMS, AlgoConfig, Algorithm, get_algorithm, list_algorithms, load_plugin, register_algorithm  # noqa: F401
