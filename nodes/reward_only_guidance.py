"""Guidance as Particle Reward: a guidance whose loss only scores particles and takes no gradient step."""
from __future__ import annotations

import dataclasses

from .guidance_settings import GUIDANCE


class RewardOnlyGuidance:
    DESCRIPTION = ("Keeps this guidance's loss for choosing among particles (the options node's particles) and drops "
                   "its gradient steps: for a loss whose gradient misleads, or to run a plain particle sampler.")
    CATEGORY = "universal_guidance/guidance"
    RETURN_TYPES = (GUIDANCE,)
    FUNCTION = "reward_only"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"guidance": (GUIDANCE, {"tooltip": "Any guidance; combine it with others to guide and "
                                                                "score at once."})}}

    def reward_only(self, guidance):
        return (tuple(dataclasses.replace(term, reward_only=True) for term in guidance),)


NODE_CLASS_MAPPINGS = {"UGDRewardOnlyGuidance": RewardOnlyGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {"UGDRewardOnlyGuidance": "Guidance as Particle Reward"}
