"""A generation process for the kill-and-resume test: runs one shard with the tiny model and pauses after each
committed batch, so the test can kill it (SIGKILL, whole process group) between batches."""

import sys
import time


def main() -> None:
    from transformers import AutoTokenizer

    from assets.common.models.engine import EngineConfig, VLLMGenerator
    from assets.generation.shards import run_shard
    from tests.generation_config import tiny_magpie_config

    model_dir, work_dir = sys.argv[1], sys.argv[2]
    config = tiny_magpie_config()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def log(message: str) -> None:
        print(message, flush=True)
        if "generated" in message:
            time.sleep(3)  # time for the test to kill us between batches

    run_shard(lambda: VLLMGenerator(model_dir, EngineConfig(max_model_len=512, cpu_kv_cache_gb=1), seed=config.seed),
              tokenizer, config, "tiny", "tiny-hash", work_dir, batch_size=8, engine_key="vllm-cpu", log=log)


if __name__ == "__main__":
    main()
