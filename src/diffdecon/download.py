"""Downloads of the HSC target files with SHA-256 verification.

The target folders are fetched from the public repository (:data:`DEFAULT_BASE_URL`) into
``<data folder>/hsc_pdr3_cosmos/`` and checked against the committed sums
(:data:`diffdecon.data.CHECKSUMS_FILE`): a file is renamed into place only after its
checksum matched, so a failed or interrupted download never leaves a partial file. Reading
the files is :mod:`diffdecon.data`'s work; this module only talks to the network.
"""

from __future__ import annotations

import errno
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

from tqdm.auto import tqdm

from . import cache
from .data import CHECKSUMS_FILE, CUTOUT_RE, HSC_SUBDIR, HST_GLOB, read_checksums
from .errors import DiffdeconError

__all__ = ["DEFAULT_BASE_URL", "DataDownloadError", "ChecksumError", "RemoteFileNotFound", "FileResult",
           "DownloadReport", "download_targets", "sha256sum", "file_url", "hst_candidates"]

REPOSITORY: str = "astrodeepnet/diffusion4astro"
COMMIT: str = "f2a96b38af909c06f04f3455ac07041b556dae5f"
DEFAULT_BASE_URL: str = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/HSC%20PDR3"
"""Public location of the target folders (``HSC PDR3/<target>/<file>``, space URL-encoded)."""


class DataDownloadError(DiffdeconError, RuntimeError):
    """A download failed (network, missing remote file or checksum); ``.report`` holds details."""

    def __init__(self, message: str, report: "DownloadReport | None" = None):
        super().__init__(message)
        self.report = report


class ChecksumError(DataDownloadError):
    """A file's SHA-256 differs from the committed checksum."""


class RemoteFileNotFound(DiffdeconError, FileNotFoundError):
    """The remote server answered that a file does not exist (HTTP 404 or missing file:// path)."""


