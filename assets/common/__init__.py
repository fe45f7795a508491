"""The shared leaf every stage and training import; it imports no stage. Its folders say what each part is:

* :mod:`.text`: text primitives (normalization, shingling and hashes; MinHash signatures and LSH; offline text
  embeddings) that dedup and decontamination share. No Dagster.
* :mod:`.models`: model directories (validate, describe, convert, verify their content hash), chat templates, the vLLM
  engine and the code versions that key a trained model. No Dagster.
* :mod:`.data`: storage and schema: atomic content-addressed files, the conversation table, user files, rules,
  the taxonomy, retention and the config serializer. No Dagster.
* :mod:`.orchestration`: the one Dagster-aware module (:mod:`.orchestration.resources`); only stage ``assets.py``
  modules import it (import contracts in pyproject.toml check all of this).
"""
