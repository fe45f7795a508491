"""Model directories and what is bound to them (no Dagster here): :mod:`.directories` (validate, describe, convert a
model directory), :mod:`.integrity` (content hashes, re-verified before a model is used), :mod:`.external` (content
hashes of the graph's external inputs, cached by stat), :mod:`.chat_template` and :mod:`.templates` (the chat-template
registry), :mod:`.engine` (the vLLM offline engine) and :mod:`.code_version` (source hashes: stage code versions and
the training code in a model directory's key)."""
