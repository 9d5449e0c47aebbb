"""Archive sources against a loopback HTTP server: good, wrong checksum, flaky and hostile."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import pytest

from imgpipe.data.archives import ArchiveError, extract
from imgpipe.data.sources import FetchOptions, fetch
from tests.conftest import write_image_folder

# The tar modes these tests write with (tarfile types its modes as literals).
TarWriteMode = Literal["w", "w:gz", "w:bz2", "w:xz"]


class FlakyHandler(SimpleHTTPRequestHandler):
    """Serves files; answers 503 to the first request for any path starting with /flaky-."""

    failed: set[str] = set()  # noqa: RUF012 (shared on purpose: per-server state)

    def do_GET(self) -> None:
        if self.path.startswith("/flaky-") and self.path not in self.failed:
            self.failed.add(self.path)
            self.send_error(503, "warming up")
            return
        if self.path.startswith("/flaky-"):
            self.path = "/" + self.path.removeprefix("/flaky-")
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("served")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(FlakyHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


def make_zip(path: Path, tree: Path, prefix: str = "dataset/") -> str:
    with zipfile.ZipFile(path, "w") as bundle:
        for file in sorted(tree.rglob("*")):
            if file.is_file():
                bundle.write(file, prefix + file.relative_to(tree).as_posix())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tar_with(path: Path, mode: TarWriteMode, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_zip_over_http_with_checksum_and_top_folder(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = server
    digest = make_zip(root / "images.zip", write_image_folder(tmp_path / "tree", per_class=2))
    fetch(f"{url}/images.zip", tmp_path / "raw", FetchOptions(sha256=digest))
    assert listing(tmp_path / "raw") == [
        "left/000.png",
        "left/001.png",
        "right/000.png",
        "right/001.png",
    ]


def test_retries_a_transient_error(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    make_zip(root / "again.zip", write_image_folder(tmp_path / "tree", per_class=1))
    fetch(f"{url}/flaky-again.zip", tmp_path / "raw")
    assert len(listing(tmp_path / "raw")) == 2


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_flavours(server: tuple[str, Path], tmp_path: Path, mode: TarWriteMode) -> None:
    url, root = server
    tree = write_image_folder(tmp_path / "tree", per_class=1)
    name = f"set.{mode.replace('w:', 'tar.').replace('w', 'tar')}"
    with tarfile.open(root / name, mode) as tar:
        tar.add(tree / "left", arcname="train/left")
        tar.add(tree / "right", arcname="train/right")
    fetch(f"{url}/{name}", tmp_path / "raw")
    assert listing(tmp_path / "raw") == ["train/left/000.png", "train/right/000.png"]  # split kept


def test_wrong_checksum_stops_before_extraction(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    make_zip(root / "bad.zip", write_image_folder(tmp_path / "tree", per_class=1))
    with pytest.raises(
        ArchiveError, match=r"data\.sha256: .* expected 0{64}; nothing was extracted"
    ):
        fetch(f"{url}/bad.zip", tmp_path / "raw", FetchOptions(sha256="0" * 64))
    assert not (tmp_path / "raw").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]  # no partial download left behind


def test_missing_file_is_a_permanent_error(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(ArchiveError, match="HTTP 404"):
        fetch(f"{url}/nowhere.zip", tmp_path / "raw")


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (tarfile.TarInfo("../evil.png"), "OutsideDestinationError"),
        (tarfile.TarInfo("/etc/evil.png"), "absolute path"),
    ],
)
def test_tar_members_escaping_the_target_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, why: str
) -> None:
    tar_with(tmp_path / "evil.tar", "w", [(tarfile.TarInfo("a/ok.png"), b"x"), (member, b"x")])
    with pytest.raises(ArchiveError, match=rf"member '{member.name}' refused: {why}"):
        extract(tmp_path / "evil.tar", tmp_path / "out", max_bytes=10**6)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.png").exists()


def test_tar_links_out_and_devices_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("a/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside.png"
    tar_with(tmp_path / "link.tar", "w", [(link, b"")])
    with pytest.raises(ArchiveError, match=r"'a/link\.png' refused: LinkOutsideDestinationError"):
        extract(tmp_path / "link.tar", tmp_path / "out", max_bytes=10**6)
    device = tarfile.TarInfo("a/dev")
    device.type = tarfile.CHRTYPE
    tar_with(tmp_path / "dev.tar", "w", [(device, b"")])
    with pytest.raises(ArchiveError, match="'a/dev' refused: SpecialFileError"):
        extract(tmp_path / "dev.tar", tmp_path / "out", max_bytes=10**6)


def test_zip_escape_and_symlink_are_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as bundle:
        bundle.writestr("ok/a.png", b"x")
        bundle.writestr("ok/../../evil.png", b"x")
    with pytest.raises(ArchiveError, match=r"'ok/\.\./\.\./evil\.png' refused: path leaves"):
        extract(tmp_path / "evil.zip", tmp_path / "out", max_bytes=10**6)
    link = zipfile.ZipInfo("ok/link.png")
    link.external_attr = 0o120777 << 16  # S_IFLNK
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as bundle:
        bundle.writestr(link, "/etc/passwd")
    with pytest.raises(ArchiveError, match=r"'ok/link\.png' refused: symbolic link"):
        extract(tmp_path / "link.zip", tmp_path / "out", max_bytes=10**6)
    assert not (tmp_path / "out").exists()


def test_archive_bigger_than_the_bound_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("a/zeros.png", b"\0" * 2_000_000)  # compresses to a few KB
    assert (tmp_path / "bomb.zip").stat().st_size < 10_000
    with pytest.raises(ArchiveError, match="expands to more than 1,000,000 bytes"):
        extract(tmp_path / "bomb.zip", tmp_path / "out", max_bytes=1_000_000)


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_text("hello")
    with pytest.raises(ArchiveError, match="not a zip or tar archive"):
        extract(tmp_path / "x.zip", tmp_path / "out", max_bytes=10)


def test_tar_bigger_than_the_bound_is_refused_before_extraction(tmp_path: Path) -> None:
    tar_with(tmp_path / "big.tar.gz", "w:gz", [(tarfile.TarInfo("a/zeros.png"), b"\0" * 2_000_000)])
    assert (tmp_path / "big.tar.gz").stat().st_size < 10_000
    with pytest.raises(ArchiveError, match=r"expands to more than 1,000,000 bytes .* 2,000,000"):
        extract(tmp_path / "big.tar.gz", tmp_path / "out", max_bytes=1_000_000)
    assert not (tmp_path / "out").exists()


def test_zip_absolute_paths_are_refused(tmp_path: Path) -> None:
    for name in ("/etc/evil.png", "C:/evil.png"):
        member = zipfile.ZipInfo("placeholder")
        member.filename = name  # ZipInfo() would clean the name; a hostile archive does not
        with zipfile.ZipFile(tmp_path / "abs.zip", "w") as bundle:
            bundle.writestr("ok/a.png", b"x")
            bundle.writestr(member, b"x")
        with pytest.raises(ArchiveError, match=rf"member '{name}' refused: absolute path"):
            extract(tmp_path / "abs.zip", tmp_path / "out", max_bytes=10**6)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("target", "why"),
    [("../../outside.png", "LinkOutsideDestinationError"), ("/etc/passwd", "AbsoluteLinkError")],
)
def test_tar_hard_links_out_are_refused(tmp_path: Path, target: str, why: str) -> None:
    link = tarfile.TarInfo("a/hard.png")
    link.type, link.linkname = tarfile.LNKTYPE, target
    tar_with(tmp_path / "hard.tar", "w", [(tarfile.TarInfo("a/ok.png"), b"x"), (link, b"")])
    with pytest.raises(ArchiveError, match=rf"'a/hard\.png' refused: {why}"):
        extract(tmp_path / "hard.tar", tmp_path / "out", max_bytes=10**6)
    assert not (tmp_path / "out").exists()
