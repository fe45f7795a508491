"""Matching training messages against the eval index: the n-gram detector (probe, training-side cut-off,
string check), the MinHash detector and the semantic detector (:mod:`.semantic`), merged into one table of matches
(:data:`MATCH_SCHEMA`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from assets.common.text.minhash.lsh import band_hashes, cross_candidates
from assets.common.text.minhash.signatures import equal_counts
from assets.decontamination.config import SIDES, DecontamConfig
from assets.decontamination.index import EvalIndex, as_index
from assets.decontamination.kernels import probe_hits
from assets.decontamination.scan import Scan, as_series, scan
from assets.decontamination.semantic import CANDIDATE_SCHEMA, SEMANTIC
from assets.decontamination.train_frequency import frequent_keys, frequent_owners, hit_keys

MATCH_SCHEMA: dict[str, pl.DataType] = {
    "conversation_id": pl.Utf8,
    "message_index": pl.Int64,  # position in ``messages`` (system message included)
    "role": pl.Utf8,  # "user" | "assistant"
    "side": pl.Utf8,  # "prompt" | "response"
    "benchmark": pl.Utf8,
    "item_id": pl.Utf8,
    "field": pl.Utf8,
    "detector": pl.Utf8,  # "ngram" | "minhash" | "semantic"
    "matched_ngram": pl.Utf8,  # normalized matched words (ngram detector), else null
    "similarity": pl.Float64,  # estimated Jaccard (minhash detector), cosine (semantic detector), else null
    "verdict": pl.Utf8,  # the LLM check of a semantic pair (rephrasing | not_rephrasing | unparsed | unverified)
}
MATCHES_SCHEMA: dict[str, pl.DataType] = {"row": pl.Int64, **MATCH_SCHEMA, "item": pl.Int64}  # find_matches' own


def find_contamination(
    df: pl.DataFrame, eval_df: pl.DataFrame | EvalIndex, cfg: DecontamConfig | None = None
) -> pl.DataFrame:
    """Every (training message, eval text, detector) match, columns :data:`MATCH_SCHEMA`, ordered by
    training row, message_index, benchmark, item_id, field, detector. Keys found in ``max_train_rows`` or more
    distinct conversations of ``df`` are ignored (the training-side cut-off counts over ``df``)."""
    return find_matches(df, as_index(eval_df, cfg))[0].drop("row", "item")


def find_matches(df: pl.DataFrame, index: EvalIndex) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(matches, frequent): the matches with the training row position (``row``) and the eval row (``item``) kept
    for ordering and grouping (:func:`matches_from`), and the keys ignored by the training-side cut-off, counted
    over ``df`` (:data:`FREQUENT_SCHEMA`)."""
    evidence = gather_evidence(df, index)
    frequent = frequent_keys(evidence.key_conversations(), index.config.max_train_rows)
    return matches_from(evidence, index, frequent), frequent_owners(index, frequent)


@dataclass
class Evidence:
    """What the detectors found in a table before the training-side cut-off, which needs the counts of the whole
    table: the compared messages (``msgs``: row, conversation_id, message_index, role); the n-gram probe hits
    (doc, pos, length, lo, hi; a doc is a position in ``hit_rows``, the messages with any hit, whose normalized
    text is ``data``/``offsets``) and the key of each (-1: a hash collision, or the cut-off is off); the MinHash
    matches (msg, item, similarity); the semantic candidates (msg, item, similarity, verdict)."""

    msgs: pl.DataFrame
    hit_rows: np.ndarray
    data: np.ndarray
    offsets: np.ndarray
    hits: tuple[np.ndarray, ...]
    keys: np.ndarray
    minhash: pl.DataFrame
    semantic: pl.DataFrame

    def key_conversations(self) -> pl.DataFrame:
        """Distinct (key, conversation_id, row) of the hits on a key: what the training-side cut-off counts."""
        doc = self.hits[0][self.keys >= 0]
        msg = self.hit_rows[doc]
        return pl.DataFrame(
            {"key": self.keys[self.keys >= 0], "conversation_id": self.msgs["conversation_id"].gather(msg),
             "row": self.msgs["row"].gather(msg)},
            schema={"key": pl.Int64, "conversation_id": pl.Utf8, "row": pl.Int64},
        ).unique(maintain_order=True)


