"""Stage `download`: fetch the FUNSD zip (data.url), check data.md5, extract it safely to data/raw;
or, when data.dataset.path is set, snapshot that Hugging Face dataset's two splits into data/raw/dataset.

data.url is an http(s) URL, a file:// URL or a path. Nothing is extracted before the checksum
matches, and data/raw is replaced only once extraction has fully succeeded.
"""

from __future__ import annotations

import sys

from layoutpeft.config import SourceConfig, load_params
from layoutpeft.data.download import RAW_DIR, download
from layoutpeft.data.hfdata import snapshot
from layoutpeft.errors import run_main


def read_params(params: dict) -> SourceConfig:
    return SourceConfig.from_params(params)


def main(argv: list[str]) -> None:
    source = read_params(load_params())
    if source.dataset_path and source.dataset_splits:
        out = snapshot(source.dataset_path, source.dataset_splits, RAW_DIR)
        print(f"download: saved splits {source.dataset_splits} of {source.dataset_path} to {out}")
        return
    out = download(source.url, source.md5, RAW_DIR)
    print(f"download: extracted FUNSD from {source.url} to {out}")


if __name__ == "__main__":
    sys.exit(run_main("download", main))
