"""Assistant-only loss masks found by rendering the model's own template (training/masking.py), on real tokenizers."""

from __future__ import annotations

import re

import pytest

from assets.common.models.chat_template import TemplateError, read_chat_template, render
from training.masking import (
    TokenizedConversation,
    assistant_end_of_turn,
    tokenize_conversation,
    tokenize_conversations,
)

SYSTEM = "You answer in one short sentence."
CONVERSATIONS = {
    "single-turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris is the capital."},
    ],
    "single-turn+system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "Seven is prime."},
    ],
    "multi-turn": [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": "Now in French, with accents: café?"},
        {"role": "assistant", "content": "Bonjour, un café très fort 😀."},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": "You are welcome."},
    ],
    "multi-turn+system": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Count to two."},
        {"role": "assistant", "content": "One, two."},
        {"role": "user", "content": "And back?"},
        {"role": "assistant", "content": "Two, one."},
    ],
}

# Llama-3.1-style: BOS, a system header always written (with a dated preamble), <|eot_id|> ends every turn.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# Gemma-style: no system role (the system prompt is folded into the first user turn), the assistant is "model",
# roles must alternate, <end_of_turn> ends every turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set first_user_prefix = '' %}"
    "{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{%- set role = 'model' %}{%- else %}{%- set role = message['role'] %}"
    "{%- endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}"
)
GEMMA_TOKENS = ["<bos>", "<start_of_turn>", "<end_of_turn>"]


