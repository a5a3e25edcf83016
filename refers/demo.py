"""The whole REFERS pipeline on built-in synthetic data (``refers demo`` / ``make demo``).

Every stage runs the project's real command in a subprocess, exactly as a user would type it; the
commands are appended to ``<out>/commands.sh`` (runnable from the project root) and their output to
``<out>/logs/``. Stages:

1. ``refers synth``: synthetic studies in the five datasets' official layouts;
2. ``refers prepare``: MIMIC pre-training lists, the four downstream datasets, 1%/10% fractions, a pack
   of the NIH-format images (``refers prepare pack``);
3. ``refers tokenizer train`` and ``Pre-train/pretrain_refers.py`` (the demo preset); beside it
   ``refers sweep --arms scratch``, fine-tuning and testing from random weights, which needs no pre-training;
4. ``refers export``: the image encoder for fine-tuning;
5. ``refers sweep --arms REFERS ...``: fine-tuning from the export (and, with ``--full``, from the
   ablation's pre-training arms: caption_only, contrast_only, shuffled, two_view); each arm's candidate
   (learning rate, linear probe or full fine-tuning) is chosen on validation, then ``test.py`` runs;
6. ``refers export --dual-encoder``, ``refers zeroshot`` on the NIH-format test set (no labels used)
   and ``refers retrieval`` on the MIMIC-style test studies, into the results tree;
7. ``refers results``: the table, confidence intervals and ROC figures (zero-shot and retrieval too);
8. the pre-training retrieval recall and one generated report next to its true report;
9. ``<out>/summary.json``.

Budgets (studies, pre-training length, fine-tuning grid) live in ``configs/demo/*.yaml`` and
``configs/sweep/demo*.yaml``.
"""

from __future__ import annotations

import codecs
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from refers.base.atomic import atomic_write_text
from refers.base.host import usable_cores
from refers.base.json_files import read_json
from refers.config.engine import ConfigError, check_keys, dataclass_specs, read_yaml, unknown_key
from refers.data.registry import FINETUNE_DATASETS, get_dataset
from refers.base.paths import project_root

MARKER = "DEMO.txt"  # marks a folder as demo output, which a new run may delete
STAGES = 9
# The ablation's pre-training arms: what each changes in the demo preset (README, "What the demo shows").
ABLATION_ARMS: dict[str, dict[str, Any]] = {
    "caption_only": {"LOSS.CONTRAST_WEIGHT": 0.0},  # report generation alone
    "contrast_only": {"LOSS.CAPTION_WEIGHT": 0.0},  # report contrast alone
    "shuffled": {"DATA.SHUFFLE_REPORTS": True},  # both losses on shuffled image-report pairs: the control
    "two_view": {"DATA.NUM_VIEWS": 2},  # frontal + lateral through the view fusion
}
ZERO_SHOT_DATASET = "NIH_ChestX-ray"
ABLATION_DATASET = "NIH_ChestX-ray"  # the ablation's arms are fine-tuned on this set only
PACKED_DATASET = "NIH_ChestX-ray"  # packed at the demo's image size (the sweeps' packed_cache)


class DemoError(RuntimeError):
    """A stage failed or an output is missing; the message says which and where its log is."""


