"""The pre-training configuration: one schema, every default declared once (VirTex style).

A run's configuration is the schema below, then a YAML file (which may name a ``_BASE_`` YAML it
extends, relative to itself), then ``KEY VALUE`` overrides from the command line, e.g.
``["OPTIM.NUM_ITERATIONS", "20", "OPTIM.BATCH_SIZE", "4"]``. Values are parsed by the type of
the default and checked against the key's rules below (allowed values, range); unknown keys are
errors that name the key and the nearest known one (:mod:`refers.config.engine`). Key names are the original REFERS ones
(``RANDOM_SEED``, ``DATA.IMAGE_CROP_SIZE``, ``OPTIM.LR`` ...); the original's spellings of keys
that moved (``OPTIM.SGD_MOMENTUM``, ``OPTIM.LOOKAHEAD_STEPS`` ...) are accepted as aliases.

Relative paths in a configuration are relative to the project root (see :func:`config_path`), so
a run behaves the same from ``Pre-train/`` as from the top folder.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import yaml

from refers.base.paths import project_root
from refers.config.choices import OPTIMIZERS
from refers.config.engine import ConfigError, Spec, did_you_mean, flatten, read_yaml, spec_of_default


def _data_defaults() -> dict[str, Any]:
    return {
        # Folder the lists' image paths are relative to (the original's DATA.ROOT); "" = the
        # image_root of the dataset.yaml beside TRAIN_LIST, else Data/MIMIC-CXR/prepared, else
        # Data/MIMIC-CXR.
        "IMAGE_ROOT": "",
        # Training / validation studies: a prepared study index (``refers prepare mimic``) or an
        # original ``{split}_img_caption_patients.txt`` file (folder <TAB> report).
        "TRAIN_LIST": "DataProcessed/MIMIC/train_studies.jsonl",
        "VAL_LIST": "DataProcessed/MIMIC/val_studies.jsonl",
        # SentencePiece BPE model of the report decoder (``refers tokenizer train`` writes it;
        # pre-training trains it when the file does not exist).
        "TOKENIZER_MODEL": "DataProcessed/MIMIC/tokenizer/reports_bpe.model",
        # WordPiece tokenizer folder of a BERT built from config (ignored with MODEL.TEXTUAL.BERT_DIR).
        "BERT_TOKENIZER_DIR": "DataProcessed/MIMIC/tokenizer/wordpiece",
        # Size of the decoder vocabulary (embedding rows); the tokenizer may use fewer ids.
        "VOCAB_SIZE": 10000,
        # Ids of the decoder tokenizer's special symbols (fixed by ``refers tokenizer train``).
        "UNK_INDEX": 0,
        "SOS_INDEX": 1,
        "EOS_INDEX": 2,
        "MASK_INDEX": 3,
        # A real padding id (the original padded with <unk>); ignored by the captioning loss.
        "PAD_INDEX": 4,
        # Side of the square crop fed to the image encoder.
        "IMAGE_CROP_SIZE": 224,
        # JPEGs larger than this (shorter side) may be decoded at a reduced scale (>= this side).
        "IMAGE_MIN_SIDE": 320,
        # Decoder tokens per report, [SOS] and [EOS] included (longer reports are truncated,
        # keeping [EOS]); also the number of decoder position embeddings.
        "MAX_CAPTION_LENGTH": 100,
        # BERT tokens per report ([CLS] and [SEP] included).
        "BERT_MAX_LENGTH": 100,
        # Views per study fed to the encoder (distinct when the study has enough, frontal first).
        "NUM_VIEWS": 3,
        # RandomResizedCrop area scale and aspect-ratio ranges (training only).
        "CROP_SCALE": [0.05, 1.0],
        "CROP_RATIO": [0.6, 1.0],
        # Colour jitter applied with this probability: brightness and contrast factor ranges.
        "COLOR_JITTER_PROB": 0.8,
        "BRIGHTNESS": [0.6, 1.4],
        "CONTRAST": [0.6, 1.4],
        # Horizontal flip, one decision per study; a flipped frontal view swaps left/right in the
        # report. ``--no-flip`` sets False.
        "HORIZONTAL_FLIP": True,
        "FLIP_PROB": 0.5,
        # Control arm of experiments: pair each study with another study's report (fixed seed).
        "SHUFFLE_REPORTS": False,
    }


def _model_defaults() -> dict[str, Any]:
    return {
        "VISUAL": {
            # Image encoder: an original ViT name (refers.models.vit) or a timm model name.
            "NAME": "ViT-B_16",
            # Local initial weights (.npz from Google, .pth, .safetensors); "" = random. The recipe
            # starts from Google's ImageNet-21k ViT-B_16.npz (download it there yourself).
            "PRETRAINED": "Data/pretrained/ViT-B_16.npz",
            # Dropout after the position embeddings and inside the MLPs (original placement).
            "DROPOUT": 0.1,
            # Image vector of the report contrast, per view: "cls" (the original: the CLS token)
            # or "mean" (mean of the patch tokens). A ViT trained from random weights gives the
            # same CLS token for every image at first, and the contrast then never leaves chance;
            # the tiny from-scratch presets use "mean".
            "CONTRAST_POOLING": "cls",
        },
        "TEXTUAL": {
            # Report decoder, VirTex notation: L layers, H width, A heads, F feed-forward size.
            "NAME": "transformer_postnorm::L1_H1024_A16_F4096",
            # Dropout of the decoder's embeddings and layer.
            "DROPOUT": 0.1,
            # Local folder of a transformers BERT (e.g. Bio_ClinicalBERT) and its tokenizer;
            # "" = a BERT built from the sizes below with the WordPiece tokenizer of
            # DATA.BERT_TOKENIZER_DIR.
            "BERT_DIR": "",
            # Sizes of a BERT built from config (the defaults are BERT-base's).
            "BERT_VOCAB_SIZE": 30522,
            "BERT_LAYERS": 12,
            "BERT_HIDDEN": 768,
            "BERT_HEADS": 12,
            "BERT_INTERMEDIATE": 3072,
            "BERT_DROPOUT": 0.1,
            # Report vector of the contrast: "pooler" (the original: BERT's pooler, tanh of a
            # dense layer on the CLS token) or "mean" (mean of the non-padding token states). A BERT
            # from random weights gives the same pooler output for every report at first.
            "CONTRAST_POOLING": "pooler",
        },
    }


def _loss_defaults() -> dict[str, Any]:
    return {
        # Total loss = CAPTION_WEIGHT * captioning CE + CONTRAST_WEIGHT * ConVIRT loss.
        "CAPTION_WEIGHT": 1.0,
        "CONTRAST_WEIGHT": 1.0,
        # ConVIRT temperature and weight of the image->text direction (text->image gets 1 - LAMBDA).
        "TAU": 0.1,
        "LAMBDA": 0.75,
        # Gather negatives from all processes (gradients flow through the gather).
        "GATHER_NEGATIVES": False,
    }


def _optim_defaults() -> dict[str, Any]:
    return {
        # "sgd" (the recipe: SGD with MOMENTUM) or "adamw" (the original config's other choice;
        # trains small models from scratch much faster, see configs/pretrain/tiny_cpu.yaml).
        "OPTIMIZER_NAME": "sgd",
        # Total batch size across all processes (divided by the world size).
        "BATCH_SIZE": 2,
        # Micro-batches per optimiser step (BATCH_SIZE is split into this many; DDP syncs on the last).
        "ACCUMULATION_STEPS": 1,
        # Peak learning rate of everything but BERT, and of BERT.
        "LR": 3e-3,
        "BERT_LR": 3e-4,
        # SGD momentum and weight decay; no decay on parameters whose name matches NO_DECAY
        # (case-insensitive).
        "MOMENTUM": 0.9,
        "WEIGHT_DECAY": 1e-4,
        "NO_DECAY": ".*(norm.*|bias)",
        # Gradient clipping (total norm); 0 disables.
        "CLIP_GRAD_NORM": 10.0,
        "LOOKAHEAD": {
            # Wrap SGD in Lookahead: sync the slow weights every STEPS steps with factor ALPHA.
            "USE": True,
            "STEPS": 5,
            "ALPHA": 0.5,
        },
        # Training iterations; linear warm-up steps, then LR_DECAY_NAME decay to 0 at the end.
        "NUM_ITERATIONS": 400000,
        "WARMUP_STEPS": 10000,
        # "cosine", "linear" or "none".
        "LR_DECAY_NAME": "cosine",
    }


def _checkpoint_defaults() -> dict[str, Any]:
    return {
        # Pre-training keeps the last KEEP_LAST checkpoint_{iteration}.pth (0 = all; one takes
        # 2.7 GB in the recipe) and, with KEEP_EVERY > 0, every one whose iteration is a multiple
        # of it. ``--keep-checkpoints`` / ``--keep-every`` set them.
        "KEEP_LAST": 3,
        "KEEP_EVERY": 0,
    }


def _amp_defaults() -> dict[str, Any]:
    return {
        # Autocast dtype on GPU: "bfloat16", "float16" (with a GradScaler) or "float32" (off).
        # The original used apex O2 (float16).
        "DTYPE": "bfloat16",
        # bfloat16 autocast on CPU too (~17% faster per step on the demo's 2-core AVX-512 BF16 CPU);
        # off by default: float32 is the reference arithmetic on CPU.
        "CPU_BFLOAT16": False,
    }


def _schema() -> dict[str, Any]:
    """The defaults: the published REFERS recipe (``configs/pretrain/refers_vitb16.yaml``)."""
    return {
        # Seed of every random number generator (the original's value).
        "RANDOM_SEED": 6,
        "DATA": _data_defaults(),
        "MODEL": _model_defaults(),
        "LOSS": _loss_defaults(),
        "OPTIM": _optim_defaults(),
        "CHECKPOINT": _checkpoint_defaults(),
        "AMP": _amp_defaults(),
    }


# The original's spellings of keys that this schema groups or renames.
ALIASES = {
    "DATA.ROOT": "DATA.IMAGE_ROOT",
    "OPTIM.SGD_MOMENTUM": "OPTIM.MOMENTUM",
    "OPTIM.USE_LOOKAHEAD": "OPTIM.LOOKAHEAD.USE",
    "OPTIM.LOOKAHEAD_STEPS": "OPTIM.LOOKAHEAD.STEPS",
    "OPTIM.LOOKAHEAD_ALPHA": "OPTIM.LOOKAHEAD.ALPHA",
}


# What each key may hold beyond its default's type: allowed values and ranges (checked at load time).
_UNIT = {"low": 0.0, "high": 1.0}  # a probability or a fraction
_POSITIVE = {"low": 0, "open_low": True}
_NON_NEGATIVE = {"low": 0}
RULES: dict[str, dict[str, Any]] = {
    "RANDOM_SEED": _NON_NEGATIVE,
    "DATA.VOCAB_SIZE": _POSITIVE,
    **{f"DATA.{name}_INDEX": _NON_NEGATIVE for name in ("UNK", "SOS", "EOS", "MASK", "PAD")},
    "DATA.IMAGE_CROP_SIZE": _POSITIVE,
    "DATA.IMAGE_MIN_SIDE": _POSITIVE,
    "DATA.MAX_CAPTION_LENGTH": {"low": 3},
    "DATA.BERT_MAX_LENGTH": {"low": 3},
    "DATA.NUM_VIEWS": _POSITIVE,
    "DATA.CROP_SCALE": {"low": 0.0, "open_low": True, "high": 1.0, "ordered": True},
    "DATA.CROP_RATIO": {**_POSITIVE, "ordered": True},
    "DATA.COLOR_JITTER_PROB": _UNIT,
    "DATA.BRIGHTNESS": {**_NON_NEGATIVE, "ordered": True},
    "DATA.CONTRAST": {**_NON_NEGATIVE, "ordered": True},
    "DATA.FLIP_PROB": _UNIT,
    "MODEL.VISUAL.DROPOUT": {**_UNIT, "open_high": True},
    "MODEL.VISUAL.CONTRAST_POOLING": {"choices": ("cls", "mean")},
    "MODEL.TEXTUAL.DROPOUT": {**_UNIT, "open_high": True},
    **{f"MODEL.TEXTUAL.BERT_{name}": _POSITIVE for name in ("VOCAB_SIZE", "LAYERS", "HIDDEN", "HEADS", "INTERMEDIATE")},
    "MODEL.TEXTUAL.BERT_DROPOUT": {**_UNIT, "open_high": True},
    "MODEL.TEXTUAL.CONTRAST_POOLING": {"choices": ("pooler", "mean")},
    "LOSS.CAPTION_WEIGHT": _NON_NEGATIVE,
    "LOSS.CONTRAST_WEIGHT": _NON_NEGATIVE,
    "LOSS.TAU": _POSITIVE,
    "LOSS.LAMBDA": _UNIT,
    "OPTIM.OPTIMIZER_NAME": {"choices": OPTIMIZERS},
    "OPTIM.BATCH_SIZE": _POSITIVE,
    "OPTIM.ACCUMULATION_STEPS": _POSITIVE,
    "OPTIM.LR": _POSITIVE,
    "OPTIM.BERT_LR": _NON_NEGATIVE,
    "OPTIM.MOMENTUM": {**_UNIT, "open_high": True},
    "OPTIM.WEIGHT_DECAY": _NON_NEGATIVE,
    "OPTIM.CLIP_GRAD_NORM": _NON_NEGATIVE,
    "OPTIM.LOOKAHEAD.STEPS": _POSITIVE,
    "OPTIM.LOOKAHEAD.ALPHA": {**_UNIT, "open_low": True},
    "OPTIM.NUM_ITERATIONS": _POSITIVE,
    "OPTIM.WARMUP_STEPS": _NON_NEGATIVE,
    "OPTIM.LR_DECAY_NAME": {"choices": ("cosine", "linear", "none")},
    "AMP.DTYPE": {"choices": ("bfloat16", "float16", "float32")},
    "CHECKPOINT.KEEP_LAST": _NON_NEGATIVE,
    "CHECKPOINT.KEEP_EVERY": _NON_NEGATIVE,
}


def specs() -> dict[str, Spec]:
    """Every key's spec: the type of its default plus its :data:`RULES`."""
    return {key: spec_of_default(default, **RULES.get(key, {})) for key, default in flatten(_schema())}


