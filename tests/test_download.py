"""stages/download.py: checksum first, safe extraction, and no half-written data/raw."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from layoutpeft.config import ParamsError
from layoutpeft.data import download as dl
from layoutpeft.data.download import DownloadError, download
from stages import download as download_stage

from fixtures import make_funsd_zip


def snapshot(folder: Path) -> dict:
    """{relative path: bytes} of every file under `folder` ({} when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob(".download-*")) if data_dir.exists() else []


def test_extracts_both_splits(tmp_path, tiny_funsd_zip):
    zip_path, md5 = tiny_funsd_zip
    out = download(str(zip_path), md5, tmp_path / "data" / "raw")
    assert out == tmp_path / "data" / "raw"
    assert sorted(p.name for p in out.iterdir()) == ["testing_data", "training_data"]
    train = sorted(p.name for p in (out / "training_data" / "annotations").iterdir())
    assert train == [f"train_{i:02d}.json" for i in range(8)]
    assert len(list((out / "training_data" / "images").glob("*.png"))) == 8
    assert sorted(p.stem for p in (out / "testing_data" / "annotations").iterdir()) == ["test_00", "test_01", "test_02"]
    assert len(list((out / "testing_data" / "images").glob("*.png"))) == 3
    assert leftovers(tmp_path / "data") == []


def test_md5_is_the_real_one(tiny_funsd_zip):
    zip_path, md5 = tiny_funsd_zip
    assert dl.md5_of(zip_path) == hashlib.md5(zip_path.read_bytes()).hexdigest() == md5


def test_file_url_uppercase_md5_and_zip_without_dataset_folder(tmp_path):
    zip_path, md5 = make_funsd_zip(tmp_path / "flat.zip", root="")
    out = download(zip_path.as_uri(), md5.upper(), tmp_path / "raw")
    assert (out / "training_data" / "annotations" / "train_00.json").is_file()


def test_relative_path_is_relative_to_the_working_directory(tmp_path, tiny_funsd_zip, monkeypatch):
    zip_path, md5 = tiny_funsd_zip
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "f.zip").write_bytes(zip_path.read_bytes())
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    download("../shared/f.zip", md5, Path("data/raw"))
    assert (tmp_path / "repo" / "data" / "raw" / "testing_data" / "images" / "test_02.png").is_file()


def test_a_new_download_replaces_the_old_output(tmp_path, tiny_funsd_zip):
    zip_path, md5 = tiny_funsd_zip
    out = tmp_path / "raw"
    (out / "stale").mkdir(parents=True)
    (out / "stale" / "old.txt").write_text("old")
    download(str(zip_path), md5, out)
    assert not (out / "stale").exists()
    assert (out / "training_data").is_dir()


@pytest.fixture(params=["absent", "previous"])
def out_dir(request, tmp_path):
    """data/raw either absent or holding an earlier extraction, which a failure must leave alone."""
    out = tmp_path / "data" / "raw"
    if request.param == "previous":
        (out / "training_data" / "annotations").mkdir(parents=True)
        (out / "training_data" / "annotations" / "old.json").write_text('{"form": []}')
    return out


def expect_failure(source, md5, out: Path, *fragments: str) -> str:
    before = snapshot(out)
    existed = out.exists()
    with pytest.raises(DownloadError) as caught:
        download(str(source), md5, out)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert out.exists() == existed
    assert snapshot(out) == before
    assert leftovers(out.parent) == []
    return message


def test_md5_mismatch_names_expected_and_actual(tmp_path, tiny_funsd_zip, out_dir):
    zip_path, md5 = tiny_funsd_zip
    wrong = "0" * 32
    expect_failure(zip_path, wrong, out_dir, "md5 mismatch", wrong, md5, "data.md5", str(zip_path))


def test_missing_source(tmp_path, out_dir):
    expect_failure(tmp_path / "nope.zip", "0" * 32, out_dir, "data.url", "nope.zip")


