"""A tiny chat model the tests build: random Llama weights, a locally trained BPE tokenizer, a ChatML template.

The weights are random, but shaped so that generation ends on its own: every input embedding carries a constant
feature in dimension 0, which the final norm turns into a large positive activation; the lm_head row of the
end-of-turn token reads that feature, giving it a fixed probability (~8%) at every step, and the rows of the other
special tokens read it negatively, so they are (practically) never sampled. Instructions and answers are then a
dozen random tokens long and end on end-of-turn, as a real chat model's do.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

# SmolLM2's own template (ChatML with a default system prompt): the embedded default's real shape.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_PROBABILITY = 0.08


def _corpus() -> list[str]:
    import collections
    import json as json_module
    import pathlib
    import string
    import textwrap

    texts = []
    for module in (collections, json_module, pathlib, string, textwrap, inspect):
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj)
            if isinstance(doc, str):
                texts.append(doc)
    return texts


def build_tiny_model(out_dir: str | Path, vocab_size: int = 1024, seed: int = 0, base: bool = False) -> Path:
    """The tiny chat model; ``base=True`` builds a tiny *base* model instead: another vocabulary (no chat markers,
    one special token that ends texts) and no chat template, as a pretrained base model ships."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = SPECIAL_TOKENS[:1] if base else SPECIAL_TOKENS
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    bos, eos = ("<|endoftext|>", "<|endoftext|>") if base else ("<|im_start|>", "<|im_end|>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=bos, eos_token=eos, pad_token=eos, unk_token="<|endoftext|>",
        model_max_length=2048,
    )
    if not base:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=2048,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        activation = math.sqrt(config.hidden_size)  # dim 0 after RMSNorm when it dominates the residual
        eos_logit = math.log(EOS_PROBABILITY * config.vocab_size / (1 - EOS_PROBABILITY))
        head = model.lm_head.weight
        head[:, 0] = 0.0
        head[tokenizer.eos_token_id, 0] = eos_logit / activation
        for token in specials:
            if token != eos:
                head[tokenizer.convert_tokens_to_ids(token), 0] = -2.0
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    built = {"built_by": "tests/tiny_model.py", "seed": seed, **({"base": True} if base else {})}
    (out_dir / "tiny_model.json").write_text(json.dumps(built))
    return out_dir
