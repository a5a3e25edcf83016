"""``refers``: one command fronting the whole pipeline.

Subcommands are imported only when run, so ``refers --help`` and argument errors are instant.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

# name -> (module with main(argv), one-line description). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("refers.cli.synth", "generate synthetic chest X-ray datasets in the official on-disk layouts"),
    "prepare": ("refers.cli.prepare", "build lists, labels and resized images from a dataset's official files"),
    "tokenizer": ("refers.cli.tokenizer", "train the report tokenizers (SentencePiece for the decoder, WordPiece for BERT)"),
    "pretrain": ("refers.cli.pretrain", "REFERS pre-training (same as Pre-train/pretrain_refers.py)"),
    "export": ("refers.cli.export", "export the image encoder of a pre-training checkpoint for fine-tuning"),
    "generate": ("refers.cli.generate", "write a report for a study with a pre-trained model"),
    "finetune": ("refers.cli.finetune", "fine-tune on a downstream dataset (same as Fine-tune/train.py)"),
    "test": ("refers.cli.test", "evaluate a fine-tuned checkpoint and write prediction files (same as Fine-tune/test.py)"),
    "predict": ("refers.cli.predict", "score PNG/JPEG/DICOM images with a fine-tuned checkpoint"),
    "zeroshot": ("refers.cli.zeroshot", "classify a test list without labels, from text prompts and a dual encoder"),
    "retrieval": ("refers.cli.retrieval", "image-report retrieval recall on a study index, with bootstrap intervals"),
    "results": ("refers.cli.results", "tables, confidence intervals, significance tests and ROC figures"),
    "sweep": ("refers.cli.sweep", "run a grid of fine-tuning/testing runs"),
    "demo": ("refers.cli.demo", "the whole pipeline on built-in synthetic data"),
    "bench": ("refers.cli.bench", "benchmarks: training throughput, overhead, data loading"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: refers <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in COMMANDS.items()]
    lines += ["", "Run 'refers <command> --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from refers.base.version import __version__

        print(f"refers {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(_usage(), file=sys.stderr)
        print(f"\nrefers: error: unknown command {name!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
