"""The one task taxonomy and its fallback regex tagger."""

from __future__ import annotations

import pytest

from assets.common.data.taxonomy import CATEGORIES, JUDGE_ONLY, TASK_PATTERNS, TASKS, classify_text


def test_taxonomy_is_magpies_twelve_plus_the_chapters_task_types():
    magpie = {"information_seeking", "reasoning", "planning", "editing", "coding", "math", "role_playing",
              "data_analysis", "creative_writing", "advice_seeking", "brainstorming", "other"}
    chapter = {"translation", "summarization", "safety", "tool_use", "multi_turn"}
    assert set(TASKS) == magpie | chapter and len(TASKS) == 17
    assert all(CATEGORIES[t] for t in TASKS)  # every category has the description the judge is shown
    assert {c for c, _ in TASK_PATTERNS} <= set(TASKS)
    assert set(JUDGE_ONLY) == {"safety", "multi_turn"}


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Write a Python function to reverse a linked list.", "coding"),
        ("Why does my SQL query return duplicates?", "coding"),
        ("How do I free memory in C++ after new[]?", "coding"),
        ("```js\nconsole.log(x)\n``` what does this print?", "coding"),
        ("Write a function that checks whether a string is a palindrome.", "coding"),
        ("Find the derivative of f(x) = x^2 + 3x.", "math"),
        ("What is 17 * 23?", "math"),
        ("Solve for x: 2x + 3 = 11", "math"),
        ("Rewrite this essay so it is more formal: ...", "editing"),
        ("Summarize the following article in three bullet points.", "summarization"),
        ("Translate 'good morning' into French.", "translation"),
        ("Write a poem about autumn leaves.", "creative_writing"),
        ("Draft a cover letter for a barista job.", "creative_writing"),
        ("Compare capitalism and socialism.", "reasoning"),
        ("Explain why the sky appears blue, step by step.", "reasoning"),
        ("What is the capital of Australia?", "information_seeking"),
        ("Who painted the Mona Lisa?", "information_seeking"),
        ("Plan a three-day itinerary for Lisbon.", "planning"),
        ("Give me some ideas for a birthday party theme.", "brainstorming"),
        ("Should I accept a job offer with lower pay but remote work?", "advice_seeking"),
        ("Pretend you are a pirate captain and greet the crew.", "role_playing"),
        ("Here is a CSV of monthly sales; what trends in the data do you see?", "data_analysis"),
        ("Use the tools available to look up the weather: get_weather(city).", "tool_use"),
        ("Hello there, nice to meet you.", "other"),
        ("", "other"),
    ],
)
def test_classify_text(text: str, task: str) -> None:
    assert classify_text(text) == task
