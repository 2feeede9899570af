"""The Kubernetes deployment in deploy/k8s validates: the code location loads with the
k8s_job_executor, the run config is accepted by every job, the instance's run launcher
config fits dagster-k8s's schema, and the training and encoding steps ask for a GPU."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config

from dedup_assets.config import PipelineConfig
from dedup_assets.definitions import build_definitions

# Not in `dev` (it pins dagster to its own release): pip install -e '.[dev,kubernetes]'.
pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (extra kubernetes)")
from dagster_k8s import K8sRunLauncher  # noqa: E402
from dagster_k8s.job import get_user_defined_k8s_config  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.fixture(scope="module")
def k8s_defs(tmp_path_factory):
    out = tmp_path_factory.mktemp("k8s") / "out"
    return build_definitions(PipelineConfig.build(output=str(out), executor="k8s"))


def test_code_location_validates_with_the_k8s_executor(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEDUP_")}
    env.update(DEDUP_EXECUTOR="k8s", DEDUP_OUTPUT=str(tmp_path / "out"), DAGSTER_HOME=str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate",
         "-m", "dedup_assets.definitions"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful" in done.stdout + done.stderr


def test_every_job_accepts_the_deployment_run_config(k8s_defs):
    run_config = load("run_config.yaml")
    jobs = list(k8s_defs.resolve_all_job_defs())
    assert len(jobs) >= 7
    for job in jobs:
        assert job.executor_def.name == "k8s", job.name
        dg.validate_run_config(job, run_config)
    broken = {"execution": {"config": {**run_config["execution"]["config"], "gpus": 1}}}
    with pytest.raises(dg.DagsterInvalidConfigError, match="gpus"):
        dg.validate_run_config(jobs[0], broken)


def test_instance_run_launcher_fits_the_dagster_k8s_schema():
    instance = load("dagster.yaml")
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = process_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    bad = process_config(K8sRunLauncher.config_type(), {**launcher["config"], "job_nmespace": "x"})
    assert not bad.success


def test_training_and_encoding_steps_request_a_gpu(k8s_defs):
    graph = k8s_defs.resolve_asset_graph()
    wanted = {"autoencoder", "class_latents"}
    for key in graph.get_all_asset_keys():
        node = graph.get(key).assets_def.node_def
        k8s = get_user_defined_k8s_config(node.tags)
        limits = (k8s.container_config.get("resources") or {}).get("limits", {})
        if key.to_user_string() in wanted:
            assert limits.get("nvidia.com/gpu") == "1", key
        else:
            assert "nvidia.com/gpu" not in limits, key


def test_deployment_files_agree_on_volume_settings_and_module():
    launcher = load("dagster.yaml")["run_launcher"]["config"]
    execution = load("run_config.yaml")["execution"]["config"]
    values = load("values.yaml")
    settings = list(yaml.safe_load_all((DEPLOY / "settings.yaml").read_text()))
    config_map = next(d for d in settings if d["kind"] == "ConfigMap")
    claim = next(d for d in settings if d["kind"] == "PersistentVolumeClaim")
    user = values["dagster-user-deployments"]["deployments"][0]
    assert user["dagsterApiGrpcArgs"] == ["-m", "dedup_assets.definitions"]
    for volumes in (launcher["volumes"], execution["volumes"], user["volumes"]):
        assert volumes[0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert config_map["metadata"]["name"] in launcher["env_config_maps"]
    assert config_map["data"]["DEDUP_EXECUTOR"] == "k8s"
    for name, value in config_map["data"].items():  # every setting is one the code reads
        if name != "DEDUP_DEVICE":
            assert value.startswith("/data/") or value == "k8s", (name, value)
    env = {**config_map["data"], "DEDUP_SOURCE": ""}
    assert PipelineConfig.from_environment(env).executor == "k8s"
