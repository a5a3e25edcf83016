"""One-off: record what today's (dbf1aaf) loaders resolve every shipped YAML and the README commands to."""
import argparse, dataclasses, json, os, shlex, sys
from pathlib import Path

os.environ["COLUMNS"] = "120"
from refers.base.paths import project_root
from refers.config import load_config as load_pretrain
from refers.finetune import config as fc
from refers import sweep
from refers.demo import Demo, load_profile, _fill

ROOT = project_root()
out = {}

# --- pre-training presets -----------------------------------------------------------------
OVERRIDES = ["OPTIM.NUM_ITERATIONS", "20", "OPTIM.LR", "3e-2", "LOSS.TAU", "1", "DATA.HORIZONTAL_FLIP", "false",
             "DATA.CROP_SCALE", "[0.3, 1]", "DATA.CROP_RATIO", "0.5,0.9", "OPTIM.SGD_MOMENTUM", "0.5",
             "OPTIM.LOOKAHEAD_STEPS", "7", "DATA.ROOT", "/data", "MODEL.TEXTUAL.BERT_DIR", "x/y"]
pre = {"<defaults>": load_pretrain(None).to_dict(), "<defaults+overrides>": load_pretrain(None, OVERRIDES).to_dict()}
for path in sorted([*(ROOT / "configs/pretrain").glob("*.yaml"), ROOT / "configs/demo/pretrain.yaml"]):
    pre[str(path.relative_to(ROOT))] = load_pretrain(path).to_dict()
out["pretrain"] = pre

# --- fine-tuning: the README's commands, presets, train()'s and run_test()'s mutations ----------
README = [
    "--name caption_100 --stage train --model_type ViT-B_16 --num_classes 1 --pretrained_dir ../checkpoint/refers_checkpoint.pth --output_dir ./output/ --data_volume '100' --num_steps 500  --eval_batch_size 512 --img_size 224 --learning_rate 3e-2 --warmup_steps 50 --fp16 --fp16_opt_level O2 --train_batch_size 128",
    "--name caption_100 --stage train --model_type ViT-B_16 --num_classes 1 --pretrained_dir ../checkpoint/refers_checkpoint.pth --output_dir ./output/ --data_volume '100' --num_steps 100  --eval_batch_size 512 --img_size 224 --learning_rate 3e-2 --warmup_steps 5 --fp16 --fp16_opt_level O2 --train_batch_size 128",
    "--name caption_100 --stage train --model_type ViT-B_16 --num_classes 14 --pretrained_dir ../checkpoint/refers_checkpoint.pth --output_dir ./output/ --data_volume '100' --num_steps 60000  --eval_batch_size 512 --img_size 224 --learning_rate 1e-2 --warmup_steps 1000 --fp16 --fp16_opt_level O2 --train_batch_size 128",
    "--name caption_100 --stage train --model_type ViT-B_16 --num_classes 14 --pretrained_dir ../checkpoint/refers_checkpoint.pth --output_dir ./output/ --data_volume '100' --num_steps 100  --eval_batch_size 512 --img_size 224 --learning_rate 3e-2 --warmup_steps 10 --fp16 --fp16_opt_level O2 --train_batch_size 128",
    "--name x --stage train --model_type ViT-B_16 --num_classes 14 --pretrained_dir ../checkpoint/refers_checkpoint.pth --eval_batch_size 512 --img_size 224 --learning_rate 3e-2 --warmup_steps 500 --num_steps 30000 --fp16 --fp16_opt_level O2 --train_batch_size 96",
]
TRAIN = []
for i, line in enumerate(README):
    argv = shlex.split(line)
    TRAIN += [argv, [*argv, "--local_rank=1"], [*argv, "--local-rank=0"], [*argv, "--local_rank", "3"], [*argv, "--local-rank", "2"]]
TRAIN += [
    ["--name", "x", "--dataset", "NIH_ChestX-ray"],
    ["--name", "x", "--dataset", "custom", "--list_dir", "rel/lists", "--data_root", "rel/images", "--classes", "a,b"],
    ["--name", "x", "--dataset", "Shenzhen_Tuberculosis", "--fp16_opt_level", "O1", "--bf16", "--seed", "3", "--data_volume", "10",
     "--data_seed", "2", "--val_volume", "50", "--init", "scratch", "--freeze_backbone", "--min_crop_area", "0.5",
     "--global_pool", "avg", "--patience", "4", "--resume", "--skip_bad_images", "--compile", "--results_dir", "r",
     "--method", "M", "--log_dir", "l", "--packed_cache", "p", "--num_workers", "0", "--device", "cpu", "--eval_every", "5",
     "--gradient_accumulation_steps", "2", "--loss_scale", "128", "--gpu", "0,1", "--weight_decay", "1e-4",
     "--max_grad_norm", "2", "--decay_type", "linear", "--img_size", "64"],
]
for preset in sorted((ROOT / "configs/finetune").glob("*.yaml")):
    for volume in (None, "1", "10", "100"):
        for by in ("name", "path"):
            ref = preset.stem if by == "name" else str(preset.relative_to(ROOT))
            TRAIN.append(["--name", "x", "--config", ref, *(["--data_volume", volume] if volume else [])])
    TRAIN.append(["--name", "x", "--config", preset.stem, "--num_steps", "7", "--learning_rate", "0.5"])
