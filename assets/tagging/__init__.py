"""Tagging: LLM-judge labels, languages, refusals, label filters, diversity and the funnel."""
