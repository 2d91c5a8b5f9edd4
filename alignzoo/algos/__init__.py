"""Algorithms. Importing this package registers the built-in ones."""
from alignzoo.algos.base import ALGORITHMS, AlgoConfig, Algorithm, get_algorithm, list_algorithms, load_plugin, register_algorithm  # noqa: F401
from alignzoo.algos import ddpo, rebel, d3po, sdpo, rlcm, lasro  # noqa: F401,E402
