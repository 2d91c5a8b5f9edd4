"""Reward models. Importing this package registers the built-in rewards."""
from alignzoo.rewards.base import (  # noqa: F401
    REWARDS,
    Reward,
    RewardError,
    get_reward,
    list_rewards,
    register_reward,
    validate_inputs,
)
