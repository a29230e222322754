"""Device choice and mixed precision (CPU-tested: ``auto`` is the CPU here, autocast bf16)."""

from __future__ import annotations

import pytest
import torch

from retain.cli import main
from retain.engine.device import autocast, resolve_device


def test_auto_picks_cpu_without_cuda():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_bf16_autocast_on_cpu_runs_the_forward_in_bfloat16():
    lin = torch.nn.Linear(4, 3)
    with autocast("bf16", torch.device("cpu")):
        assert lin(torch.ones(2, 4)).dtype == torch.bfloat16
    with autocast("off", torch.device("cpu")):
        assert lin(torch.ones(2, 4)).dtype == torch.float32


def test_run_with_bf16_and_augmentation(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["run", "--method", "finetune", "--benchmark", "split-digits", "--model", "resnet18"]
    args += ["--quiet", "--out"]
    sets = ["--set", "augment={crop: 2, flip: true}", "--set", "model_args.nf=4"]
    assert main([*args, str(out), "--device", "auto", "--amp", "bf16", *sets]) == 0
    cfg = (out / "config.yaml").read_text()
    assert "amp: bf16" in cfg and "device: auto" in cfg and "crop: 2" in cfg


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--amp", "fp16"], "fp16 needs a CUDA device"),
        (["--amp", "fp8"], "unknown amp"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "x"], "device"),
        (["--set", "augment={crop: -1}"], "augment.crop"),
    ],
)
def test_bad_compute_options_are_one_line_exit_2(flags, message, tmp_path, capsys):
    run = ["run", "--method", "finetune", "--benchmark", "split-digits"]
    code = main([*run, "--out", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
