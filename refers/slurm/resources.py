"""What a Slurm job asks for: the ``slurm:`` section of a sweep file or the ``--slurm-<key>`` flags.

Nothing that is not given is requested: no GPUs unless asked for (``gpus_per_job``; the sweep's
Slurm executor asks for one when the runs' ``device`` is not ``cpu``), no memory, CPU, account or
partition request unless given, and no time limit line unless ``time`` is given (the
partition's default applies), so that the same file runs on a CPU-only test cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from refers.config.engine import ConfigError, Spec, check_keys

SPECS: dict[str, Spec] = {
    "partition": Spec(str), "account": Spec(str), "time": Spec(str), "gpus_per_job": Spec(int, low=0),
    "cpus_per_job": Spec(int, low=1), "mem": Spec(str), "sbatch_options": Spec(list, item=str),
}
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


def time_minutes(value: str) -> int:
    """Slurm's time formats as whole minutes (rounded up): ``MM``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.

    Raises:
        ValueError: not one of those formats.
    """
    found = _TIME.match(str(value).strip())
    if not found:
        raise ValueError(f"time {value!r} is not a Slurm time (MM, HH:MM:SS or D-HH:MM:SS)")
    days = int(found["days"] or 0)
    parts = [int(p) for p in (found["a"], found["b"], found["c"]) if p is not None]
    if found["days"] is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:  # MM or MM:SS
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return max(1, -(-total // 60))


def sbatch_option(text: str) -> tuple[str, Any]:
    """``"--qos=high"`` -> ``("qos", "high")``; ``"--exclusive"`` -> ``("exclusive", True)``.

    Raises:
        ValueError: not a long option.
    """
    if not text.startswith("--") or len(text) < 3:
        raise ValueError(f"sbatch option {text!r} must be a long option such as --qos=high or --exclusive")
    key, _, value = text[2:].partition("=")
    return key.replace("-", "_"), (value if value else True)


@dataclass(frozen=True)
class SlurmResources:
    """The Slurm request of one job (None / empty: not requested)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem: str | None = None
    sbatch_options: tuple[str, ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str) -> "SlurmResources":
        """A ``slurm:`` section, its keys and values checked.

        Raises:
            ConfigError: an unknown key (with the nearest valid one), a wrong type, a bad time or
                memory, an sbatch option that is not ``--key[=value]``.
        """
        values = dict(values or {})
        check_keys(values, SPECS, where)
        for key, value in values.items():
            SPECS[key].check(key, value, where)
        made = cls(**{k: v for k, v in values.items() if k != "sbatch_options"},
                   sbatch_options=tuple(values.get("sbatch_options") or ()))
        made.check(where)
        return made

    def check(self, where: str) -> None:
        try:
            if self.time is not None:
                time_minutes(self.time)
            for option in self.sbatch_options:
                sbatch_option(option)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
        if self.mem is not None and not _MEM.match(str(self.mem)):
            raise ConfigError(f"{where}: mem {self.mem!r} is not a Slurm memory size (e.g. 16G or 16000M)")

    def merged(self, other: "SlurmResources") -> "SlurmResources":
        """These resources with every value that ``other`` gives replacing ours (options added)."""
        given = {f.name: getattr(other, f.name) for f in fields(other) if f.name != "sbatch_options"
                 and getattr(other, f.name) is not None}
        return replace(self, **given, sbatch_options=self.sbatch_options + other.sbatch_options)

    def submitit_parameters(self, nodes: int = 1, tasks_per_node: int = 1, gpus_per_node: int | None = None) -> dict[str, Any]:
        """Keyword arguments of ``submitit.SlurmExecutor.update_parameters``: only what was given.

        ``gpus_per_node`` (pre-training's ``--gpus-per-node``) wins over ``gpus_per_job``.
        """
        # Requeueable: the job requeues itself after saving on the pre-timeout signal, and a cluster
        # with JobRequeue=0 would refuse that without it.
        params: dict[str, Any] = {"nodes": nodes, "ntasks_per_node": tasks_per_node}
        extra: dict[str, Any] = {"requeue": True}
        gpus = gpus_per_node if gpus_per_node is not None else self.gpus_per_job
        if gpus:
            params["gpus_per_node"] = gpus
        for ours, theirs in (("partition", "partition"), ("account", "account"), ("cpus_per_job", "cpus_per_task"),
                             ("mem", "mem")):
            if getattr(self, ours) is not None:
                params[theirs] = getattr(self, ours)
        if self.time is not None:
            params["time"] = time_minutes(self.time)
        extra.update(sbatch_option(option) for option in self.sbatch_options)
        params["additional_parameters"] = extra
        return params