class Config:
    """A nested, read-only configuration with attribute access (``cfg.OPTIM.LR``)."""

    def __init__(self, data: Mapping[str, Any]):
        nodes = {k: Config(v) if isinstance(v, Mapping) else copy.deepcopy(v) for k, v in data.items()}
        object.__setattr__(self, "_data", nodes)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy/pickle probe dunders before _data exists
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"no configuration key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Config is read-only; use load_config(..., overrides) instead")

    def __getitem__(self, dotted: str) -> Any:
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists and scalars (for checkpoints and ``weights_only`` loading)."""
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self._data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """Rebuild a configuration saved with :meth:`to_dict`, checked against the schema."""
        merged = _schema()
        _merge(merged, data, origin="saved configuration")
        _check(merged)
        return cls(merged)

    def dump(self, path: str | os.PathLike) -> None:
        """Write the resolved configuration as YAML (atomically)."""
        from refers.base.atomic import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (with its ``_BASE_`` chain), then overrides.

    Args:
        path: a YAML file, or None for the defaults (the published recipe).
        overrides: flat ``[KEY, VALUE, KEY, VALUE, ...]``; values are parsed by the default's type.

    Raises:
        ConfigError: unknown key, wrong type, odd number of override items, ``_BASE_`` cycle.
        FileNotFoundError: ``path`` (or a ``_BASE_``) does not exist.
    """
    data = _schema()
    if path is not None:
        _merge(data, read_yaml(Path(path)), origin=str(path))
    if len(overrides) % 2:
        raise ConfigError(f"config overrides come in KEY VALUE pairs; got an odd number of items: {list(overrides)}")
    rules = specs()
    for key, text in zip(overrides[::2], overrides[1::2]):
        key = ALIASES.get(key, key)
        parent, leaf = _lookup(data, key, origin="--config-override")
        parent[leaf] = rules[key].parse(key, str(text), origin="--config-override")
    _check(data)
    return Config(data)


