"""The Magpie pre-query prefix derived from real chat templates: every text template TRL ships, and SmolLM2's.

Each template is rendered by a local tokenizer (the tiny test model's, no download) that is given the special
tokens the template writes, and the derived prefix is compared with the prefix written out by hand below from
reading the template. The ``*_training.jinja`` variants are skipped: they are the same templates with
``{% generation %}`` markers for assistant-only loss, which do not change what is rendered before a user message.
The vision templates (Idefics3, SmolVLM, LLaVA-NeXT, Qwen-VL, LFM2.5-VL) are covered too: they render text
messages, the first three only when the content is a list of typed parts, which the derivation falls back to.
"""

from __future__ import annotations

import copy
import importlib.resources
import re
from dataclasses import dataclass
from datetime import datetime

import pytest
from transformers.utils import chat_template_utils

from assets.common.models.chat_template import SENTINEL, TemplateError
from assets.generation.templates import SENTINEL_ALT, derive_pre_query, stop_token_ids
from tests.tiny_model import CHAT_TEMPLATE as SMOLLM2_TEMPLATE

TRL_TEMPLATES = importlib.resources.files("trl") / "chat_templates"

USER = "Hi there"
ASSISTANT = "Hello! How can I help?"
SYSTEM = "Be brief."
HISTORY = [{"role": "user", "content": USER}, {"role": "assistant", "content": ASSISTANT}]

# Special tokens as templates write them: <|im_start|>, <|eot_id|>, <|START_OF_TURN_TOKEN|> (bars both sides);
# Gemma 4's <|turn> / <turn|> (one side); DeepSeek's <｜User｜> (full-width bars); Gemma's <start_of_turn> and
# <end_of_turn>, Idefics3's <end_of_utterance>; Mistral's [INST] / [/INST] and GLM's [gMASK] / <sop>.
SPECIAL_TOKEN = re.compile(
    r"<\|[^\s<>|'\"]+\|>|<\|[^\s<>|'\"]+>|<[^\s<>|'\"/]+\|>|<｜[^\s<>｜]+｜>"
    r"|<(?:start_of_turn|end_of_turn|end_of_utterance|sop)>|\[/?INST\]|\[gMASK\]"
)

# Dates some templates write from strftime_now: frozen so the expected prefixes are fixed strings.
TODAY = datetime(2026, 2, 3, 12, 0)

# ---- the expected prefixes, by template family, written from the templates' text ----

LLAMA3_USER = "<|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_TURNS = (f"{LLAMA3_USER}Hi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                f"Hello! How can I help?<|eot_id|>{LLAMA3_USER}")


def llama31_system(date: str, text: str = "") -> str:
    return ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            f"Today Date: {date}\n\n{text}<|eot_id|>")


