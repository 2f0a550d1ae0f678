"""Known-harmless messages from upstream libraries, silenced one by one (never all warnings).

Each entry matches one message of one library, checked as it stands today; anything else,
from the same logger or not, still prints. docs/troubleshooting.md ("Known messages and
traps") says what each one meant and why it is safe to drop here:

- bitsandbytes, on a CPU with avx512_bf16: "Failed to load CPU gemm_4bit_forward from
  kernels-community ... pip install kernels": the optional `kernels` package fetches a kernel
  from the Hugging Face Hub; without it bitsandbytes falls back to its own CPU kernel (what
  every QLoRA result here used).
- transformers: the FutureWarning "`is_gradient_checkpointing` is deprecated": PEFT 0.21 reads
  the old attribute when it wraps a model; nothing here uses it.
- transformers: "You are using a model of type `bert` to instantiate a model of type
  `layoutlm` ... can yield errors": the project loads a BERT checkpoint as LayoutLM on purpose
  (modeling.layoutlm_config) and reports which weights are new itself.
- DVC (through `layoutpeft profile` only): "No file hash info found for '<output>'. It won't be
  created.": `dvc exp run` first checks out the outputs dvc.lock records; on a first run there
  are none yet and the stages are about to create them.
"""

from __future__ import annotations

import logging
import re
import warnings

BNB_KERNELS = "Failed to load CPU gemm_4bit_forward from kernels-community"
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
GRADIENT_CHECKPOINTING = r"`is_gradient_checkpointing` is deprecated and will be removed"
BERT_AS_LAYOUTLM = "You are using a model of type `bert` to instantiate a model of type `layoutlm`."
TRANSFORMERS_CONFIG_LOGGER = "transformers.configuration_utils"
DVC_NO_HASH = "No file hash info found for '%s'. It won't be created."
DVC_CHECKOUT_LOGGERS = ("dvc_data.index.checkout", "dvc_data.hashfile.checkout")


class DropMessage(logging.Filter):
    """Drop the records of one logger whose message template (or rendered text) starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        template = record.msg if isinstance(record.msg, str) else ""
        return not (template.startswith(self.prefix) or record.getMessage().startswith(self.prefix))


def _add_once(logger_name: str, prefix: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropMessage) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(DropMessage(prefix))


def quiet_libraries() -> None:
    """The stages' and commands' known-harmless library messages (call before importing them)."""
    _add_once(BNB_LOGGER, BNB_KERNELS)
    _add_once(TRANSFORMERS_CONFIG_LOGGER, BERT_AS_LAYOUTLM)
    warnings.filterwarnings("ignore", message=GRADIENT_CHECKPOINTING, category=FutureWarning)


def quiet_dvc_first_checkout() -> None:
    """`dvc exp run`'s "No file hash info found" lines for outputs no stage has made yet."""
    for name in DVC_CHECKOUT_LOGGERS:
        _add_once(name, DVC_NO_HASH)


KNOWN_PATTERNS = [
    re.escape(BNB_KERNELS),
    GRADIENT_CHECKPOINTING,
    re.escape(BERT_AS_LAYOUTLM),
    re.escape(DVC_NO_HASH.split("'%s'")[0]),
]
