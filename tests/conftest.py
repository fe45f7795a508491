"""Shared fixtures: the tiny chat model the tests build (random weights, local tokenizer, ChatML template)."""

from __future__ import annotations

import os

import pytest

# vLLM on CPU: bind its OpenMP threads to the cores we have and keep the KV cache small.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "tiny-chat")