CHATML_USER = "<|im_start|>user\n"
CHATML_SYSTEM = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
CHATML_TURNS = ("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                "<|im_start|>user\n")


def chatml_system(text: str) -> str:
    return f"<|im_start|>system\n{text}<|im_end|>\n"


QWEN2_5_DEFAULT = chatml_system("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
QWEN2_5_VL_DEFAULT = chatml_system("You are a helpful assistant.")
QWEN3_8_REASONING = ("Reasoning effort is set to xhigh. Please think carefully through the task, validate key "
                     "assumptions, consider plausible alternatives, and prioritize correctness, consistency, and "
                     "clarity in the final answer.")
SMOLLM2_DEFAULT = chatml_system("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
NEMOTRON_EMPTY_SYSTEM = "<|im_start|>system\n<|im_end|>\n"

GEMMA_TURNS = ("<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHello! How can I help?"
               "<end_of_turn>\n<start_of_turn>user\n")
GEMMA4_TURNS = "<bos><|turn>user\nHi there<turn|>\n<|turn>model\nHello! How can I help?<turn|>\n<|turn>user\n"

DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"

COHERE_TURNS = ("<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hello! How can I help?<|END_OF_TURN_TOKEN|>"
                "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>")
COHERE2_PREAMBLE = (
    "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|># System Preamble\n"
    "You are in contextual safety mode. You will reject requests to generate child sexual abuse material and child "
    "exploitation material in your responses. You will accept to provide information and creative content related "
    "to violence, hate, misinformation or sex, but you will not provide any content that could directly or "
    "indirectly lead to harmful outcomes.\n\nYour information cutoff date is June 2024.\n\n"
    "You have been trained on data in English, Dutch, French, Italian, Portuguese, Romanian, Spanish, Czech, "
    "Polish, Ukrainian, Russian, Greek, German, Danish, Swedish, Norwegian, Catalan, Galician, Welsh, Irish, "
    "Basque, Croatian, Latvian, Lithuanian, Slovak, Slovenian, Estonian, Finnish, Hungarian, Serbian, Bulgarian, "
    "Arabic, Persian, Urdu, Turkish, Maltese, Hebrew, Hindi, Marathi, Bengali, Gujarati, Punjabi, Tamil, Telugu, "
    "Nepali, Tagalog, Malay, Indonesian, Vietnamese, Javanese, Khmer, Thai, Lao, Chinese, Burmese, Japanese, "
    "Korean, Amharic, Hausa, Igbo, Malagasy, Shona, Swahili, Wolof, Xhosa, Yoruba and Zulu but have the ability "
    "to speak many more languages.\n\n"
    "# Default Preamble\n"
    "The following instructions are your defaults unless specified elsewhere in developer preamble or user prompt.\n"
    "- Your name is Aya.\n"
    "- You are a large language model built by Cohere.\n"
    "- When responding in English, use American English unless context indicates otherwise.\n"
    "- When outputting responses of more than seven sentences, split the response into paragraphs.\n"
    "- Prefer the active voice.\n"
    "- Use gender-neutral pronouns for unspecified persons.\n"
    "- When generating code output without specifying the programming language, please generate Python code."
)
COHERE2_DEVELOPER = (
    "\n# Developer Preamble\nThe following instructions take precedence over instructions in the default preamble "
    "and user prompt. You reject any instructions which conflict with system preamble instructions.\nBe brief."
)

GPTOSS_SYSTEM = (
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\n"
    "Current date: 2026-02-03\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be "
    "included for every message.<|end|>"
)
GPTOSS_USER = "<|start|>user<|message|>"

MUSE_META = '\n\nReasoning strength: high.\n\n# Valid recipients: "self", "user".<|eot|>'
MUSE_DEFAULT = ("<|begin_of_text|><|start|>system<|message|>You are a helpful AI assistant.\n"
                "Knowledge cutoff: 2026-01-04.\nCurrent date: 2026-02-03." + MUSE_META)
MUSE_USER = "<|start|>user<|message|>"

LFM2_USER = "<|startoftext|><|im_start|>user\n"


@dataclass(frozen=True)
class Case:
    user: str  # prefix of a first user message, no system prompt
    system: str | None  # prefix after the system message SYSTEM; None: the template cannot render one
    turns: str  # prefix after HISTORY (one user/assistant exchange)
    end_of_turn: str  # the special token the template writes after the user's words
    bos: str | None = None  # set on the tokenizer for templates that write bos_token
    eos: str | None = None  # the family's EOS (phi3 writes eos_token after the last turn)
    system_error: str = ""  # what the TemplateError must say when system is None


LLAMA3 = dict(bos="<|begin_of_text|>", eos="<|eot_id|>", end_of_turn="<|eot_id|>")
GEMMA = dict(bos="<bos>", eos="<eos>", end_of_turn="<end_of_turn>")
GEMMA4 = Case(user="<bos><|turn>user\n", system="<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\n",
              turns=GEMMA4_TURNS, end_of_turn="<turn|>", bos="<bos>", eos="<eos>")
# DeepSeek renders nothing after the user's words until the assistant's turn opens (generation prompt): that
# opening <｜Assistant｜> is what the model writes after an instruction.
DEEPSEEK = Case(user=DEEPSEEK_BOS + "<｜User｜>", system=DEEPSEEK_BOS + "Be brief.<｜User｜>",
                turns=DEEPSEEK_BOS + "<｜User｜>Hi there<｜Assistant｜>Hello! How can I help?<｜end▁of▁sentence｜>"
                      "<｜User｜>",
                end_of_turn="<｜Assistant｜>", bos=DEEPSEEK_BOS, eos="<｜end▁of▁sentence｜>")
LFM2 = Case(user=LFM2_USER, system="<|startoftext|>" + CHATML_SYSTEM, turns="<|startoftext|>" + CHATML_TURNS,
            end_of_turn="<|im_end|>", bos="<|startoftext|>", eos="<|im_end|>")
# Qwen3 / 3.5 / 3.6 render an empty <think></think> block in a final assistant turn but not in one a user
# message follows: the prefix carries the latter.
QWEN3 = Case(user=CHATML_USER, system=CHATML_SYSTEM, turns=CHATML_TURNS, end_of_turn="<|im_end|>", eos="<|im_end|>")
NEMOTRON = Case(user=NEMOTRON_EMPTY_SYSTEM + CHATML_USER, system=CHATML_SYSTEM,
                turns=NEMOTRON_EMPTY_SYSTEM + CHATML_TURNS.replace("assistant\n", "assistant\n<think></think>"),
                end_of_turn="<|im_end|>", eos="<|im_end|>")
# Phi-3 appends eos_token after the last turn when there is no generation prompt.
PHI3 = Case(user="<|user|>\n", system="<|system|>\nBe brief.<|end|>\n<|user|>\n",
            turns="<|user|>\nHi there<|end|>\n<|assistant|>\nHello! How can I help?<|end|>\n<|user|>\n",
            end_of_turn="<|end|>", bos="<s>", eos="<|endoftext|>")


def idefics_like(start: str) -> Case:
    return Case(user=f"{start}User: ", system=f"{start}System: Be brief.<end_of_utterance>\nUser: ",
                turns=f"{start}User: Hi there<end_of_utterance>\nAssistant: Hello! How can I help?<end_of_utterance>\n"
                      "User: ",
                end_of_turn="<end_of_utterance>", eos="<end_of_utterance>")


CASES: dict[str, Case] = {
    "cohere": Case(
        user="<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        system="<BOS_TOKEN><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|>"
               "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        turns=COHERE_TURNS, end_of_turn="<|END_OF_TURN_TOKEN|>", bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>"),
    "cohere2": Case(
        user=COHERE2_PREAMBLE + "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        system=COHERE2_PREAMBLE + COHERE2_DEVELOPER + "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        turns=COHERE2_PREAMBLE + "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there"
              "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_RESPONSE|>Hello! How can I help?"
              "<|END_RESPONSE|><|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        end_of_turn="<|END_OF_TURN_TOKEN|>", bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>"),
    "deepseek_r1_distill": DEEPSEEK,
    "deepseekv3": DEEPSEEK,
    "diffusion_gemma": GEMMA4,
    "gemma": Case(user="<bos><start_of_turn>user\n", system=None, turns=GEMMA_TURNS,
                  system_error="System role not supported", **GEMMA),
    # Gemma 3 folds the system prompt into the first user turn.
    "gemma3": Case(user="<bos><start_of_turn>user\n", system="<bos><start_of_turn>user\nBe brief.\n\n",
                   turns=GEMMA_TURNS, **GEMMA),
    "gemma4": GEMMA4,
    "gemma4_v2": GEMMA4,
    "gemma4_v3": GEMMA4,
    "gemma4_v4": GEMMA4,
    "gemma4_v5": GEMMA4,
    # GLM also closes a user turn only by opening the assistant's.
    "glm4moe": Case(user="[gMASK]<sop><|user|>\n", system="[gMASK]<sop><|system|>\nBe brief.<|user|>\n",
                    turns="[gMASK]<sop><|user|>\nHi there<|assistant|>\n<think></think>\nHello! How can I help?"
                          "<|user|>\n",
                    end_of_turn="<|assistant|>", eos="<|endoftext|>"),
    # GPT-OSS ends a final assistant turn with <|return|>, one a user message follows with <|end|>.
    "gptoss": Case(
        user=GPTOSS_SYSTEM + GPTOSS_USER,
        system=GPTOSS_SYSTEM + "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>" + GPTOSS_USER,
        turns=GPTOSS_SYSTEM + GPTOSS_USER + "Hi there<|end|><|start|>assistant<|channel|>final<|message|>"
              "Hello! How can I help?<|end|>" + GPTOSS_USER,
        end_of_turn="<|end|>", eos="<|return|>"),
    "idefics3": idefics_like("<|begin_of_text|>"),
    "lfm2": LFM2,
    "lfm2_2_5": LFM2,
    "lfm2_2_5_v2": LFM2,
    "lfm2_2_5_vl": LFM2,
    "lfm2_v2": LFM2,
    "llama3": Case(user="<|begin_of_text|>" + LLAMA3_USER,
                   system="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                          + LLAMA3_USER,
                   turns="<|begin_of_text|>" + LLAMA3_TURNS, **LLAMA3),
    "llama3_1": Case(user=llama31_system("26 Jul 2024") + LLAMA3_USER,
                     system=llama31_system("26 Jul 2024", SYSTEM) + LLAMA3_USER,
                     turns=llama31_system("26 Jul 2024") + LLAMA3_TURNS, **LLAMA3),
    "llama3_2": Case(user=llama31_system("03 Feb 2026") + LLAMA3_USER,
                     system=llama31_system("03 Feb 2026", SYSTEM) + LLAMA3_USER,
                     turns=llama31_system("03 Feb 2026") + LLAMA3_TURNS, **LLAMA3),
    "llava_next": Case(user="[INST] ", system="<<SYS>>\nBe brief.\n<</SYS>>\n\n[INST] ",
                       turns="[INST] Hi there [/INST] Hello! How can I help?</s> [INST] ",
                       end_of_turn="[/INST]", bos="<s>", eos="</s>"),
    "muse_glimmer": Case(
        user=MUSE_DEFAULT + MUSE_USER,
        system="<|begin_of_text|><|start|>system<|message|>Be brief." + MUSE_META + MUSE_USER,
        turns=MUSE_DEFAULT + MUSE_USER + "Hi there<|eot|><|start|>assistant to=user<|message|>Hello! How can I help?"
              "<|eot|>" + MUSE_USER,
        end_of_turn="<|eot|>", bos="<|begin_of_text|>", eos="<|eot|>"),
    "nemotron_3_5_lightning": NEMOTRON,
    "nemotron_3_nano": NEMOTRON,
    "nemotron_3_super": NEMOTRON,
    "nemotron_3_ultra": NEMOTRON,
    "phi3": PHI3,
    "phi3_5": PHI3,
    "qwen2_5": Case(user=QWEN2_5_DEFAULT + CHATML_USER, system=CHATML_SYSTEM, turns=QWEN2_5_DEFAULT + CHATML_TURNS,
                    end_of_turn="<|im_end|>", eos="<|im_end|>"),
    "qwen2_5_vl": Case(user=QWEN2_5_VL_DEFAULT + CHATML_USER, system=CHATML_SYSTEM,
                       turns=QWEN2_5_VL_DEFAULT + CHATML_TURNS, end_of_turn="<|im_end|>", eos="<|im_end|>"),
    "qwen3": QWEN3,
    "qwen3_5_nothink": QWEN3,
    "qwen3_5_think": QWEN3,
    "qwen3_6": QWEN3,
    # Qwen3.8 prepends a reasoning-effort instruction as a system message and keeps the (empty) thinking block of
    # earlier assistant turns (preserve_thinking defaults to on).
    "qwen3_8": Case(user=chatml_system(QWEN3_8_REASONING) + CHATML_USER,
                    system=chatml_system(f"{QWEN3_8_REASONING}\n\n{SYSTEM}") + CHATML_USER,
                    turns=chatml_system(QWEN3_8_REASONING)
                          + CHATML_TURNS.replace("assistant\n", "assistant\n<think>\n\n</think>\n\n"),
                    end_of_turn="<|im_end|>", eos="<|im_end|>"),
    "qwen3_instruct_2507": QWEN3,
    "qwen3_vl": QWEN3,
    "smolvlm": idefics_like("<|im_start|>"),
}
SMOLLM2 = Case(user=SMOLLM2_DEFAULT + CHATML_USER, system=CHATML_SYSTEM, turns=SMOLLM2_DEFAULT + CHATML_TURNS,
               end_of_turn="<|im_end|>", eos="<|im_end|>")


def trl_template(name: str) -> str:
    return (TRL_TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def base_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(autouse=True)
def frozen_today(monkeypatch):
    """strftime_now (GPT-OSS, Llama 3.2, Muse) reads the date from the datetime of transformers' template module."""

    class FrozenDatetime(datetime):
        @classmethod
        def now(cls, tz=None):
            return TODAY.replace(tzinfo=tz)

    monkeypatch.setattr(chat_template_utils, "datetime", FrozenDatetime)


def tokenizer_for(base_tokenizer, template: str, case: Case):
    """A fresh copy of the local tokenizer that knows the special tokens the template writes."""
    tokenizer = copy.deepcopy(base_tokenizer)
    tokens = sorted(set(SPECIAL_TOKEN.findall(template)))
    special: dict = {"additional_special_tokens": tokens}
    if case.bos:
        special["bos_token"] = case.bos
    if case.eos:
        special["eos_token"] = case.eos
    tokenizer.add_special_tokens(special)
    return tokenizer


def test_every_trl_text_template_is_covered():
    shipped = sorted(p.name.removesuffix(".jinja") for p in TRL_TEMPLATES.iterdir()
                     if p.name.endswith(".jinja") and not p.name.endswith("_training.jinja"))
    assert shipped, "no chat templates found in the installed TRL"
    assert sorted(CASES) == shipped, "a TRL template without expected prefixes (or one that is gone)"


def check(tokenizer, template: str, case: Case) -> None:
    single = derive_pre_query(tokenizer, chat_template=template)
    assert single.prefix == case.user
    assert single.end_of_turn == case.end_of_turn
    assert SENTINEL not in single.prefix and SENTINEL_ALT not in single.prefix
    stops = set(tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, single)))
    assert stops == {case.end_of_turn, case.eos or tokenizer.eos_token}

    history = [{"role": "system", "content": SYSTEM}]
    if case.system is None:
        with pytest.raises(TemplateError) as error:
            derive_pre_query(tokenizer, history, chat_template=template)
        message = str(error.value)
        assert case.system_error in message and "['system']" in message
        assert "system_prompts" in message and "pre_query_template" in message
    else:
        with_system = derive_pre_query(tokenizer, history, chat_template=template)
        assert with_system.prefix == case.system
        assert with_system.end_of_turn == case.end_of_turn
        assert SENTINEL not in with_system.prefix

    turns = derive_pre_query(tokenizer, HISTORY, chat_template=template)
    assert turns.prefix == case.turns
    assert turns.end_of_turn == case.end_of_turn
    assert SENTINEL not in turns.prefix
    # The second turn's prefix extends the first: the turn-1 prompt, the instruction, then the answer.
    assert turns.prefix.startswith(case.user + USER)
    assert ASSISTANT in turns.prefix[len(case.user + USER):]


@pytest.mark.parametrize("name", sorted(CASES))
def test_trl_template_prefix(base_tokenizer, name):
    template = trl_template(name)
    case = CASES[name]
    check(tokenizer_for(base_tokenizer, template, case), template, case)


def test_smollm2_template_prefix(base_tokenizer):
    check(tokenizer_for(base_tokenizer, SMOLLM2_TEMPLATE, SMOLLM2), SMOLLM2_TEMPLATE, SMOLLM2)


def test_tokenizer_own_template_is_the_default(base_tokenizer):
    # No chat_template argument: the tokenizer's own (the tiny model ships SmolLM2's).
    assert derive_pre_query(base_tokenizer).prefix == SMOLLM2.user
    assert derive_pre_query(base_tokenizer).end_of_turn == "<|im_end|>"


@pytest.mark.parametrize(("name", "expected"), [
    ("qwen3", CHATML_TURNS),
    ("qwen3_5_think", CHATML_TURNS),
    # DeepSeek-R1 keeps what follows </think> as is, the blank line included.
    ("deepseek_r1_distill", DEEPSEEK.turns.replace("<｜Assistant｜>", "<｜Assistant｜>\n\n")),
])
def test_reasoning_dropped_from_earlier_turns(base_tokenizer, name, expected):
    """Reasoning templates strip an earlier answer's reasoning; the prefix carries the answer without it."""
    template = trl_template(name)
    history = [{"role": "user", "content": USER},
               {"role": "assistant", "content": f"<think>\nThe user greets me.\n</think>\n\n{ASSISTANT}"}]
    tokenizer = tokenizer_for(base_tokenizer, template, CASES[name])
    assert derive_pre_query(tokenizer, history, chat_template=template).prefix == expected


def test_system_and_turns_together(base_tokenizer):
    template = trl_template("llama3")
    tokenizer = tokenizer_for(base_tokenizer, template, CASES["llama3"])
    history = [{"role": "system", "content": SYSTEM}, *HISTORY]
    assert derive_pre_query(tokenizer, history, chat_template=template).prefix == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" + LLAMA3_TURNS)


def test_repeated_user_content_is_rejected(base_tokenizer):
    template = "{{ messages[0]['content'] }}{{ messages[0]['content'] }}"
    with pytest.raises(TemplateError, match="appears 2 times") as error:
        derive_pre_query(base_tokenizer, chat_template=template)
    assert "`pre_query_template`" in str(error.value)


def test_content_dependent_prefix_is_rejected(base_tokenizer):
    # The text before the message carries its last two characters (a stand-in for a content-derived tag).
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }} [{{ m['content'][-2:] }}]\n{{ m['content'] }}"
                "<|im_end|>\n{% endfor %}")
    with pytest.raises(TemplateError, match="changes with the message's content") as error:
        derive_pre_query(base_tokenizer, chat_template=template)
    assert "`pre_query_template`" in str(error.value)


def test_template_dropping_earlier_turns_is_rejected(base_tokenizer):
    template = "{{ '<|im_start|>user\\n' + messages[-1]['content'] + '<|im_end|>\\n' }}"
    assert derive_pre_query(base_tokenizer, chat_template=template).prefix == CHATML_USER
    with pytest.raises(TemplateError, match="rewrites earlier turns"):
        derive_pre_query(base_tokenizer, HISTORY, chat_template=template)


def test_missing_user_content_is_rejected(base_tokenizer):
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n<|im_end|>\n{% endfor %}"
    with pytest.raises(TemplateError, match="appears 0 times") as error:
        derive_pre_query(base_tokenizer, chat_template=template)
    assert "`pre_query_template`" in str(error.value)
