"""The prepared student directory: the chosen template byte for byte, markers as single special tokens (new ones
with mean-initialised embedding rows), EOS = end-of-turn, the source never modified; and the errors that say which
setting to change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from assets.base_model.core import prepare_student, template_choice
from assets.common.models.chat_template import read_chat_template
from assets.common.models.directories import prepare_local
from assets.common.models.integrity import model_content_hash
from assets.common.models.templates import (
    REGISTRY,
    TEMPLATE_DIR,
    ChosenTemplate,
    TemplateChoiceError,
    choose_template,
    read_chat_markers,
    registered_template,
    template_markers,
)

EXCHANGE = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"}]


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model as a base model: no chat template (its ChatML markers are in the vocabulary all the same)."""
    root = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("base") / "tiny-base")
    (root / "chat_template.jinja").unlink()
    return root


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    return tmp_path_factory.mktemp("students")


def _expected_rendering(tokenizer_dir, template_text, messages, **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template_text, **kwargs)


def test_keeping_the_models_own_template_links_the_weights_and_changes_nothing(tiny_model_dir, students):
    original = prepare_local(tiny_model_dir)
    student = prepare_student(original, "tokenizer", students)
    out = student.model.path
    assert out.parent == students and out.name.startswith("tiny-chat-")
    assert (out / "chat_template.jinja").read_bytes() == (tiny_model_dir / "chat_template.jinja").read_bytes()
    assert (out / "model.safetensors").stat().st_ino == (tiny_model_dir / "model.safetensors").stat().st_ino
    assert student.weights == "hard-linked"
    manifest = student.manifest()
    assert manifest["end_of_turn"] == {"token": "<|im_end|>", "id": 2} and manifest["eos_token"] == "<|im_end|>"
    assert manifest["generation_eos_token_ids"] == [2] and manifest["pad_token"] == "<|im_end|>"  # pad = EOS, kept
    assert manifest["added_token_ids"] == [] and manifest["untrained_suspect_token_ids"] == []
    assert manifest["original"]["content_hash"] == original.content_hash
    assert manifest["template"]["name"] == "tokenizer"


def test_a_registry_template_adds_missing_markers_with_mean_rows(tiny_model_dir, students):
    import torch
    from safetensors.torch import load_file

    before = model_content_hash(tiny_model_dir)
    student = prepare_student(prepare_local(tiny_model_dir), "gemma", students)
    out = student.model.path
    assert model_content_hash(tiny_model_dir) == before  # the source directory is never modified
    assert (out / "chat_template.jinja").read_text() == (TEMPLATE_DIR / "gemma.jinja").read_text()
    tokenizer = AutoTokenizer.from_pretrained(out)
    for messages, prompt in ((EXCHANGE, True), (EXCHANGE[:3], False)):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert rendered == _expected_rendering(out, registered_template("gemma").text, messages,
                                               add_generation_prompt=prompt)
    assert rendered.startswith("<|im_start|><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n")
    markers = {m.token: m for m in read_chat_markers(out).markers}
    assert {t: (m.id, m.added, m.untrained_suspect) for t, m in markers.items()} == {
        "<start_of_turn>": (1024, True, False), "<end_of_turn>": (1025, True, False)}
    assert tokenizer("a<end_of_turn>b", add_special_tokens=False)["input_ids"][1] == 1025
    assert tokenizer.eos_token == "<end_of_turn>" and tokenizer.pad_token == "<|im_end|>"  # pad unchanged
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [1025, 2]  # end of turn first, the original EOS kept
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["pad_token_id"]) == (1026, 1025, 2)
    assert student.weights == "rewritten (embeddings resized)"
    weights, old = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # untied: both tables get mean rows
        assert torch.equal(weights[name][:1024], old[name])
        expected = old[name].double().mean(dim=0).float()
        assert torch.allclose(weights[name][1024], expected) and torch.allclose(weights[name][1025], expected)
    manifest = student.manifest()
    assert manifest["added_token_ids"] == [1024, 1025] and manifest["text_end"] == {"token": "<|im_end|>", "id": 2}
    assert {"<start_of_turn>", "<end_of_turn>", "<|im_end|>"} <= set(manifest["special_tokens"])


def test_a_prepared_directory_is_reused_and_keyed_by_template(tiny_model_dir, students):
    original = prepare_local(tiny_model_dir)
    first = prepare_student(original, "gemma", students)
    again = prepare_student(original, "gemma", students)
    assert again.model.path == first.model.path and again.weights == "reused"
    assert again.model.content_hash == first.model.content_hash
    assert prepare_student(original, "chatml", students).model.path != first.model.path
    assert not [p for p in students.iterdir() if p.name.startswith(".")]  # no temporary directory left behind


def test_markers_a_base_model_has_but_never_used_are_untrained_suspect(base_dir, students):
    student = prepare_student(prepare_local(base_dir, require_chat_template=False), "chatml", students)
    markers = {m.token: (m.id, m.added, m.untrained_suspect) for m in student.markers.markers}
    assert markers == {"<|im_start|>": (1, False, True), "<|im_end|>": (2, False, True)}
    assert student.markers.rows_to_initialise == [1, 2]
    assert student.weights == "hard-linked"
    # the tiny's bos_token is <|im_start|>, a turn marker here: not written twice
    tokenizer = AutoTokenizer.from_pretrained(student.model.path)
    assert tokenizer.apply_chat_template(EXCHANGE[1:3], tokenize=False) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4.<|im_end|>\n")


