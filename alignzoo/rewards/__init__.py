"""Reward models. Importing this package registers the built-in rewards."""
from alignzoo.rewards.base import (  # noqa: F401
    REWARDS,
    Reward,
    RewardError,
    check_reward_kwargs,
    get_reward,
    list_rewards,
    register_reward,
    reward_arguments,
    validate_inputs,
)
from alignzoo.rewards import aesthetic, control, hpsv2, imagereward, jpeg, pickscore  # noqa: F401,E402
from alignzoo.rewards import tiny  # noqa: F401
from alignzoo.rewards import tiny_compose  # noqa: F401,E402
from alignzoo.rewards import tiny_preference  # noqa: F401,E402
