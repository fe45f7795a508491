"""The task taxonomy, one list for the whole project, and its deterministic fallback tagger (no Dagster here).

:data:`CATEGORIES` is Magpie's 12 task categories (Xu et al. 2024, "Magpie", task-category tagging) plus the task
types of a modern SFT mix (chapter 16.8) that Magpie lacks: translation, summarization, safety (refusal of harmful
requests), tool use and multi-turn dialogue. The LLM judge (``assets/tagging``) chooses one of them per
conversation; the mixture samples by them.

The fallback tagger (:func:`task_expr`, :func:`classify_task`) is a transparent keyword/regex HEURISTIC over the
first user message: :data:`TASK_PATTERNS`, first match wins. It runs when no judge is configured, for rows the
judge's answer could not be parsed, and for rows removed before tagging (the per-category funnel). It is cheap and
explainable, not accurate. ``safety`` and ``multi_turn`` have no pattern: a keyword list cannot tell a harmful
request or a dialogue whose turns build on each other, so only the judge assigns them.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from assets.common.data.schema import role_texts

# slug -> one-line description (the judge's prompt lists these; the order is the order shown to the judge)
CATEGORIES: dict[str, str] = {
    # Magpie's 12
    "information_seeking": "asks for facts or explanations about a topic",
    "reasoning": "asks to work through logic, a puzzle, a comparison or the consequences of something",
    "planning": "asks for a plan, schedule, itinerary or sequence of steps towards a goal",
    "editing": "asks to rewrite, proofread, rephrase or restyle a given text",
    "coding": "asks to write, explain, debug or review code",
    "math": "asks to solve or explain a mathematical problem",
    "role_playing": "asks the assistant to play a character or take part in a fictional scene",
    "data_analysis": "asks to analyse, interpret or visualise data or tables",
    "creative_writing": "asks for original writing: stories, poems, letters, essays, marketing copy",
    "advice_seeking": "asks for personal or professional advice or recommendations",
    "brainstorming": "asks for ideas, names or options to choose from",
    "other": "none of the other categories",
    # the chapter's task types Magpie lacks
    "translation": "asks to translate text between languages",
    "summarization": "asks to summarise or condense a given text",
    "safety": "asks for something harmful, illegal or unsafe (whether or not the answer refuses)",
    "tool_use": "asks to call a tool, function or API, or answers with a function call",
    "multi_turn": "a dialogue whose later turns build on earlier ones (follow-ups, clarifications, chit-chat)",
}
TASKS: tuple[str, ...] = tuple(CATEGORIES)
FALLBACK_DEFAULT = "other"

# (category, case-insensitive regex over the first user message). First match wins, so the order matters:
# "write a Python function to solve the equation" is coding, "rewrite this essay" is editing, not writing.
TASK_PATTERNS: tuple[tuple[str, str], ...] = (
    ("tool_use", r"\b(function[- ]call(?:ing|s)?|tool[- ]calls?|call (?:the|a) tool|available tools|use the tools?)\b"
                 r"|<tool_call>|\"tool_calls\""),
    ("translation", r"\b(translat(?:e|es|ed|ing|ion)|in(?:to)? (?:french|spanish|german|italian|chinese|japanese"
                    r"|russian|portuguese|arabic|korean|dutch|english))\b"),
    ("summarization", r"\b(summari[sz](?:e|es|ed|ing|ation)|summary|tl;?dr|condense|key points|main points)\b"),
    (
        "coding",
        (
            r"```|\bc(?:\+\+|#)|\b(python|javascript|typescript|java|golang|rust|kotlin|swift|php|ruby|sql|html|css"
            r"|bash|powershell|regex|json|yaml|numpy|pandas|react|django|flask|api|sdk|git|docker|kubernetes"
            r"|code|coding|programm(?:ing|er)|compiler?|debug\w*|refactor\w*|stack ?trace|unit tests?"
            r"|algorithms?|data structures?|runtime error|syntax error)\b"
            r"|\b(?:write|implement|create|define|fix)\s+(?:a|an|the|this|my)\s+(?:\w+\s+)?"
            r"(?:function|class|method|script|program|query)\b"
            r"|\bdef\s+\w+\(|#include\s*<|console\.log|\bSELECT\s.+\sFROM\b"
        ),
    ),
    (
        "math",
        (
            r"\b(math|mathematics|equations?|solve for|derivatives?|integrals?|integrate|differentiate"
            r"|calculus|algebra|geometry|trigonometry|probability|statistics|theorem|prove that|proof"
            r"|polynomials?"
            r"|matrix|matrices|vectors?|eigen\w*|logarithm|factorial|prime numbers?|fractions?|percentages?"
            r"|arithmetic|triangle|circle|radius|area of|volume of|sum of|product of|how many ways)\b"
            r"|\d\s*[-+*/^×÷=]\s*\d|\b[xyz]\s*\^|√|∫|∑"
        ),
    ),
    (
        "editing",
        (
            r"\b(rewrite|re-write|rephrase|paraphrase|shorten|simplify|proofread|edit|revise|polish"
            r"|improve (?:the |this |my )?(?:text|writing|wording|paragraph|sentence)"
            r"|grammar|make (?:this|it) (?:more|less|sound))\b"
        ),
    ),
    ("data_analysis", r"\b(data ?sets?|csv|spreadsheets?|excel|charts?|plot|pivot table|regression|correlation"
                      r"|analy[sz]e (?:the|this|my) data|trends? in)\b"),
    ("role_playing", r"\b(pretend|role-?play|act as|imagine you are|you are now|stay in character)\b"),
    ("brainstorming", r"\b(brainstorm\w*|ideas? (?:for|on|about)|come up with|suggest (?:some|a few)|names for)\b"),
    ("planning", r"\b(plan|planning|itinerary|schedule|roadmap|timeline|steps to)\b"),
    ("advice_seeking", r"\b(advice|advise|should i|recommend\w*|tips|what should)\b"),
    (
        "creative_writing",
        (
            r"\b(write|draft|compose|poem|poetry|story|stories|essay|letter|e-?mail|blog|article|speech|lyrics"
            r"|haiku|slogan|tagline|screenplay|script|dialogue|narrative|cover letter|speech|toast|caption"
            r"|product description|tweet|post)\b"
        ),
    ),
    (
        "reasoning",
        (
            r"\b(step[- ]by[- ]step|reasoning|logic|logical|puzzle|riddle|deduce|infer|analy[sz]e|analysis"
            r"|evaluate|compare|contrast|pros and cons|trade-?offs?|implications?|argue|argument|hypothetical"
            r"|what would happen|explain why|why (?:does|do|is|are|did|would))\b"
        ),
    ),
    (
        "information_seeking",
        (
            r"^\W*(what|who|whom|whose|when|where|which|why|how|is|are|was|were|can|could|does|do|did|should"
            r"|would|will|explain|describe|define|tell me|list|name|give me)\b|\?\s*$"
        ),
    ),
)
JUDGE_ONLY: tuple[str, ...] = tuple(t for t in TASKS if t not in {c for c, _ in TASK_PATTERNS} | {FALLBACK_DEFAULT})


def task_expr(text: pl.Expr) -> pl.Expr:
    """The fallback category of each string in ``text`` (null text is "other")."""
    result: Any = None
    for task, pattern in TASK_PATTERNS:
        condition = text.str.contains(f"(?i){pattern}").fill_null(False)
        result = pl.when(condition) if result is None else result.when(condition)
        result = result.then(pl.lit(task))
    return result.otherwise(pl.lit(FALLBACK_DEFAULT))


def first_instruction() -> pl.Expr:
    """The first user message of ``messages`` (null when there is none)."""
    return role_texts("user").list.first()


def classify_task(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with a ``task`` column: the fallback tagger over the first user message of ``messages``.

    If ``df`` already has a ``task`` column its non-null values are kept (the judge's labels, or any override) and
    only nulls are filled; the column keeps its position. Otherwise ``task`` is appended.
    """
    if "task" in df.columns and df["task"].null_count() == 0:
        return df.with_columns(pl.col("task").cast(pl.Utf8))
    heuristic = task_expr(first_instruction())
    if "task" in df.columns:
        return df.with_columns(pl.col("task").cast(pl.Utf8).fill_null(heuristic))
    return df.with_columns(heuristic.alias("task"))


def classify_text(text: str) -> str:
    """The fallback category of one instruction string (same rules as ``classify_task``)."""
    return pl.select(task_expr(pl.lit(text, pl.Utf8))).item()