def test_a_jinja_file_gets_its_markers_found_by_rendering(base_dir, students, tmp_path):
    template = tmp_path / "turns.jinja"
    template.write_text("{% for m in messages %}<|turn|>{{ m['role'] }}: {{ m['content'] }}<|end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|turn|>assistant: {% endif %}")
    student = prepare_student(prepare_local(base_dir, require_chat_template=False), str(template), students)
    assert [(m.token, m.added) for m in student.markers.markers] == [("<|turn|>", True), ("<|end|>", True)]
    assert student.markers.end_of_turn == "<|end|>" and student.markers.template_source == f"file:{template}"
    assert read_chat_template(student.model.path) == template.read_text()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_registry_declares_the_markers_its_templates_write(tiny_model_dir, name):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    entry = registered_template(name)
    found = template_markers(tokenizer, ChosenTemplate(name, entry.source, entry.text))  # found, not declared
    assert set(found.markers) == set(REGISTRY[name].markers) and found.end_of_turn == REGISTRY[name].end_of_turn


def test_an_unknown_template_name_lists_the_registry(tiny_model_dir):
    with pytest.raises(TemplateChoiceError, match=r"unknown chat template 'vicuna'.*chatml, gemma, llama3") as error:
        choose_template("vicuna", tiny_model_dir)
    assert "base_model config `chat_template`" in str(error.value)


def test_keeping_the_tokenizers_template_of_a_base_model_names_the_setting(base_dir):
    with pytest.raises(TemplateChoiceError, match=r"base_model config `chat_template` is 'tokenizer', but .* no "
                                                  r"chat template"):
        choose_template("tokenizer", base_dir)
    original = prepare_local(base_dir, require_chat_template=False)
    with pytest.raises(TemplateChoiceError, match=r"base_model config `chat_template` is unset .* choose one"):
        template_choice(None, original, embedded=False)
    assert template_choice(None, original, embedded=True) == "gemma"
    assert template_choice("chatml", original, embedded=False) == "chatml"


def test_a_local_chat_model_keeps_its_own_template_by_default(tiny_model_dir):
    assert template_choice(None, prepare_local(tiny_model_dir), embedded=False) == "tokenizer"


BROKEN_TEMPLATES = {
    "ignores-messages": ("Hello there.", "does not render a user/assistant exchange"),
    "raises": ("{{ raise_exception('no chat here') }}", "does not render a user/assistant exchange: .*no chat here"),
    "no-end-of-turn": ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
                       "writes no end-of-turn marker"),
    "rewrites-earlier-turns": ("{% for m in messages %}<|t|>{{ m['content'] }}<|e|>{% endfor %}{{ messages|length }}",
                               "does not extend the previous rendering"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_TEMPLATES))
def test_a_jinja_file_that_cannot_serve_a_chat_is_refused_naming_the_file(base_dir, students, tmp_path, name):
    text, message = BROKEN_TEMPLATES[name]
    template = tmp_path / f"{name}.jinja"
    template.write_text(text)
    with pytest.raises(TemplateChoiceError, match=message) as error:
        prepare_student(prepare_local(base_dir, require_chat_template=False), str(template), students)
    assert str(template) in str(error.value)


def test_a_missing_jinja_file_is_named(tiny_model_dir, tmp_path):
    with pytest.raises(TemplateChoiceError, match=r"no-such\.jinja: no such file"):
        choose_template(str(tmp_path / "no-such.jinja"), tiny_model_dir)


def test_templates_are_package_files_with_no_trailing_text():
    for name, entry in REGISTRY.items():
        text = (TEMPLATE_DIR / entry.file).read_text()
        assert text.rstrip().endswith("-%}"), name  # whitespace control: the file's final newline is not rendered


# ---- the real Gemma 3 tokenizer (from the embedded GGUF): its markers exist but were never trained ------------
def _gemma_available() -> bool:
    import importlib.util

    from assets.base_model import gemma

    return importlib.util.find_spec(gemma.GEMMA_PACKAGE) is not None


@pytest.mark.skipif(not _gemma_available(), reason="the embedded Gemma GGUF packages are not installed")
def test_gemma_base_with_gemma_template_uses_its_existing_markers(tiny_model_dir, tmp_path_factory, students):
    """The real Gemma 3 tokenizer with stand-in weights (no token is added, so the weights are only linked)."""
    from assets.base_model.gemma import embedded_gemma_gguf, gemma_bpe_tokenizer

    root = tmp_path_factory.mktemp("gemma") / "gemma-tokenizer"
    gemma_bpe_tokenizer(embedded_gemma_gguf(tmp_path_factory.mktemp("gguf"))).save_pretrained(root)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, root / name)
    student = prepare_student(prepare_local(root, require_chat_template=False), "gemma", students)
    manifest = student.manifest()
    assert manifest["markers"] == [
        {"token": "<start_of_turn>", "id": 105, "added": False, "untrained_suspect": True},
        {"token": "<end_of_turn>", "id": 106, "added": False, "untrained_suspect": True}]
    assert manifest["end_of_turn"] == {"token": "<end_of_turn>", "id": 106}
    assert manifest["text_end"] == {"token": "<eos>", "id": 1} and manifest["generation_eos_token_ids"] == [106, 1]
    assert manifest["pad_token"] == "<pad>" and student.weights == "hard-linked"
    tokenizer = AutoTokenizer.from_pretrained(student.model.path)
    rendered = tokenizer.apply_chat_template(EXCHANGE, tokenize=False, add_generation_prompt=True)
    assert rendered == ("<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4."
                        "<end_of_turn>\n<start_of_turn>user\nAnd 3+3?<end_of_turn>\n<start_of_turn>model\n")
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[:3] == [2, 105, 2364] and ids.count(106) == 3 and ids.count(2) == 1  # one <bos>, markers whole
    assert Path(student.model.path / "chat_template.jinja").read_bytes() == (TEMPLATE_DIR / "gemma.jinja").read_bytes()
