"""``python -m fvr_bench <command> ...``.

``run`` is a Hydra application (overrides, ``-m`` multirun, ``--cfg job``); the other
commands take the same ``key=value`` overrides through Hydra's compose API, so
``paths.output_dir=<dir>`` means the same thing everywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from fvr_bench.config import CONF_DIR, register_resolvers
from fvr_bench.errors import ConfigError, FvrBenchError


USAGE = """usage: python -m fvr_bench <command> [options] [key=value ...]

commands:
  run           evaluate a restorer: method=<m> data=<d> degradation=<g> metrics=<set> seed=<n> [-m for sweeps]
                [devices=N: clips sharded over N processes/GPUs] [hydra/launcher=local_parallel|slurm]
  train         train one stage of a method: method=<m> stage=<s> data=<GT set> [trainer=ddp] [-m for ablations]
  leaderboard   merge every run under paths.output_dir into leaderboard.csv and .md
  list          list the options of a config group: methods | data | degradations | metrics | protocols | tables
  data          data prepare sample | data degrade data=<d> degradation=<g> seed=<n> out=<dir>
                | data curate data=<d> [scorer.model_dir=<dir>] [threshold=90]   (VividFace MLLM curation)
  weights       weights status | weights fetch <name>   (the only command that downloads)
  plot          kind=scatter|distribution|profile metric=<id> [clip=<id>] [column=<x>] [out=<dir>]
  table         table=<paper table id> [format=md|latex|csv|all]: reported and measured rows side by side
  export        <checkpoint> [--out <folder>] method=<m>: weights-only restorer.safetensors + restorer.json for run
