"""The pre-training configuration: one schema, every default declared once (VirTex style).

A run's configuration is the schema below, then a YAML file (which may name a ``_BASE_`` YAML it
extends, relative to itself), then ``KEY VALUE`` overrides from the command line, e.g.
``["OPTIM.NUM_ITERATIONS", "20", "OPTIM.BATCH_SIZE", "4"]``. Values are parsed by the type of
the default; unknown keys are errors that name the key. Key names are the original REFERS ones
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


def _schema() -> dict[str, Any]:
    """The defaults: the published REFERS recipe (``configs/pretrain/refers_vitb16.yaml``)."""
    return {
        # Seed of every random number generator (the original's value).
        "RANDOM_SEED": 6,
        "DATA": {
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
        },
        "MODEL": {
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
        },
        "LOSS": {
            # Total loss = CAPTION_WEIGHT * captioning CE + CONTRAST_WEIGHT * ConVIRT loss.
            "CAPTION_WEIGHT": 1.0,
            "CONTRAST_WEIGHT": 1.0,
            # ConVIRT temperature and weight of the image->text direction (text->image gets 1 - LAMBDA).
            "TAU": 0.1,
            "LAMBDA": 0.75,
            # Gather negatives from all processes (gradients flow through the gather).
            "GATHER_NEGATIVES": False,
        },
        "OPTIM": {
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
        },
        "AMP": {
            # Autocast dtype on GPU: "bfloat16", "float16" (with a GradScaler) or "float32" (off).
            # The original used apex O2 (float16).
            "DTYPE": "bfloat16",
            # bfloat16 autocast on CPU too (~17% faster per step on the demo's 2-core AVX-512 BF16 CPU);
            # off by default: float32 is the reference arithmetic on CPU.
            "CPU_BFLOAT16": False,
        },
    }


# The original's spellings of keys that this schema groups or renames.
ALIASES = {
    "DATA.ROOT": "DATA.IMAGE_ROOT",
    "OPTIM.SGD_MOMENTUM": "OPTIM.MOMENTUM",
    "OPTIM.USE_LOOKAHEAD": "OPTIM.LOOKAHEAD.USE",
    "OPTIM.LOOKAHEAD_STEPS": "OPTIM.LOOKAHEAD.STEPS",
    "OPTIM.LOOKAHEAD_ALPHA": "OPTIM.LOOKAHEAD.ALPHA",
}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema; the message names the key."""


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
        _merge(data, _read_yaml(Path(path), seen=()), origin=str(path))
    if len(overrides) % 2:
        raise ConfigError(f"config overrides come in KEY VALUE pairs; got an odd number of items: {list(overrides)}")
    for key, text in zip(overrides[::2], overrides[1::2]):
        key = ALIASES.get(key, key)
        parent, leaf = _lookup(data, key, origin="--config-override")
        parent[leaf] = _parse_override(key, parent[leaf], str(text))
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
# Merging and type checking.
# ----------------------------------------------------------------------------------------------


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A YAML file merged over its ``_BASE_`` (recursively), as a plain nested dict."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"_BASE_ cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / base, seen + (path,))
    _deep_update(merged, data)
    return merged


def _deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _lookup(data: dict[str, Any], dotted: str, origin: str) -> tuple[dict[str, Any], str]:
    """The dict holding ``dotted``'s last part, and that part; a ConfigError if not in the schema."""
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{origin}: unknown config key {dotted!r}" + _suggest(data, dotted))
        if i < len(parts) - 1:
            node = node[part]
    if isinstance(node[parts[-1]], dict):
        raise ConfigError(f"{origin}: {dotted!r} is a group of keys, not a value")
    return node, parts[-1]