def sha256sum(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    return cache.sha256_file(path)


def _default_fetch(url: str, out: BinaryIO, timeout: float = 60.0) -> None:
    """Stream ``url`` into ``out``; a missing remote file raises :class:`RemoteFileNotFound`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while block := response.read(1 << 16):
                out.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise RemoteFileNotFound(f"{url}: HTTP 404 Not Found") from exc
        raise
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, FileNotFoundError) or getattr(reason, "errno", None) == errno.ENOENT:
            raise RemoteFileNotFound(f"{url}: no such file") from exc
        raise


def file_url(base_url: str, relpath: str) -> str:
    """URL of ``relpath`` (``<target>/<file>``) below ``base_url``, each component URL-encoded."""
    return base_url.rstrip("/") + "/" + "/".join(urllib.parse.quote(part) for part in relpath.split("/"))


def hst_candidates(target_files: Sequence[str]) -> list[str]:
    """HST file names to try for a target, from the suffix of its cutout names.

    ``cutout-HSC-G-9813-pdr3_dud_rev-3.fits`` gives ``["HST-channel-I-3.fits", "HST-channel-I.fits"]``;
    a cutout without suffix gives ``["HST-channel-I.fits"]``.
    """
    suffixes = {m.group(2) or "" for f in target_files if (m := CUTOUT_RE.match(Path(f).name))}
    names = [f"HST-channel-I{s}.fits" for s in sorted(suffixes)]
    if "HST-channel-I.fits" not in names:
        names.append("HST-channel-I.fits")
    return names


@dataclass
class FileResult:
    """Outcome for one file: ``status`` is one of ``downloaded``, ``present``, ``unverified``,
    ``present_unverified``, ``no_hst``, ``mismatch_present``, ``checksum_failed``, ``failed``."""

    relpath: str
    status: str
    url: str = ""
    expected: str | None = None
    actual: str | None = None
    message: str = ""


FAILED_STATUSES = ("mismatch_present", "checksum_failed", "failed")


@dataclass
class DownloadReport:
    """What :func:`download_targets` did, file by file."""

    dest: Path
    results: list[FileResult] = field(default_factory=list)

    def by_status(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failures(self) -> list[FileResult]:
        return [r for r in self.results if r.status in FAILED_STATUSES]

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        lines = [f"data folder: {self.dest}", "  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))]
        for r in self.results:
            if r.status in FAILED_STATUSES or r.status in ("unverified", "present_unverified", "no_hst"):
                lines.append(f"  {r.status:18s} {r.relpath}" + (f"  ({r.message})" if r.message else ""))
        return "\n".join(lines)


def _download_one(url: str, target: Path, expected: str | None, fetch: Callable[[str, BinaryIO], None]) -> str:
    """Fetch ``url`` into ``target`` atomically; verify ``expected``; return the actual hash."""
    with cache.atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            fetch(url, out)
        actual = sha256sum(tmp)
        if expected is not None and actual != expected:
            # Leaving the block with an exception discards the temporary file.
            raise ChecksumError(
                f"checksum mismatch for {target.name} from {url}: expected sha256 {expected}, got {actual}; "
                "the download was discarded"
            )
    return actual


def _network_error(url: str, exc: BaseException, report: DownloadReport) -> DataDownloadError:
    return DataDownloadError(
        f"could not download {url}: {exc}. Check the network connection, or set DIFFDECON_DATA "
        "to a folder that already holds 'hsc_pdr3_cosmos/' (e.g. export DIFFDECON_DATA=../shared/data).",
        report,
    )


def download_targets(
    dest: str | Path,
    checksums_file: str | Path = CHECKSUMS_FILE,
    base_url: str = DEFAULT_BASE_URL,
    targets: Sequence[str] | None = None,
    include_hst: bool = True,
    fetch: Callable[[str, BinaryIO], None] | None = None,
) -> DownloadReport:
    """Download the target files listed in ``checksums_file`` into ``dest/hsc_pdr3_cosmos/``.

    ``dest`` is the data folder (what ``DIFFDECON_DATA`` points at). Each file is fetched
    from ``<base_url>/<target>/<file>`` (URL-encoded), written to a temporary file, its
    SHA-256 compared with the committed one, and only then renamed into place: a failed
    or interrupted download never leaves a partial file. Files already present with the
    right checksum are skipped; a present file with a wrong checksum is reported
    (``mismatch_present``) and left untouched: delete it to download again. With
    ``include_hst`` the HST cutouts not in the checksum file are tried
    (:func:`hst_candidates`); they are kept but flagged ``unverified``, and a missing one is
    ``no_hst`` (no HST comparison for that target), not an error.

    ``fetch(url, binary_file)`` writes the bytes of ``url`` into the open file and raises
    :class:`RemoteFileNotFound` if the remote file does not exist (default: urllib with a
    60 s timeout; ``file://`` base URLs work too).

    Raises
    ------
    ChecksumError : after all files were tried, if any checksum failed (``.report`` attached).
    DataDownloadError : on the first network error, or if a checksummed file is missing
        remotely (the message names the URL and says to check the network or set DIFFDECON_DATA).
    """
    dest = Path(dest)
    out_dir = dest / HSC_SUBDIR
    sums = read_checksums(checksums_file)
    listed = sorted({rel.split("/", 1)[0] for rel in sums})
    if targets is not None:
        unknown = [t for t in targets if t not in listed]
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; the checksum file {checksums_file} lists {listed}")
        chosen = list(targets)
    else:
        chosen = listed
    fetch = fetch or _default_fetch
    report = DownloadReport(dest=out_dir)
    jobs = [(rel, sha) for rel, sha in sums.items() if rel.split("/", 1)[0] in chosen]
    for rel, expected in tqdm(jobs, desc="HSC files", unit="file"):
        report.results.append(_fetch_listed(rel, expected, out_dir, base_url, fetch, report))
    if include_hst:
        for target in tqdm(chosen, desc="HST cutouts", unit="target"):
            files = [rel.split("/", 1)[1] for rel in sums if rel.split("/", 1)[0] == target]
            if any(Path(f).name.startswith("HST-channel-I") for f in files):
                continue  # a checksummed HST file was handled above
            report.results.append(_fetch_hst(target, files, out_dir, base_url, fetch, report))
    failed = report.by_status("checksum_failed")
    if failed:
        raise ChecksumError("\n".join(r.message for r in failed) + "\n" + report.summary(), report)
    return report


def _fetch_listed(rel: str, expected: str, out_dir: Path, base_url: str,
                  fetch: Callable[[str, BinaryIO], None], report: DownloadReport) -> FileResult:
    """Fetch one checksummed file unless it is present with the right checksum."""
    path = out_dir / rel
    url = file_url(base_url, rel)
    if path.exists():
        actual = sha256sum(path)
        if actual == expected:
            return FileResult(rel, "present", url, expected, actual)
        return FileResult(rel, "mismatch_present", url, expected, actual,
                          f"{path} exists with sha256 {actual}, expected {expected}; not overwritten, delete it to re-download")
    try:
        actual = _download_one(url, path, expected, fetch)
    except ChecksumError as exc:
        return FileResult(rel, "checksum_failed", url, expected, None, str(exc))
    except RemoteFileNotFound as exc:
        report.results.append(FileResult(rel, "failed", url, expected, None, str(exc)))
        raise DataDownloadError(
            f"{url} does not exist on the server ({exc}); the checksum file lists it. "
            "Check the base URL, or set DIFFDECON_DATA to a folder that already holds the data.",
            report,
        ) from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        report.results.append(FileResult(rel, "failed", url, expected, None, str(exc)))
        raise _network_error(url, exc, report) from exc
    return FileResult(rel, "downloaded", url, expected, actual)


def _fetch_hst(target: str, files: list[str], out_dir: Path, base_url: str,
               fetch: Callable[[str, BinaryIO], None], report: DownloadReport) -> FileResult:
    """Fetch the unchecksummed HST cutout of ``target`` (first of :func:`hst_candidates` that exists)."""
    existing = sorted((out_dir / target).glob(HST_GLOB)) if (out_dir / target).is_dir() else []
    if existing:
        rel = f"{target}/{existing[0].name}"
        return FileResult(rel, "present_unverified", file_url(base_url, rel), None, sha256sum(existing[0]),
                          "no committed checksum")
    for name in hst_candidates(files):
        rel = f"{target}/{name}"
        url = file_url(base_url, rel)
        try:
            actual = _download_one(url, out_dir / rel, None, fetch)
        except RemoteFileNotFound:
            continue
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            report.results.append(FileResult(rel, "failed", url, None, None, str(exc)))
            raise _network_error(url, exc, report) from exc
        return FileResult(rel, "unverified", url, None, actual, f"no committed checksum; sha256 {actual}")
    return FileResult(f"{target}/HST-channel-I*.fits", "no_hst", "", None, None,
                      "no HST cutout on the server: no HST comparison for this target")
