"""The memory plan budgets the memory of the device the run trains on: CUDA memory on a GPU, host RAM on a CPU.
A GPU host is played by a stand-in for ``torch.cuda`` (its device query); the plan, the trainer's use of it and the
Trainer it builds are the real ones."""

import pytest

from training.config import TrainConfig
from training.loss import VOCABULARY_CHUNK
from training.memory import GB, ModelShape, device_memory, plan_memory

GEMMA_270M = ModelShape(parameters=268_098_176, hidden=640, attention=1024, key_value=256, intermediate=2048,
                        layers=18, vocabulary=262_144)
DEMO_BATCH = 8 * 512  # the demo's batch x max_length: about 14 GB without checkpointing


def test_memory_plan_checkpoints_only_what_does_not_fit():
    small = plan_memory(GEMMA_270M, tokens_per_batch=8 * 128, lora=True, budget_gb=10)
    assert not small.gradient_checkpointing and "fits" in small.reason
    demo = plan_memory(GEMMA_270M, tokens_per_batch=8 * 512, lora=True, budget_gb=10,
                       vocabulary_chunk=VOCABULARY_CHUNK, trained_embedding_rows=True)
    assert demo.gradient_checkpointing and "exceeds" in demo.reason
    assert demo.estimate_checkpointed_gb < demo.estimate_gb and demo.estimate_checkpointed_gb < 12
    assert demo.lm_head_gb < 1.5  # the chunked head: never tokens x 262k logits (4 GB for this batch)
    roomy = plan_memory(GEMMA_270M, tokens_per_batch=8 * 512, lora=True, budget_gb=64)
    assert not roomy.gradient_checkpointing
    assert plan_memory(GEMMA_270M, 8, lora=True, setting="on", budget_gb=64).gradient_checkpointing
    full = plan_memory(GEMMA_270M, 8 * 128, lora=False, budget_gb=64)
    assert full.weights_gb == pytest.approx(16 * GEMMA_270M.parameters / 1024**3, abs=0.01)


class GpuHost:
    """``torch.cuda`` as a GPU host shows it: ``devices[i]`` = (free, total) bytes of device i."""

    def __init__(self, *devices: tuple[float, float]):
        self.devices = [(int(free * GB), int(total * GB)) for free, total in devices]
        self.asked: list[int] = []

    def is_available(self) -> bool:
        return True

    def current_device(self) -> int:
        return 0

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self.asked.append(index)
        return self.devices[index]


def test_a_gpu_run_budgets_the_devices_memory_not_the_hosts():
    host = plan_memory(GEMMA_270M, DEMO_BATCH, lora=True, memory=device_memory())
    assert host.device == "cpu" and host.memory_source == "/proc/meminfo"
    small_gpu = plan_memory(GEMMA_270M, DEMO_BATCH, lora=True, memory=device_memory(GpuHost((7.5, 8))))
    assert small_gpu.device == "cuda:0" and small_gpu.memory_source == "torch.cuda.mem_get_info"
    assert small_gpu.device_total_gb == 8 and small_gpu.budget_gb == pytest.approx(6.4)
    assert small_gpu.gradient_checkpointing and "80% of cuda:0's 8.0 GB" in small_gpu.reason
    large_gpu = plan_memory(GEMMA_270M, DEMO_BATCH, lora=True, memory=device_memory(GpuHost((79, 80))))
    assert large_gpu.budget_gb == pytest.approx(64) and not large_gpu.gradient_checkpointing
    assert large_gpu.estimate_gb == small_gpu.estimate_gb == host.estimate_gb  # the run is the same; the budget not


def test_the_budget_is_capped_by_free_device_memory_and_the_config_overrides_it():
    busy = plan_memory(GEMMA_270M, DEMO_BATCH, lora=True, memory=device_memory(GpuHost((20, 80))))
    assert busy.budget_gb == pytest.approx(20) and busy.available_gb == pytest.approx(20)
    assert busy.budget_rule == "free memory of cuda:0 (less than 80% of it)" and busy.gradient_checkpointing is False
    configured = plan_memory(GEMMA_270M, DEMO_BATCH, lora=True, budget_gb=10, memory=device_memory(GpuHost((79, 80))))
    assert configured.budget_gb == 10 and configured.budget_rule == "memory_budget_gb in the config"
    assert configured.gradient_checkpointing and configured.device == "cuda:0"