def _suggest(data: Mapping[str, Any], dotted: str) -> str:
    import difflib

    keys = [k for k, _ in _flatten(data)] + list(ALIASES)
    close = difflib.get_close_matches(dotted, keys, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _merge(data: dict[str, Any], update: Mapping[str, Any], origin: str) -> None:
    """Set every leaf of ``update`` in ``data``, checking keys and types."""
    for dotted, value in _flatten(update):
        dotted = ALIASES.get(dotted, dotted)
        parent, leaf = _lookup(data, dotted, origin)
        parent[leaf] = _coerce(dotted, parent[leaf], value, origin)


def _coerce(key: str, default: Any, value: Any, origin: str) -> Any:
    """``value`` checked against the type of ``default`` (ints widen to floats)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, list):
        ok = isinstance(value, list) and len(value) == len(default) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
        value = [float(v) for v in value] if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        expected = f"a list of {len(default)} numbers" if isinstance(default, list) else type(default).__name__
        raise ConfigError(f"{origin}: {key} must be {expected}, got {value!r}")
    return value


def _parse_override(key: str, default: Any, text: str) -> Any:
    """Parse a command-line value by the type of the key's default."""
    origin = "--config-override"
    if isinstance(default, bool):
        if text.lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{origin}: {key} must be true or false, got {text!r}")
        return text.lower() in _TRUE
    if isinstance(default, str):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(default, float) and isinstance(value, str):  # YAML reads "3e-3" as a string
        try:
            value = float(text)
        except ValueError:
            pass
    if isinstance(default, list) and isinstance(value, str):  # "0.2,1.0" without brackets
        try:
            value = [float(v) for v in text.split(",")]
        except ValueError:
            pass
    return _coerce(key, default, value, origin)


def _check(data: Mapping[str, Any]) -> None:
    """Cross-key consistency that would otherwise fail deep inside training."""
    flat = dict(_flatten(data))
    parse_decoder_name(flat["MODEL.TEXTUAL.NAME"])
    ids = [flat[f"DATA.{n}_INDEX"] for n in ("UNK", "SOS", "EOS", "MASK", "PAD")]
    if len(set(ids)) != len(ids) or max(ids) >= flat["DATA.VOCAB_SIZE"] or min(ids) < 0:
        raise ConfigError(f"DATA.*_INDEX must be distinct ids below DATA.VOCAB_SIZE, got {ids}")
    positive = ("DATA.IMAGE_CROP_SIZE", "DATA.NUM_VIEWS", "OPTIM.BATCH_SIZE", "OPTIM.NUM_ITERATIONS", "LOSS.TAU",
                "OPTIM.ACCUMULATION_STEPS")
    for key in positive:
        if flat[key] <= 0:
            raise ConfigError(f"{key} must be positive, got {flat[key]}")
    if flat["DATA.MAX_CAPTION_LENGTH"] < 3 or flat["DATA.BERT_MAX_LENGTH"] < 3:
        raise ConfigError("DATA.MAX_CAPTION_LENGTH and DATA.BERT_MAX_LENGTH must be at least 3")
    if not 0.0 <= flat["LOSS.LAMBDA"] <= 1.0:
        raise ConfigError(f"LOSS.LAMBDA must be in [0, 1], got {flat['LOSS.LAMBDA']}")
    if flat["MODEL.TEXTUAL.CONTRAST_POOLING"] not in ("pooler", "mean"):
        raise ConfigError(f"MODEL.TEXTUAL.CONTRAST_POOLING must be 'pooler' or 'mean', got {flat['MODEL.TEXTUAL.CONTRAST_POOLING']!r}")
    if flat["MODEL.VISUAL.CONTRAST_POOLING"] not in ("cls", "mean"):
        raise ConfigError(f"MODEL.VISUAL.CONTRAST_POOLING must be 'cls' or 'mean', got {flat['MODEL.VISUAL.CONTRAST_POOLING']!r}")
    if flat["AMP.DTYPE"] not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"AMP.DTYPE must be bfloat16, float16 or float32, got {flat['AMP.DTYPE']!r}")
    if flat["OPTIM.OPTIMIZER_NAME"] not in ("sgd", "adamw"):
        raise ConfigError(f"OPTIM.OPTIMIZER_NAME must be sgd or adamw, got {flat['OPTIM.OPTIMIZER_NAME']!r}")
    if flat["OPTIM.LR_DECAY_NAME"] not in ("cosine", "linear", "none"):
        raise ConfigError(f"OPTIM.LR_DECAY_NAME must be cosine, linear or none, got {flat['OPTIM.LR_DECAY_NAME']!r}")
    low, high = flat["DATA.CROP_SCALE"]
    if not 0 < low <= high <= 1:
        raise ConfigError(f"DATA.CROP_SCALE must satisfy 0 < min <= max <= 1, got {[low, high]}")
