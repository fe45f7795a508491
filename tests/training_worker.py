"""A training process for the kill-and-resume test (tests/training/test_resume.py): fine-tunes the tiny model for 12
steps, checkpointing every 3, and pauses after each logged step so the test can kill it (SIGKILL, whole process
group) between checkpoints.

    python -m tests.training_worker MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import random
import sys
import time

from training.config import TrainConfig

CONFIG = TrainConfig(max_steps=12, eval_steps=3, logging_steps=1, per_device_train_batch_size=4, max_length=256,
                     save_total_limit=10, seed=0, early_stopping_patience=0)
PAUSE_SECONDS = 1.5

_WORDS = ("apple", "river", "stone", "cloud", "violin", "garden", "copper", "lantern", "meadow", "harbor")


def conversations(n: int, seed: int) -> list[list[dict]]:
    """``n`` deterministic synthetic chats (some with a system prompt, some with two turns)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        word = rng.choice(_WORDS)
        messages = [{"role": "system", "content": "You answer briefly."}] if i % 3 == 0 else []
        messages += [{"role": "user", "content": f"What is {a} plus {b}?"},
                     {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]
        if i % 2:
            messages += [{"role": "user", "content": f"Spell '{word}' backwards."},
                         {"role": "assistant", "content": f"'{word}' backwards is '{word[::-1]}'."}]
        out.append(messages)
    return out


TRAIN = conversations(48, seed=1)
VALIDATION = conversations(8, seed=2)


def rows(train: list[list[dict]] = TRAIN, validation: list[list[dict]] = VALIDATION):
    """The training table ``train`` takes: ids from the messages, split train / validation."""
    from training.dataset import conversation_rows

    return conversation_rows(train, validation)


def main() -> None:
    from training.trainer import train

    model_dir, out_dir = sys.argv[1], sys.argv[2]

    def log(message: str) -> None:
        print(message, flush=True)
        if message.startswith("step "):
            time.sleep(PAUSE_SECONDS)  # time for the test to kill us between checkpoints

    train(model_dir, rows(), out_dir, CONFIG, log=log)


if __name__ == "__main__":
    main()
