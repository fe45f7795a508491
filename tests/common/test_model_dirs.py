"""Model directories (both model stages): local directories are validated safely, and the content hash tracks the
model's files."""

import json
import shutil

import pytest

from assets.common.models.chat_template import read_chat_template
from assets.common.models.directories import ModelDirectoryError, prepare_local, validate_model_dir
from assets.common.models.integrity import model_content_hash


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_local_model_is_described_without_copying(model_copy):
    model = prepare_local(model_copy)
    assert model.path == model_copy.resolve() and model.source == f"local:{model_copy.resolve()}"
    assert model.eos_token == "<|im_end|>" and model.chat_template == read_chat_template(model_copy)
    assert model.num_parameters and model.num_parameters > 100_000
    assert len(model.content_hash) == 64


def test_content_hash_is_stable_and_tracks_weights_and_template(model_copy):
    first = model_content_hash(model_copy)
    (model_copy / "notes.txt").write_text("not part of the model")
    assert model_content_hash(model_copy) == first
    template = model_copy / "chat_template.jinja"
    template.write_text(template.read_text() + " ")
    assert model_content_hash(model_copy) != first


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json: missing"),
        (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "pickled weights"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
        (lambda d: (d / "chat_template.jinja").unlink(), "no chat template"),
        (lambda d: (d / "config.json").write_text(json.dumps(
            {**json.loads((d / "config.json").read_text()), "auto_map": {"AutoModel": "x.Y"}})), "auto_map"),
    ],
    ids=["no-config", "pickles-only", "no-tokenizer", "no-chat-template", "remote-code"],
)
def test_unusable_directories_get_a_clear_error(model_copy, breakage, message):
    breakage(model_copy)
    with pytest.raises(ModelDirectoryError, match=message) as error:
        validate_model_dir(model_copy)
    assert str(model_copy) in str(error.value)


def test_a_base_model_needs_no_chat_template_when_one_is_chosen_for_it(model_copy):
    (model_copy / "chat_template.jinja").unlink()
    model = prepare_local(model_copy, require_chat_template=False)
    assert model.chat_template == ""


def test_errors_name_the_asset_whose_config_points_there(tmp_path):
    with pytest.raises(ModelDirectoryError, match="Set teacher_model config `path`"):
        validate_model_dir(tmp_path / "missing", asset="teacher_model")


def test_remote_code_is_allowed_only_when_asked(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    validate_model_dir(model_copy, allow_remote_code=True)


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelDirectoryError, match="not a directory"):
        validate_model_dir(tmp_path / "missing")


def test_a_conversion_is_found_where_it_went(tmp_path):
    """`convert_gguf` never replaces a converted directory: a conversion of another source goes beside it, named after
    its content, and `converted_dir` finds each by its source marker."""
    from assets.common.models.directories import SOURCE_MARKER, converted_dir

    first, other = tmp_path / "model", tmp_path / "model-0123456789abcdef"
    for directory, source in ((first, "gguf-1 v1"), (other, "gguf-1 v2")):
        directory.mkdir()
        (directory / SOURCE_MARKER).write_text(source + "\n")
    assert converted_dir(first, "gguf-1 v1") == first
    assert converted_dir(first, "gguf-1 v2") == other
    assert converted_dir(first, "gguf-1 v3") is None