def _tokenizer_with(tiny_model_dir, tokens: list[str], bos: str, template: str):
    """A copy of the tiny tokenizer with another family's special tokens and template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    added = tokenizer.add_tokens(tokens, special_tokens=True)
    assert added == len(tokens)
    tokenizer.bos_token = bos
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def chatml(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer, read_chat_template(tiny_model_dir), "<|im_end|>", ["<|im_start|>"]


@pytest.fixture(scope="module")
def llama3(tiny_model_dir):
    tokenizer = _tokenizer_with(tiny_model_dir, LLAMA3_TOKENS, "<|begin_of_text|>", LLAMA3_TEMPLATE)
    return tokenizer, LLAMA3_TEMPLATE, "<|eot_id|>", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]


@pytest.fixture(scope="module")
def gemma(tiny_model_dir):
    tokenizer = _tokenizer_with(tiny_model_dir, GEMMA_TOKENS, "<bos>", GEMMA_TEMPLATE)
    return tokenizer, GEMMA_TEMPLATE, "<end_of_turn>", ["<bos>", "<start_of_turn>"]


def trained_spans(tokenizer, tokenized) -> list[list[int]]:
    """Token ids of each maximal run of trainable positions."""
    spans, current = [], []
    for token_id, mask in zip(tokenized.input_ids, tokenized.assistant_masks, strict=True):
        if mask:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    return [*spans, current] if current else spans


def assert_assistant_only(tokenizer, template: str, end_of_turn: str, structural: list[str], messages: list[dict]):
    tokenized = tokenize_conversation(tokenizer, messages, chat_template=template)
    assistant = [m["content"] for m in messages if m["role"] == "assistant"]
    others = [m["content"] for m in messages if m["role"] != "assistant"]

    # the model sees exactly what the template renders, tokenized as at serving time
    assert tokenized.text == tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    assert tokenized.input_ids == tokenizer(tokenized.text, add_special_tokens=False)["input_ids"]
    assert len(tokenized.assistant_masks) == len(tokenized.input_ids)

    # trained: each assistant reply, then the token that ends its turn; nothing else
    spans = trained_spans(tokenizer, tokenized)
    assert [tokenizer.decode(span) for span in spans] == [content + end_of_turn for content in assistant]
    assert [tokenized.text[a:b] for a, b in tokenized.assistant_char_spans] == [c + end_of_turn for c in assistant]
    trained_text = "".join(tokenizer.decode(span) for span in spans)
    for content in others:
        assert content not in trained_text
    assert sum(tokenized.assistant_masks) == sum(len(span) for span in spans)

    # prompt tokens are context: every structural token, and the role header before each reply
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    structural_ids = {tokenizer.convert_tokens_to_ids(t) for t in structural}
    for token_id, mask in zip(tokenized.input_ids, tokenized.assistant_masks, strict=True):
        if token_id in structural_ids:
            assert mask == 0, tokenizer.convert_ids_to_tokens(token_id)
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            header = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True,
                                                   chat_template=template)
            header_tokens = len(tokenizer(header, add_special_tokens=False)["input_ids"])
            assert tokenized.assistant_masks[header_tokens - 1] == 0  # last token of the role header
            assert tokenized.assistant_masks[header_tokens] == 1  # first token of the reply
    # the end of turn written after non-assistant turns (user, system) is context too
    all_eot = [i for i, token_id in enumerate(tokenized.input_ids) if token_id == eot_id]
    assert len(all_eot) == tokenized.text.count(end_of_turn) > len(assistant)

    # end-of-turn positions: one per assistant turn, each an end-of-turn token, trained, last of its span
    positions = tokenized.end_of_turn_token_positions
    assert len(positions) == len(assistant)
    assert all(tokenized.input_ids[p] == eot_id and tokenized.assistant_masks[p] == 1 for p in positions)
    assert all(p + 1 == len(tokenized.input_ids) or tokenized.assistant_masks[p + 1] == 0 for p in positions)
    assert all(tokenized.assistant_masks[p] == 0 for p in all_eot if p not in positions)  # user/system turns' ends
    return tokenized


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma"])
def test_only_assistant_replies_and_their_end_of_turn_are_trained(family, name, request):
    tokenizer, template, end_of_turn, structural = request.getfixturevalue(family)
    assert assistant_end_of_turn(tokenizer, template) == end_of_turn
    tokenized = assert_assistant_only(tokenizer, template, end_of_turn, structural, CONVERSATIONS[name])
    if family == "chatml" and not name.endswith("system"):
        # SmolLM2's default system prompt, written when the conversation has none, is context like any other
        default_system = "You are a helpful AI assistant named SmolLM"
        assert default_system in tokenized.text
        assert default_system not in tokenizer.decode(
            [t for t, m in zip(tokenized.input_ids, tokenized.assistant_masks, strict=True) if m])
    if family == "gemma" and name.endswith("system"):
        # Gemma has no system role: the system prompt is part of the first user turn, and not trained
        assert f"<start_of_turn>user\n{SYSTEM}\n\n" in tokenized.text


def test_template_tokenizer_default_is_used_when_none_given(chatml):
    tokenizer, template, _, _ = chatml
    messages = CONVERSATIONS["multi-turn"]
    assert tokenize_conversation(tokenizer, messages) == tokenize_conversation(tokenizer, messages, template)


def test_first_word_after_a_generation_prompt_ending_in_a_space_is_trained(chatml):
    """A token straddling the header/reply boundary (" It" after "Assistant:") carries the reply's first word."""
    tokenizer, _, _, _ = chatml
    template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'User: ' + m['content'] + '\\n' }}"
        "{% else %}{{ 'Assistant: ' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
    )
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "Six, of course."},
    ]
    tokenized = tokenize_conversation(tokenizer, messages, chat_template=template)
    offsets = tokenizer(tokenized.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    straddling = [t for t, (s, e) in enumerate(offsets) if any(s < a < e for a, _ in tokenized.assistant_char_spans)]
    # byte-level BPE merges the space into the next word: " I", " S" are single tokens, the space being the header's
    assert [tokenizer.decode([tokenized.input_ids[t]])[:2] for t in straddling] == [" I", " S"]
    assert all(tokenized.assistant_masks[t] == 1 for t in straddling)  # else the first word is never learned
    decoded = [tokenizer.decode(span) for span in trained_spans(tokenizer, tokenized)]
    assert decoded == [" It is 4.<|im_end|>", " Six, of course.<|im_end|>"]


def test_empty_reply_still_trains_its_end_of_turn(chatml):
    tokenizer, template, _, _ = chatml
    messages = [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""}]
    tokenized = tokenize_conversation(tokenizer, messages, chat_template=template)
    assert [tokenizer.decode(span) for span in trained_spans(tokenizer, tokenized)] == ["<|im_end|>"]


