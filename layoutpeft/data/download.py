"""Fetch the FUNSD zip, verify its checksum, extract it safely to data/raw.

The source is `data.url` in params.yaml: an http(s) URL, a file:// URL, or a local path
(relative to the repository root). Nothing is extracted before the checksum matches, and
the output folder appears only once extraction has fully succeeded.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from layoutpeft.atomic import staged_dir
from layoutpeft.errors import LayoutpeftError
from layoutpeft.paths import RAW_DIR

SPLIT_DIRS = ("training_data", "testing_data")


class DownloadError(LayoutpeftError):
    """The FUNSD source cannot be fetched, verified or extracted."""


def fetch(source: str, dest: Path) -> None:
    """Copy `source` (URL or path) to `dest`, with a progress bar for remote files."""
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        import requests
        from tqdm import tqdm

        try:
            with requests.get(source, stream=True, timeout=60) as response:
                if response.status_code != 200:
                    raise DownloadError(f"{source}: HTTP {response.status_code}")
                total = int(response.headers.get("content-length", 0)) or None
                with (
                    open(dest, "wb") as out,
                    tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(parsed.path).name}") as bar,
                ):
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
        except requests.RequestException as err:
            raise DownloadError(
                f"data.url: cannot download {source} ({type(err).__name__}); without network, "
                f"set data.url to a local copy of the zip (README, 'Fully offline')"
            ) from err
        return
    path = Path(parsed.path) if parsed.scheme == "file" else Path(source)
    if parsed.scheme not in ("", "file"):
        raise DownloadError(f"data.url: unsupported scheme '{parsed.scheme}' in {source!r}")
    if not path.is_file():
        raise DownloadError(f"data.url: no such file: {path}")
    shutil.copyfile(path, dest)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_entry(info: zipfile.ZipInfo, zip_name: str) -> None:
    """Refuse entries that could write outside the target folder."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DownloadError(f"{zip_name}: refusing link entry {name!r}")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"{zip_name}: refusing absolute path entry {name!r}")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise DownloadError(f"{zip_name}: refusing entry {name!r} that escapes the target folder")


def safe_extract(zip_path: Path, target: Path, zip_name: str) -> None:
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{zip_name}: not a zip file or truncated ({err})") from err
    with archive:
        infos = archive.infolist()
        for info in infos:  # check every entry before writing any
            check_entry(info, zip_name)
        target_resolved = target.resolve()
        for info in infos:
            destination = (target / info.filename).resolve()
            if target_resolved not in destination.parents and destination != target_resolved:
                raise DownloadError(f"{zip_name}: refusing entry {info.filename!r} that escapes the target folder")
            try:
                archive.extract(info, target)
            except (zipfile.BadZipFile, EOFError, OSError) as err:
                raise DownloadError(f"{zip_name}: corrupt or truncated entry {info.filename!r} ({err})") from err


def find_dataset_root(extracted: Path, zip_name: str) -> Path:
    """The folder that holds training_data/ and testing_data/ (the official zip nests it in dataset/)."""
    for candidate in [extracted, *sorted(p for p in extracted.rglob("*") if p.is_dir())]:
        if all((candidate / split / "annotations").is_dir() for split in SPLIT_DIRS):
            return candidate
    raise DownloadError(f"{zip_name}: no folder with training_data/annotations and testing_data/annotations inside")


def download(source: str, expected_md5: str, out_dir: Path = RAW_DIR) -> Path:
    """Fetch, verify and extract FUNSD into `out_dir` (replaced only once complete)."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp:
        zip_path = tmp / "dataset.zip"
        fetch(source, zip_path)
        actual = md5_of(zip_path)
        if actual != expected_md5.lower():
            raise DownloadError(f"{source}: md5 mismatch: expected {expected_md5} (data.md5), got {actual}")
        extracted = tmp / "extracted"
        safe_extract(zip_path, extracted, source)
        root = find_dataset_root(extracted, source)
        for split in SPLIT_DIRS:
            shutil.move(str(root / split), tmp / split)
        zip_path.unlink()
        shutil.rmtree(extracted)
    return out_dir
