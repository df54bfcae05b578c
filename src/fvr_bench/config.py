"""The Hydra config tree: where it is, its resolvers, composition, and instantiation with
errors a user can act on. The bottom layer every command and library caller shares
(nothing here imports the command line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fvr_bench.errors import ConfigError, FvrBenchError

CONF_DIR = Path(os.environ.get("FVR_BENCH_CONF", Path(__file__).resolve().parents[2] / "conf"))


def register_resolvers() -> None:
    """The tree's own interpolation resolvers; idempotent. Called by :func:`compose` and the
    Hydra entry points, never at import."""
    from omegaconf import OmegaConf

    # run directories of compat runs never collide with corrected-definition runs
    if not OmegaConf.has_resolver("fvr.compat_tag"):
        OmegaConf.register_new_resolver("fvr.compat_tag", lambda compat: "+compat" if compat else "")


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()):
    """The composed config ``conf/<config_name>.yaml`` with ``overrides`` (the command line's
    ``key=value`` syntax), outside a Hydra app. A bad override raises :class:`ConfigError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(str(error)) from error


def build(cfg: Any, what: str) -> Any:
    """``hydra.utils.instantiate(cfg)`` that surfaces our own errors unwrapped.

    Hydra wraps any exception raised by a ``_target_`` in ``InstantiationException``; a
    missing dataset or a reversed range would then reach the user as a Hydra traceback.
    The first :class:`FvrBenchError` in the chain is re-raised as its own type (its
    message names the file or field), annotated with the config node; anything else
    becomes a :class:`ConfigError` naming ``what`` failed to build.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg)
    except InstantiationException as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, FvrBenchError):
            cause = cause.__cause__ or cause.__context__
        where = str(error).rsplit("full_key:", 1)[1].strip() if "full_key:" in str(error) else ""
        if cause is not None:
            raise type(cause)(f"{cause} (config node: {where})" if where else str(cause)) from error
        raise ConfigError(f"{what} config does not instantiate: {error}") from error