def config_path(value: str | os.PathLike) -> Path | None:
    """A path from a configuration: None when empty, else absolute or relative to the project root."""
    if not str(value):
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_root() / path


def parse_decoder_name(name: str) -> dict[str, Any]:
    """Sizes from a VirTex decoder name, e.g. ``transformer_postnorm::L1_H1024_A16_F4096``.

    Returns:
        ``{"norm_first": bool, "layers": L, "hidden": H, "heads": A, "ffn": F}``.
    """
    kind, _, sizes = name.partition("::")
    if kind not in ("transformer_postnorm", "transformer_prenorm") or not sizes:
        raise ConfigError(
            f"MODEL.TEXTUAL.NAME {name!r}: expected 'transformer_postnorm::L<layers>_H<width>_A<heads>_F<ffn>'"
        )
    fields = {}
    for part in sizes.split("_"):
        if len(part) < 2 or part[0] not in "LHAF" or not part[1:].isdigit():
            raise ConfigError(f"MODEL.TEXTUAL.NAME {name!r}: bad size field {part!r}")
        fields[part[0]] = int(part[1:])
    if set(fields) != set("LHAF"):
        raise ConfigError(f"MODEL.TEXTUAL.NAME {name!r}: needs all of L, H, A, F")
    if fields["H"] % fields["A"]:
        raise ConfigError(f"MODEL.TEXTUAL.NAME {name!r}: width H must be a multiple of the heads A")
    return {"norm_first": kind == "transformer_prenorm", "layers": fields["L"], "hidden": fields["H"],
            "heads": fields["A"], "ffn": fields["F"]}


