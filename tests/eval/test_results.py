"""``refers results``: reading result trees, tables, comparisons, checks, synthetic stamps, figures, and the published files."""

from __future__ import annotations

import csv
import json
import re
import runpy
import shutil
import sys

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from tests.conftest import REPO_ROOT, require_shared
from refers.cli.results import main
from refers.eval.predictions import write_prediction_files
from refers.eval.stats import delong_test, holm
from refers.eval.tree import discover

CLASSES = ["Atelectasis", "Pneumothorax", "Nodule/Mass"]  # registry order of VinBigData
FILES = ["Atelectasis", "Pneumothorax", "Nodule-Mass"]


def mw_auc(labels, scores) -> float:
    """AUC as the Mann-Whitney U statistic / (m n), computed by scipy (independent of scikit-learn)."""
    labels = np.asarray(labels) == 1
    return mannwhitneyu(scores[labels], scores[~labels]).statistic / (labels.sum() * (~labels).sum())


def make_tree(root, n=80, groups=("data1", "data100"), methods=("ImageNet", "REFERS"), seeds=(0, 1)):
    """The test.py layout: <root>/VinBigData_Chest_X-ray/data<v>/<method>/seed<s>/<Class>.txt. Returns the arrays written."""
    rng = np.random.default_rng(0)
    written = {}
    for group in groups:
        labels = (rng.random((n, 3)) < 0.35).astype(float)
        for method in methods:
            signal = 1.5 if method == "REFERS" else 0.6
            for seed in seeds:
                probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + signal * labels)))
                write_prediction_files(root / "VinBigData_Chest_X-ray" / group / method / f"seed{seed}", CLASSES, labels, probs)
                written[(group, method, seed)] = (labels, probs)
    return written


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def pivot_rows(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """Parse the printed 'Mean AUC (%)' table into {(dataset, labels): {method: cell}}."""
    after = text.split("Mean AUC (%):", 1)[1].strip().splitlines()
    lines = after[: next((i for i, line in enumerate(after) if not line.startswith("|")), len(after))]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header):
            break
        rows[(cells[0], cells[1])] = dict(zip(header[2:], cells[2:]))
    return rows


