"""A grid of fine-tuning and testing runs, run as the real commands (``refers sweep``).

A sweep file (YAML, see ``configs/sweep/``) names datasets, label fractions, data seeds,
initialisations ("arms": REFERS, ImageNet, scratch, ...) and hyper-parameter candidates. For every
group (dataset, fraction, arm) the sweep

1. trains every candidate for every data seed with ``Fine-tune/<Dataset>/train.py`` (or
   ``python -m refers finetune``),
2. picks the candidate with the best mean *validation* AUC over the seeds (the test set is never
   looked at), so that every arm gets its own learning rate, and
3. tests that candidate's checkpoints with ``test.py``, which writes the prediction files that
   ``refers results`` reads.

Runs whose outputs already exist are skipped (and said so); every command is appended to
``<output_dir>/commands.log`` with its exit status, so any run can be repeated by hand.

A sweep file is checked when it loads, before any run starts (``--dry-run`` too): its keys at every
level, its ``train:``/``test:``/``search:`` flags against the fine-tuning schema
(:mod:`refers.finetune.config`: a misspelt flag is refused with the nearest valid name, a wrong type
or value with the allowed ones), and then every planned command is parsed as ``train.py`` /
``test.py`` will parse it, presets included.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from refers.base.paths import SAFE_NAME_RULE, is_safe_name, project_root
from refers.config.engine import ConfigError, Spec, check_keys, mapping, read_yaml, unknown_key
from refers.data.registry import get_dataset
from refers.finetune.config import DATA_VOLUMES, check_flag_values, parse_args
from refers.slurm.resources import SlurmResources

# Keys a sweep file may hold at each level; anything else is a typo and is refused.
TOP_KEYS = {"name", "workdir", "output_dir", "results_dir", "entry", "launcher", "execution", "seeds",
            "train", "test", "search", "arms", "datasets", "slurm"}
LEVEL_KEYS = {"train", "test", "search", "seeds"}
DATASET_KEYS = LEVEL_KEYS | {"fractions", "by_fraction", "arms"}  # arms: which of the file's arms run on it
FULL_DATA = 100  # the fraction that is the whole training list: one run (seed 0), no data seed
TOP_SPECS = {"name": Spec(str), "workdir": Spec(str), "output_dir": Spec(str), "results_dir": Spec(str),
             "entry": Spec(str, choices=("script", "module")), "execution": Spec(str, choices=("subprocess", "in-process"))}
SEEDS = Spec(list, item=int, low=0)
# Flags whose values the sweep writes itself, per run (names, folders, seeds from ``seeds:``).
_OWN_FLAGS = {"--name", "--output_dir", "--log_dir", "--seed", "--data_seed", "--pretrained_dir", "--results_dir"}
FRACTION = Spec(int, choices=DATA_VOLUMES)


class SweepConfigError(ConfigError):
    """A sweep file that cannot be used; the message names the file and the key (exit code 2)."""


@dataclass(frozen=True)
class Run:
    """One command of a sweep.

    Attributes:
        kind: ``"train"`` (fine-tuning) or ``"test"``.
        dataset: registry name, e.g. ``NIH_ChestX-ray``.
        percent: label fraction (``--data_volume``).
        seed: data seed (always 0 at 100%).
        arm: initialisation name; also the ``--method`` folder of the prediction files.
        candidate: the hyper-parameters chosen from ``search``, as ``key=value,...`` ("default" if none).
        args: arguments after the program (the program fixes the dataset).
        run_dir: the run's folder (checkpoints, logs, the sweep's record).
    """

    kind: str
    dataset: str
    percent: int
    seed: int
    arm: str
    candidate: str
    args: tuple[str, ...]
    run_dir: Path

    @property
    def group(self) -> tuple[str, int, str]:
        return self.dataset, self.percent, self.arm

    @property
    def label(self) -> str:
        return f"{self.kind} {self.dataset} {self.percent}% seed {self.seed} {self.arm} [{self.candidate}]"


@dataclass
class SweepConfig:
    """A parsed sweep file with every path resolved.

    ``train``/``test``/``search`` hold flags in the spelling of ``train.py`` (``learning_rate``,
    ``freeze_backbone``); ``True`` is a bare flag, ``False``/``None`` leaves the flag out.
    """

    source: Path
    name: str
    workdir: Path
    output_dir: Path
    results_dir: Path
    entry: str = "script"
    launcher: list[str] = field(default_factory=lambda: [sys.executable])
    execution: str = "subprocess"
    raw: dict[str, Any] = field(default_factory=dict)
    arms: tuple[str, ...] | None = None  # only these of the file's arms (``refers sweep --arms``); None: all

    @property
    def log_path(self) -> Path:
        return self.output_dir / "commands.log"

    @property
    def slurm(self) -> SlurmResources:
        """The ``slurm:`` section: what each job asks for with ``--executor slurm``."""
        return SlurmResources.from_mapping(self.raw.get("slurm"), f"{self.source}: slurm")


def _mapping(value: Any, where: str) -> dict:
    try:
        return mapping(value, where)
    except ConfigError as error:
        raise SweepConfigError(str(error)) from None


def read_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep file as plain data, merged onto the file its ``_BASE_`` key names (relative to it).

    Raises:
        FileNotFoundError: the file (or a base) does not exist.
        ConfigError: not YAML, not a mapping, or a ``_BASE_`` cycle.
    """
    return read_yaml(path, what="sweep file")


