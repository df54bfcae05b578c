"""Sharded evaluation: ``devices=N`` processes share the clips of one run.

Every process builds its own evaluator (restorer and metrics on its device) and restores
and scores a disjoint share of the clips; the run directory ends up exactly as a
one-process run leaves it:

1. rank 0 opens the run directory (``run.json``, ``config.yaml``, provenance; part files
   of a killed sharded run are merged) and lists the clips still to do, then broadcasts
   that list, so every process works from the same one;
2. rank ``r`` of ``N`` takes ``todo[r::N]`` and writes each finished clip's rows to its own
   part files (:class:`~fvr_bench.results.ResultStore` with ``shard="rank<r>"``, atomic
   replaces; features of set-level metrics and restored frames are one file per clip and
   go straight to their shared place);
3. after a barrier rank 0 merges the parts into ``per_clip.csv`` / ``timing.csv`` in the
   dataset's clip order and computes the summary, set-level metrics (FVD) included, from
   every clip's stored features.

A killed run leaves each process's finished clips in its part file; the next run (any
device count, or ``devices=1``) counts them as done. Processes talk only through files in
the run directory plus one broadcast and two barriers, so the run directory must be on a
filesystem every process sees (always true on one node).

Processes are started with Lightning Fabric: ``strategy=ddp_spawn`` (default) starts them
from this command, whatever started it (shell, a multirun job, a notebook, pytest);
``strategy=ddp`` joins processes that ``torchrun`` or SLURM ``srun`` started, one per
device. On the CPU the processes talk through gloo, on GPUs through NCCL.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from fvr_bench.errors import ConfigError, FvrBenchError

log = logging.getLogger(__name__)

STRATEGIES = ("ddp_spawn", "ddp")


def device_count(devices: Any) -> int:
    """Processes that ``devices`` asks for: a count (``devices=2``) or GPU indices
    (``devices=[0,2]``)."""
    if isinstance(devices, bool):
        raise ConfigError(f"devices={devices}: give a number of processes (devices=2) or GPU indices (devices=[0,2])")
    if isinstance(devices, int):
        if devices < 1:
            raise ConfigError(f"devices={devices}: give a number of processes ≥ 1 (devices=2) or GPU indices (devices=[0,2])")
        return devices
    if isinstance(devices, (list, tuple, ListConfig)):
        indices = list(devices)
        valid = all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices)
        if not indices or not valid or len(set(indices)) != len(indices):
            raise ConfigError(f"devices={indices}: GPU indices must be distinct integers ≥ 0, e.g. devices=[0,2]")
        if len(indices) == 1:
            raise ConfigError(f"devices={indices}: one GPU is device=cuda:{indices[0]} (a list of devices is for several)")
        return len(indices)
    raise ConfigError(f"devices={devices!r}: give a number of processes (devices=2) or GPU indices (devices=[0,2])")


def is_sharded(cfg: DictConfig) -> bool:
    """Whether ``cfg`` asks for more than one evaluating process."""
    return device_count(cfg.get("devices", 1)) > 1


def accelerator_for(device: str, devices: Any) -> str:
    """Fabric's accelerator for ``device=auto|cpu|cuda`` with several processes."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ConfigError(
            f"device={device} with devices={devices}: one process per device needs device=cuda (GPUs 0..N-1, or "
            f"devices=[1,3] to pick them), device=cpu or device=auto"
        )
    if name == "cpu" and not isinstance(devices, int):
        raise ConfigError(
            f"devices={list(devices)} names GPUs, but device={device} runs on the CPU: give the number of processes, devices=2"
        )
    if name == "cuda":
        wanted = max(devices) + 1 if not isinstance(devices, int) else devices
        available = torch.cuda.device_count()
        if wanted > available:
            raise ConfigError(f"devices={devices} needs {wanted} GPUs; this machine shows {available}")
    return name


