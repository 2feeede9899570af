"""Resources: device and precision choice, settings validation, configuration precedence."""

import json

import pytest
import torch

from dedup_assets.definitions import build_resources
from resources import ComputeDevice, DedupSettings


def test_auto_device_is_cpu_without_cuda_and_explicit_cuda_fails_clearly():
    if torch.cuda.is_available():
        assert ComputeDevice(device="auto").torch_device().type == "cuda"
    else:
        assert ComputeDevice(device="auto").torch_device() == torch.device("cpu")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            ComputeDevice(device="cuda").torch_device()
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        ComputeDevice(device="gpu0").torch_device()


def test_precision_choice():
    assert ComputeDevice(device="cpu", precision="fp32").amp_dtype() is None
    dev = ComputeDevice(device="cpu", precision="auto")
    assert dev.amp_dtype() == (torch.bfloat16 if dev.supports_bf16() else None)
    with pytest.raises(ValueError, match="precision"):
        ComputeDevice(precision="fp8").amp_dtype()
    assert "cpu" in ComputeDevice(device="cpu", precision="fp32").describe()


def test_settings_validation_and_auto_epochs():
    s = DedupSettings()
    assert s.validate() is s
    assert s.resolved_epochs(27_000) == 10  # 211 steps/epoch: 2,000 steps need 10 epochs
    assert s.resolved_epochs(416) == 60  # 4 steps/epoch: capped at 60 epochs
    assert DedupSettings(epochs=3).resolved_epochs(27_000) == 3
    for bad in (
        {"similarity_space": "l2"},
        {"keep_policy": "random"},
        {"bin_rule": "x"},
        {"epochs": -1},
    ):
        with pytest.raises(ValueError):
            DedupSettings(**bad).validate()


def test_resource_configuration_precedence(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pipeline.json").write_text(
        json.dumps({"source": "/saved", "device": "cpu", "settings": {"epochs": 7}})
    )
    monkeypatch.delenv("DEDUP_SOURCE", raising=False)
    monkeypatch.delenv("DEDUP_DEVICE", raising=False)
    r = build_resources(output=str(out))
    assert r["image_source"].root == "/saved"
    assert r["compute"].device == "cpu"
    assert r["settings"].epochs == 7
    monkeypatch.setenv("DEDUP_SOURCE", "/from-env")
    assert build_resources(output=str(out))["image_source"].root == "/from-env"
    assert build_resources(source="/arg", output=str(out))["image_source"].root == "/arg"
    assert r["image_source"].demo_dir == str(out / "demo_dataset")
