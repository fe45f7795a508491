"""How often tuned models end their answers: the stop check's prompts and 15 more of the same kind (run by hand).

    .venv/bin/python benchmarks/stop_rate.py data/models/sft/<model-dir> [<model-dir> ...]

`assistant_evaluation`'s blocking check `answers_stop_on_eos` asks for 4 of its 5 fixed prompts answered to the
end-of-turn token, greedy, 256 tokens: a verdict that one prompt moves. This answers the same 5 and 15 more simple
requests (written before any answer to them was seen) the same way, through the evaluation's own answering code
(one vLLM start per model, the demo's engine settings), and prints per model how many of the 5, of the 15 and of
all 20 ended on the end-of-turn token: the same 80% rule on four times the prompts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_average  # noqa: E402

MORE_PROMPTS = (
    "What is 7 times 8?", "Name three primary colors.", "Give me a synonym for 'happy'.",
    "What is the boiling point of water in Celsius?", "Write one sentence about the ocean.",
    "Who wrote 'Romeo and Juliet'?", "List the days of the week.", "Summarize in one sentence why exercise is healthy.",
    "What is the plural of 'mouse'?", "Suggest a name for a pet goldfish.", "How many continents are there?",
    "Convert 5 kilometers to meters.", "Write a short thank-you note to a teacher.", "What does CPU stand for?",
    "Give one example of a renewable energy source.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model directories (a tuned model: data/models/sft/<name>)")
    parser.add_argument("--max-tokens", type=int, default=256, help="answer budget (default 256, the check's)")
    args = parser.parse_args()

    from assets.common.models.engine import EngineConfig
    from assets.evaluation.answering import PromptSet, answer_prompt_sets
    from assets.evaluation.stopping import FIXED_PROMPTS

    prompts = FIXED_PROMPTS + MORE_PROMPTS
    print("| model | stop check's 5 | 15 more | all 20 | ran to max_tokens |")
    print("|---|---|---|---|---|")
    for model in args.models:
        answers = answer_prompt_sets("tuned", model, [PromptSet("stop", tuple(range(len(prompts))), prompts,
                                                                args.max_tokens)],
                                     EngineConfig(max_model_len=2048, cpu_kv_cache_gb=2))
        ended = [c.finish_reason == "stop" for c in answers.answers["stop"]]
        runaways = [p for p, c in zip(prompts, answers.answers["stop"], strict=True) if c.finish_reason == "length"]
        print(f"| {Path(model).name} | {sum(ended[:5])} | {sum(ended[5:])} | {sum(ended)} | {runaways} |", flush=True)
    print(f"load average {load_average()}")


if __name__ == "__main__":
    main()