def evaluate_sharded(cfg: DictConfig) -> Path:
    """Evaluate one run with ``cfg.devices`` processes; returns the run directory.

    An error of this package in any process (a missing file, a bad restorer output)
    reaches the caller as that same exception, so the command line prints its message.
    """
    from lightning.fabric import Fabric
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    devices = cfg.devices
    devices = list(devices) if isinstance(devices, ListConfig) else devices
    device_count(devices)
    strategy = str(cfg.get("strategy", "ddp_spawn"))
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"strategy={strategy}: choose ddp_spawn (this command starts the processes) or ddp (processes "
            f"started by torchrun or srun, one per device)"
        )
    accelerator = accelerator_for(cfg.device, devices)
    # spawned processes cannot resolve Hydra's interpolations (no Hydra state there):
    # they get the configuration with every value filled in
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    # the spawned processes form their own group on this machine, also inside a SLURM or
    # torchrun allocation whose variables would otherwise decide the ranks
    plugins = [LightningEnvironment()] if strategy == "ddp_spawn" else None
    try:
        fabric = Fabric(accelerator=accelerator, devices=devices, strategy=strategy, plugins=plugins)
    except MisconfigurationException as error:
        raise ConfigError(f"devices={devices}, device={cfg.device}, strategy={strategy}: {error}") from error
    if strategy == "ddp" and not fabric.strategy.cluster_environment.creates_processes_externally:
        raise ConfigError(
            f"strategy=ddp joins processes started by torchrun or srun (one per device), but this process was "
            f"started alone; use strategy=ddp_spawn (the default) to start {device_count(devices)} processes from here"
        )
    from fvr_bench.results import RunLock

    if strategy == "ddp":
        # torchrun/srun started every rank: rank 0 holds the run directory's lock
        if fabric.strategy.cluster_environment.global_rank() != 0:
            return Path(fabric.launch(evaluate_shard, resolved, None))
        with RunLock(Path(resolved.run_dir)):
            return Path(fabric.launch(evaluate_shard, resolved, None))
    use_standard_start_method()
    # the launcher picks a free port and leaves it in this process's environment; the
    # next sharded run (a sequential multirun) must pick its own again
    port_before = os.environ.get("MASTER_PORT")
    with RunLock(Path(resolved.run_dir)), tempfile.TemporaryDirectory(prefix="fvr_bench_shard_errors_") as error_dir:
        try:
            run_dir = fabric.launch(evaluate_shard, resolved, error_dir)
        except Exception:
            reported = first_reported_error(Path(error_dir))
            if reported is not None:
                raise reported from None
            raise
        finally:
            if port_before is None:
                os.environ.pop("MASTER_PORT", None)
            else:
                os.environ["MASTER_PORT"] = port_before
    return Path(run_dir)


def use_standard_start_method() -> None:
    """Make the spawned processes start with the standard ``spawn`` method.

    A worker of joblib's loky backend (``hydra/launcher=local_parallel``) sets its
    process-wide default start method to ``"loky"``; Python hands that name to every
    process spawned from it, which cannot resolve it and dies before running anything.
    """
    import multiprocessing

    if multiprocessing.get_start_method(allow_none=True) not in (None, *multiprocessing.get_all_start_methods()):
        multiprocessing.set_start_method("spawn", force=True)


def evaluate_shard(fabric: Any, cfg: DictConfig, error_dir: str | None) -> str:
    """The body of every process (rank ``r`` of ``N``); see the module docstring.
    Returns the run directory. ``error_dir``: where a spawned process leaves its
    :class:`FvrBenchError` for the launching process (None when nobody collects them)."""
    from fvr_bench.evaluate import Evaluator
    from fvr_bench.results import ResultStore

    rank, world = fabric.global_rank, fabric.world_size
    if not logging.getLogger().handlers:  # a spawned process starts without the command's logging setup
        logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(message)s")
    try:
        evaluator = Evaluator(cfg, device=fabric.device)
        clip_ids = evaluator.clip_ids()
        # one process decides what is left to do: if each read the run directory itself,
        # a fast process's first clip could shift a slower one's share
        todo = evaluator.open_run(clip_ids) if rank == 0 else None
        todo = fabric.broadcast(todo, src=0)
        share = todo[rank::world]
        log.info("rank %d of %d: %d of %d clips to do", rank, world, len(share), len(todo))
        store = ResultStore(evaluator.run_dir, shard=f"rank{rank}")
        # three terminal lines per rank: its clip bar and the frame bars of this process's and
        # the metric worker's slow metrics (Evaluator.evaluate_clips)
        evaluator.evaluate_clips(share, store, progress_label=f" [rank {rank}/{world}]", position=3 * rank)
        fabric.barrier()
        if rank == 0:
            evaluator.finish(clip_ids)
        # every process returns once the summary exists (callers read it)
        fabric.barrier()
    except FvrBenchError as error:
        if error_dir is not None:
            report_error(Path(error_dir), rank, error)
        raise
    return str(evaluator.run_dir)


def report_error(error_dir: Path, rank: int, error: FvrBenchError) -> None:
    """Leave ``error`` (pickled) for the launching process: the process launcher passes on
    only a traceback text, and the user should see the message, as with one process."""
    tmp = error_dir / f".rank{rank}.pickle"
    tmp.write_bytes(pickle.dumps(error))
    os.replace(tmp, error_dir / f"rank{rank}.pickle")


def first_reported_error(error_dir: Path) -> FvrBenchError | None:
    """The error of the lowest rank that reported one, or None."""
    reports = sorted(error_dir.glob("rank*.pickle"), key=lambda path: int(path.stem.removeprefix("rank")))
    for path in reports:
        try:
            error = pickle.loads(path.read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
            # an unreadable report must not hide the process failure itself
            log.warning("could not read the error report %s", path)
            continue
        if isinstance(error, FvrBenchError):
            return error
    return None
