"""Log records of vLLM that a normal run produces but that read like a bug."""

from __future__ import annotations

import logging

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class _RotaryReloadFilter(logging.Filter):
    """vLLM's in-place reload warns "RotaryEmbedding: Failed to load weights" on every weight sync:
    the layer's only tensor is its cos/sin cache, a buffer computed from the config (rope theta, max
    positions) that no checkpoint carries, so nothing arrives for it and vLLM puts the existing cache
    back. Nothing is lost; the sync tests compare the engine's log-probs with the trainer's after every
    update. Any other layer that fails to load is still reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage() == "RotaryEmbedding: Failed to load weights")


_FILTER = _RotaryReloadFilter()


def quiet_harmless_reload_warning() -> None:
    logger = logging.getLogger(RELOAD_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