def gather_evidence(df: pl.DataFrame, index: EvalIndex, semantic: bool = True) -> Evidence:
    """Scan every compared message of ``df`` once (see :mod:`.scan`), then look again only at those with n-gram
    probe hits (normalized text, hits, their keys) and at those the MinHash detector must sign; the semantic detector
    (if the index has one and ``semantic``) embeds and searches every compared message."""
    msgs, content = _training_messages(df, index.config.roles)
    scanned = scan(content, index.scan_args(), index.minhash_shingles.args())
    none = np.empty(0, np.int64)
    hit_rows = np.flatnonzero(scanned.hits).astype(np.int64) if index.table.size else none
    data, offsets = scanned.texts.normalized_rows(hit_rows)
    hits = probe_hits(data, offsets, *index.probe_args()) if hit_rows.size else (none,) * 5
    keys = np.full(hits[0].size, -1, np.int64)
    if index.config.max_train_rows and hits[0].size:
        keys = hit_keys(data, offsets, index, hits)
    candidates = pl.DataFrame(schema=CANDIDATE_SCHEMA)
    if semantic and index.semantic is not None:
        candidates = index.semantic.candidates(content)
    return Evidence(msgs, hit_rows, data, offsets, hits, keys, _minhash_matches(index, scanned), candidates)


def matches_from(evidence: Evidence, index: EvalIndex, frequent: pl.DataFrame) -> pl.DataFrame:
    """The matches of ``evidence``, matches on the ``frequent`` keys (:data:`KEY_SCHEMA`) ignored: ``row``, the
    columns of :data:`MATCH_SCHEMA` and ``item`` (eval row), in the order of :func:`sort_matches`."""
    keep = ~np.isin(evidence.keys, frequent["key"].to_numpy())
    ngram = _ngram_matches(evidence, index, tuple(a[keep] for a in evidence.hits)).with_columns(
        pl.lit("ngram").alias("detector"), pl.lit(None, pl.Float64).alias("similarity")
    )
    minhash = evidence.minhash.with_columns(
        pl.lit("minhash").alias("detector"), pl.lit(None, pl.Utf8).alias("matched_ngram")
    )
    semantic = evidence.semantic.with_columns(
        pl.lit(SEMANTIC).alias("detector"), pl.lit(None, pl.Utf8).alias("matched_ngram")
    )
    no_verdict = pl.lit(None, pl.Utf8).alias("verdict")
    cols = ["msg", "item", "detector", "matched_ngram", "similarity", "verdict"]
    matches = pl.concat([ngram.with_columns(no_verdict).select(cols), minhash.with_columns(no_verdict).select(cols),
                         semantic.select(cols)])
    meta = evidence.msgs.select("row", "conversation_id", "message_index", "role")
    items = index.items.select("benchmark", "item_id", "field")
    out = pl.concat(
        [
            meta.select(pl.all().gather(matches["msg"])),
            items.select(pl.all().gather(matches["item"])),
            matches.select("detector", "matched_ngram", "similarity", "verdict", pl.col("item").cast(pl.Int64)),
        ],
        how="horizontal",
    ).with_columns(pl.col("role").replace_strict(SIDES, return_dtype=pl.Utf8).alias("side"))
    return sort_matches(out.select(*MATCHES_SCHEMA).cast(MATCHES_SCHEMA))


def sort_matches(matches: pl.DataFrame) -> pl.DataFrame:
    """Matches ordered by training row, message_index, benchmark, item_id, field, detector, then eval row (a total
    order: a message matches an eval row at most once per detector), whatever order they come in."""
    return matches.sort(["row", "message_index", "benchmark", "item_id", "field", "detector", "item"])


def _training_messages(df: pl.DataFrame, roles: tuple[str, ...]) -> tuple[pl.DataFrame, pl.Series]:
    """One row per message with a compared role (row position, conversation_id, message_index, role), and the raw
    text of each."""
    exploded = (
        df.select(pl.col("conversation_id").cast(pl.Utf8), "messages")
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))
        .with_columns(pl.int_ranges(0, pl.col("messages").list.len(), dtype=pl.Int64).alias("message_index"))
        .explode(["messages", "message_index"])
        .filter(pl.col("messages").is_not_null())
        .with_columns(
            pl.col("messages").struct.field("role").alias("role"),
            pl.col("messages").struct.field("content").alias("content"),
        )
        .filter(pl.col("role").is_in(list(roles)))
    )
    return exploded.select("row", "conversation_id", "message_index", "role"), exploded["content"]


