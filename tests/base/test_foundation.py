"""The package itself: the `refers` command, lazy imports, the ViT builder and key conversion."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from refers.cli.main import COMMANDS, main
from refers.models.vit import build_vit
from refers.models.weights import original_to_timm, timm_to_original
from tests.conftest import REPO_ROOT


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 2


def test_every_registered_command_module_exists():
    import importlib.util

    for name, (module, _) in COMMANDS.items():
        assert importlib.util.find_spec(module) is not None, f"refers {name}: {module} missing"


def test_help_imports_no_heavy_packages_and_runs_from_source_tree():
    # From the source tree (PYTHONPATH=.), with pydicom made unimportable: --help still works and
    # neither torch nor transformers is imported.
    code = (
        "import sys; sys.modules['pydicom'] = None\n"
        "from refers.cli.main import main\n"
        "rc = main(['--help'])\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'pydicom') if sys.modules.get(m) is not None]\n"
        "print('HEAVY', heavy); sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_full_vit_b16_shapes_on_meta_device():
    model = build_vit("ViT-B_16", img_size=224, num_classes=0, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 85_798_656
    original = timm_to_original({k: torch.empty(v.shape) for k, v in model.state_dict().items()})
    assert original["transformer.encoder.layer.11.attn.query.weight"].shape == (768, 768)
    assert original["transformer.embeddings.position_embeddings"].shape == (1, 197, 768)
    assert "transformer.encoder.encoder_norm.weight" in original


def test_original_dropout_placement():
    model = build_vit("ViT-nano_8", img_size=32, num_classes=2)
    assert model.pos_drop.p == pytest.approx(0.1)
    for block in model.blocks:
        assert block.mlp.drop1.p == pytest.approx(0.1) and block.mlp.drop2.p == pytest.approx(0.1)
        assert isinstance(block.attn.proj_drop, torch.nn.Identity)
        assert block.attn.attn_drop.p == 0
    assert model.head_drop.p == 0


def test_key_conversion_round_trip():
    model = build_vit("ViT-nano_8", img_size=32, num_classes=3)
    state = model.state_dict()
    back = original_to_timm(timm_to_original(state))
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(back[key], value), key
