"""Generation settings shared by the generation tests and their worker process."""

from assets.common.models.engine import SamplingConfig
from assets.generation.magpie import MagpieConfig


def tiny_magpie_config(num_conversations: int = 40) -> MagpieConfig:
    return MagpieConfig(
        num_conversations=num_conversations,
        num_turns=2,
        instruction=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=32),
        response=SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=32),
        system_prompts=(("", 1.0), ("You answer briefly.", 1.0)),
        seed=5,
        shard=3,
    )
