"""Downloading and unpacking dataset archives without trusting them.

A download goes to a temporary name and is checked against its sha256 before anything is
extracted. Extraction refuses, naming the member, anything that would land outside the target
(absolute paths, ``..``, links pointing out), device files, and archives whose uncompressed
size exceeds a bound; the whole archive is checked before the first byte is written.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class ArchiveError(ImgpipeError):
    """A download failed or an archive is corrupt, mismatched or unsafe."""


def download(url: str, target: Path, *, attempts: int = 4, timeout: float = 60.0) -> str:
    """Stream ``url`` to ``target`` with a progress bar, retrying transient failures.

    Returns:
        the sha256 of the bytes written.

    Raises:
        ArchiveError: on a permanent HTTP error (4xx) or when every attempt failed.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(url, target, timeout)
        except HTTPError as error:
            if error.code < 500 and error.code not in (408, 429):
                raise ArchiveError(
                    f"data.source: {url}: HTTP {error.code} {error.reason}"
                ) from None
            problem = f"HTTP {error.code}"
        except (URLError, TimeoutError, ConnectionError) as error:
            problem = str(getattr(error, "reason", error))
        if attempt < attempts:
            delay = 0.5 * 2 ** (attempt - 1)
            log.warning(
                "%s: %s; retrying in %.1f s (%d/%d)", url, problem, delay, attempt, attempts
            )
            time.sleep(delay)
    raise ArchiveError(f"data.source: {url}: {problem} after {attempts} attempts")


def _download_once(url: str, target: Path, timeout: float) -> str:
    digest = hashlib.sha256()
    request = Request(url, headers={"User-Agent": "imgpipe"})
    with urlopen(request, timeout=timeout) as response, atomic_path(target) as temporary:
        size = int(response.headers.get("Content-Length") or 0) or None
        with (
            temporary.open("wb") as out,
            tqdm(total=size, unit="B", unit_scale=True, desc=f"download {target.name}") as bar,
        ):
            while block := response.read(CHUNK):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


def verify_sha256(actual: str, expected: str | None, source: str) -> None:
    """Stop unless ``actual`` matches ``expected``; without an expectation, say how to pin it."""
    if expected is None:
        log.warning("%s has sha256 %s; set data.sha256 to it to pin this download", source, actual)
    elif actual.lower() != expected.lower():
        raise ArchiveError(
            f"data.sha256: {source} has sha256 {actual}, expected {expected}; nothing was extracted"
        )


def extract(archive: Path, target: Path, max_bytes: int) -> None:
    """Unpack a zip or tar (plain, gz, bz2, xz) archive into ``target`` after checking it whole."""
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, target, max_bytes)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, target, max_bytes)
    else:
        raise ArchiveError(f"{archive.name}: not a zip or tar archive")


def _refuse(member: str, why: str) -> ArchiveError:
    return ArchiveError(f"archive member '{member}' refused: {why}; nothing was extracted")


def _too_big(total: int, max_bytes: int) -> ArchiveError:
    return ArchiveError(
        f"archive expands to more than {max_bytes:,} bytes (data.max_extract_bytes); "
        f"declared size {total:,}"
    )


def _extract_tar(archive: Path, target: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            total = sum(m.size for m in members if m.isfile())
            if total > max_bytes:
                raise _too_big(total, max_bytes)
            for member in members:
                if member.name.startswith("/") or (len(member.name) > 1 and member.name[1] == ":"):
                    raise _refuse(member.name, "absolute path")
                try:  # Python's own "data" filter: no absolute paths, no escape, no devices
                    tarfile.data_filter(member, str(target))
                except tarfile.FilterError as error:
                    raise _refuse(member.name, type(error).__name__) from None
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError(f"{archive.name}: corrupt tar archive: {error}") from None


def _extract_zip(archive: Path, target: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise _too_big(total, max_bytes)
            root = target.resolve()
            for member in members:
                _check_zip_member(member, root)
            written = 0
            for member in members:
                destination = target / member.filename
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, destination.open("wb") as out:
                    while block := source.read(CHUNK):
                        written += len(block)
                        if written > max_bytes:  # sizes in the directory can lie
                            raise _too_big(written, max_bytes)
                        out.write(block)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ArchiveError(f"{archive.name}: corrupt zip archive: {error}") from None


def _check_zip_member(member: zipfile.ZipInfo, root: Path) -> None:
    name = member.filename
    path = PurePosixPath(name.replace("\\", "/"))
    mode = member.external_attr >> 16
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise _refuse(name, "absolute path")
    if ".." in path.parts:
        raise _refuse(name, "path leaves the target folder")
    if stat.S_ISLNK(mode):
        raise _refuse(name, "symbolic link")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(name, "not a regular file or folder")
    if not (root / path).resolve().is_relative_to(root):
        raise _refuse(name, "path leaves the target folder")
