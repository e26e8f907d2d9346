"""Tests of diffdecon.download: atomic, checksummed downloads from a fake file:// server."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from diffdecon import download


def _remote(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A fake remote folder (served as file://) and its checksum file."""
    remote = tmp_path / "remote with space"
    files = {
        "t1/cutout-HSC-G-9813-pdr3_dud_rev.fits": b"g" * 1000,
        "t1/t1.csv": b"# object_id\n1\n",
        "t2/cutout-HSC-G-9813-pdr3_dud_rev-2.fits": b"g2" * 700,
    }
    for rel, content in files.items():
        (remote / rel).parent.mkdir(parents=True, exist_ok=True)
        (remote / rel).write_bytes(content)
    (remote / "t2" / "HST-channel-I-2.fits").write_bytes(b"hst" * 100)  # no checksum
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(f"{hashlib.sha256(c).hexdigest()}  {rel}\n" for rel, c in files.items()))
    return remote, sums, files


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name)


def test_download_good_then_present(tmp_path):
    remote, sums, files = _remote(tmp_path)
    dest = tmp_path / "dest"
    report = download.download_targets(dest, sums, remote.as_uri())
    assert report.ok
    assert sorted(r.relpath for r in report.by_status("downloaded")) == sorted(files)
    for rel, content in files.items():
        assert (dest / "hsc_pdr3_cosmos" / rel).read_bytes() == content
    # HST: t2's file is found under the cutout suffix and kept unverified; t1 has none.
    assert [r.relpath for r in report.by_status("unverified")] == ["t2/HST-channel-I-2.fits"]
    assert [r.relpath for r in report.by_status("no_hst")] == ["t1/HST-channel-I*.fits"]
    # Second run: every listed file is present and verified, so none is fetched; only t1's
    # absent HST cutout is asked for again (and is still absent).
    calls = []

    def recording_fetch(url, out):
        calls.append(url)
        raise download.RemoteFileNotFound(url)

    again = download.download_targets(dest, sums, remote.as_uri(), fetch=recording_fetch)
    assert [c.rsplit("/", 2)[-2:] for c in calls] == [["t1", "HST-channel-I.fits"]]
    assert len(again.by_status("present")) == 3 and len(again.by_status("no_hst")) == 1
    assert len(again.by_status("present_unverified")) == 1


def test_download_bad_checksum_discarded(tmp_path):
    remote, sums, files = _remote(tmp_path)
    (remote / "t1" / "t1.csv").write_bytes(b"tampered\n")
    dest = tmp_path / "dest"
    with pytest.raises(download.ChecksumError, match=r"t1\.csv.*expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}") as exc:
        download.download_targets(dest, sums, remote.as_uri(), include_hst=False)
    assert not (dest / "hsc_pdr3_cosmos" / "t1" / "t1.csv").exists()
    assert _leftovers(dest) == []
    # The other files were still fetched and verified.
    assert len(exc.value.report.by_status("downloaded")) == 2


def test_download_present_with_wrong_checksum_not_overwritten(tmp_path):
    remote, sums, files = _remote(tmp_path)
    target = tmp_path / "dest" / "hsc_pdr3_cosmos" / "t1" / "t1.csv"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"local edit\n")
    report = download.download_targets(tmp_path / "dest", sums, remote.as_uri(), include_hst=False)
    assert not report.ok and [r.relpath for r in report.failures] == ["t1/t1.csv"]
    assert "not overwritten" in report.failures[0].message
    assert target.read_bytes() == b"local edit\n"


def test_partial_download_never_in_place(tmp_path):
    remote, sums, files = _remote(tmp_path)
    dest = tmp_path / "dest"

    def flaky(url: str, out: io.BufferedWriter) -> None:
        out.write(b"g" * 500)  # half the file, then the connection drops
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(download.DataDownloadError, match=r"cutout-HSC-G.*Check the network.*DIFFDECON_DATA"):
        download.download_targets(dest, sums, remote.as_uri(), targets=["t1"], fetch=flaky)
    assert not (dest / "hsc_pdr3_cosmos" / "t1" / "cutout-HSC-G-9813-pdr3_dud_rev.fits").exists()
    assert _leftovers(dest) == []


def test_download_urls_are_encoded_and_targets_checked(tmp_path):
    assert download.file_url(download.DEFAULT_BASE_URL, "test1/a b.fits").endswith("/HSC%20PDR3/test1/a%20b.fits")
    assert download.hst_candidates(["cutout-HSC-G-9813-pdr3_dud_rev-3.fits"]) == ["HST-channel-I-3.fits", "HST-channel-I.fits"]
    assert download.hst_candidates(["cutout-HSC-G-9813-pdr3_dud_rev.fits"]) == ["HST-channel-I.fits"]
    remote, sums, files = _remote(tmp_path)
    with pytest.raises(ValueError, match=r"'t9'.*\['t1', 't2'\]"):
        download.download_targets(tmp_path / "dest", sums, remote.as_uri(), targets=["t9"])


def test_download_script_fails_clearly(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("download_data", Path(__file__).parents[1] / "scripts" / "download_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    remote, sums, files = _remote(tmp_path)
    ok = module.main(["--dest", str(tmp_path / "d"), "--checksums", str(sums), "--base-url", remote.as_uri(), "--no-hst"])
    assert ok == 0
    (remote / "t1" / "t1.csv").unlink()  # now missing on the "server"
    rc = module.main(["--dest", str(tmp_path / "d2"), "--checksums", str(sums), "--base-url", remote.as_uri()])
    assert rc == 1
    assert "t1/t1.csv does not exist on the server" in capsys.readouterr().err
