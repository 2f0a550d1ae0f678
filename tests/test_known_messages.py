"""Known-harmless library messages are silenced one by one: the exact message goes, any other
message of the same logger or category stays, and each text still matches the installed library."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import pytest

from layoutpeft import known_messages as km


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def collect():
    attached = []

    def attach(name: str) -> Collect:
        handler = Collect()
        logging.getLogger(name).addHandler(handler)
        attached.append((name, handler))
        return handler

    yield attach
    for name, handler in attached:
        logging.getLogger(name).removeHandler(handler)


def source_of(module: str) -> str:
    return Path(importlib.util.find_spec(module).origin).read_text()


@pytest.mark.parametrize(
    "logger, template, arg",
    [
        (km.BNB_LOGGER, km.BNB_KERNELS + ": %s. Please make sure you already `pip install kernels`", "offline"),
        (km.TRANSFORMERS_CONFIG_LOGGER, km.BERT_AS_LAYOUTLM + " This may be expected ... can yield errors.", None),
        ("dvc_data.index.checkout", km.DVC_NO_HASH, "/repo/plots"),
    ],
)
def test_only_the_known_message_is_dropped(collect, logger, template, arg):
    km.quiet_libraries()
    km.quiet_dvc_first_checkout()
    handler = collect(logger)
    log = logging.getLogger(logger)
    log.warning(template, arg) if arg is not None else log.warning(template)
    log.warning("another warning from %s", logger)
    assert handler.messages == [f"another warning from {logger}"]


def test_filters_are_added_once():
    km.quiet_libraries()
    km.quiet_libraries()
    assert len([f for f in logging.getLogger(km.BNB_LOGGER).filters if isinstance(f, km.DropMessage)]) == 1


def test_only_the_gradient_checkpointing_future_warning_is_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        km.quiet_libraries()
        warnings.warn(  # noqa: B028 - raised as transformers raises it (its own stacklevel is not what is filtered)
            "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` instead.",
            FutureWarning,
        )
        warnings.warn("something else is deprecated", FutureWarning)  # noqa: B028 - as above
    assert [str(w.message) for w in caught] == ["something else is deprecated"]


def test_the_texts_match_the_installed_libraries():
    """A library that rewords its message would slip past the filter: these fail first."""
    assert km.BNB_KERNELS in source_of("bitsandbytes.backends.cpu.ops")
    assert "`is_gradient_checkpointing` is deprecated and will be removed in v6" in source_of("transformers.modeling_utils")
    assert km.DVC_NO_HASH in source_of("dvc_data.index.checkout")


def test_bert_checkpoint_as_layoutlm_warns_only_without_the_filter(tiny_checkpoint, collect):
    """The real transformers warning, raised by loading a BERT config as LayoutLM (as the project does)."""
    from transformers import LayoutLMConfig
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger(km.TRANSFORMERS_CONFIG_LOGGER)
    saved = list(logger.filters)
    handler = collect(km.TRANSFORMERS_CONFIG_LOGGER)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        for f in saved:
            logger.removeFilter(f)
        LayoutLMConfig.from_pretrained(tiny_checkpoint)
        assert any(m.startswith(km.BERT_AS_LAYOUTLM) for m in handler.messages)
        handler.messages.clear()
        km.quiet_libraries()
        LayoutLMConfig.from_pretrained(tiny_checkpoint)
        assert handler.messages == []
    finally:
        hf_logging.set_verbosity(verbosity)
        for f in saved:
            if f not in logger.filters:
                logger.addFilter(f)


def test_peft_wrapping_does_not_print_the_future_warning(tiny_checkpoint):
    """PEFT reads model.is_gradient_checkpointing when it wraps a model: silent under the filter only."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LayoutLMForTokenClassification

    def wrap() -> list[str]:
        model = LayoutLMForTokenClassification.from_pretrained(tiny_checkpoint, num_labels=7)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if quiet:
                km.quiet_libraries()
            get_peft_model(model, LoraConfig(task_type=TaskType.TOKEN_CLS, r=2, target_modules=["query"]))
        return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]

    quiet = False
    assert any("is_gradient_checkpointing" in m for m in wrap())
    quiet = True
    assert not any("is_gradient_checkpointing" in m for m in wrap())
