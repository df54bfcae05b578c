"""Multirun launchers: local parallel (joblib) and SLURM (submitit) configs compose with the
sweep presets (a real two-cell sweep through joblib: test_cli.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fvr_bench.config import CONF_DIR



def hydra_config(*extra: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("run", ["paths.output_dir=/shared/results", *extra], return_hydra_config=True).hydra


def test_slurm_launcher_composes_with_a_sweep_preset():
    hydra = hydra_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "sweep=methods_x_degradations")
    launcher = OmegaConf.to_container(hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu"
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["nodes"]) == (1, 1, 1)
    assert launcher["timeout_min"] > 0 and launcher["max_num_timeout"] > 0 and launcher["cpus_per_task"] > 0
    assert launcher["setup"] == [f"export OMP_NUM_THREADS={launcher['cpus_per_task']}"]
    assert launcher["submitit_folder"] == "/shared/results/.submitit/%j"  # next to the results tree
    assert hydra.sweeper.params.method == "identity,bicubic"
    # the plugin takes every key (its constructor stores them; nothing is submitted)
    assert type(instantiate(hydra.launcher)).__name__ == "SlurmLauncher"


def test_slurm_launcher_defaults_need_no_cluster_specifics():
    launcher = hydra_config("hydra/launcher=slurm").launcher
    assert launcher.partition is None and launcher.account is None


def test_submitit_local_launcher_composes():
    """The plugin's own local executor (submitit on this machine) stays available."""
    hydra = hydra_config("hydra/launcher=submitit_local", "sweep=blur_severity")
    assert hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert type(instantiate(hydra.launcher)).__name__ == "LocalLauncher"


def test_local_parallel_launcher_composes():
    hydra = hydra_config("hydra/launcher=local_parallel", "hydra.launcher.n_jobs=4")
    assert hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert hydra.launcher.n_jobs == 4 and hydra.launcher.prefer == "processes"
    assert type(instantiate(hydra.launcher)).__name__ == "JoblibLauncher"


@pytest.mark.parametrize("launcher", ["slurm", "local_parallel"])
def test_cli_prints_the_launcher_of_a_multirun(launcher, tmp_path):
    """What a user checks before submitting a multirun: ``run hydra/launcher=... --cfg hydra``."""
    result = subprocess.run([sys.executable, "-m", "fvr_bench", "run", f"hydra/launcher={launcher}",
                             f"paths.output_dir={tmp_path}", "--cfg", "hydra", "--package", "hydra.launcher"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout.split("# @package hydra.launcher", 1)[-1])
    assert printed._target_.endswith("SlurmLauncher" if launcher == "slurm" else "JoblibLauncher")
