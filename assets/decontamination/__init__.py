"""Decontamination of training conversations against evaluation sets (no Dagster here).

The eval table has one row per (benchmark, item_id, field) with its ``text`` (``assets.eval_sets.core``'s
``EVAL_SET_SCHEMA``; only those four columns are used). Every user message ("prompt" side) and every
assistant message ("response" side) of a training conversation is compared, on its own, with every eval
text, after the same normalization as dedup (NFKC, lowercase, punctuation deleted, whitespace collapsed):

* ``detector="ngram"``: the message and the eval text share a word ``ngram`` (default 13, as in GPT-3 /
  Llama decontamination). An eval text with fewer than ``ngram`` words but at least ``min_words`` (default
  8) matches when its whole word sequence appears contiguously in the message; shorter eval texts (e.g. a
  one-word answer "42", or HumanEval's ``return x + y``) are ignored and counted as ``too_short`` in the
  report, never silently dropped. Candidate n-grams are found by 64-bit hash; every reported match is
  re-checked on the strings.
* boilerplate cut-off (``max_ngram_items``, default 3; 0 disables it): a key of the n-gram detector (an
  eval n-gram, or the whole word sequence of a short eval text) that occurs in at least ``max_ngram_items``
  distinct eval items (``(benchmark, item_id)``) is generic text ("let me know if you have any other
  questions ..."), not evidence of contamination, and is left out of the index. "Occurs in an item" means
  appears contiguously in one of the item's texts, any field, so a short text also counts the longer eval
  texts that contain it. The report gives, per benchmark, how many distinct n-grams and how many short
  texts were excluded (``boilerplate_ngrams``, ``boilerplate_texts``), how many long texts lost all their
  n-grams to it (``ngram_all_boilerplate``) and an example. :mod:`assets.decontamination.verify` applies the same
  rule with its own code.
* training-side frequency cut-off (``max_train_rows``, default 10; 0 disables it), as in the GPT-3 paper: a
  key of the n-gram detector found in at least ``max_train_rows`` distinct training conversations (distinct
  ``conversation_id``, in any message of the compared roles) of the table being decontaminated is generic text
  too, and matches on it are ignored. It catches chat boilerplate that a single eval item happens to share ("i
  hope this helps let me know if you have any other questions" in one Arena-Hard baseline answer), which the
  eval-side cut-off cannot see. Keys found in fewer conversations behave as before. "Found" means the key's
  word sequence appears in the message (every occurrence counts, checked byte for byte), so the count does not
  depend on which other keys the message matches; it is taken over the whole table passed to
  :func:`~.removal.decontaminate` / :func:`~.matching.find_contamination` (the asset passes the whole
  deduplicated table, not a shard). The trade-off: a real leak repeated in ``max_train_rows`` or more rows
  that are not near-duplicates of each other (e.g. the same eval prompt embedded in ten different
  conversations) is ignored by the n-gram detector. Near-duplicate removal runs before decontamination, so
  repeated copies of a leak are collapsed to one row first, and the MinHash detector (not subject to this
  cut-off) still catches a message that is, as a whole, close to an eval text. Set 0 to disable the cut-off.
  The report gives, per benchmark, how many distinct keys were ignored (``train_frequent_keys``) and the one
  found in most conversations (``example_train_frequent``); :mod:`assets.decontamination.verify` applies the
  same rule with its own code.
* ``detector="minhash"``: estimated Jaccard of word 3-gram sets >= 0.5 (:data:`~.config.DEFAULT_MINHASH`), for
  messages and eval texts of at least ``minhash_min_words`` (default 10) words. It catches light rewording
  that leaves no 13-gram intact: one changed word every 12 words keeps J(3-grams) ~ 0.6, every 10 words
  ~ 0.5, while unrelated texts score near 0 (5-grams would need near-verbatim copies, which the n-gram
  detector already catches). Because every LSH candidate is verified, the banding favours recall
  (weights 0.1 false positive / 0.9 false negative -> 32 bands x 4 rows: a J = 0.55 pair is a candidate
  with probability 0.95, J = 0.62 with 0.99). It compares whole texts, so an eval item buried in a much
  longer response is left to the n-gram detector.

* ``detector="semantic"`` (when ``semantic_detector`` is set; the asset sets it by default): embedding cosine of
  every message against the eval texts of the test items' inputs, each message's ``top_k`` nearest at or above the
  model's tuned threshold, optionally confirmed by an LLM judge (a pair judged "not a rephrasing" is recorded with its
  verdict and removes nothing). See :mod:`.semantic` and docs/semantic.md.

:func:`assets.decontamination.matching.find_contamination` returns the matches;
:func:`assets.decontamination.removal.decontaminate` splits the table into kept and rejected rows and builds a
per-benchmark report. Build an :class:`assets.decontamination.index.EvalIndex` once to reuse across shards.
:func:`assets.decontamination.incremental.decontaminate_shards` gives the same outputs for a table made of shards
(each row has ``shard``) while checking only the shards it has not seen, plus the earlier rows holding a key that
the new conversations push over the ``max_train_rows`` cut-off; its state (per-shard matches and key counts) is kept
beside the asset.

Modules, one job each (all Dagster-free but ``assets.py``):

* :mod:`.config`: :class:`~.config.DecontamConfig`, :data:`~.config.DEFAULT_MINHASH` and shared constants;
* :mod:`.kernels`: numba kernels of the n-gram detector (rolling window hashes, probing, byte checks);
* :mod:`.scan`: the one parallel pass over the raw text of every message (normalization, word hashes, n-gram probe
  counts, the MinHash detector's shared-shingle look-up) and the normalized text of the few messages it selects;
* :mod:`.index`: :class:`~.index.EvalIndex`, the eval side with its boilerplate cut-off;
* :mod:`.train_frequency`: the training-side frequency cut-off;
* :mod:`.matching`: the n-gram and MinHash detectors over training messages (:func:`~.matching.find_contamination`);
* :mod:`.semantic`: the semantic detector's eval side and candidates; :mod:`.rephrase`: its LLM check (the judge);
* :mod:`.removal`: :func:`~.removal.decontaminate`, kept / rejected rows and the report;
* :mod:`.incremental`: :func:`~.incremental.decontaminate_shards`, the same over shards with a persisted state;
* :mod:`.verify` and :mod:`.verify_semantic`: the independent re-check behind the blocking asset check; they import
  none of the above;
* :mod:`.assets`: the Dagster asset and its checks.
"""
