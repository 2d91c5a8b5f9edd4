"""Reward models. Importing this package registers the built-in rewards."""

from alignzoo.rewards import (  # noqa: F401,E402
    aesthetic,
    control,
    hpsv2,
    imagereward,
    jpeg,
    pickscore,
    tiny,  # noqa: F401
    tiny_compose,  # noqa: F401,E402
    tiny_preference,  # noqa: F401,E402
)
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
