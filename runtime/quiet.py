"""Silence known, harmless library noise so the run's own log lines stay readable."""

from __future__ import annotations

import logging
import warnings


def quiet_known_noise() -> None:
    # bitsandbytes (0.50) logs a warning at import on AVX512-BF16 CPUs when the optional `kernels`
    # package is absent; its own CPU kernels are used instead, which is what we test.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # transformers 5 calls its own deprecated property while enabling gradient checkpointing.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    # One "Loading weights" bar per from_pretrained on every rank drowns the run's own progress bar.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