cwd = os.getcwd()

def plain(ns):
    return json.loads(json.dumps(fc.to_plain(ns)).replace(cwd, "<CWD>"))

ft = []
os.chdir(ROOT)
cwd = str(ROOT)
for argv in TRAIN:
    ns = fc.parse_args(argv, "t", "train")
    parsed = plain(ns)
    # what train() does first (refers/finetune/train.py at dbf1aaf)
    ns.img_size = ns.img_size or 224
    for key in ("list_dir", "data_root"):
        if getattr(ns, key):
            setattr(ns, key, str(Path(getattr(ns, key)).resolve()))
    ft.append({"argv": argv, "stage": "train", "as_train_reads_it": plain(ns)})
TEST = [[], ["--pretrained_dir", "a.bin"], ["--pretrained_dir", "a.bin", "--dataset", "custom", "--list_dir", "L"],
        ["--model_type", "ViT-S_16", "--img_size", "96", "--num_classes", "14", "--data_volume", "10", "--seed", "0", "--data_seed", "1",
         "--list_dir", "mine", "--data_root", "root", "--local-rank=1"],
        ["--config", "nih", "--stage", "test"]]
SETTINGS = [
    {"model_type": "ViT-B_16", "img_size": 224, "num_classes": 14, "metadata": {}},
    {"model_type": "ViT-micro_8", "img_size": 64, "num_classes": 2,
     "metadata": {"dataset": "custom", "classes": ["p", "q"], "data_volume": 10, "seed": 5, "data_seed": 1,
                  "config": {"list_dir": "/abs/lists", "data_root": "/abs/root"}}},
    {"model_type": "ViT-B_16", "img_size": 224, "num_classes": 1,
     "metadata": {"dataset": "Shenzhen_Tuberculosis", "data_volume": None, "config": "not a dict"}},
]
from refers.finetune.testing import apply_metadata
for argv in TEST:
    for settings in SETTINGS:
        ns = fc.parse_args(argv, "t", "test")
        parsed = plain(ns)
        # what run_test() does after loading the checkpoint (refers/finetune/testing.py at dbf1aaf)
        apply_metadata(ns, settings["metadata"])
        ns.model_type, ns.img_size = settings["model_type"], int(settings["img_size"])
        if ns.num_classes is None:
            ns.num_classes = int(settings["num_classes"])
        ft.append({"argv": argv, "stage": "test", "settings": settings, "parsed": parsed, "as_test_reads_it": plain(ns)})
out["finetune"] = ft
out["finetune_help"] = {stage: fc.build_parser(prog, stage).format_help()
                        for stage, prog in (("train", "refers finetune"), ("test", "refers test"))}

# --- sweeps ---------------------------------------------------------------------------------
sw = {}
for path in sorted((ROOT / "configs/sweep").glob("*.yaml")):
    config = sweep.load_config(path)
    runs = sweep.plan_training(config)
    entry = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
             "train": [], "test": []}
    import hashlib
    def line(r, c):
        return f"{r.label} | {r.run_dir} | " + shlex.join(c)
    train_lines = [line(run, sweep.command_line(config, run)) + " | in-process: " + shlex.join(sweep.in_process_argv(run)) for run in runs]
    test_lines = [line(t, sweep.command_line(config, t)) for t in (sweep.plan_test(config, run, run.run_dir / "CKPT.bin") for run in runs)]
    def fix(lines):
        return [l.replace(str(ROOT), "<ROOT>").replace(sys.executable, "<PYTHON>") for l in lines]
    train_lines, test_lines = fix(train_lines), fix(test_lines)
    entry["train_count"], entry["test_count"] = len(train_lines), len(test_lines)
    entry["train_sha256"] = hashlib.sha256("\n".join(train_lines).encode()).hexdigest()
    entry["test_sha256"] = hashlib.sha256("\n".join(test_lines).encode()).hexdigest()
    entry["train_sample"] = train_lines[:8] + train_lines[-3:]
    entry["test_sample"] = test_lines[:4] + test_lines[-2:]
    del entry["train"], entry["test"]
    entry["read_sweep_file"] = sweep.read_sweep_file(path)
    sw[str(path.relative_to(ROOT))] = entry
out["sweep"] = sw

# --- demo profiles --------------------------------------------------------------------------
dm = {}
for name in ("default", "full", "quick"):
    profile = load_profile(name)
    demo = Demo(Path("/OUT"), profile)
    dm[name] = {"profile": dataclasses.asdict(profile), "pretrain_overrides": demo.pretrain_overrides(),
                "pretrain_overrides_shuffled": demo.pretrain_overrides(True),
                "pretrain_config": load_pretrain(ROOT / profile.pretrain_config, demo.pretrain_overrides()).to_dict(),
                "sweep_filled": _fill(sweep.read_sweep_file(ROOT / profile.sweep), {"${OUT}": "/OUT"})}
    dm[name + "+studies"] = {"profile": dataclasses.asdict(load_profile(name, 321))}
out["demo"] = dm

text = json.dumps(out, indent=1, sort_keys=True, default=str)
text = text.replace(str(ROOT), "<ROOT>").replace(sys.executable, "<PYTHON>")
Path(sys.argv[1]).write_text(text + "\n")
print(len(text))
