"""Silence known, harmless library noise so the run's own log lines stay readable."""

from __future__ import annotations

import logging
import warnings


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message starts with `prefix`; the rest pass."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


DEEPSPEED_CPU = "Setting accelerator to CPU"


def quiet_known_noise() -> None:
    # DeepSpeed (0.18) warns "Setting accelerator to CPU. If you have GPU ..." on every CPU process at
    # import (deepspeed/accelerator/real_accelerator.py, logger "DeepSpeed"): on a CPU plan that is the
    # plan, not news. Only that message of that logger is dropped; its other warnings still show. The
    # filter sits on the logger itself (DeepSpeed's create_logger keeps it when it sets the logger up).
    deepspeed_logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DropMessage) for f in deepspeed_logger.filters):
        deepspeed_logger.addFilter(_DropMessage(DEEPSPEED_CPU))
    # bitsandbytes (0.50) logs a warning at import on AVX512-BF16 CPUs when the optional `kernels`
    # package is absent; its own CPU kernels are used instead, which is what we test.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # transformers 5 calls its own deprecated property while enabling gradient checkpointing.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    # One "Loading weights" bar per from_pretrained on every rank drowns the run's own progress bar.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
