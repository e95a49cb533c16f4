"""What counts as the user's mistake, reported in one line with exit code 2, and what is our bug (a
traceback): a bad config, a resume that would change the run, a data file or row that cannot be used,
a model that is not there, code rewards that cannot be isolated here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import OmegaConfBaseException

from cispo.config import ConfigError
from cispo.data.types import DataError
from rewards.sandbox import SandboxUnavailableError
from rollout.models import ModelError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, OmegaConfBaseException, DataError, ModelError,
                                            SandboxUnavailableError)
"""OmegaConfBaseException: an interpolation the composed config cannot resolve (``${data.train[0]...}``)."""
EXIT_USER_ERROR = 2


@contextmanager
def one_line_errors(log: logging.Logger, prefix: str = "") -> Iterator[None]:
    """Turns a user error into one logged line and exit code 2; anything else propagates."""
    try:
        yield
    except USER_ERRORS as err:
        log.error("%s%s", prefix, err)
        raise SystemExit(EXIT_USER_ERROR) from None