def test_each_torchrun_process_reads_its_own_device(monkeypatch):
    gpus = GpuHost((79, 80), (7.5, 8))
    monkeypatch.setenv("LOCAL_RANK", "1")
    plan = plan_memory(GEMMA_270M, DEMO_BATCH, lora=True, memory=device_memory(gpus))
    assert gpus.asked == [1] and plan.device == "cuda:1" and plan.device_total_gb == 8
    assert plan.gradient_checkpointing


def test_the_trainer_plans_for_the_device_and_records_it(tiny_model_dir, tmp_path):
    """The tiny model fits half the host's RAM (no checkpointing on this CPU); on a 2 GB GPU the same run needs it,
    and the Trainer is built with it; device and budget are in ``memory_plan`` (sft_model metadata, lineage)."""
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import read_chat_template
    from training.dataset import conversation_rows, tokenize_rows
    from training.trainer import build_trainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[{"role": "user", "content": f"Number {i}?"}, {"role": "assistant", "content": f"It is {i}."}]
                     for i in range(4)]
    data = tokenize_rows(tokenizer, conversation_rows(conversations), read_chat_template(tiny_model_dir), 256)
    config = TrainConfig(max_steps=1, per_device_train_batch_size=2, early_stopping_patience=0)
    on_cpu = build_trainer(tiny_model_dir, tokenizer, data, config, tmp_path / "cpu", log=lambda _: None)
    assert on_cpu.memory_plan["device"] == "cpu" and not on_cpu.args.gradient_checkpointing
    on_gpu = build_trainer(tiny_model_dir, tokenizer, data, config, tmp_path / "gpu", log=lambda _: None,
                           memory=device_memory(GpuHost((2, 2))))
    plan = on_gpu.memory_plan
    assert plan["device"] == "cuda:0" and plan["budget_gb"] == pytest.approx(1.6) and plan["device_total_gb"] == 2
    assert plan["gradient_checkpointing"] and on_gpu.args.gradient_checkpointing
    assert plan["estimate_gb"] == on_cpu.memory_plan["estimate_gb"]


def test_each_process_plans_for_its_share_of_the_global_batch(tiny_model_dir, monkeypatch):
    """With 4 processes (torchrun), each trains a quarter of the global batch on its own device."""
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import read_chat_template
    from training.dataset import conversation_rows, tokenize_rows
    from training.trainer import memory_plan

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[{"role": "user", "content": f"Number {i}?"}, {"role": "assistant", "content": f"It is {i}."}]
                     for i in range(4)]
    data = tokenize_rows(tokenizer, conversation_rows(conversations), read_chat_template(tiny_model_dir), 256)
    config = TrainConfig(per_device_train_batch_size=8)
    alone = memory_plan(tiny_model_dir, data, config, device_memory(GpuHost((8, 8))))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    shared = memory_plan(tiny_model_dir, data, config, device_memory(GpuHost(*[(8, 8)] * 4)))
    assert alone.tokens_per_batch == 4 * shared.tokens_per_batch > 0
    assert shared.device == "cuda:3"


def test_padding_free_steps_are_planned_for_their_longest_rows_laid_end_to_end(tiny_model_dir):
    """Padded batches hold batch x the longest row; a padding-free step lays its rows end to end, so the batch's
    longest rows together bound it (one long row does not make every row long); packing fills max_length rows."""
    from transformers import AutoTokenizer

    from assets.common.models.chat_template import read_chat_template
    from training.dataset import conversation_rows, tokenize_rows
    from training.trainer import TRAINED, memory_plan

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conversations = [[{"role": "user", "content": "Say it. " * (40 if i == 0 else 1 + i)},
                      {"role": "assistant", "content": f"It is {i}."}] for i in range(6)]
    data = tokenize_rows(tokenizer, conversation_rows(conversations), read_chat_template(tiny_model_dir), 512)
    lengths = sorted(data.rows.filter(data.rows["status"] == TRAINED)["num_tokens"].to_list(), reverse=True)
    assert len(lengths) == 6 and lengths[0] > 2 * lengths[1]  # one long row among short ones
    host = device_memory(GpuHost((8, 8)))
    padded = memory_plan(tiny_model_dir, data, TrainConfig(per_device_train_batch_size=4), host)
    free = memory_plan(tiny_model_dir, data, TrainConfig(per_device_train_batch_size=4, padding_free=True), host)
    packed = memory_plan(tiny_model_dir, data, TrainConfig(per_device_train_batch_size=4, packing=True,
                                                           max_length=300), host)
    assert padded.tokens_per_batch == 4 * lengths[0]
    assert free.tokens_per_batch == sum(lengths[:4]) < padded.tokens_per_batch
    assert packed.tokens_per_batch == 4 * 300
    assert free.estimate_gb < padded.estimate_gb