"""

LIST_GROUPS = {"methods": "method", "method": "method", "data": "data", "degradations": "degradation",
               "degradation": "degradation", "metrics": "metrics", "protocols": "protocol",
               "protocol": "protocol", "tables": "table"}


def fail(message: str, code: int = 2) -> None:
    print(f"fvr_bench: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def compose(config_name: str, overrides: list[str]):
    """:func:`fvr_bench.config.compose` for a command: a bad override ends the command with
    its message."""
    from fvr_bench.config import compose as compose_config

    try:
        return compose_config(config_name, overrides)
    except ConfigError as error:
        fail(str(error))


def _missing_keys(node, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???``, found without resolving interpolations (an
    interpolation to a missing value would raise before telling which key it is)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    keys = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node) if isinstance(node, ListConfig) else []
    for key, _ in items:
        if OmegaConf.is_missing(node, key):
            keys.append(f"{prefix}{key}")
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not OmegaConf.is_interpolation(node, key):
            keys.extend(_missing_keys(child, f"{prefix}{key}."))
    return keys


def require_values(cfg, what: str) -> None:
    """Stop with one line when a setting the chosen configs mark as required (``???``,
    e.g. ``data.root`` of ``data=folder``) has no value, instead of a Hydra traceback."""
    missing = sorted(key for key in _missing_keys(cfg) if not key.startswith("hydra."))
    if missing:
        wanted = " ".join(f"{key}=<value>" for key in missing)
        fail(f"{what} needs {', '.join(missing)}: add {wanted} (the comments in conf/{missing[0].split('.')[0]}/ say what it is)")


# ------------------------------------------------------------------------- run


def evaluate_cell(cfg) -> Path:
    """One evaluation cell: this process (``devices=1``) or ``devices=N`` processes sharing
    the clips; the run directory ends up the same."""
    from fvr_bench.config import build

    if cfg.get("devices", 1) == 1:
        # a missing or malformed dataset is the commonest mistake: say so before the seconds of
        # importing the metric and method libraries (the evaluator builds and scans it again;
        # other device settings are checked first, by the sharded path)
        build(cfg.data, "data").clip_ids()
    from fvr_bench.evaluate import evaluate
    from fvr_bench.sharding import evaluate_sharded, is_sharded

    return evaluate_sharded(cfg) if is_sharded(cfg) else evaluate(cfg)


def _run_task(cfg) -> None:
    from fvr_bench.tables.leaderboard import format_summary

    register_resolvers()  # a launcher's worker process imports this module afresh
    require_values(cfg, "run")
    try:
        run_dir = evaluate_cell(cfg)
    except FvrBenchError as error:
        fail(str(error))
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return  # launched per rank (torchrun / srun): rank 0 reports
    print(f"results: {run_dir}")
    print(format_summary(run_dir))


def run_command(args: list[str]) -> None:
    import hydra

    sys.argv = [f"{sys.argv[0]} run", *args]
    register_resolvers()
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="run")(_run_task)
    app()


# ------------------------------------------------------------------------- train


def _train_task(cfg) -> None:
    from fvr_bench.training.run import train

    register_resolvers()
    require_values(cfg, "train")
    try:
        run_dir = train(cfg)
    except FvrBenchError as error:
        fail(str(error))
    print(f"training run: {run_dir}")


def train_command(args: list[str]) -> None:
    import hydra

    sys.argv = [f"{sys.argv[0]} train", *args]
    register_resolvers()
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(_train_task)
    app()


# ------------------------------------------------------------------------- leaderboard


LEADERBOARD_OPTIONS = ("baseline", "data", "condition", "metrics", "methods", "format", "n_boot", "seed", "level",
                       "ci_style", "digits")


def leaderboard_command(args: list[str]) -> None:
    """``leaderboard [baseline=<method>] [data=<d>] [condition=<c>] [metrics=[a,b]] [methods=[a,b]]
    [format=csv,md,latex] [n_boot=2000] ... [paths.output_dir=<dir>]``."""
    from fvr_bench.tables.leaderboard import build_leaderboard

    options = {}
    for arg in args:
        key, _, value = arg.partition("=")
        if key in LEADERBOARD_OPTIONS:
            options[key] = value
    cfg = compose("run", [a for a in args if a.partition("=")[0] not in LEADERBOARD_OPTIONS])
    output_dir = Path(cfg.paths.output_dir)
    formats = tuple(options.pop("format", "csv,md").strip("[]").split(","))
    for key in ("n_boot", "digits", "seed"):
        if key in options:
            options[key] = int(options[key])
    if "level" in options:
        options["level"] = float(options["level"])
    try:
        table = build_leaderboard(output_dir, formats=formats, **options)
    except FvrBenchError as error:
        fail(str(error))
    print(f"leaderboard: {output_dir / 'leaderboard.csv'} ({len(table)} runs)")
    if "md" in formats:
        print((output_dir / "leaderboard.md").read_text())


# ------------------------------------------------------------------------- list


def list_command(args: list[str]) -> None:
    if len(args) != 1 or args[0] not in LIST_GROUPS:
        fail(f"list what? one of: {', '.join(sorted(set(LIST_GROUPS) - {'method', 'degradation', 'protocol'}))}")
    group = LIST_GROUPS[args[0]]
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        print(f"{path.stem:28s} {_description(path)}")


def _description(path: Path) -> str:
    """The first comment line of a config file, its one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


# ------------------------------------------------------------------------- data


def data_command(args: list[str]) -> None:
    subcommands = {"prepare": _data_prepare, "degrade": _data_degrade, "curate": _data_curate}
    if not args or args[0] not in subcommands:
        fail("usage: data prepare sample [paths.data_dir=<dir>] | data degrade data=<d> degradation=<g> seed=<n> out=<dir>"
             " | data curate data=<d> [scorer.model_dir=<Qwen2.5-VL folder>] [threshold=90]")
    subcommands[args[0]](args[1:])


def _data_curate(args: list[str]) -> None:
    """VividFace's MLLM curation (MLLM-Face90) of a dataset's clips; resumable."""
    from fvr_bench.curation.run import curate_command, format_summary

    cfg = compose("curate", args)
    try:
        out = curate_command(cfg)
    except FvrBenchError as error:
        fail(str(error))
    print(format_summary(out))


