"""What the hand-run benchmarks share: the model they run on, and the machine load they report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a local Hugging Face model directory (default: embedded "
                        "SmolLM2-135M-Instruct)")
    parser.add_argument("--model-root", default=str(REPO / "data" / "models" / "embedded"),
                        help="where the embedded GGUF is converted, or found already converted "
                             "(default: data/models/embedded, the pipeline's location)")


def resolve_model(args: argparse.Namespace):
    """The model of ``--model`` / ``--model-root`` (see :func:`add_model_arguments`), prepared as the pipeline does."""
    from assets.common.models.directories import prepare_embedded_smollm2, prepare_local

    return prepare_local(args.model) if args.model else prepare_embedded_smollm2(args.model_root)


def load_average() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())