@dataclass
class Profile:
    """The demo's budgets, read from ``configs/demo/<name>.yaml``.

    Attributes:
        studies: pre-training (MIMIC-style) studies ``refers synth`` makes.
        downstream_studies: the ``--studies`` scale of the four downstream datasets.
        image_size: side of the synthetic images.
        pretrain_config: pre-training preset (YAML, relative to the project root).
        pretrain_overrides: ``KEY: value`` pairs passed as ``--config-override``.
        sweep: the fine-tuning grid (a sweep file with ``${OUT}`` placeholders).
        percents, seeds: label fractions and data seeds ``refers prepare fractions`` writes.
        ablation: pre-training arms besides REFERS (:data:`ABLATION_ARMS`), fine-tuned and tested as
            the others on the NIH-format set.
        validations: pre-training validations (checkpoints) over the run.
        cpu_workers: data-loading processes of pre-training (0: load in the training process, the
            fastest on 2 cores, where a loader process takes a core from the matrix products).
        pretrain_jobs: stage 3's jobs run at a time (the pre-training arms, then the sweep of the arms
            that need no pre-training), the cores shared out between them as threads (the jobs are
            independent; on 2 cores two one-thread runs keep both busy while each loads its
            batches, where one two-thread run leaves a core idle).
        bootstrap: resamples of ``refers results``' confidence intervals.
        workers: processes of ``refers synth`` / ``refers prepare``.
    """

    name: str
    studies: int = field(default=4000, metadata={"spec": {"low": 50}})
    image_size: int = field(default=64, metadata={"spec": {"low": 8}})
    pretrain_config: str = "configs/demo/pretrain.yaml"
    pretrain_overrides: dict[str, Any] = field(default_factory=dict)
    sweep: str = "configs/sweep/demo.yaml"
    percents: list[int] = field(default_factory=lambda: [1, 10], metadata={"spec": {"low": 1, "high": 100, "open_high": True}})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"spec": {"low": 0}})
    ablation: list[str] = field(default_factory=list)
    downstream_studies: int = field(default=2000, metadata={"spec": {"low": 1}})
    validations: int = field(default=2, metadata={"spec": {"low": 1}})
    cpu_workers: int = field(default=0, metadata={"spec": {"low": 0}})
    pretrain_jobs: int = field(default=1, metadata={"spec": {"low": 1}})
    bootstrap: int = field(default=1000, metadata={"spec": {"low": 1}})
    workers: int = field(default=2, metadata={"spec": {"low": 1}})