def fill_placeholders(value: Any, placeholders: Mapping[str, str]) -> Any:
    """``value`` with every placeholder (e.g. ``{"${OUT}": "/runs/demo"}``) replaced in every string, however deeply nested."""
    if isinstance(value, dict):
        return {k: fill_placeholders(v, placeholders) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_placeholders(v, placeholders) for v in value]
    if isinstance(value, str):
        for key, text in placeholders.items():
            value = value.replace(key, text)
    return value


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None,
                placeholders: Mapping[str, str] | None = None, arms: Sequence[str] | None = None) -> SweepConfig:
    """Read and check a sweep file.

    Relative paths (``workdir``, ``output_dir``, ``results_dir``) resolve from the project root, as
    every other default of the project does; commands run in ``workdir`` (default: the project root),
    so relative paths inside flags are relative to it too.

    Args:
        path: the YAML file.
        overrides: top-level keys that replace the file's (e.g. ``{"output_dir": ...}`` from the CLI).
        placeholders: filled in before the checks (a template such as the demo's ``${OUT}``); any
            ``${...}`` left after that is refused.
        arms: plan only these of the file's arms (each must be declared); None: all of them.

    Raises:
        FileNotFoundError: no such file.
        SweepConfigError: a malformed or unknown key, a fine-tuning flag or value ``train.py`` would
            refuse, an unknown dataset, an empty grid.
    """
    source = Path(path)
    raw = fill_placeholders(read_sweep_file(source), placeholders or {})
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        check_sweep(raw, str(source))
    except ConfigError as error:
        raise SweepConfigError(str(error)) from None
    if arms is not None:
        for arm in arms:
            if arm not in declared_arms(raw, str(source)):
                raise SweepConfigError(str(unknown_key(f"{source}: --arms", arm, declared_arms(raw, str(source)), noun="arm")))
    root = project_root()

    def resolve(key: str, default: str) -> Path:
        return (root / Path(str(raw.get(key, default))).expanduser()).resolve()

    entry = raw.get("entry", SweepConfig.entry)
    execution = raw.get("execution", SweepConfig.execution)
    launcher = raw.get("launcher") or [sys.executable]
    if isinstance(launcher, str):
        launcher = shlex.split(launcher)
    launcher = [sys.executable if part == "python" else str(part) for part in launcher]
    config = SweepConfig(
        source=source, name=str(raw.get("name", source.stem)), workdir=resolve("workdir", "."),
        output_dir=resolve("output_dir", f"runs/sweep/{source.stem}"), results_dir=resolve("results_dir", "Results_of_fine-tuning"),
        entry=entry, launcher=launcher, execution=execution, raw=raw, arms=None if arms is None else tuple(arms),
    )
    runs = plan_training(config)
    if not runs:
        chosen = "" if arms is None else f" of the arms {', '.join(arms)} (--arms)"
        raise SweepConfigError(f"{source}: the grid{chosen} is empty (no datasets, fractions or arms)")
    check_commands(config, runs)
    return config