# Renders only the last message: rendering messages[:i] is not a prefix of the whole conversation.
LAST_MESSAGE_ONLY = (
    "{{ '<|im_start|>' + messages[-1]['role'] + '\\n' + messages[-1]['content'] + '<|im_end|>\\n' }}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Rewrites earlier assistant turns once another follows (as reasoning templates drop earlier thoughts).
REWRITES_EARLIER_TURNS = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' and not loop.last %}{{ '[earlier] ' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", [LAST_MESSAGE_ONLY, REWRITES_EARLIER_TURNS], ids=["last-only", "rewrites"])
def test_template_whose_prefixes_do_not_extend_each_other_is_rejected(chatml, template):
    tokenizer, _, _, _ = chatml
    messages = CONVERSATIONS["multi-turn"]
    with pytest.raises(TemplateError, match="not a prefix of the whole rendering"):
        tokenize_conversation(tokenizer, messages, chat_template=template, end_of_turn="<|im_end|>")
    with pytest.raises(TemplateError):  # also when the end-of-turn token is probed from the template
        tokenize_conversation(tokenizer, messages, chat_template=template)
    # a single reply is the last message, so such templates are only a problem for multi-turn data
    if template is REWRITES_EARLIER_TURNS:
        single = CONVERSATIONS["single-turn"]
        assert tokenize_conversation(tokenizer, single, chat_template=template).end_of_turn_token_positions


def test_template_without_end_of_turn_after_the_reply_is_rejected(chatml):
    tokenizer, _, _, _ = chatml
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(TemplateError, match=re.escape("renders no '<|im_end|>' after the assistant's words")):
        tokenize_conversation(tokenizer, CONVERSATIONS["single-turn"], chat_template=template,
                              end_of_turn="<|im_end|>")


# ---- the batched path (tokenize_conversations) against the per-row one it replaced --------------------------------
def reference_tokenize_conversation(tokenizer, messages, chat_template=None, end_of_turn=None):
    """training/masking.py's tokenize_conversation as it was before batching (main at 21155f5), verbatim but for its
    name and its mask loop, moved to reference_masks: every prefix rendered, one tokenizer call a row."""
    end_of_turn = end_of_turn or assistant_end_of_turn(tokenizer, chat_template)
    full = render(tokenizer, messages, chat_template=chat_template)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True, chat_template=chat_template)
        upto = render(tokenizer, messages[: i + 1], chat_template=chat_template)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TemplateError(
                f"message {i}: rendering the conversation up to this assistant turn is not a prefix of the whole "
                "rendering (the template rewrites earlier turns), so assistant tokens cannot be located"
            )
        turn = upto[len(before):]
        stop = turn.rfind(end_of_turn)
        if stop < 0:
            raise TemplateError(f"message {i}: the template renders no '{end_of_turn}' after the assistant's words")
        spans.append((len(before), len(before) + stop + len(end_of_turn)))

    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    masks, eot_positions = reference_masks(encoding["offset_mapping"], spans)
    return TokenizedConversation(list(encoding["input_ids"]), masks, full, spans, eot_positions)


def reference_masks(offsets, spans):
    """The per-token loop of the per-row path."""
    masks = [0] * len(offsets)
    eot_positions = []
    for start, end in spans:
        eot_position = None
        for t, (s, e) in enumerate(offsets):
            if e > s and s < end and e > start:
                masks[t] = 1
                if e == end:
                    eot_position = t
        if eot_position is not None:
            eot_positions.append(eot_position)
    return masks, eot_positions


@pytest.mark.parametrize("seed", range(4))
def test_masks_from_offsets_follow_the_per_token_rule(seed):
    """Offsets no tokenizer here produces: zero-width tokens, tokens sharing a character (byte fallback), tokens
    out of order, several tokens ending where a span ends, spans overlapping, no span."""
    import random

    from training.masking import _masked

    rng = random.Random(seed)
    for _ in range(200):
        offsets = [(a, a + rng.choice((0, 0, 1, 1, 2, 3))) for a in sorted(rng.randrange(40) for _ in range(30))]
        if rng.random() < 0.3:
            rng.shuffle(offsets)
        spans = [tuple(sorted(rng.sample(range(45), 2))) for _ in range(rng.choice((0, 1, 2, 3)))]
        tokenized = _masked(list(range(len(offsets))), offsets, "", spans)
        assert (tokenized.assistant_masks, tokenized.end_of_turn_token_positions) == reference_masks(offsets, spans)
        assert all(type(m) is int for m in tokenized.assistant_masks)  # as the digests' JSON needs


WORDS = ("the", "river", "café", "naïve", "Straße", "日本語", "😀", "x=1;", "  ", "\n", "\t", "<b>", "--", "état")