def test_unreachable_url_names_the_key_and_the_offline_route(out_dir, monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise requests.ConnectionError("Name or service not known")

    monkeypatch.setattr(requests, "get", no_network)
    expect_failure(
        "https://example.invalid/dataset.zip",
        "0" * 32,
        out_dir,
        "data.url",
        "https://example.invalid/dataset.zip",
        "ConnectionError",
        "local copy",
    )


def test_unsupported_scheme(tmp_path, out_dir):
    expect_failure("ftp://example.invalid/f.zip", "0" * 32, out_dir, "unsupported scheme", "ftp")


def test_not_a_zip(tmp_path, out_dir):
    fake = tmp_path / "fake.zip"
    fake.write_text("this is not a zip file\n" * 10)
    expect_failure(fake, dl.md5_of(fake), out_dir, "fake.zip", "not a zip file or truncated")


def test_truncated_zip(tmp_path, out_dir):
    path, md5 = make_funsd_zip(tmp_path / "cut.zip", truncate_to=-200)  # central directory gone
    expect_failure(path, md5, out_dir, "cut.zip", "not a zip file or truncated")


def test_corrupt_entry(tmp_path, out_dir):
    entry = "dataset/testing_data/annotations/test_01.json"
    path, md5 = make_funsd_zip(tmp_path / "bad.zip", corrupt_entry=entry)
    expect_failure(path, md5, out_dir, "bad.zip", "corrupt or truncated entry", entry)


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("../escape.txt", "escapes the target folder"),
        ("dataset/../../escape.txt", "escapes the target folder"),
        ("..\\escape.txt", "escapes the target folder"),
        ("/tmp/absolute.txt", "absolute path entry"),
        ("\\absolute.txt", "absolute path entry"),
        ("C:/absolute.txt", "absolute path entry"),
    ],
)
def test_entries_outside_the_folder_are_refused(tmp_path, out_dir, name, fragment):
    path, md5 = make_funsd_zip(tmp_path / "evil.zip", extra_entries=((name, b"x"),))
    expect_failure(path, md5, out_dir, "evil.zip", fragment, repr(name))
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "data" / "escape.txt").exists()


def test_symlink_entry_is_refused(tmp_path, out_dir):
    path, md5 = make_funsd_zip(tmp_path / "link.zip", link_entries=(("dataset/training_data/images/link.png", "/etc/passwd"),))
    expect_failure(path, md5, out_dir, "link.zip", "link entry", "link.png")


def test_zip_without_the_funsd_layout(tmp_path, out_dir):
    forms = {"training_data": {}, "other_data": {}}
    path, md5 = make_funsd_zip(tmp_path / "odd.zip", forms=forms)
    expect_failure(path, md5, out_dir, "odd.zip", "training_data/annotations")


# --- main(): params errors name the key, before anything is fetched ---------------------------


def write_params(folder: Path, data: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"data": {"md5": "0" * 32}}, "missing key 'data.url'"),
        ({"data": {"url": "x.zip"}}, "missing key 'data.md5'"),
        ({"data": {"url": 5, "md5": "0" * 32}}, "key 'data.url' must be str"),
        ({"data": {"url": "x.zip", "md5": 123}}, "key 'data.md5' must be str"),
        ({"model": {}}, "missing key 'data.url'"),
    ],
)
def test_main_params_errors(tmp_path, monkeypatch, data, fragment):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, data)
    with pytest.raises(ParamsError) as caught:
        download_stage.main([])
    assert fragment in str(caught.value)
    assert not (tmp_path / "data").exists()


def test_main_params_not_yaml_or_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="params.yaml: not valid YAML"):
        download_stage.main([])
    (tmp_path / "params.yaml").unlink()
    with pytest.raises(ParamsError, match="params.yaml: params file not found"):
        download_stage.main([])


def test_main_downloads(tmp_path, monkeypatch, tiny_funsd_zip, capsys):
    zip_path, md5 = tiny_funsd_zip
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, {"data": {"url": str(zip_path), "md5": md5}})
    download_stage.main([])
    assert (tmp_path / "data" / "raw" / "training_data" / "annotations" / "train_07.json").is_file()
    assert "download: extracted FUNSD" in capsys.readouterr().out