def load_profile(name: str, studies: int | None = None) -> Profile:
    """``configs/demo/<name>.yaml`` as a :class:`Profile` (``studies`` overrides the file's).

    The profile is checked before any stage runs: its keys and values, its pre-training preset with
    its overrides, and its sweep file.

    Raises:
        ConfigError: an unknown key (with the nearest one), a wrong type or range, a bad preset or sweep.
    """
    from refers.config import load_config

    root = project_root()
    path = root / "configs" / "demo" / f"{name}.yaml"
    raw = read_yaml(path, "demo profile")
    specs = dataclass_specs(Profile)
    check_keys(raw, specs, str(path))
    values = {key: specs[key].check(key, value, str(path)) for key, value in raw.items() if key != "name"}
    if studies is not None:
        values["studies"] = specs["studies"].check("--studies", studies)
    profile = Profile(name=name, **values)
    for arm in profile.ablation:
        if arm not in ABLATION_ARMS:
            raise unknown_key(f"{path}: ablation", arm, ABLATION_ARMS, noun="arm")
    overrides = [str(item) for pair in profile.pretrain_overrides.items() for item in pair]
    try:
        load_config(root / profile.pretrain_config, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: pretrain_config and pretrain_overrides: {error}") from None
    _check_sweep_arms(path, profile)
    return profile


def _check_sweep_arms(path: Path, profile: Profile) -> None:
    """The profile's sweep file fine-tunes each pre-trained arm, and no other arm from the demo's checkpoints.

    Raises:
        ConfigError: an arm the demo pre-trains that the sweep lacks, or a sweep arm that would wait for
            a checkpoint of ``<out>/checkpoints`` that the demo never writes (naming the profile).
    """
    from refers.sweep import load_config as load_sweep, plan_training, train_option

    stand_in = "demo_out"  # the real folder is filled in when the demo runs
    sweep = load_sweep(project_root() / profile.sweep, placeholders={"${OUT}": stand_in})
    pretrained = ["REFERS", *profile.ablation]
    declared = {run.arm for run in plan_training(sweep)}
    for arm in pretrained:
        if arm not in declared:
            raise ConfigError(f"{path}: ablation: the demo pre-trains {arm!r}, which {profile.sweep} does not "
                              f"fine-tune (its arms: {', '.join(sorted(declared))})")
    checkpoints = Path(stand_in) / "checkpoints"
    for run in plan_training(sweep):
        weights = train_option(run, "pretrained_dir")
        if run.arm not in pretrained and weights and checkpoints in Path(weights).parents:
            raise ConfigError(f"{path}: the sweep {profile.sweep} fine-tunes {run.arm!r} from the demo's "
                              f"pre-training ({weights.replace(stand_in, '${OUT}', 1)}), which this profile does not "
                              "run: add it to ablation")


class Demo:
    """Runs the stages into one output folder and keeps the command log."""

    def __init__(self, out: Path, profile: Profile, python: str = sys.executable, stream: bool = True):
        self.out = out.resolve()
        self.profile = profile
        self.python = python
        self.stream = stream
        self.root = project_root()
        self.stage_number = 0
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()  # commands started together print and log one at a time

    # --- folders ---------------------------------------------------------------------------------

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def start_clean(self) -> None:
        """Empty ``out`` if it holds an earlier demo; refuse a non-empty folder that is not a demo's."""
        if self.out.exists() and any(self.out.iterdir()):
            if not (self.out / MARKER).is_file():
                raise DemoError(f"{self.out} is not empty and is not a demo output folder ({MARKER} missing); "
                                "choose another --out")
            print(f"demo: removing the previous demo output in {self.out} (nothing is reused)")
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / MARKER, "Output of `refers demo` (synthetic data only). Safe to delete; "
                                            "a new `refers demo --out` here deletes it.\n")
        atomic_write_text(self.out / "commands.sh", "#!/bin/sh\n# Every command `refers demo` ran, in order; "
                                                    f"run from the project root.\nset -e\ncd {shlex.quote(str(self.root))}\n")

    # --- running ---------------------------------------------------------------------------------

    def stage(self, title: str) -> None:
        self.stage_number += 1
        line = f"[{self.stage_number}/{STAGES}] {title}"
        print(f"\n{line}\n{'-' * len(line)}", flush=True)
        with (self.out / "commands.sh").open("a", encoding="utf-8") as handle:
            handle.write(f"\n# {line}\n")

    def refers(self, *args: str, log: str) -> None:
        """Run ``python -m refers <args>``."""
        self.run([self.python, "-m", "refers", *args], log=log)

    def run(self, command: Sequence[str], log: str, threads: int | None = None, stream: bool = True) -> None:
        """Run one command from the project root, stream and log its output, record it in commands.sh.

        Args:
            threads: the command's compute threads (``OMP_NUM_THREADS``); None: PyTorch's default, one per core.
            stream: also show its output here (else one line when it ends).

        Raises:
            DemoError: when it exits with a non-zero status.
        """
        command = [str(c) for c in command]
        shown = shlex.join(command).replace(shlex.quote(self.python), "python")
        log_path = self.path("logs", f"{self.stage_number:02d}-{log}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            print(f"$ {shown}" + ("" if stream else f"  # {threads or 'default'} thread(s), progress in {log_path}"), flush=True)
            with (self.out / "commands.sh").open("a", encoding="utf-8") as handle:
                handle.write(shlex.join(command) + "\n")
        start = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # chunks may split a character
        with log_path.open("wb") as handle:
            process = subprocess.Popen(command, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert process.stdout is not None
            for chunk in iter(lambda: process.stdout.read1(65536), b""):  # type: ignore[attr-defined]
                handle.write(chunk)
                if self.stream and stream:
                    sys.stdout.write(decoder.decode(chunk))
                    sys.stdout.flush()
            code = process.wait()
        seconds = time.perf_counter() - start
        self.timings[log] = self.timings.get(log, 0.0) + seconds
        if not stream and code == 0:
            print(f"  {log}: done in {seconds:.0f} s", flush=True)
        if code != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
            raise DemoError(f"`{shown}` failed with exit status {code} after {seconds:.0f} s; "
                            f"log: {log_path}\n" + "\n".join(tail))

    def run_together(self, jobs: Sequence[tuple[Sequence[str], str]], at_once: int) -> None:
        """Run independent ``(command, log)`` jobs ``at_once`` at a time, in the order given, the
        cores shared out between them as threads. After a failure no further job starts; those
        running finish, then the first failure is raised."""
        at_once = max(1, min(at_once, len(jobs)))
        if at_once == 1:
            for command, log in jobs:
                self.run(command, log)
            return
        threads = max(1, usable_cores() // at_once)
        failed = threading.Event()

        def job(command: Sequence[str], log: str) -> None:
            if failed.is_set():
                return
            try:
                self.run(command, log, threads, stream=False)
            except DemoError:
                failed.set()
                raise

        with ThreadPoolExecutor(max_workers=at_once) as pool:
            futures = [pool.submit(job, command, log) for command, log in jobs]
        for future in futures:
            if (error := future.exception()) is not None:
                raise error

    # --- the stages ------------------------------------------------------------------------------

    def synth(self) -> None:
        p = self.profile
        self.stage(f"synthetic data: {p.studies} pre-training studies, downstream sets of a {p.downstream_studies}-study scale")
        # Two calls: the pre-training set and the (smaller) downstream sets scale separately.
        common = ["--out", self.path("Data"), "--image-size", str(p.image_size), "--seed", "0", "--workers", str(p.workers)]
        self.refers("synth", *common, "--studies", str(p.studies), "--datasets", "mimic", log="synth-mimic")
        self.refers("synth", *common, "--studies", str(p.downstream_studies), "--datasets", "nih", "vinbig", "shenzhen",
                    "covid", log="synth-downstream")

    def lists(self, dataset: str) -> Path:
        return self.path("DataProcessed", get_dataset(dataset).processed)

    def prepare(self) -> None:
        self.stage("data preparation: MIMIC-style pre-training lists, downstream lists, label fractions, a pack of the NIH-format images")
        size = str(self.profile.image_size)
        extra = {"mimic": ["--short-side", size], "vinbig": ["--max-size", size]}
        for name in ("MIMIC-CXR", *FINETUNE_DATASETS):
            spec = get_dataset(name)
            workers = ["--workers", str(self.profile.workers)] if spec.alias in extra else []
            self.refers("prepare", spec.alias, "--root", self.path("Data", spec.name), "--out", self.lists(name),
                        *workers, *extra.get(spec.alias, []), log=f"prepare-{spec.alias}")
        percents = [str(p) for p in self.profile.percents]
        seeds = [str(s) for s in self.profile.seeds]
        for name in FINETUNE_DATASETS:
            alias = get_dataset(name).alias
            self.refers("prepare", "fractions", "--dataset", alias, "--lists", self.lists(name), "--percent", *percents,
                        "--seeds", *seeds, log=f"fractions-{alias}")
        # The NIH-format set's longest fine-tuning runs read decoded images from one memory map: without
        # decoding a PNG per image, 300 steps of 32 took 27 s instead of 31 s (same AUC, same crops).
        self.refers("prepare", "pack", "--dataset", get_dataset(PACKED_DATASET).alias, "--lists", self.lists(PACKED_DATASET),
                    "--size", size, "--out", self.pack_dir(), log="pack-nih")

    def pack_dir(self) -> Path:
        """The pack the sweep files read as ``${OUT}/Data/NIH_ChestX-ray/packed``."""
        return self.path("Data", get_dataset(PACKED_DATASET).name, "packed")

    def pretrain_overrides(self, arm: str = "REFERS") -> list[str]:
        mimic = self.lists("MIMIC-CXR")
        values = {
            "DATA.TRAIN_LIST": mimic / "train_studies.jsonl",
            "DATA.VAL_LIST": mimic / "val_studies.jsonl",
            "DATA.TOKENIZER_MODEL": self.path("tokenizer", "reports_bpe.model"),
            "DATA.BERT_TOKENIZER_DIR": self.path("tokenizer", "wordpiece"),
            **self.profile.pretrain_overrides,
            **ABLATION_ARMS.get(arm, {}),
        }
        return [str(item) for pair in values.items() for item in pair]

    def pretrained_arms(self) -> list[str]:
        return ["REFERS", *self.profile.ablation]

    def pretrain(self) -> None:
        beside = self.arms_beside_pretraining()
        self.stage("report tokenizers and REFERS pre-training (demo preset on the tiny CPU model)"
                   + (f", then the ablation arms {', '.join(self.profile.ablation)}" if self.profile.ablation else "")
                   + (f"; beside it, fine-tuning and testing {', '.join(beside)} (no pre-training needed)" if beside else ""))
        from refers.config import load_config

        config = self.root / self.profile.pretrain_config
        cfg = load_config(config, self.pretrain_overrides())
        self.refers("tokenizer", "train", "--reports", cfg.DATA.TRAIN_LIST, "--out", self.path("tokenizer"),
                    "--vocab-size", str(cfg.DATA.VOCAB_SIZE), "--wordpiece-vocab-size", str(cfg.MODEL.TEXTUAL.BERT_VOCAB_SIZE),
                    log="tokenizer")
        every = str(max(1, cfg.OPTIM.NUM_ITERATIONS // self.profile.validations))
        # The longest arms (two views a study) first, so that the last one to start is a short one.
        arms = sorted(self.pretrained_arms(), key=lambda arm: -ABLATION_ARMS.get(arm, {}).get("DATA.NUM_VIEWS", 1))
        jobs = [([self.python, "Pre-train/pretrain_refers.py", "--config", config,
                  "--config-override", *self.pretrain_overrides(arm),
                  "--serialization-dir", self.path("pretrain", arm), "--num-gpus-per-machine", "0",
                  "--cpu-workers", str(self.profile.cpu_workers), "--checkpoint-every", every, "--no-export"],
                 f"pretrain-{arm}") for arm in arms]
        if beside:  # the shortest job: last
            jobs.append(([self.python, "-m", "refers", "sweep", self.write_sweep(), "--arms", *beside], "sweep-beside"))
        self.run_together(jobs, self.profile.pretrain_jobs)

    def last_checkpoint(self, arm: str) -> Path:
        """The latest ``checkpoint_{iteration}.pth`` of a pre-training run."""
        found = sorted(self.path("pretrain", arm).glob("checkpoint_*.pth"), key=lambda p: int(p.stem.split("_")[-1]))
        if not found:
            raise DemoError(f"pre-training wrote no checkpoint into {self.path('pretrain', arm)}")
        return found[-1]

    def encoder(self, arm: str) -> Path:
        return self.path("checkpoints", arm, "refers_checkpoint.pth")

    def export(self) -> None:
        self.stage("export the pre-trained image encoder for fine-tuning")
        for arm in self.pretrained_arms():
            self.refers("export", self.last_checkpoint(arm), "--out", self.encoder(arm), log=f"export-{arm}")

    def write_sweep(self) -> Path:
        """``<out>/sweep.yaml``: the profile's sweep file with ``${OUT}`` filled in."""
        from refers.sweep import fill_placeholders, read_sweep_file

        resolved = fill_placeholders(read_sweep_file(self.root / self.profile.sweep), {"${OUT}": str(self.out)})
        sweep = self.path("sweep.yaml")
        atomic_write_text(sweep, f"# {self.profile.sweep} with ${{OUT}} = {self.out}\n" + yaml.safe_dump(resolved, sort_keys=False))
        return sweep

    def arms_beside_pretraining(self) -> list[str]:
        """The sweep's arms that need none of the demo's pre-training (scratch): they fine-tune while it runs."""
        from refers.sweep import declared_arms, read_sweep_file

        path = self.root / self.profile.sweep
        return [arm for arm in declared_arms(read_sweep_file(path), str(path)) if arm not in self.pretrained_arms()]

    def finetune(self) -> None:
        beside = self.arms_beside_pretraining()
        self.stage("fine-tuning and testing: " + " vs ".join([*self.pretrained_arms(), *beside])
                   + " (candidates chosen on validation per arm" + (f"; {', '.join(beside)} ran in stage 3" if beside else "") + ")")
        self.refers("sweep", self.write_sweep(), "--arms", *self.pretrained_arms(), log="sweep")

    def dual_encoder(self) -> Path:
        return self.path("checkpoints", "REFERS", "dual_encoder")

    def retrieval_folder(self) -> Path:
        return self.path("Results_of_fine-tuning", "retrieval", "MIMIC-CXR_test", "REFERS")

    def crossmodal(self) -> dict[str, Any]:
        """Stage 6: the dual encoder's zero-shot AUC on the NIH-format test set and its retrieval on the
        MIMIC-style test studies; both land in the results tree, so stage 7 tables them."""
        self.stage(f"zero-shot classification ({ZERO_SHOT_DATASET} test set, no labels) and image-report retrieval "
                   "(MIMIC-style test studies) with the exported dual encoder")
        self.refers("export", self.last_checkpoint("REFERS"), "--dual-encoder", "--out", self.dual_encoder(), log="export-dual")
        self.refers("zeroshot", "--model", self.dual_encoder(), "--dataset", ZERO_SHOT_DATASET, "--list_dir",
                    self.lists(ZERO_SHOT_DATASET), "--results_dir", self.path("Results_of_fine-tuning"), "--no-progress",
                    "--batch-size", "256", log="zeroshot")
        zeroshot = read_json(self.path("Results_of_fine-tuning", ZERO_SHOT_DATASET, "zeroshot", "REFERS", "seed0",
                                        "summary.json"))
        studies = self.lists("MIMIC-CXR") / "test_studies.jsonl"
        retrieval: dict[str, Any] = {"skipped": "fewer than 2 test studies"}
        if sum(1 for line in studies.read_text(encoding="utf-8").splitlines() if line.strip()) >= 2:
            self.refers("retrieval", "--model", self.dual_encoder(), "--studies", studies, "--out", self.retrieval_folder(),
                        "--bootstrap", str(self.profile.bootstrap), "--no-progress", log="retrieval")
            found = read_json(self.retrieval_folder() / "retrieval.json")["all_studies"]
            retrieval = {"studies": found["n"], "image_to_report_R@5": found["image_to_report"]["R@5"]["value"],
                         "image_to_report_R@5_ci95": found["image_to_report"]["R@5"]["ci95"],
                         "report_to_image_R@5": found["report_to_image"]["R@5"]["value"],
                         "same_findings_R@5": found["image_to_report"].get("same_findings_R@5", {}).get("value"),
                         "chance_R@5": found["chance"]["R@5"]}
        return {"zeroshot_auc": {ZERO_SHOT_DATASET: {"mean_auc": zeroshot["mean_auc"], "ci95": zeroshot["mean_auc_ci95"],
                                                     "test_images": zeroshot["n_images"]}},
                "test_retrieval": retrieval}

    def results(self) -> None:
        self.stage("results: table, confidence intervals, ROC figures")
        self.refers("results", self.path("Results_of_fine-tuning"), "--out", self.path("results"), "--compare", "REFERS",
                    "--bootstrap", str(self.profile.bootstrap), log="results")

    def report_generation(self) -> dict[str, Any]:
        """Stage 7: the pre-training retrieval recall, and one generated report beside its true report."""
        self.stage("pre-training check: image-to-report retrieval on validation studies, one generated report")
        from refers.data.mimic_lists import read_study_index
        from refers.prepare.common import image_root_of

        lists = self.lists("MIMIC-CXR")
        studies = read_study_index(lists / "val_studies.jsonl", image_root_of(lists))
        study = studies[0]
        folder = study.images[0].parent
        generated = self.path("generated_report.txt")
        self.refers("generate", "--checkpoint", self.last_checkpoint("REFERS"), "--study", folder, "--out", generated,
                    log="generate")
        text = generated.read_text(encoding="utf-8").strip().split("\t", 1)[-1]
        recall = retrieval_recall_at_5(self.path("pretrain", "REFERS"))
        return {"retrieval_recall_at_5": recall, "retrieval_chance_at_5": min(1.0, 5 / max(1, len(studies))),
                "validation_studies": len(studies), "study": study.folder, "generated_report": text,
                "true_report": study.text}

    def summary(self, seconds: float, check: dict[str, Any], crossmodal: dict[str, Any]) -> dict[str, Any]:
        """``summary.json``: AUCs (means over seeds) from ``refers results``' table, recall, zero-shot, time."""
        auc = auc_table(self.path("results", "mean_auc.csv"))
        summary = {"synthetic": True, "seconds": round(seconds, 1),
                   "retrieval_recall_at_5": check["retrieval_recall_at_5"],
                   "auc": auc,
                   "retrieval_chance_at_5": check["retrieval_chance_at_5"],
                   **crossmodal,
                   "stage_seconds": {k: round(v, 1) for k, v in self.timings.items()},
                   **({"ablation": ablation_table(auc, self.pretrained_arms())} if self.profile.ablation else {}),
                   "profile": self.profile.name}
        atomic_write_text(self.path("summary.json"), json.dumps(summary, indent=2) + "\n")
        return summary


# --- reading the stages' outputs -----------------------------------------------------------------


def auc_table(csv_path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {percent: {method: mean AUC over seeds}}}`` from ``refers results``' ``mean_auc.csv``."""
    import csv

    table: dict[str, dict[str, dict[str, float]]] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row["task"].startswith("data"):  # zero-shot and other task rows: not a label fraction
                continue
            percent = row["task"].removeprefix("data")
            value = float(row["mean_auc"])
            table.setdefault(row["dataset"], {}).setdefault(percent, {})[row["method"]] = value / 100 if value > 1 else value
    return table


def ablation_table(auc: dict[str, dict[str, dict[str, float]]], arms: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{percent: {arm: mean AUC, "<arm> - scratch": difference}}`` on the ablation's dataset (NIH-format)."""
    table: dict[str, dict[str, float]] = {}
    for percent, cells in auc.get(ABLATION_DATASET, {}).items():
        row = {arm: cells[arm] for arm in (*arms, "scratch") if arm in cells}
        if "scratch" in row:
            row.update({f"{arm} - scratch": round(row[arm] - row["scratch"], 4) for arm in arms if arm in row})
        table[percent] = row
    return table


def retrieval_recall_at_5(run_dir: Path) -> float | None:
    """Image-to-report recall@5 of the last validation logged by a pre-training run (None if none)."""
    import re

    pattern = re.compile(r"val iter \d+ .*?image_to_report_R@5 ([0-9.]+)")
    found = [float(m.group(1)) for line in (run_dir / "log.txt").read_text(encoding="utf-8").splitlines()
             if (m := pattern.search(line))]
    return found[-1] if found else None


def format_table(summary: dict[str, Any]) -> str:
    """The demo's closing table: mean test AUC per dataset and label fraction, one column per arm."""
    arms = [a for a in ("REFERS", *ABLATION_ARMS, "scratch")
            if any(a in cell for fractions in summary["auc"].values() for cell in fractions.values())]
    header = ["dataset", "labels", *arms, "REFERS - scratch"]
    rows = []
    for dataset in sorted(summary["auc"], key=lambda d: FINETUNE_DATASETS.index(d) if d in FINETUNE_DATASETS else 99):
        for percent in sorted(summary["auc"][dataset], key=float):
            cell = summary["auc"][dataset][percent]
            gap = cell["REFERS"] - cell["scratch"] if "REFERS" in cell and "scratch" in cell else None
            rows.append([dataset, f"{percent}%", *(f"{cell[a]:.3f}" if a in cell else "-" for a in arms),
                         "-" if gap is None else f"{100 * gap:+.1f} pts"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _three(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run_demo(out: Path, profile: Profile, stream: bool = True) -> dict[str, Any]:
    """Run every stage into ``out`` (emptied first) and return the summary.

    Raises:
        DemoError: a stage failed (the message names its command and log).
    """
    demo = Demo(out, profile, stream=stream)
    demo.start_clean()
    start = time.perf_counter()  # `seconds` counts from the first stage to the last (not the clean-up before)
    demo.synth()
    demo.prepare()
    demo.pretrain()
    demo.export()
    demo.finetune()
    crossmodal = demo.crossmodal()
    demo.results()
    check = demo.report_generation()
    demo.stage("summary")
    summary = demo.summary(time.perf_counter() - start, check, crossmodal)
    print("SYNTHETIC DATA: these numbers show that the pipeline learns; they are not results on real radiographs.\n")
    print("Mean test AUC (means over data seeds; each arm's fine-tuning candidate chosen on validation):\n")
    print(format_table(summary))
    recall = summary["retrieval_recall_at_5"]
    print(f"\nPre-training image-to-report recall@5 on the {check['validation_studies']} validation studies: "
          f"{'n/a' if recall is None else f'{recall:.3f}'} (chance {check['retrieval_chance_at_5']:.3f})")
    zeroshot = summary["zeroshot_auc"][ZERO_SHOT_DATASET]
    low, high = zeroshot["ci95"]
    print(f"\nZero-shot mean AUC on the {zeroshot['test_images']} {ZERO_SHOT_DATASET} test images (SYNTHETIC; prompts "
          f"only, no labels): {_three(zeroshot['mean_auc'])} (95% CI {_three(low)}-{_three(high)})")
    test = summary["test_retrieval"]
    if "skipped" not in test:
        print(f"Image-to-report recall@5 on the {test['studies']} test studies (SYNTHETIC): {_three(test['image_to_report_R@5'])} "
              f"(chance {_three(test['chance_R@5'])}); same findings {_three(test['same_findings_R@5'])}")
    print(f"\nGenerated report for {check['study']}:\n  {check['generated_report']}\nTrue report:\n  {check['true_report']}")
    print(f"\nTables and ROC figures: {demo.path('results')}\nEvery command: {demo.path('commands.sh')}\n"
          f"Summary: {demo.path('summary.json')}\nTotal time: {summary['seconds']:.0f} s")
    return summary