def varied_conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Seeded conversations of every shape the data has: 1-3 turns, with or without a system prompt, replies empty,
    padded with spaces and newlines (templates that trim them), holding the end-of-turn text or the template's
    markers, accents, CJK and emoji (several tokens a character)."""
    import random

    rng = random.Random(seed)
    extras = ["", " ", "\n\n", "<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<start_of_turn>model", "<|im_start|>"]

    def text(low: int, high: int) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        return rng.choice(extras[:3]) + " ".join(words) + rng.choice(extras) + rng.choice(extras[:3])

    conversations = []
    for _ in range(n):
        messages = [{"role": "system", "content": text(1, 8)}] if rng.random() < 0.3 else []
        for _ in range(rng.choice((1, 1, 2, 3))):
            messages.append({"role": "user", "content": text(1, 20)})
            messages.append({"role": "assistant", "content": "" if rng.random() < 0.05 else text(0, 60)})
        conversations.append(messages)
    return [*CONVERSATIONS.values(), *conversations]


@pytest.mark.parametrize("family", ["chatml", "gemma", "llama3"])
def test_batched_tokenization_equals_the_per_row_reference(family, request):
    """Same ids, masks, text, spans and end-of-turn positions as the per-row path it replaced, row for row; so the
    same token counts, digests and run fingerprint downstream."""
    tokenizer, template, end_of_turn, _ = request.getfixturevalue(family)
    conversations = varied_conversations(60, seed=len(family))
    expected = [reference_tokenize_conversation(tokenizer, m, template, end_of_turn) for m in conversations]
    assert tokenize_conversations(tokenizer, conversations, template, end_of_turn) == expected
    assert tokenize_conversations(tokenizer, conversations[:7], template) == expected[:7]  # end of turn probed
    assert [tokenize_conversation(tokenizer, m, template, end_of_turn) for m in conversations[:20]] == expected[:20]
    assert tokenize_conversations(tokenizer, [], template, end_of_turn) == []
    # the hard cases occur: empty replies, replies holding the end-of-turn text (the template's own one ends the span)
    assert any(m["content"] == "" for c in conversations for m in c if m["role"] == "assistant")
    assert any(m["content"].count(end_of_turn) for c in conversations for m in c if m["role"] == "assistant")


def test_rows_tokenized_in_batches_keep_the_per_row_digests(chatml):
    """tokenize_rows (batched) records the digest the per-row path would have: train_rows.parquet's
    tokens_sha256 of models trained before still match."""
    from training.dataset import conversation_rows, token_digest, tokenize_rows

    tokenizer, template, end_of_turn, _ = chatml
    conversations = varied_conversations(30, seed=7)
    data = tokenize_rows(tokenizer, conversation_rows(conversations), template, max_length=4096, chunk_rows=8)
    expected = [reference_tokenize_conversation(tokenizer, m, template, end_of_turn) for m in conversations]
    assert data.rows["tokens_sha256"].to_list() == [token_digest(t.input_ids, t.assistant_masks) for t in expected]
    assert data.train["assistant_masks"] == [t.assistant_masks for t in expected]


@pytest.mark.parametrize(("family", "bad_rows"), [
    ("gemma", [[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]]),  # roles must alternate
    ("gemma", [[{"role": "assistant", "content": "first"}]]),  # nothing before the reply: an empty prefix
    ("gemma", [[{"role": "assistant", "content": "first"}],
               [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]]),
    ("gemma", [[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
               [{"role": "assistant", "content": "first"}]]),
    ("chatml", [[]]),
    ("chatml", [[{"role": "assistant", "content": "first"}]]),  # the generation prompt of no messages: an error
])
def test_a_failing_conversation_in_a_batch_raises_its_own_error(family, bad_rows, request):
    """Among good conversations, the first failing one raises what the per-row path raised for it."""
    tokenizer, template, end_of_turn, _ = request.getfixturevalue(family)
    good = list(CONVERSATIONS.values())
    with pytest.raises(TemplateError) as expected:
        reference_tokenize_conversation(tokenizer, bad_rows[0], template, end_of_turn)
    with pytest.raises(TemplateError) as raised:
        tokenize_conversations(tokenizer, [*good, *bad_rows, *good], template, end_of_turn)
    assert str(raised.value) == str(expected.value)


@pytest.mark.parametrize("template", [LAST_MESSAGE_ONLY, REWRITES_EARLIER_TURNS], ids=["last-only", "rewrites"])
def test_a_template_rewriting_earlier_turns_fails_the_batch_as_it_fails_a_row(chatml, template):
    tokenizer, _, _, _ = chatml
    single, multi = CONVERSATIONS["single-turn"], CONVERSATIONS["multi-turn"]
    with pytest.raises(TemplateError) as expected:
        reference_tokenize_conversation(tokenizer, multi, template, "<|im_end|>")
    with pytest.raises(TemplateError) as raised:
        tokenize_conversations(tokenizer, [single, multi, single], template, "<|im_end|>")
    assert str(raised.value) == str(expected.value)
    with pytest.raises(TemplateError) as raised:  # a later row failing sooner (rendering) does not mask it
        tokenize_conversations(tokenizer, [single, multi, []], template, "<|im_end|>")
    assert str(raised.value) == str(expected.value)
    if template is REWRITES_EARLIER_TURNS:  # single replies still pass, as row by row
        assert tokenize_conversations(tokenizer, [single], template, "<|im_end|>") == [
            reference_tokenize_conversation(tokenizer, single, template, "<|im_end|>")]