# ----------------------------------------------------------------------------------------------
# Merging and checking (the engine checks each value; _check the rules that span keys).
# ----------------------------------------------------------------------------------------------


def _lookup(data: dict[str, Any], dotted: str, origin: str) -> tuple[dict[str, Any], str]:
    """The dict holding ``dotted``'s last part, and that part; a ConfigError if not in the schema."""
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            keys = [k for k, _ in flatten(data)] + list(ALIASES)
            raise ConfigError(f"{origin}: unknown config key {dotted!r}" + did_you_mean(dotted, keys))
        if i < len(parts) - 1:
            node = node[part]
    if isinstance(node[parts[-1]], dict):
        raise ConfigError(f"{origin}: {dotted!r} is a group of keys, not a value")
    return node, parts[-1]


def _merge(data: dict[str, Any], update: Mapping[str, Any], origin: str) -> None:
    """Set every leaf of ``update`` in ``data``, checking keys, types and ranges."""
    rules = specs()
    for dotted, value in flatten(update):
        dotted = ALIASES.get(dotted, dotted)
        parent, leaf = _lookup(data, dotted, origin)
        parent[leaf] = rules[dotted].check(dotted, value, origin)


def _check(data: Mapping[str, Any]) -> None:
    """Rules that span keys, which would otherwise fail deep inside training."""
    flat = dict(flatten(data))
    parse_decoder_name(flat["MODEL.TEXTUAL.NAME"])
    ids = [flat[f"DATA.{n}_INDEX"] for n in ("UNK", "SOS", "EOS", "MASK", "PAD")]
    if len(set(ids)) != len(ids) or max(ids) >= flat["DATA.VOCAB_SIZE"] or min(ids) < 0:
        raise ConfigError(f"DATA.*_INDEX must be distinct ids below DATA.VOCAB_SIZE, got {ids}")
