"""layoutpeft: choose how to fine-tune LayoutLM on FUNSD, with a fair, seeded PEFT study.

The library under the DVC stages (stages/*.py) and the `layoutpeft` command. It never reads
params.yaml by itself: callers load it once (`layoutpeft.config.load_params`) and pass typed
settings down.
"""

__version__ = "0.2.0"
