"""Every config composes and instantiates; every method and dataset has its card."""

from __future__ import annotations

import pytest
from conftest import overrides
from hydra.utils import instantiate

from fvr_bench.config import CONF_DIR, compose
from fvr_bench.config import build
from fvr_bench.errors import DataError, WeightsMissingError

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
    """Baselines and tiny variants build; a paper-scale method without its checkpoint stops
    with a message naming the missing file (before building anything big)."""
    extra = [f"method.root={tmp_path}"] if name == "precomputed" else []
    cfg = compose("run", overrides(tmp_path, tmp_path, f"method={name}", *extra))
    assert cfg.method.name == name
    if name in BASELINES or name.endswith("_tiny"):
        assert hasattr(instantiate(cfg.method.restorer), "restore")
    else:
        with pytest.raises(WeightsMissingError, match="checkpoint|not found"):
            build(cfg.method.restorer, name)
    if name not in BASELINES:
        card = name.removesuffix("_tiny")  # a tiny variant shares its method's card and package
        assert (REPO / "methods" / card / "README.md").exists(), f"method {name} has no card"
        assert (REPO / "src" / "fvr_bench" / "methods" / card).is_dir(), f"method {name} has no package"


TRAINABLE = [name for name in options("method") if (CONF_DIR / "method" / f"{name}.yaml").read_text().find("stages:") >= 0
             or name.endswith("_tiny")]


@pytest.mark.parametrize("name", TRAINABLE)
def test_train_config_composes_for_every_stage(name, tmp_path):
    cfg = compose("train", [f"paths.output_dir={tmp_path}", f"method={name}", "stage=0"])
    stages = cfg.method.train.stages
    assert stages, f"method {name} declares no training stages"
    for stage, options in stages.items():
        for key in ("degradation", "frames", "size", "batch_size", "max_steps", "init_from"):
            assert key in options, f"{name} stage {stage} lacks {key}"
        if options.init_from is not None:
            assert str(options.init_from) in stages, f"{name} stage {stage} starts from unknown stage {options.init_from}"
        if options.degradation:
            assert (CONF_DIR / "degradation" / f"{options.degradation}.yaml").is_file()


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_compose_and_name_their_card(name, tmp_path):
    cfg = compose("run", overrides(tmp_path / "empty", tmp_path, f"data={name}"))
    assert cfg.data.name == name
    assert (REPO / "datasets" / name / "README.md").exists(), f"dataset {name} has no card"
    if name == "folder":
        return  # needs data.root from the user
    with pytest.raises(DataError, match=f"datasets/{name}/README.md"):
        instantiate(cfg.data).clip_ids()
