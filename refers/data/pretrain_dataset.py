"""The pre-training dataset: one sample per MIMIC-CXR study (its views and its report).

Each sample holds ``DATA.NUM_VIEWS`` views of a study: distinct images when the study has enough
(one of each view kind first, so a study with a lateral view shows it), filled by repetition
otherwise, ordered frontal, then lateral, then unknown/other (the fusion gates depend on the
position). Training picks at random within a kind and augments each view on its own, except the
horizontal flip: one decision per study, and when it mirrors a frontal (or unknown) view the words
``left`` and ``right`` are swapped in the report. Validation is deterministic.

All randomness comes from torch's global generator, which ``DataLoader`` seeds per worker, so a
run is reproducible from its seed and resumable from the loader's state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from refers.config import Config, config_path
from refers.data.image_roots import image_roots
from refers.data.images import open_grey
from refers.data.mimic_lists import Study, first_listed_path
from refers.data.study_table import StudyTable, load_study_table
from refers.data.device_transforms import build_view_transform, flip
from refers.text.normalize import swap_left_right

logger = logging.getLogger(__name__)

FRONTAL, LATERAL, OTHER = 0, 1, 2
_LATERAL_VIEWS = {"LATERAL", "LL", "RL", "XTABLE LATERAL", "LAT"}


def view_kind(view: str) -> int:
    """``FRONTAL`` (PA, AP and their variants; IU X-ray's "Frontal"), ``LATERAL``, or ``OTHER`` (unknown "", oblique, ...)."""
    name = view.strip().upper()
    if name in _LATERAL_VIEWS:
        return LATERAL
    if name.split(" ")[0] in ("PA", "AP", "FRONTAL"):
        return FRONTAL
    return OTHER


def choose_views(kinds: Sequence[int], num_views: int, preference: Sequence[int] | None = None) -> list[int]:
    """Indices of the images to use, in model order.

    Args:
        kinds: view kind of each image of the study.
        num_views: views wanted.
        preference: a permutation of the images, most preferred first, deciding within a kind
            (random in training); None prefers file order (validation).

    Returns:
        ``num_views`` indices: distinct while the study has enough images, one of each kind first,
        then repeated cyclically; sorted by kind (stable).
    """
    if not kinds:
        raise ValueError("a study without images")
    order = list(preference) if preference is not None else list(range(len(kinds)))
    first_of_kind = []
    for kind in (FRONTAL, LATERAL, OTHER):
        index = next((i for i in order if kinds[i] == kind), None)
        if index is not None:
            first_of_kind.append(index)
    preferred = first_of_kind + [i for i in order if i not in first_of_kind]
    chosen = preferred[:num_views]
    chosen = [chosen[i % len(chosen)] for i in range(num_views)]
    return sorted(chosen, key=lambda i: kinds[i])


def resolve_image_root(cfg: Config, list_path: Path) -> Path:
    """The image root of a MIMIC list (:mod:`refers.data.image_roots`): ``DATA.IMAGE_ROOT`` (or the
    official layouts under it), else the list folder's dataset.yaml ``image_root``, else the official
    layouts under ``Data/MIMIC-CXR/`` (``prepared/``, then the download's ``files/``): the first that
    holds the list's first image.

    Raises:
        UserError: none holds it (the message lists every place tried).
    """
    roots = image_roots("MIMIC-CXR", list_path.parent, config_path(cfg.DATA.IMAGE_ROOT))
    return roots.root_for(first_listed_path(list_path), f"the images of {list_path}")


TOKEN_CACHE_SIZE = 20_000  # distinct report texts kept tokenised per process


class StudyDataset(Dataset):
    """Studies of ``DATA.TRAIN_LIST`` / ``DATA.VAL_LIST`` as model inputs.

    Args:
        cfg: the configuration (``DATA.*``, ``RANDOM_SEED``).
        split: ``"train"`` (random views, augmentation, flip) or ``"val"`` (deterministic).
        tokenizer: a :class:`refers.text.report_tokenizer.ReportTokenizer`.
        bert_tokenizer: the report encoder's transformers tokenizer.
        studies: the studies to use instead of reading the configured list (tests, subsets).
        shuffle_reports: pair each study with another study's report, by a permutation fixed by
            ``RANDOM_SEED`` (the control arm of experiments); default ``DATA.SHUFFLE_REPORTS``.
        horizontal_flip: default ``DATA.HORIZONTAL_FLIP`` (training only).
    """

    def __init__(
        self,
        cfg: Config,
        split: str,
        tokenizer,
        bert_tokenizer,
        studies: Sequence[Study] | None = None,
        shuffle_reports: bool | None = None,
        horizontal_flip: bool | None = None,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data = cfg.DATA
        self.train = split == "train"
        if studies is None:
            list_path = config_path(data.TRAIN_LIST if self.train else data.VAL_LIST)
            if list_path is None:
                raise FileNotFoundError(f"no DATA.{split.upper()}_LIST configured")
            # Columns, not a list of objects: loader workers share the index instead of copying it.
            studies = load_study_table(list_path, resolve_image_root(cfg, list_path))
        if isinstance(studies, StudyTable):
            kept = studies.select(np.flatnonzero(studies.usable()))
        else:
            kept = [s for s in studies if s.text.strip() and s.images]
        if len(kept) < len(studies):
            logger.warning("%s: %d of %d studies have no report text or no image; skipped", split, len(studies) - len(kept), len(studies))
        if not kept:
            raise ValueError(f"no usable {split} studies (each needs images and report text)")
        self.studies = kept
        self.tokenizer = tokenizer
        self.bert_tokenizer = bert_tokenizer
        self.num_views = data.NUM_VIEWS
        self.caption_length = data.MAX_CAPTION_LENGTH
        self.bert_length = data.BERT_MAX_LENGTH
        self.min_side = data.IMAGE_MIN_SIDE or None
        self.flip_prob = data.FLIP_PROB
        self.horizontal_flip = self.train and (data.HORIZONTAL_FLIP if horizontal_flip is None else horizontal_flip)
        self.transform = build_view_transform(cfg, self.train)
        self._token_cache: dict[str, tuple[np.ndarray, ...]] = {}
        shuffle = data.SHUFFLE_REPORTS if shuffle_reports is None else shuffle_reports
        # report_of[i]: the study whose report goes with study i's images.
        self.report_of = np.random.default_rng(cfg.RANDOM_SEED).permutation(len(kept)) if shuffle else np.arange(len(kept))

    def __len__(self) -> int:
        return len(self.studies)

    def _tokens(self, report: str) -> tuple[np.ndarray, ...]:
        """Decoder ids and mask, BERT ids and mask of a report, each distinct text tokenised once.

        Every epoch meets the same reports (and their left/right-swapped twins) again; tokenising
        them was a third of the loading time of a small-image batch. The cache is per process and
        bounded (emptied when full): at most ~60 MB at the recipe's lengths.
        """
        found = self._token_cache.get(report)
        if found is None:
            caption, caption_mask = self.tokenizer.encode_padded(report, self.caption_length)
            bert = self.bert_tokenizer(report, max_length=self.bert_length, truncation=True, padding="max_length")
            found = (np.asarray(caption, dtype=np.int32), np.asarray(caption_mask, dtype=bool),
                     np.asarray(bert["input_ids"], dtype=np.int32), np.asarray(bert["attention_mask"], dtype=np.int8))
            if len(self._token_cache) >= TOKEN_CACHE_SIZE:
                self._token_cache.clear()
            self._token_cache[report] = found
        return found

    def __getitem__(self, index: int) -> dict:
        """One study.

        Returns:
            ``images`` uint8 [V, 1, S, S] (grey; normalised to 3 channels on the device by
            :func:`refers.data.device_transforms.study_batch_to_device`); ``caption_ids`` long [L] (``[SOS] ... [EOS]`` then
            ``[PAD]``, L = ``DATA.MAX_CAPTION_LENGTH``) and ``caption_mask`` bool [L];
            ``bert_input_ids`` / ``bert_attention_mask`` long [Lb]; ``study_id``; ``report`` (the
            text after any left/right swap); ``views`` (the image indices used); ``flipped``.
        """
        study = self.studies[index]
        kinds = [view_kind(v) for v in study.views]
        order = torch.randperm(len(kinds)).tolist() if self.train else None
        chosen = choose_views(kinds, self.num_views, order)
        flipped = self.horizontal_flip and bool(torch.rand(()) < self.flip_prob)
        grey = {i: open_grey(study.images[i], min_side=self.min_side) for i in set(chosen)}
        views = []
        for i in chosen:
            view = self.transform(grey[i])
            views.append(flip(view) if flipped else view)
        other = int(self.report_of[index])
        report = self.studies.text(other) if isinstance(self.studies, StudyTable) else self.studies[other].text
        # Mirroring a lateral view does not change which side is which; a frontal one does.
        if flipped and any(kinds[i] != LATERAL for i in chosen):
            report = swap_left_right(report)
        caption, caption_mask, bert_ids, bert_mask = self._tokens(report)
        return {
            "images": torch.stack(views),
            "caption_ids": torch.tensor(caption, dtype=torch.long),
            "caption_mask": torch.tensor(caption_mask, dtype=torch.bool),
            "bert_input_ids": torch.tensor(bert_ids, dtype=torch.long),
            "bert_attention_mask": torch.tensor(bert_mask, dtype=torch.long),
            "study_id": study.study_id,
            "report": report,
            "views": chosen,
            "flipped": flipped,
        }


def collate_studies(samples: Sequence[dict]) -> dict:
    """Stack samples into a batch, cutting padding columns that no sample uses.

    Returns:
        ``images`` uint8 [B, V, 1, S, S], ``caption_ids`` / ``caption_mask`` [B, L'], ``bert_input_ids`` /
        ``bert_attention_mask`` [B, Lb'], ``study_ids``, ``reports`` and ``flipped`` (lists).
    """
    caption_mask = torch.stack([s["caption_mask"] for s in samples])
    bert_mask = torch.stack([s["bert_attention_mask"] for s in samples])
    length = int(caption_mask.sum(dim=1).max())
    bert_length = int(bert_mask.sum(dim=1).max())
    return {
        "images": torch.stack([s["images"] for s in samples]),
        "caption_ids": torch.stack([s["caption_ids"] for s in samples])[:, :length],
        "caption_mask": caption_mask[:, :length],
        "bert_input_ids": torch.stack([s["bert_input_ids"] for s in samples])[:, :bert_length],
        "bert_attention_mask": bert_mask[:, :bert_length],
        "study_ids": [s["study_id"] for s in samples],
        "reports": [s["report"] for s in samples],
        "flipped": [s["flipped"] for s in samples],
    }