def test_tables_seeds_intervals_and_comparison(tmp_path, capsys):
    tree = tmp_path / "results"
    written = make_tree(tree)
    before = snapshot(tree)
    out = tmp_path / "summary"
    assert main([str(tree), "--out", str(out), "--bootstrap", "200", "--seed", "3", "--compare", "refers", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert snapshot(tree) == before  # the input tree is only read

    # Printed table: one row per fraction, one column per method, mean ± sd over the two seeds.
    rows = pivot_rows(printed)
    assert list(rows) == [("VinBigData_Chest_X-ray", "1%"), ("VinBigData_Chest_X-ray", "100%")]
    assert list(rows[("VinBigData_Chest_X-ray", "1%")]) == ["ImageNet", "REFERS"]
    table = {row["labels"] + row["method"]: row for row in read_csv(out / "mean_auc.csv")}
    for group, label in (("data1", "1%"), ("data100", "100%")):
        for method in ("ImageNet", "REFERS"):
            means = [np.mean([mw_auc(written[(group, method, s)][0][:, c], written[(group, method, s)][1][:, c]) for c in range(3)]) for s in (0, 1)]
            mean, sd = np.mean(means), np.std(means, ddof=1)
            assert rows[("VinBigData_Chest_X-ray", label)][method] == f"{100 * mean:.1f} ± {100 * sd:.1f} (n=2)"
            row = table[label + method]
            assert float(row["mean_auc"]) == pytest.approx(mean, abs=1e-6) and float(row["sd_auc"]) == pytest.approx(sd, abs=1e-6)
            assert float(row["ci_low"]) < mean < float(row["ci_high"]) and row["seeds"] == "2" and row["synthetic"] == "0"
            assert float(row["ci_high"]) - float(row["ci_low"]) < 0.25

    per_class = read_csv(out / "per_class.csv")
    assert len(per_class) == 2 * 2 * 2 * 3 and [r["class"] for r in per_class[:3]] == FILES
    labels, probs = written[("data1", "ImageNet", 0)]
    assert int(per_class[1]["positives"]) == int(labels[:, 1].sum())
    assert float(per_class[1]["auc"]) == pytest.approx(mw_auc(labels[:, 1], probs[:, 1]), abs=1e-6)

    # DeLong per class, Holm across the three classes, paired bootstrap of the mean.
    tests = [r for r in read_csv(out / "comparison_delong.csv") if r["task"] == "data1" and r["method"] == "ImageNet" and r["seed"] == "0"]
    assert [r["class"] for r in tests] == FILES and {r["baseline"] for r in tests} == {"REFERS"}
    base = written[("data1", "REFERS", 0)][1]
    expected_p = [delong_test(labels[:, c], probs[:, c], base[:, c])[2] for c in range(3)]
    assert [float(r["delong_p"]) for r in tests] == pytest.approx(expected_p, abs=1e-6)
    assert [float(r["holm_p"]) for r in tests] == pytest.approx(holm(expected_p), abs=1e-6)
    mean_rows = read_csv(out / "comparison_mean.csv")
    assert len(mean_rows) == 4  # ImageNet seeds 0 and 1, each against REFERS of the same seed, two fractions
    difference = np.mean([mw_auc(labels[:, c], probs[:, c]) - mw_auc(labels[:, c], base[:, c]) for c in range(3)])
    assert float(mean_rows[0]["mean_auc_difference"]) == pytest.approx(difference, abs=1e-6)
    assert float(mean_rows[0]["ci_low"]) < difference < float(mean_rows[0]["ci_high"]) < 0

    markdown = (out / "summary.md").read_text()
    for heading in ("## Mean AUC (%)", "## Mean AUC and AUPRC with confidence intervals (%)", "### VinBigData_Chest_X-ray, 1%: AUC / AUPRC (%) per class",
                    "## Paired comparison with REFERS", "| dataset | labels | method | class | AUC | REFERS | DeLong p | Holm p |", "## Checks", "- no problems found"):
        assert heading in markdown
    assert "SYNTHETIC" not in markdown

    # Same seed, same intervals; another seed, other intervals.
    assert main([str(tree), "--out", str(tmp_path / "again"), "--bootstrap", "200", "--seed", "3", "--no-figures"]) == 0
    assert (tmp_path / "again" / "mean_auc.csv").read_text() == (out / "mean_auc.csv").read_text()
    assert main([str(tree), "--out", str(tmp_path / "other"), "--bootstrap", "200", "--seed", "4", "--no-figures"]) == 0
    assert (tmp_path / "other" / "mean_auc.csv").read_text() != (out / "mean_auc.csv").read_text()


def test_checks_report_problems_without_stopping(tmp_path, capsys):
    tree = tmp_path / "results"
    written = make_tree(tree, groups=("data1", "data10"), seeds=(0,))
    vin = tree / "VinBigData_Chest_X-ray"
    for path in (vin / "data10" / "REFERS" / "seed0").iterdir():  # a method missing from one folder
        path.unlink()
    (vin / "data10" / "REFERS" / "seed0").rmdir()
    lines = (vin / "data1" / "ImageNet" / "seed0" / "Atelectasis.txt").read_text().splitlines()
    lines[2] = ("1.0 " if lines[2].startswith("0.0") else "0.0 ") + lines[2].split()[1]  # a different label at row 3
    (vin / "data1" / "ImageNet" / "seed0" / "Atelectasis.txt").write_text("\n".join(lines) + "\n")
    labels, probs = written[("data10", "ImageNet", 0)]
    write_prediction_files(vin / "data10" / "MG" / "seed0", CLASSES, labels, probs)
    (vin / "data10" / "MG" / "seed0" / "Pneumothorax.txt").write_text("".join(f"0.0 {float(p)!r}\n" for p in probs[:79, 1]))  # 79 rows, one label
    (vin / "data10" / "MG" / "seed0" / "notes2.txt").write_text("some notes\n")
    shutil.copytree(vin / "data1" / "REFERS", vin / "code" / "data1" / "REFERS")  # the same run twice
    assert main([str(tree), "--out", str(tmp_path / "out"), "--bootstrap", "50", "--compare", "REFERS", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    checks = printed.split("Checks:")[1]
    assert "VinBigData_Chest_X-ray/data10: no files for method(s) REFERS" in checks
    assert "Atelectasis: labels of ImageNet/seed0 differ from REFERS/seed0's at 1 of 80 rows (first at row 3)" not in checks  # ImageNet comes first
    assert "Atelectasis: labels of REFERS/seed0 differ from ImageNet/seed0's at 1 of 80 rows (first at row 3)" in checks
    assert "Pneumothorax: MG/seed0 has 79 rows, ImageNet/seed0 has 80" in checks
    assert "MG/seed0 class files have different numbers of rows" in checks
    assert "not compared with REFERS/seed0: different test labels for Atelectasis" in checks
    assert re.search(r"skipped unreadable file .*notes2\.txt:1: ", checks)
    assert re.search(r"data1: two REFERS/seed0 runs \(\S*/code/data1/REFERS/seed0 and \S*/VinBigData_Chest_X-ray/data1/REFERS/seed0\), counted as separate runs", checks)
    # A class with one label value: reported, left out of the mean, no crash.
    tree2 = tmp_path / "single"
    make_tree(tree2, groups=("data1",), methods=("REFERS",), seeds=(0,))
    path = tree2 / "VinBigData_Chest_X-ray" / "data1" / "REFERS" / "seed0" / "Pneumothorax.txt"
    path.write_text("".join("0.0 " + line.split()[1] + "\n" for line in path.read_text().splitlines()))
    assert main([str(tree2), "--out", str(tmp_path / "out2"), "--bootstrap", "50", "--no-figures"]) == 0
    assert "class Pneumothorax has only label value 0 in REFERS/seed0: AUC undefined, left out of the mean" in capsys.readouterr().out
    rows = read_csv(tmp_path / "out2" / "per_class.csv")
    assert rows[1]["auc"] == "" and rows[0]["auc"] != ""
    mean = read_csv(tmp_path / "out2" / "mean_auc.csv")[0]
    assert float(mean["mean_auc"]) == pytest.approx((float(rows[0]["auc"]) + float(rows[2]["auc"])) / 2, abs=2e-6)


def test_synthetic_runs_are_stamped(tmp_path, capsys):
    tree = tmp_path / "results"
    make_tree(tree, groups=("data1",), seeds=(0,))
    (tree / "SYNTHETIC.txt").write_text("synthetic\n")
    out = tmp_path / "out"
    assert main([str(tree), "--out", str(out), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("**SYNTHETIC DATA") and "| VinBigData_Chest_X-ray (SYNTHETIC) | 1% |" in printed
    assert (out / "SYNTHETIC.txt").is_file() and "SYNTHETIC DATA" in (out / "summary.md").read_text()
    assert {row["synthetic"] for row in read_csv(out / "mean_auc.csv")} == {"1"}
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["bars_VinBigData_Chest_X-ray.png", "roc_VinBigData_Chest_X-ray_data1.png"]

    # What test.py writes next to the prediction files also marks a run, and only that run.
    other = tmp_path / "records"
    make_tree(other, groups=("data1",), seeds=(0,))
    run = other / "VinBigData_Chest_X-ray" / "data1" / "REFERS" / "seed0"
    (run / "run_record.json").write_text(json.dumps({"synthetic": True}))
    (run / "summary.txt").write_text("mean AUC: 0.9\n")
    assert [(r.method, r.synthetic) for r in discover(other).runs] == [("ImageNet", False), ("REFERS", True)]
    (run / "run_record.json").write_text(json.dumps({"synthetic": False}))
    (run / "summary.txt").write_text("SYNTHETIC DATA: these numbers say nothing about real X-rays.\n")
    assert [(r.method, r.synthetic) for r in discover(other).runs] == [("ImageNet", False), ("REFERS", True)]
    (run / "summary.txt").unlink()
    assert not discover(other).synthetic
    (run / "run_record.json").write_text("[" * 100_000)  # too deep for the parser: says nothing, no traceback
    assert not discover(other).synthetic


def test_published_layout_spaces_extra_level_tabs(tmp_path):
    folder = tmp_path / "VinBigData Chest X-ray" / "code" / "data1" / "C2L"
    folder.mkdir(parents=True)
    (folder / "Nodule-Mass.txt").write_bytes(b"0.0\t0.25\r\n1.0\t0.75\r\n")
    (folder / "Aortic enlargement.txt").write_bytes(b"1.0 0.6\n0.0 0.4\n")
    shutil.copytree(folder, folder / ".ipynb_checkpoints")  # notebook debris is not a method
    for start in (tmp_path, tmp_path / "VinBigData Chest X-ray", tmp_path / "VinBigData Chest X-ray" / "code"):
        (run,) = discover(start).runs
        assert (run.dataset, run.group, run.method, run.seed) == ("VinBigData Chest X-ray", "data1", "C2L", None)
        assert run.class_names == ["Aortic enlargement", "Nodule-Mass"]  # registry order
        assert run.classes["Nodule-Mass"][1].tolist() == [0.25, 0.75]


def test_usage_errors(tmp_path, capsys, monkeypatch):
    tree = tmp_path / "results"
    make_tree(tree, groups=("data1",), methods=("REFERS",), seeds=(0,))
    assert main([str(tree), "--out", str(tree / "VinBigData_Chest_X-ray" / "x")]) == 2
    assert "is inside the results tree" in capsys.readouterr().err
    assert main([str(tree), "--compare", "MoCo", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--compare MoCo: no such method" in err and "(found: REFERS)" in err
    assert main([str(tree), "--bootstrap", "-1"]) == 2
    assert main([str(tmp_path / "missing")]) == 1
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "no prediction files under" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # default output: a new folder in the working directory
    for expected in ("results_summary", "results_summary_2"):
        assert main([str(tree), "--bootstrap", "0", "--no-figures"]) == 0
        assert (tmp_path / expected / "summary.md").is_file()
    assert "No bootstrap (--bootstrap 0)." in (tmp_path / "results_summary" / "summary.md").read_text()


def test_command_is_registered_and_the_script_wraps_it(tmp_path, monkeypatch, capsys):
    from refers.cli.main import main as refers_main

    tree = tmp_path / "results"
    make_tree(tree, groups=("data1",), methods=("REFERS",), seeds=(0,))
    assert refers_main(["results", str(tree), "--out", str(tmp_path / "a"), "--bootstrap", "0", "--no-figures"]) == 0
    monkeypatch.setattr(sys, "argv", ["summarize.py", str(tree), "--out", str(tmp_path / "b"), "--bootstrap", "0", "--no-figures"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "Results_of_fine-tuning" / "summarize.py"), run_name="__main__")
    assert exit_info.value.code == 0 and (tmp_path / "b" / "mean_auc.csv").read_text() == (tmp_path / "a" / "mean_auc.csv").read_text()


# REFERS-recipe.md section 3 (computed from the published prediction files): mean AUC (%) over all
# classes of a task folder, i.e. the plain mean of scikit-learn's per-class ROC AUCs, 14 classes for
# VinBigData, the single positive class for Shenzhen and COVID (covid_others).
RECIPE = {
    ("VinBigData Chest X-ray", "1%"): {"ImageNet": 69.6, "CR": 68.1, "MG": 70.7, "TransVW": 73.6, "C2L": 75.1, "REFERS": 81.1},
    ("VinBigData Chest X-ray", "10%"): {"ImageNet": 83.7, "CR": 83.5, "MG": 82.1, "TransVW": 82.8, "C2L": 83.8, "REFERS": 86.8},
    ("VinBigData Chest X-ray", "100%"): {"ImageNet": 82.6, "CR": 82.0, "MG": 84.0, "TransVW": 84.5, "C2L": 85.8, "REFERS": 88.6},
    ("Shenzhen Tuberculosis", "tuberculosis"): {"ImageNet": 94.5, "CR": 92.7, "MG": 94.9, "TransVW": 94.2, "C2L": 95.5, "REFERS": 97.9},
    ("COVID-19 Image Data Collection", "covid_others"): {"ImageNet": 75.3, "CR": 74.6, "MG": 76.0, "TransVW": 76.1, "C2L": 77.7, "REFERS": 82.1},
}


@pytest.mark.slow
def test_published_predictions_reproduce_the_recipe_table(tmp_path, capsys):
    published = require_shared("original-Results_of_fine-tuning")
    out = tmp_path / "published"
    assert main([str(published), "--out", str(out), "--bootstrap", "100", "--compare", "REFERS"]) == 0
    printed = capsys.readouterr().out
    rows = pivot_rows(printed)
    present = [key for key in RECIPE if key in rows]
    assert ("VinBigData Chest X-ray", "1%") in present and ("COVID-19 Image Data Collection", "covid_others") in present and len(present) >= 4
    csv_rows = {(r["dataset"], r["labels"], r["method"]): float(r["mean_auc"]) for r in read_csv(out / "mean_auc.csv")}
    for key in present:
        for method, expected in RECIPE[key].items():
            assert float(rows[key][method]) == pytest.approx(expected, abs=0.1 + 1e-9), (key, method)
            assert 100 * csv_rows[(*key, method)] == pytest.approx(expected, abs=0.05 + 1e-9), (key, method)
    # bacterial_viral has no REFERS files: reported, not fatal.
    assert rows[("COVID-19 Image Data Collection", "bacterial_viral")]["REFERS"] == "-"
    assert "COVID-19 Image Data Collection/bacterial_viral: no files for method(s) REFERS" in printed
    figures = sorted(p.name for p in (out / "figures").iterdir())
    roc = [name for name in figures if name.startswith("roc_")]
    assert len(roc) == len(rows) and "roc_VinBigData_Chest_X-ray_data1.png" in roc and "bars_Shenzhen_Tuberculosis.png" in figures
    assert all((out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in figures)
    assert "SYNTHETIC" not in printed


def test_degenerate_bootstrap_interval_leaves_out_the_bar_and_finishes(tmp_path, capsys):
    """``--bootstrap 20`` on 6 images with one positive per class: nearly every resample loses a class, the
    interval is one value that excludes the point estimate; the bar chart is drawn without that bar (matplotlib
    refused the negative length before) and says so."""
    labels = np.zeros((6, 3))
    labels[0, 0] = labels[1, 1] = labels[2, 2] = 1
    probs = np.linspace(0.1, 0.9, 18).reshape(6, 3)
    tree, out = tmp_path / "tree", tmp_path / "out"
    write_prediction_files(tree / "VinBigData_Chest_X-ray" / "data100" / "REFERS", CLASSES, labels, probs)
    assert main([str(tree), "--out", str(out), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "note: bars_VinBigData_Chest_X-ray.png: no error bar for REFERS 100%: bootstrap interval degenerate" in printed
    row = next(r for r in read_csv(out / "mean_auc.csv") if r["method"] == "REFERS")
    mean, low, high = float(row["mean_auc"]), float(row["ci_low"]), float(row["ci_high"])
    assert low == high and not low <= mean <= high  # the degenerate case itself, as the tables report it
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["bars_VinBigData_Chest_X-ray.png", "roc_VinBigData_Chest_X-ray_data100.png"]


def test_label_efficiency_curve_points_and_figure(tmp_path, capsys):
    """One line per method through the seed means at each fraction, the seeds' range as the band; the
    figure is written for a dataset with two or more fractions only."""
    from refers.eval.figures import label_efficiency_points
    from refers.eval.report import build_report

    root = tmp_path / "tree"
    written = make_tree(root, groups=("data1", "data10", "data100"))
    (root / "Shenzhen_Tuberculosis" / "data100" / "REFERS" / "seed0").mkdir(parents=True)
    write_prediction_files(root / "Shenzhen_Tuberculosis" / "data100" / "REFERS" / "seed0", ["Tuberculosis"],
                           np.array([[0.0], [1.0], [1.0], [0.0]]), np.array([[0.2], [0.7], [0.4], [0.5]]))
    report = build_report(discover(root), bootstrap=0)
    vinbig = [s for s in report.summaries if s.dataset == "VinBigData_Chest_X-ray"]
    points = label_efficiency_points(vinbig)
    assert list(points) == ["ImageNet", "REFERS"]
    for method, rows in points.items():
        assert [r[0] for r in rows] == [1.0, 10.0, 100.0]
        for fraction, mean, low, high in rows:
            per_seed = [np.mean([mw_auc(labels[:, c], probs[:, c]) for c in range(labels.shape[1])])
                        for (group, m, _), (labels, probs) in written.items() if m == method and group == f"data{fraction:g}"]
            assert mean == pytest.approx(np.mean(per_seed)) and low == pytest.approx(min(per_seed)) and high == pytest.approx(max(per_seed))
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--bootstrap", "0"]) == 0
    figure = out / "figures" / "label_efficiency_VinBigData_Chest_X-ray.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "figures" / "label_efficiency_Shenzhen_Tuberculosis.png").exists()
