"""Stage `download`: fetch the FUNSD zip, verify its checksum, extract it safely to data/raw.

The source is `data.url` in params.yaml: an http(s) URL, a file:// URL, or a local path
(relative to the repository root). Nothing is extracted before the checksum matches, and
the output folder appears only once extraction has fully succeeded.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from stages.params import get, load_params

RAW_DIR = Path("data/raw")
SPLIT_DIRS = ("training_data", "testing_data")


class DownloadError(RuntimeError):
    pass


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
                with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                                    desc=f"download {Path(parsed.path).name}") as bar:
                    for chunk in response.iter_content(chunk_size=1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
        except requests.RequestException as err:
            raise DownloadError(f"data.url: cannot download {source} ({type(err).__name__}); without network, "
                                f"set data.url to a local copy of the zip (README, 'Fully offline')") from err
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
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".download-") as tmp:
        tmp = Path(tmp)
        zip_path = tmp / "dataset.zip"
        fetch(source, zip_path)
        actual = md5_of(zip_path)
        if actual != expected_md5.lower():
            raise DownloadError(f"{source}: md5 mismatch: expected {expected_md5} (data.md5), got {actual}")
        extracted = tmp / "extracted"
        safe_extract(zip_path, extracted, source)
        root = find_dataset_root(extracted, source)
        staged = tmp / "raw"
        staged.mkdir()
        for split in SPLIT_DIRS:
            shutil.move(str(root / split), staged / split)
        # Replace the old output only now that the new one is complete.
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(staged), out_dir)
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(RAW_DIR))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    source = get(params, "data.url", str)
    md5 = get(params, "data.md5", str)
    out = download(source, md5, Path(args.out))
    print(f"download: extracted FUNSD from {source} to {out}")


if __name__ == "__main__":
    main()
