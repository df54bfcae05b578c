"""Every config composes and instantiates; every method and dataset has its card."""

from __future__ import annotations

import pytest
from conftest import overrides
from hydra.utils import instantiate

from fvr_bench.cli import CONF_DIR, compose
from fvr_bench.errors import DataError

REPO = CONF_DIR.parent
BASELINES = {"identity", "bicubic", "precomputed"}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("degradation"))
def test_degradation_configs_instantiate(name, tmp_path):
    cfg = compose("run", overrides(tmp_path, tmp_path, f"degradation={name}"))
    degradation = instantiate(cfg.degradation)
    assert degradation.name == name


@pytest.mark.parametrize("name", options("metrics"))
def test_metric_sets_instantiate(name, tmp_path):
    cfg = compose("run", overrides(tmp_path, tmp_path, f"metrics={name}"))
    assert cfg.metrics.name == name
    for metric_id, metric_cfg in cfg.metrics["items"].items():
        assert instantiate(metric_cfg).metric_id == metric_id


@pytest.mark.parametrize("name", options("metric"))
def test_single_metric_configs_instantiate_with_their_id(name):
    from omegaconf import OmegaConf

    # ``compat`` is a top-level key of run.yaml that some metric configs interpolate
    node = OmegaConf.create({"compat": False, "metric": OmegaConf.load(CONF_DIR / "metric" / f"{name}.yaml")})
    assert instantiate(node.metric).metric_id == name


@pytest.mark.parametrize("name", options("protocol"))
@pytest.mark.parametrize("compat", ["false", "true"])
def test_protocols_compose_and_separate_compat_runs(name, compat, tmp_path):
    cfg = compose("run", overrides(tmp_path, tmp_path, f"protocol={name}", f"compat={compat}"))
    assert cfg.protocol_name == name
    assert cfg.run_dir.endswith("+compat/bicubic") == (compat == "true")
    for metric_id, metric_cfg in cfg.metrics["items"].items():
        assert instantiate(metric_cfg).metric_id == metric_id


@pytest.mark.parametrize("name", options("method"))
def test_method_configs_instantiate(name, tmp_path):
    extra = [f"method.root={tmp_path}"] if name == "precomputed" else []
    cfg = compose("run", overrides(tmp_path, tmp_path, f"method={name}", *extra))
    assert cfg.method.name == name
    assert hasattr(instantiate(cfg.method.restorer), "restore")
    if name not in BASELINES:
        assert (REPO / "methods" / name / "README.md").exists(), f"method {name} has no card"
        assert (REPO / "src" / "fvr_bench" / "methods" / name).is_dir(), f"method {name} has no package"


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_compose_and_name_their_card(name, tmp_path):
    cfg = compose("run", overrides(tmp_path / "empty", tmp_path, f"data={name}"))
    assert cfg.data.name == name
    assert (REPO / "datasets" / name / "README.md").exists(), f"dataset {name} has no card"
    if name == "folder":
        return  # needs data.root from the user
    with pytest.raises(DataError, match=f"datasets/{name}/README.md"):
        instantiate(cfg.data).clip_ids()