def check_sweep(raw: Mapping[str, Any], where: str) -> None:
    """The keys and values of a sweep file at every level (fine-tuning flags against their schema).

    Raises:
        ConfigError: naming the file, the section and the key.
    """
    check_placeholders(raw, where)
    check_keys(raw, TOP_KEYS, where)
    for key, spec in TOP_SPECS.items():
        if key in raw:
            spec.check(key, raw[key], where)
    SlurmResources.from_mapping(raw.get("slurm"), f"{where}: slurm")  # the executor's resources (--executor slurm)
    if not isinstance(raw.get("launcher"), (str, type(None))):
        Spec(list, item=str).check("launcher", raw["launcher"], where)
    _check_level(raw, where, "")
    for arm, section in _mapping(raw.get("arms"), f"{where}: arms").items():
        if not is_safe_name(str(arm)):  # the arm is test.py's --method: a folder of the results tree
            raise SweepConfigError(f"{where}: arms: {arm!r} must be {SAFE_NAME_RULE}")
        _check_level(section, where, f"arms.{arm}", LEVEL_KEYS)
    declared = declared_arms(raw, where)
    for name, section in _mapping(raw.get("datasets"), f"{where}: datasets").items():
        at = f"datasets.{name}"
        section = _check_level(section, where, at, DATASET_KEYS)
        for arm in Spec(list, item=str).check(f"{at}.arms", section.get("arms", declared), where):
            if arm not in declared:
                raise unknown_key(f"{where}: {at}.arms", arm, declared, noun="arm")
        for percent in Spec(list).check(f"{at}.fractions", section.get("fractions", [FULL_DATA]), where):
            FRACTION.check(f"{at}.fractions", percent, where)
        for percent, level in _mapping(section.get("by_fraction"), f"{where}: {at}.by_fraction").items():
            FRACTION.check(f"{at}.by_fraction", int(percent) if str(percent).isdigit() else percent, where)
            _check_level(level, where, f"{at}.by_fraction.{percent}", LEVEL_KEYS)


def declared_arms(raw: Mapping[str, Any], where: str) -> list[str]:
    """The arms a sweep file declares, in file order (``REFERS`` alone when it declares none)."""
    return list(_mapping(raw.get("arms"), f"{where}: arms")) or ["REFERS"]


_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")


