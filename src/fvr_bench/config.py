"""Instantiating config nodes with errors a user can act on."""

from __future__ import annotations

from typing import Any

from fvr_bench.errors import ConfigError, FvrBenchError


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