def _data_prepare(args: list[str]) -> None:
    from fvr_bench.data.sample import prepare_sample

    names = [a for a in args if "=" not in a]
    if names != ["sample"]:
        fail("only the embedded sample set is prepared by this command: data prepare sample; "
             "the other sets are obtained as their card says (datasets/<name>/README.md)")
    cfg = compose("run", [a for a in args if "=" in a])
    try:
        out = prepare_sample(Path(cfg.paths.data_dir) / "sample", cache_dir=Path(cfg.paths.cache_dir))
    except FvrBenchError as error:
        fail(str(error))
    print(f"sample dataset: {out}")


def _data_degrade(args: list[str]) -> None:
    """Export the exact LQ inputs of a (data, degradation, seed) cell, so external methods
    run on the same bits as the built-in ones."""
    from tqdm.auto import tqdm

    from fvr_bench.config import build
    from fvr_bench.degradations import LQCache, build_degradation
    from fvr_bench.video import to_numpy, write_frame_folder

    out = [a.split("=", 1)[1] for a in args if a.startswith("out=")]
    if not out:
        fail("data degrade needs out=<folder> for the LQ frame folders")
    cfg = compose("run", [a for a in args if not a.startswith("out=")])
    require_values(cfg.data, "data degrade")
    out_dir = Path(out[0])
    try:
        dataset = build(cfg.data, "data")
        degradation = build_degradation(cfg.degradation)
        cache = LQCache(Path(cfg.paths.cache_dir) / "lq")
        for clip_id in tqdm(dataset.clip_ids(), desc=f"degrading {dataset.name} ({degradation.name})", unit="clip"):
            degraded = cache.get_or_compute(degradation, cfg.seed, clip_id, to_numpy(dataset.load(clip_id).gt))
            write_frame_folder(out_dir / "lq" / clip_id, degraded.lq)
            if degraded.mask is not None:
                write_frame_folder(out_dir / "mask" / clip_id, degraded.mask[..., None].repeat(3, -1).astype("uint8") * 255)
    except FvrBenchError as error:
        fail(str(error))
    print(f"LQ set: {out_dir / 'lq'} ({degradation.name}, seed {cfg.seed})")


# ------------------------------------------------------------------------- weights


def weights_command(args: list[str]) -> None:
    from fvr_bench import weights

    if args == ["status"] or not args:
        rows = weights.status()
        width = max(len(row["name"]) for row in rows)
        for row in rows:
            print(f"{row['name']:{width}s}  {row['state']:7s}  {row['path']}  (used by {row['used_by']})")
        missing = sum(row["state"] == "missing" for row in rows)
        print(f"\n{len(rows) - missing} of {len(rows)} files found; put missing files in "
              f"$FVR_BENCH_WEIGHTS or {weights.USER_CACHE}, or `weights fetch <name>` where a link exists")
        return
    if args[0] == "fetch" and len(args) == 2:
        try:
            print(f"{args[1]}: {weights.fetch(args[1])}")
        except FvrBenchError as error:
            fail(str(error))
        return
    fail("usage: weights status | weights fetch <name>")


def table_command(args: list[str]) -> None:
    from fvr_bench.tables.paper import table_command as render

    try:
        render(args)
    except FvrBenchError as error:
        fail(str(error))


def export_command(args: list[str]) -> None:
    from fvr_bench.training.export import export_command as export

    try:
        export(args)
    except FvrBenchError as error:
        fail(str(error))


def plot_command(args: list[str]) -> None:
    from fvr_bench.tables.plots import plot_command as draw

    try:
        draw(args)
    except FvrBenchError as error:
        fail(str(error))


# ------------------------------------------------------------------------- entry


COMMANDS = {
    "run": run_command,
    "train": train_command,
    "leaderboard": leaderboard_command,
    "list": list_command,
    "data": data_command,
    "weights": weights_command,
    "table": table_command,
    "plot": plot_command,
    "export": export_command,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        fail(f"unknown command '{argv[0]}'\n{USAGE}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        command(argv[1:])
    except BrokenPipeError:
        # the reader went away (`list methods | head`): stop quietly, as other tools do;
        # stdout points at /dev/null so Python's own flush at exit cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
