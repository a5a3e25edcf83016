"""The bottom layer: atomic output, file modes, the synthetic marker, the shared errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from refers.base.atomic import atomic_output, atomic_write_bytes, atomic_write_text
from refers.base.checkpoints import atomic_torch_save, safe_load
from refers.base.earlier_runs import check_recorded_inputs
from refers.base.errors import ListFormatError, UserError
from refers.base.synthetic import SYNTHETIC_MARKER, is_synthetic, mark_synthetic, stamp_synthetic, synthetic_marker


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    text, data, weights = tmp_path / "a.txt", tmp_path / "b.bin", tmp_path / "c.pth"
    atomic_write_text(text, "x\n")
    atomic_write_bytes(data, b"\x00\x01")
    atomic_torch_save({"w": torch.ones(2)}, weights)
    for path in (text, data, weights):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "list.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half", encoding="utf-8")
            raise RuntimeError("crash mid-write")
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.txt"]


def test_text_is_utf8_with_unix_line_ends(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.txt"  # the folder is created
    atomic_write_text(target, "Pneumothorax – é\r\nnext\n")
    assert target.read_bytes() == "Pneumothorax – é\r\nnext\n".encode("utf-8")
    atomic_write_text(target, "a\nb\n")
    assert target.read_bytes() == b"a\nb\n"


def test_checkpoint_round_trip_is_weights_only(tmp_path: Path) -> None:
    path = atomic_torch_save({"w": torch.arange(3.0), "meta": {"step": 2}}, tmp_path / "s.pth")
    loaded = safe_load(path)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["meta"] == {"step": 2}


def test_synthetic_marker_is_found_above_and_copied(tmp_path: Path) -> None:
    data = tmp_path / "Data" / "NIH"
    (data / "images_001").mkdir(parents=True)
    assert not is_synthetic(data, None) and synthetic_marker(data) is None
    mark_synthetic(data, "made by refers synth")
    assert synthetic_marker(data / "images_001" / "x.png") == data / SYNTHETIC_MARKER
    assert is_synthetic(None, data / "images_001")
    out = tmp_path / "out"
    stamp_synthetic(out, synthetic_marker(data))
    assert (out / SYNTHETIC_MARKER).read_text(encoding="utf-8") == "made by refers synth\n"
    stamp_synthetic(tmp_path / "real", None)
    assert not (tmp_path / "real").exists()


def test_errors_carry_their_exit_code_and_location() -> None:
    assert UserError("bad flag", exit_code=2).exit_code == 2
    assert UserError("bad data").exit_code == 1
    error = ListFormatError("train.txt", 7, "expected 14 labels")
    assert str(error) == "train.txt:7: expected 14 labels" and error.line_number == 7


# --- the one checkpoint opener: every broken file is one line naming it -----------------------------------------


def _broken_files(folder: Path) -> dict[str, tuple[Path, str]]:
    import argparse

    import numpy as np
    from safetensors.torch import save_file

    good = atomic_torch_save({"w": torch.ones(500)}, folder / "good.pth")
    files = {
        "empty": (folder / "empty.pth", "is empty (0 bytes)"),
        "text": (folder / "text.bin", "holds text, not weights"),
        "html": (folder / "page.pth", "holds an HTML page, not weights"),
        "truncated": (folder / "half.pth", "is truncated or damaged"),
        "unsafe": (folder / "unsafe.pth", "holds Python objects other than tensors"),
        "safetensors": (folder / "half.safetensors", "is not a valid safetensors file"),
        "npz": (folder / "objects.npz", "holds pickled Python objects"),
    }
    files["empty"][0].write_bytes(b"")
    files["text"][0].write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    files["html"][0].write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    files["truncated"][0].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save({"args": argparse.Namespace(lr=0.1)}, files["unsafe"][0])
    save_file({"w": torch.ones(10)}, str(folder / "whole.safetensors"))
    files["safetensors"][0].write_bytes((folder / "whole.safetensors").read_bytes()[:30])
    np.savez(files["npz"][0], **{"embedding/kernel": np.array([{"code": 1}], dtype=object)})  # read first by timm
    return files


@pytest.mark.parametrize("kind", ["empty", "text", "html", "truncated", "unsafe", "safetensors"])
def test_every_broken_checkpoint_is_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    from refers.base.checkpoints import CheckpointError, UnsafeCheckpointError

    path, expected = _broken_files(tmp_path)[kind]
    with pytest.raises(CheckpointError) as info:
        safe_load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message
    assert isinstance(info.value, UnsafeCheckpointError) == (kind == "unsafe")
    assert info.value.exit_code == 1


def test_a_numpy_file_with_pickled_objects_is_refused_by_the_encoder_loader(tmp_path: Path) -> None:
    from refers.base.checkpoints import UnsafeCheckpointError
    from refers.models.vit import build_vit
    from refers.models.weights import load_encoder_weights

    path, expected = _broken_files(tmp_path)["npz"]
    with pytest.raises(UnsafeCheckpointError, match=expected):
        load_encoder_weights(build_vit("ViT-nano_8", 32, num_classes=1), path)


def test_commands_given_a_broken_checkpoint_print_one_line(tmp_path: Path, capsys) -> None:
    from refers.cli.export import main as export_main
    from refers.cli.finetune import main as finetune_main
    from refers.cli.test import main as evaluate_main

    from tests.finetune_helpers import make_dataset

    files = _broken_files(tmp_path)
    lists, data = make_dataset(tmp_path / "shenzhen", "Shenzhen_Tuberculosis")
    for main, argv, kind in [
        (export_main, [str(files["truncated"][0]), "--out", str(tmp_path / "e.pth")], "truncated"),
        (evaluate_main, ["--pretrained_dir", str(files["empty"][0]), "--results_dir", str(tmp_path / "r")], "empty"),
        (finetune_main, ["--name", "x", "--dataset", "Shenzhen_Tuberculosis", "--pretrained_dir", str(files["html"][0]),
                         "--output_dir", str(tmp_path / "o"), "--model_type", "ViT-nano_8", "--img_size", "32",
                         "--list_dir", str(lists), "--data_root", str(data), "--num_workers", "0"], "html"),
    ]:
        assert main(argv) == 1, kind
        err = capsys.readouterr().err
        assert "Traceback" not in err and files[kind][1] in err and str(files[kind][0]) in err, err


def test_stale_temporaries_of_interrupted_writes_are_removed_and_nothing_else(tmp_path: Path) -> None:
    import time

    from refers.base.atomic import remove_stale_temporaries

    sub = tmp_path / "files" / "p10"
    sub.mkdir(parents=True)
    stale = [tmp_path / ".train.txt.k2j4_x9q.tmp", sub / ".a.png.abcdefgh.tmp", tmp_path / ".roc.png.0a1b2c3d.png"]
    kept = [tmp_path / "train.txt", tmp_path / ".hidden.tmp", tmp_path / ".train.txt.short.tmp", sub / "a.png",
            tmp_path / "notes.abcdefgh.tmp"]
    for path in stale + kept:
        path.write_text("x")
    old = time.time() - 3600
    for path in stale + kept:
        os.utime(path, (old, old))
    fresh = tmp_path / ".val.txt.zzzzzzzz.tmp"  # a write of another process under way now
    fresh.write_text("x")
    started = time.time() - 60
    assert remove_stale_temporaries(tmp_path, started) == 2  # the top folder only
    assert remove_stale_temporaries(tmp_path, started, recursive=True) == 1
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept) and fresh.exists()


def test_malloc_keeps_freed_memory_once_and_leaves_a_users_tuning_alone():
    """retain_freed_memory changes glibc's thresholds in a fresh process (read back with mallinfo2: a
    live 8 MiB block comes from the reusable heap, not from an mmap of its own as with glibc's
    defaults), does nothing a second time, and nothing where the user tuned malloc."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc")
    probe = (
        "import ctypes, ctypes.util, sys; from refers.base.host import retain_freed_memory as r;"
        "libc = ctypes.CDLL(ctypes.util.find_library('c')); libc.malloc.restype = ctypes.c_void_p;"
        "Info = type('Info', (ctypes.Structure,), {'_fields_': [(n, ctypes.c_size_t) for n in "
        "'arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()]});"
        "libc.mallinfo2.restype = Info;"
        "first, again = (r(), r()) if sys.argv[1] == 'on' else (False, False);"
        "before = libc.mallinfo2().hblks; block = libc.malloc(8 << 20); mapped = libc.mallinfo2().hblks - before;"
        "libc.free(ctypes.c_void_p(block));"
        "print(first, again, mapped)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}

    def run(switch, **env):
        return subprocess.run([sys.executable, "-c", probe, switch], capture_output=True, text=True, check=True,
                              env={**clean, **env}).stdout.split()

    assert run("off") == ["False", "False", "1"]  # the oracle: glibc's defaults mmap an 8 MiB block
    assert run("on") == ["True", "False", "0"]
    assert run("on", MALLOC_ARENA_MAX="2") == ["False", "False", "1"]
    assert run("on", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536") == ["False", "False", "1"]


def test_results_are_replaced_only_by_a_run_of_the_same_recorded_inputs(tmp_path: Path) -> None:
    record = tmp_path / "run_record.json"
    other = {"checkpoint": "another checkpoint", "test_list": "another test list"}

    def check(inputs: dict[str, str], overwrite: bool = False) -> None:
        check_recorded_inputs(record, inputs, other, results="test results", instead="test elsewhere",
                              overwrite=overwrite)

    check({"checkpoint": "a"})  # no record yet: nothing to protect
    record.write_text(json.dumps({"checkpoint": {"path": "/m/a.bin", "sha256": "a"},
                                  "test_list": {"path": "/l/test.txt", "sha256": "t"}}), encoding="utf-8")
    check({"checkpoint": "a", "test_list": "t"})  # the same inputs replace their own results
    with pytest.raises(UserError) as refused:
        check({"checkpoint": "a", "test_list": "u"})
    assert refused.value.exit_code == 2
    assert str(refused.value) == (f"{tmp_path} holds test results made with another test list (/l/test.txt); "
                                  "test elsewhere, or replace them with --overwrite")
    check({"checkpoint": "b"}, overwrite=True)
    record.write_text(json.dumps({"checkpoint": {"sha256": "a"}}), encoding="utf-8")
    check({"checkpoint": "a"})  # the same sha256: its path is only for the message
    cases = {b"\xff\xfe": "with an unreadable run_record.json", b"[1, 2]": "with an unreadable run_record.json",
             b'{"checkpoint": "a"}': "with an unreadable run_record.json",
             b"{}": "whose run_record.json does not record its checkpoint",
             b'{"checkpoint": {"sha256": "z"}}': "made with another checkpoint (its path not recorded)"}
    cases[b"[" * 100_000] = "with an unreadable run_record.json"  # nested too deeply for the parser
    for content, what in cases.items():  # not provably the same inputs
        record.write_bytes(content)
        with pytest.raises(UserError) as refused:
            check({"checkpoint": "a"})
        assert str(refused.value) == f"{tmp_path} holds test results {what}; test elsewhere, or replace them with --overwrite"
    # A dangling link in place of the record, or files without any record (e.g. the original's
    # prediction files), are not provably of these inputs either; the synthetic marker alone is no result.
    record.unlink()
    record.symlink_to(tmp_path / "gone.json")
    with pytest.raises(UserError, match="with an unreadable run_record.json"):
        check({"checkpoint": "a"})
    record.unlink()
    (tmp_path / "SYNTHETIC.txt").write_text("synthetic\n")
    (tmp_path / ".run_record.json.x1y2.tmp").write_text("{")  # a temporary of an interrupted write
    check({"checkpoint": "a"})
    (tmp_path / "Effusion.txt").write_text("1 0.9\n")
    with pytest.raises(UserError) as refused:
        check({"checkpoint": "a"})
    assert str(refused.value) == (f"{tmp_path} already holds files (Effusion.txt) but no run_record.json that says what "
                                  "made them; test elsewhere, or replace them with --overwrite")
    check({"checkpoint": "a"}, overwrite=True)


def test_overwrite_removes_only_the_commands_own_files(tmp_path: Path) -> None:
    from refers.base.earlier_runs import clear_earlier_results

    for name in ("run_record.json", "Effusion.txt", "SYNTHETIC.txt", "notes.md", ".run_record.json.ab12.tmp"):
        (tmp_path / name).write_text("x")
    ours = {"run_record.json", "Effusion.txt", "summary.json"}
    removed, left = clear_earlier_results(tmp_path, lambda path: path.name in ours)
    assert sorted(p.name for p in removed) == ["Effusion.txt", "SYNTHETIC.txt", "run_record.json"]
    assert [p.name for p in left] == ["notes.md"]  # hidden files are neither results nor the user's to be told of
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run_record.json.ab12.tmp", "notes.md"]
    assert clear_earlier_results(tmp_path / "absent", lambda path: True) == ([], [])


def test_json_files_that_cannot_be_read_are_value_errors(tmp_path: Path) -> None:
    from refers.base.json_files import read_json

    path = tmp_path / "a.json"
    for content in (b"{x", b"\xff", b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        path.write_bytes(content)
        with pytest.raises(ValueError):
            read_json(path)
    path.write_text('{"a": [1, 2]}')
    assert read_json(path) == {"a": [1, 2]}


_WORKER = """
import atexit, logging, sys
from pathlib import Path
from refers.base.errors import reporting_errors

out = Path(sys.argv[1])
atexit.register(lambda: (out / "teardown").write_text("ran"))
handler = logging.FileHandler(out / "log.txt")
logging.getLogger("w").addHandler(handler)

@reporting_errors("w")
def main(argv=None):
    print("done")  # a pipe: block-buffered, lost unless flushed
    logging.getLogger("w").warning("logged")
    return 3

main()
sys.exit(0)
"""


@pytest.mark.parametrize("launched", [True, False])
def test_a_worker_of_a_multi_process_launch_ends_with_the_commands_code_and_nothing_lost(tmp_path, launched):
    """torchrun's workers skip the interpreter's teardown (where gloo can abort a run that
    succeeded): they end in the command wrapper with its code, output and logs flushed."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE")}
    if launched:
        env.update(TORCHELASTIC_RUN_ID="test", WORLD_SIZE="2")
    done = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.stdout == "done\n" and (tmp_path / "log.txt").read_text() == "logged\n", done.stderr
    if launched:
        assert done.returncode == 3 and not (tmp_path / "teardown").exists()
    else:  # one process: the wrapper returns and the caller decides (here sys.exit(0), after the teardown)
        assert done.returncode == 0 and (tmp_path / "teardown").read_text() == "ran"