def check_placeholders(value: Any, where: str, key: str = "") -> None:
    """Refuse a ``${...}`` left in any value (at any depth): run as is, ``${OUT}`` became a folder of that name.

    Raises:
        ConfigError: naming the file, the key (dotted, ``[i]`` for list items) and the placeholder.
    """
    if isinstance(value, Mapping):
        for k, v in value.items():
            check_placeholders(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_placeholders(v, where, f"{key}[{i}]")
    elif isinstance(value, str) and (found := _PLACEHOLDER.search(value)):
        raise ConfigError(f"{where}: {key or 'value'}: unresolved placeholder {found.group()} in {value!r}; "
                          "replace it with a real value (nothing fills placeholders in a sweep file)")


def _check_level(level: Any, where: str, path: str, keys: set[str] | None = None) -> dict:
    """One level of a sweep file (the top, an arm, a dataset, a fraction): its keys, ``seeds``, and
    its ``train``/``test`` flags and ``search`` candidates against the fine-tuning schema."""
    at = (lambda key: f"{where}: {path}.{key}") if path else (lambda key: f"{where}: {key}")
    level = _mapping(level, f"{where}: {path}" if path else where)
    if keys is not None:
        check_keys(level, keys, f"{where}: {path}")
    if "seeds" in level:
        SEEDS.check(f"{path}.seeds" if path else "seeds", level["seeds"], where)
    for key in ("train", "test"):
        check_flag_values(level.get(key), at(key))
    search = level.get("search")
    if isinstance(search, (list, tuple)):
        for i, point in enumerate(search):
            if not isinstance(point, Mapping):
                raise ConfigError(f"{at('search')}: a search list must hold mappings (one per candidate)")
            check_flag_values(point, f"{at('search')}[{i}]")
    elif search is not None:
        for key, values in _mapping(search, at("search")).items():
            for value in values if isinstance(values, (list, tuple)) else [values]:
                check_flag_values({key: value}, at("search"))
    return level


def check_commands(config: SweepConfig, runs: Iterable[Run]) -> None:
    """Parse every planned command as ``train.py`` / ``test.py`` will (presets, defaults that depend
    on other flags, rules across flags), so that no run fails on its flags after others have run.

    Raises:
        SweepConfigError: naming the run and what its command line gets wrong.
    """
    seen = set()
    for run in runs:
        test = plan_test(config, run, run.run_dir / "checkpoint.bin")
        for planned, stage in ((run, "train"), (test, "test")):
            # Runs that differ only in what the sweep writes itself (checked above) parse alike.
            key = (planned.dataset, stage, *(a if i == 0 or planned.args[i - 1] not in _OWN_FLAGS else "*"
                                             for i, a in enumerate(planned.args)))
            if key in seen:
                continue
            seen.add(key)
            try:
                parse_args(in_process_argv(planned)[1:], "refers finetune", stage, workdir=config.workdir, exit_on_error=False)
            except ConfigError as error:
                raise SweepConfigError(f"{config.source}: {planned.label}: {error}") from None


def flags(values: Mapping[str, Any]) -> list[str]:
    """``{"learning_rate": 0.01, "freeze_backbone": True, "init": None}`` -> ``--learning_rate 0.01 --freeze_backbone``."""
    out: list[str] = []
    for key, value in values.items():
        if value is None or value is False:
            continue
        out.append(f"--{key}")
        if value is True:
            continue
        out.extend(str(v) for v in value) if isinstance(value, (list, tuple)) else out.append(str(value))
    return out


def candidates(search: Mapping[str, Any] | list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The candidates of a ``search`` section.

    A mapping is a grid, every combination of its values: ``{"learning_rate": [0.1, 0.01]}`` -> two
    candidates. A list of mappings names the candidates one by one, for searches that are not a
    grid (e.g. a linear probe at one learning rate beside full fine-tuning at two).
    """
    if isinstance(search, (list, tuple)):
        return [dict(point) for point in search] or [{}]
    if not search:
        return [{}]
    keys = list(search)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in search.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _search(levels: Iterable[Mapping], where: str) -> dict[str, Any] | list[dict[str, Any]]:
    """A group's ``search``: grids merge key by key from the top level down; a list replaces
    whatever less specific levels said, and a grid cannot refine a list."""
    merged: dict[str, Any] | list[dict[str, Any]] = {}
    for level in levels:
        section = level.get("search")
        if isinstance(section, (list, tuple)):
            if not all(isinstance(point, Mapping) for point in section):
                raise SweepConfigError(f"{where}: a search list must hold mappings (one per candidate)")
            merged = [dict(point) for point in section]
        elif section is not None:
            if isinstance(merged, list):
                raise SweepConfigError(f"{where}: a search grid cannot refine a search list given above it; "
                                       "give the whole list at this level")
            merged.update(_mapping(section, "search"))
    return merged


def candidate_tag(candidate: Mapping[str, Any]) -> str:
    """A readable, file-name-safe name for a candidate (``learning_rate=0.01,freeze_backbone=True``)."""
    if not candidate:
        return "default"
    return ",".join(f"{k}={v}" for k, v in candidate.items()).replace("/", "-").replace(" ", "")


def _levels(config: SweepConfig, dataset: str, percent: int, arm: str) -> list[dict]:
    """The sections that apply to one group, least specific first (later ones win key by key)."""
    raw = config.raw
    where = config.source
    ds = _mapping(_mapping(raw.get("datasets"), f"{where}: datasets").get(dataset), f"{where}: datasets.{dataset}")
    by_fraction = {int(k): v for k, v in _mapping(ds.get("by_fraction"), f"{where}: datasets.{dataset}.by_fraction").items()}
    fraction = _mapping(by_fraction.get(percent), f"{where}: datasets.{dataset}.by_fraction.{percent}")
    arm_section = _mapping(_mapping(raw.get("arms"), f"{where}: arms").get(arm), f"{where}: arms.{arm}")
    return [raw, ds, fraction, arm_section]


def _merged(levels: Iterable[Mapping], key: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for level in levels:
        merged.update(_mapping(level.get(key), key))
    return merged


def _seeds(levels: list[dict], percent: int) -> list[int]:
    if percent >= FULL_DATA:
        return [0]
    seeds = [0]
    for level in levels:
        seeds = [int(s) for s in level.get("seeds", seeds)]
    return seeds


def groups(config: SweepConfig) -> list[tuple[str, int, str]]:
    """Every (dataset, percent, arm) of the grid, in file order (of ``config.arms`` only, when set).

    Raises:
        SweepConfigError: for an unknown dataset name or a malformed section.
    """
    raw = config.raw
    out = []
    datasets = _mapping(raw.get("datasets"), f"{config.source}: datasets")
    arms = [arm for arm in declared_arms(raw, str(config.source)) if config.arms is None or arm in config.arms]
    for name, section in datasets.items():
        try:
            spec = get_dataset(str(name))
        except KeyError as error:
            raise SweepConfigError(f"{config.source}: datasets: {error.args[0]}") from None
        section = _mapping(section, f"{config.source}: datasets.{name}")
        if spec.name != name:  # keep one spelling, so that the sections are found again
            raise SweepConfigError(f"{config.source}: datasets: write {name!r} as {spec.name!r}")
        for percent in section.get("fractions", [FULL_DATA]):
            out.extend((spec.name, int(percent), arm) for arm in arms if arm in section.get("arms", arms))
    return out


def _group_dir(config: SweepConfig, dataset: str, percent: int, arm: str) -> Path:
    return config.output_dir / dataset / f"data{percent}" / arm


def _data_args(percent: int, seed: int) -> dict[str, Any]:
    if percent >= FULL_DATA:
        return {"data_volume": percent, "seed": seed}
    return {"data_volume": percent, "data_seed": seed, "seed": seed}


def plan_training(config: SweepConfig) -> list[Run]:
    """Every fine-tuning run of the grid: groups x data seeds x candidates."""
    runs = []
    for dataset, percent, arm in groups(config):
        levels = _levels(config, dataset, percent, arm)
        train = _merged(levels, "train")
        for seed in _seeds(levels, percent):
            for candidate in candidates(_search(levels, f"{config.source}: {dataset} {percent}% {arm}")):
                tag = candidate_tag(candidate)
                run_dir = _group_dir(config, dataset, percent, arm) / f"seed{seed}" / tag
                name = f"{get_dataset(dataset).alias}_{percent}_{arm}_s{seed}"
                values = {**train, **candidate, **_data_args(percent, seed), "name": name,
                          "output_dir": str(run_dir), "log_dir": str(run_dir / "logs")}
                runs.append(Run("train", dataset, percent, seed, arm, tag, tuple(flags(values)), run_dir))
    return runs


def train_option(run: Run, option: str) -> str | None:
    """The value of ``--option`` in a run's arguments (``None`` when absent)."""
    args = list(run.args)
    flag = f"--{option}"
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def plan_test(config: SweepConfig, train_run: Run, checkpoint: Path) -> Run:
    """The ``test.py`` run of a selected fine-tuning run: its prediction files go to ``results_dir``."""
    levels = _levels(config, train_run.dataset, train_run.percent, train_run.arm)
    shared = {key: train_option(train_run, key) for key in ("model_type", "img_size", "data_root", "list_dir")}
    values = {
        **{k: v for k, v in shared.items() if v is not None},
        **_merged(levels, "test"),
        **_data_args(train_run.percent, train_run.seed),
        "name": train_option(train_run, "name"),
        "pretrained_dir": str(checkpoint),
        "method": train_run.arm,
        "results_dir": str(config.results_dir),
        "output_dir": str(train_run.run_dir),
        "log_dir": str(train_run.run_dir / "logs"),
    }
    return Run("test", train_run.dataset, train_run.percent, train_run.seed, train_run.arm, train_run.candidate,
               tuple(flags(values)), train_run.run_dir)


def command_line(config: SweepConfig, run: Run) -> list[str]:
    """The shell command of a run, as it is logged (and run, in subprocess mode, from ``workdir``)."""
    script = "train.py" if run.kind == "train" else "test.py"
    if config.entry == "script":
        return [*config.launcher, str(Path("Fine-tune") / run.dataset / script), *run.args]
    sub = "finetune" if run.kind == "train" else "test"
    return [*config.launcher, "-m", "refers", sub, "--dataset", run.dataset, *run.args]


def in_process_argv(run: Run) -> list[str]:
    """The same command as ``refers.cli.main`` arguments (what ``Fine-tune/<Dataset>/*.py`` call)."""
    return ["finetune" if run.kind == "train" else "test", "--dataset", run.dataset, *run.args]
