#!/usr/bin/env python
"""Download the HSC PDR3 COSMOS targets and verify their SHA-256 checksums.

Thin command-line wrapper over :func:`diffdecon.download.download_targets`. Files go to
``<dest>/hsc_pdr3_cosmos/<target>/``; exit status 1 on a checksum failure, a present
file with a wrong checksum, or a network error.

    python scripts/download_data.py --dest data/external --targets test1 test3 --no-hst
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffdecon import data, download, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=paths.data_dir(),
                        help="data folder (DIFFDECON_DATA); files go to <dest>/hsc_pdr3_cosmos/ (default: %(default)s)")
    parser.add_argument("--targets", nargs="+", default=None, help="targets to fetch (default: all in the checksum file)")
    parser.add_argument("--no-hst", action="store_true", help="skip the optional HST cutouts without checksums")
    parser.add_argument("--checksums", type=Path, default=data.CHECKSUMS_FILE, help="checksum file (default: %(default)s)")
    parser.add_argument("--base-url", default=download.DEFAULT_BASE_URL, help="where the target folders live (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        report = download.download_targets(args.dest, checksums_file=args.checksums, base_url=args.base_url,
                                       targets=args.targets, include_hst=not args.no_hst)
    except download.DataDownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.report is not None and not isinstance(exc, download.ChecksumError):
            print(exc.report.summary(), file=sys.stderr)
        return 1
    print(report.summary())
    if not report.ok:
        print("error: some files failed verification (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