def _ngram_matches(evidence: Evidence, index: EvalIndex, hits: tuple[np.ndarray, ...]) -> pl.DataFrame:
    """(msg, item, matched_ngram) for every message/eval-text pair sharing a verified window among ``hits`` (the
    evidence's hits on keys that are not train-frequent)."""
    if hits[0].size == 0:
        return pl.DataFrame(schema={"msg": pl.Int64, "item": pl.Int64, "matched_ngram": pl.Utf8})
    found = _checked_on_strings(as_series(evidence.data, evidence.offsets), index, _hits_per_item(index, hits))
    return found.with_columns(pl.Series("msg", evidence.hit_rows).gather(found["msg"]))


def _hits_per_item(index: EvalIndex, hits: tuple[np.ndarray, ...]) -> pl.DataFrame:
    """(msg, pos, length, item) of the probe hits (doc, pos, length, lo, hi), each expanded to the eval rows
    holding its window, whose length fits the item (an n-gram for long items, the whole text for short ones);
    unique, sorted by msg, item, pos."""
    o_doc, o_pos, o_len, o_lo, o_hi = hits
    span = o_hi - o_lo
    rep = np.repeat(np.arange(o_doc.size), span)
    within = np.arange(rep.size) - np.repeat(np.cumsum(span) - span, span)
    expanded = pl.DataFrame(
        {
            "msg": o_doc[rep],
            "pos": o_pos[rep],
            "length": o_len[rep],
            "item": index.table_items[o_lo[rep] + within],
        }
    )
    item_len = index.items["n_words"].to_numpy()
    wanted = np.minimum(item_len[expanded["item"].to_numpy()], index.config.ngram)
    return expanded.filter(pl.Series(expanded["length"].to_numpy() == wanted)).unique().sort(["msg", "item", "pos"])


def _checked_on_strings(normalized: pl.Series, index: EvalIndex, hits: pl.DataFrame) -> pl.DataFrame:
    """(msg, item, matched_ngram): per (message, eval text) of ``hits``, its earliest window whose words are, as
    strings, a word sequence of the eval text; a (rare) hash collision falls through to the next window."""
    found = []
    pending = hits
    norm_msgs = normalized.alias("msg_text").to_frame()
    norm_items = index.items.select(pl.col("normalized").alias("item_text"))
    while pending.height:
        first = pending.group_by(["msg", "item"], maintain_order=True).first()
        checked = (
            first.with_columns(
                norm_msgs["msg_text"].gather(first["msg"]).alias("msg_text"),
                norm_items["item_text"].gather(first["item"]).alias("item_text"),
            )
            .with_columns(
                pl.col("msg_text")
                .str.split(" ")
                .list.slice(pl.col("pos"), pl.col("length"))
                .list.join(" ")
                .alias("matched_ngram")
            )
            .with_columns(
                (pl.lit(" ") + pl.col("item_text") + pl.lit(" "))
                .str.contains(pl.lit(" ") + pl.col("matched_ngram") + pl.lit(" "), literal=True)
                .alias("ok")
            )
        )
        found.append(checked.filter("ok").select("msg", "item", "matched_ngram"))
        failed = checked.filter(~pl.col("ok")).select("msg", "item", "pos")
        pending = pending.join(failed, on=["msg", "item"], how="semi").join(
            failed, on=["msg", "item", "pos"], how="anti"
        )
    return pl.concat(found).with_columns(pl.col("msg", "item").cast(pl.Int64))


def _minhash_matches(index: EvalIndex, scanned: Scan) -> pl.DataFrame:
    """(msg, item, similarity) for message/eval-text pairs with estimated Jaccard >= threshold; only the messages
    the scan marked are signed (the others cannot share a signature value with an eval text)."""
    cfg = index.config
    empty = pl.DataFrame(schema={"msg": pl.Int64, "item": pl.Int64, "similarity": pl.Float64})
    if cfg.minhash is None or index.minhash_rows.size == 0:
        return empty
    rows = np.flatnonzero(scanned.signed).astype(np.int64)
    if rows.size == 0:
        return empty
    sigs = scanned.texts.signatures(rows, cfg.minhash)
    eval_pos, msg_pos = cross_candidates(index.minhash_sorted, band_hashes(sigs, cfg.minhash))
    if eval_pos.size == 0:
        return empty
    sims = equal_counts(index.minhash_signatures, eval_pos, sigs, msg_pos) / float(cfg.minhash.num_perm)
    ok = sims >= cfg.minhash.threshold
    return pl.DataFrame(
        {"msg": rows[msg_pos[ok]], "item": index.minhash_rows[eval_pos[ok]], "similarity": sims[ok]},
        schema={"msg": pl.Int64, "item": pl.Int64, "similarity": pl.Float64},
    )
