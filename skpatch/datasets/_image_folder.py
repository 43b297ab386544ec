"""Image folders and tar archives of class folders, with an .npz cache."""

import bz2
import collections
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np

from ._common import _IMAGE_SUFFIXES, _result


def _is_image_name(name):
    return name.lower().endswith(_IMAGE_SUFFIXES) and not Path(name).name.startswith(".")


def _select(parts, subset):
    """Class folder of an image path, or None when it is not selected."""
    if len(parts) < 2:
        return None  # an image at the root has no class folder
    if subset is not None and (len(parts) < 3 or parts[-3] != subset):
        return None
    return parts[-2]


def _folder_error(err):
    raise OSError(
        f"cannot list the folder {err.filename!r} ({err.strerror or err}): its images "
        "would be missing from the data set; fix its permissions or remove it."
    ) from err


def _check_no_empty_class(path, folders, image_folders, subset):
    """Raise for a class folder with no image in it.

    A leaf folder without images beside folders that do hold classes would
    otherwise vanish from ``target_names`` and shift every class index.
    """
    has_subfolder = {folder[:-1] for folder in folders}
    class_parents = {folder[:-1] for folder in image_folders}
    empty = sorted(
        folder
        for folder in folders - image_folders
        if folder not in has_subfolder
        and folder[:-1] in class_parents
        and not folder[-1].startswith(".")
        and _select(folder + ("image",), subset) is not None
    )
    if empty:
        names = [str(Path(path, *folder)) for folder in empty[:5]]
        raise ValueError(
            f"class folder(s) {names} in {str(path)!r} hold no image files; expected "
            "images (jpg, png, ...) in every class folder. Add them or remove the "
            "folder, so that the class numbering is the one you expect."
        )


def _walk_images(path, subset):
    """``(files, folders, image_folders)`` of a directory tree, each real file once.

    ``files`` are the selected ``(class_name, path)``. A folder reached through a
    symlink is listed only after every folder reached through fewer symlinks, so
    a file keeps its most direct path. A symlink back to a folder on its own
    path (a loop), a folder whose files would be selected the same way again,
    and a second path to the same real file are skipped, with one
    ``UserWarning`` naming them.
    """
    root = str(path)
    folders = set()  # relative parts of every folder, to find empty classes
    image_folders = set()
    # which files of a folder are selected, and how, depends on its last two names only
    listed = {}  # (st_dev, st_ino, last two relative names) -> path
    found = {}  # real path of a file -> (rank, class_name, path)
    skipped = []
    links = [(root, (), (), os.path.realpath(root))]
    round_index = 0  # round k lists the folders reached through k symlinks
    while links:
        stack, links = sorted(links, reverse=True), []
        while stack:
            top, relative, ancestors, real_top = stack.pop()
            try:
                status = os.stat(top)
            except OSError as err:
                _folder_error(err)
            identity = (status.st_dev, status.st_ino)
            loop = [folder for folder_id, folder in ancestors if folder_id == identity]
            if loop:
                skipped.append(f"{top!r} (a loop back to {loop[0]!r})")
                continue
            key = identity + relative[-2:]
            if key in listed:
                skipped.append(f"{top!r} (the folder {listed[key]!r} again)")
                continue
            listed[key] = top
            if relative:
                folders.add(relative)
            try:  # a folder that cannot be listed is an error, not skipped as Path.rglob does
                with os.scandir(top) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
            except OSError as err:
                _folder_error(err)
            chain = ancestors + ((identity, top),)
            children = []
            for entry in entries:
                is_link = entry.is_symlink()
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False  # as os.walk: an entry that cannot be checked is a file
                if is_dir:
                    child = (entry.path, relative + (entry.name,), chain)
                    if is_link:
                        links.append(child + (os.path.realpath(entry.path),))
                    else:
                        children.append(child + (os.path.join(real_top, entry.name),))
                    continue
                if not _is_image_name(entry.name):
                    continue
                if (cls := _select(relative + (entry.name,), subset)) is None:
                    continue
                image_folders.add(relative)
                if is_link:
                    real = os.path.realpath(entry.path)
                else:
                    real = os.path.join(real_top, entry.name)  # no system call per file
                candidate = ((round_index, is_link, cls, entry.path), cls, entry.path)
                if real in found:
                    kept, dropped = sorted([found[real], candidate])
                    found[real] = kept
                    skipped.append(f"{dropped[2]!r} (the same file as {kept[2]!r})")
                else:
                    found[real] = candidate
            stack.extend(reversed(children))
        round_index += 1
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"skipped {len(skipped)} path(s) under {root!r} that lead through symlinks to "
            f"folders or files already read: {', '.join(skipped[:5])}{more}; each image "
            "is read once. Remove those symlinks to silence this warning.",
            UserWarning,
            stacklevel=4,
        )
    return [(cls, name) for _, cls, name in found.values()], folders, image_folders


# the magic numbers that tarfile's "r|*" recognises, with the reader of each
_COMPRESSIONS = (
    (lambda head: head.startswith(b"\x1f\x8b\x08"), gzip.open),
    (lambda head: head[:3] == b"BZh" and head[4:10] == b"1AY&SY", bz2.open),
    (lambda head: head.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")), lzma.open),
)


def _tar_opener(path):
    """``open`` for a plain tar, the decompressing opener of a compressed one, or None.

    Decided from the first bytes alone, so that a truncated archive is reported
    as truncated rather than as no archive at all.
    """
    with open(path, "rb") as file:
        head = file.read(tarfile.BLOCKSIZE)
    for matches, opener in _COMPRESSIONS:
        if matches(head):
            return opener
    if head == bytes(tarfile.BLOCKSIZE):
        return open  # an empty tar: its end-of-archive block alone
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return None
    return open


class _TailReader:
    """A read-only stream that keeps its last bytes, to look back where tar stopped.

    After the first member, tarfile ends a listing silently at a cut or damaged
    header; the block where it stopped tells those from the end-of-archive block.
    """

    def __init__(self, fileobj, keep=4 * tarfile.RECORDSIZE):
        self._fileobj = fileobj
        self._keep = keep  # tarfile reads at most one record past what it parses
        self._chunks = collections.deque()  # (position, bytes)
        self._kept = 0
        self.position = 0  # bytes read so far

    def read(self, size=-1):
        data = self._fileobj.read(size)
        if data:
            self._chunks.append((self.position, data))
            self._kept += len(data)
            self.position += len(data)
            while self._kept - len(self._chunks[0][1]) >= self._keep:
                self._kept -= len(self._chunks.popleft()[1])
        return data

    def block_at(self, offset):
        """The (up to 512) bytes at ``offset``, or None if they are no longer kept."""
        first = self._chunks[0][0] if self._chunks else self.position
        if offset < first:
            return None
        start = offset - first
        return b"".join(data for _, data in self._chunks)[start : start + tarfile.BLOCKSIZE]


def _corrupt_archive(path, reason):
    return ValueError(
        f"{str(path)!r} is a truncated or corrupt tar archive ({reason}); expected a "
        "complete (possibly compressed) tar of <class>/<image> files."
    )


def _read_tar(path, subset, opener, by_offset):
    """``(entries, folders, image_folders)`` of a tar archive, in one sequential pass."""
    entries = []
    folders = set()  # relative parts of every folder, to find empty classes
    image_folders = set()
    try:
        with contextlib.ExitStack() as stack:
            reader = _TailReader(stack.enter_context(opener(path, "rb")))
            # stream mode: seeking in a .tar.gz re-decompresses it
            archive = stack.enter_context(tarfile.open(fileobj=reader, mode="r|"))
            for info in archive:
                parts = Path(info.name).parts
                folders.update(parts[:k] for k in range(1, len(parts)))
                if info.isdir():
                    folders.add(parts)
                elif info.isfile() and _is_image_name(info.name):
                    cls = _select(parts, subset)
                    if cls is not None:
                        if by_offset:
                            data = (info.offset_data, info.size)
                        else:
                            data = archive.extractfile(info).read()
                        entries.append((cls, info.name, data))
                        image_folders.add(parts[:-1])
            end = archive.offset
            end_block = reader.block_at(end)
            while reader.read(tarfile.RECORDSIZE):
                pass  # to the end: a cut compressed stream raises EOFError only here
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as err:
        raise _corrupt_archive(path, f"{type(err).__name__}: {err}") from err
    if end_block is not None and end_block != bytes(tarfile.BLOCKSIZE):
        raise _corrupt_archive(
            path,
            f"its tar data of {reader.position} bytes has no member header nor "
            f"end-of-archive block at byte {end}, so members may be missing",
        )
    return entries, folders, image_folders


def _read_folder(path, subset, lazy=False):
    """Sorted ``(class_name, name, payload)`` of a directory or tar archive.

    The class of an image is the name of its parent folder; with ``subset``
    only images whose grandparent folder is named ``subset`` are kept. The
    payload is the file's bytes; with ``lazy=True`` it is ``None`` for a
    directory (read from ``name`` later) and ``(offset, size)`` in an
    uncompressed tar (a compressed archive has no random access: its bytes
    are read in the one pass).
    """
    path = Path(path)
    if path.is_dir():
        files, folders, image_folders = _walk_images(path, subset)
        entries = [(cls, name, None if lazy else Path(name).read_bytes()) for cls, name in files]
    elif path.is_file() and (opener := _tar_opener(path)) is not None:
        by_offset = lazy and opener is open
        entries, folders, image_folders = _read_tar(path, subset, opener, by_offset)
    else:
        raise ValueError(
            "path must be a directory or a tar archive of <class>/<image> files, "
            f"got {str(path)!r} (not found or not a tar archive)."
        )
    if not entries:
        where = f" under a '{subset}' folder" if subset is not None else ""
        raise ValueError(
            f"no images found{where} in {str(path)!r}: expected "
            "[<subset>/]<class>/<image> files (jpg, png, ...)."
        )
    _check_no_empty_class(path, folders, image_folders, subset)
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return entries


class _ImageError(ValueError):
    """An image that decodes but whose values have no faithful uint8 mapping."""


def _pil_image():
    """``PIL.Image``, or an ImportError saying to install Pillow.

    Pillow is a dependency of skpatch; an install made without dependencies
    (``pip install --no-deps``) may still lack it.
    """
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(
            "Loading an image folder or archive decodes its images with Pillow, "
            "which is not installed: pip install pillow (a dependency of skpatch "
            "that this environment lacks)."
        ) from exc
    return Image


def _to_8bit(image, name):
    """The Pillow image in a mode whose values are 0..255."""
    Image = _pil_image()

    mode = image.mode
    # PNG stores at most 16 bits, so mode 'I' from a PNG (older Pillow) is 16-bit too
    if mode.startswith("I;16") or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image).astype(np.uint32)
        # round(v * 255 / 65535) == round(v / 257); no ties since 257 is odd
        return Image.fromarray(((values + 128) // 257).astype(np.uint8))
    if mode in ("I", "F"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise _ImageError(
                f"the image {name} has {mode}-mode values {values.min()}..{values.max()}; "
                "expected 8-bit (0..255) or 16-bit PNG grey levels."
            )
        return Image.fromarray(np.rint(values).astype(np.uint8))
    return image.convert("L" if mode in ("1", "L") else "RGB")


def _decode(data, size, name):
    Image = _pil_image()  # Pillow is only needed by the folder loaders

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = _to_8bit(image, name)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (_ImageError, MemoryError):
        raise
    except Exception as err:  # Pillow raises many types on corrupt data
        raise ValueError(
            f"cannot decode the image {name} ({type(err).__name__}: {err}); expected "
            "a complete image file (jpg, png, ...)."
        ) from err


def _stack_images(arrays, size):
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        if size is None:
            raise ValueError(
                f"images have different sizes ({sorted(shapes)[:4]}...); pass "
                "size=(H, W) to resize them all."
            )
        # mixed grayscale and colour: promote the grayscale ones to RGB
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    return np.stack(arrays)


def _cache_path(path, subset, size, cache_dir):
    stat = Path(path).stat()
    key = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{subset}|{size}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"image_folder_{digest}.npz"


def _default_cache_dir():
    return Path(
        os.environ.get("SKPATCH_CACHE", Path.home() / ".cache" / "skpatch")
    )


def _cache_dir(cache_dir):
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ValueError(
            f"cache_dir {str(cache_dir)!r} exists and is not a directory; expected a "
            "folder for the .npz cache (created if missing), or pass cache=False."
        )
    return cache_dir


def _load_cache(cache_file, path):
    """``(images, target, target_names, filenames)`` of a cache, or None if broken."""
    try:
        with np.load(cache_file, allow_pickle=False) as stored:
            images, target = stored["images"], stored["target"]
            target_names, filenames = stored["target_names"], stored["filenames"]
        if not (
            images.dtype == np.uint8
            and images.ndim in (3, 4)
            and target.dtype.kind in "iu"
            and target.shape == filenames.shape == (len(images),)
            and (target.size == 0 or 0 <= target.min() <= target.max() < len(target_names))
        ):
            raise ValueError("its arrays do not fit together")
    except MemoryError:
        raise
    except Exception as err:  # a broken zip raises many types
        warnings.warn(
            f"the cache file {cache_file} is unreadable ({type(err).__name__}: {err}); "
            f"decoding {path} again and rewriting the cache.",
            UserWarning,
            stacklevel=3,
        )
        return None
    return images, target, target_names, filenames


def _write_cache(cache_file, **arrays):
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot create the cache_dir {str(cache_file.parent)!r} ({err}); expected "
            "a writable folder, or pass cache=False."
        ) from err
    tmp = cache_file.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, cache_file)  # atomic: a reader never sees half a cache


def _read_payload(archive, name, payload):
    """The bytes of one image: a file, a slice of an uncompressed tar, or bytes."""
    if payload is None:
        return Path(name).read_bytes()
    if isinstance(payload, bytes):
        return payload
    offset, size = payload
    with open(archive, "rb") as file:
        file.seek(offset)
        data = file.read(size)
    if len(data) != size:
        raise ValueError(
            f"the archive {str(archive)!r} is shorter than when it was listed: "
            f"{name!r} ends at byte {offset + size}; expected an unchanged archive."
        )
    return data


def _decode_chunk(archive, root, names, payloads, size, shape, where):
    """Decode one chunk of files into ``(len(names),) + shape`` uint8 images.

    Folder files are named relative to ``root`` (a smaller task graph).
    """
    images = np.empty((len(names),) + shape, dtype=np.uint8)
    for i, (name, payload) in enumerate(zip(names, payloads)):
        name = name if root is None else os.path.join(root, name)
        image = _decode(_read_payload(archive, name, payload), size, f"{name!r}{where}")
        if image.ndim == 2 and len(shape) == 3 and size is not None:
            image = np.repeat(image[..., None], 3, axis=2)  # grey among colour, as in memory
        if image.shape != shape:
            raise ValueError(
                f"the image {name!r}{where} has shape {image.shape} but the first "
                f"image has {shape}; pass size=(H, W) to resize them all (a colour "
                "image after a grey first image needs the images loaded in memory)."
            )
        images[i] = image
    return images


def _labels(entries):
    """``(target_names, target, filenames)``: classes numbered in sorted name order."""
    target_names = sorted({cls for cls, _, _ in entries})
    class_index = {name: i for i, name in enumerate(target_names)}
    target = np.array([class_index[cls] for cls, _, _ in entries], dtype=np.int64)
    return target_names, target, np.array([name for _, name, _ in entries])


def _lazy_images(path, entries, size, chunk_size):
    """A dask array of the entries' images, one task per ``chunk_size`` files."""
    from ..utils._dask import import_dask_array

    da = import_dask_array()
    import dask

    archive = None if Path(path).is_dir() else str(path)
    root = str(path) if archive is None else None
    where = "" if archive is None else f" in the archive {str(path)!r}"
    _, first_name, first_payload = entries[0]
    shape = _decode(_read_payload(archive, first_name, first_payload), size, f"{first_name!r}{where}").shape
    decode = dask.delayed(_decode_chunk, pure=True)
    blocks = []
    for start in range(0, len(entries), chunk_size):
        chunk = entries[start : start + chunk_size]
        names = [name for _, name, _ in chunk]
        if root is not None:
            names = [os.path.relpath(name, root) for name in names]
        payloads = None if root is not None else [payload for _, _, payload in chunk]
        task = decode(archive, root, names, payloads or [None] * len(names), size, shape, where,
                      dask_key_name=f"decode-images-{dask.base.tokenize(path, size, names)}")
        blocks.append(da.from_delayed(task, shape=(len(chunk),) + shape, dtype=np.uint8))
    return da.concatenate(blocks, axis=0)


def load_image_folder(
    path,
    *,
    size=None,
    subset=None,
    cache=False,
    cache_dir=None,
    return_X_y=False,
    as_dask=False,
    chunk_size=1024,
):
    """Load a folder tree or tar archive of ``<class>/<image>`` files.

    Parameters
    ----------
    path : str or path-like
        A directory or a (possibly compressed) tar archive. Each image's class
        is the name of its parent folder; classes are numbered in sorted
        order of their names.
    size : int or tuple (H, W), default=None
        Resize every image to this size with Pillow (bilinear). Without it,
        images of different sizes are an error.
    subset : str, default=None
        Keep only images under a folder of this name (``'train'`` in
        ``train/<class>/<image>``).
    cache : bool, default=False
        Keep a ``.npz`` of the decoded images in ``cache_dir``, keyed by the
        path, size and modification time of ``path`` (a changed archive is
        decoded again). Only for archives. A broken cache file is decoded
        again from ``path`` and rewritten, with a ``UserWarning``.
    cache_dir : str or path-like, default=None
        Where the cache lives (a folder, created if missing); default
        ``$SKPATCH_CACHE`` or ``~/.cache/skpatch``.
    return_X_y : bool, default=False
        Return ``(images, target)`` instead of a Bunch.
    as_dask : bool, default=False
        Return the images as a lazy :class:`dask.array.Array` with one chunk
        per ``chunk_size`` files, each decoded by the task that needs it (on a
        Dask worker under a distributed client); only the file list, the
        labels and the first image are read now. Folders and uncompressed tar
        archives are read file by file by the tasks (the workers must see
        ``path``); a compressed archive has no random access, so its encoded
        bytes are read now, in one pass, and travel with the tasks. Needs
        ``pip install "skpatch[dask]"``; not with ``cache``.
    chunk_size : int, default=1024
        Files per chunk with ``as_dask=True``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``images`` uint8 ``(n, H, W)`` for grayscale files or ``(n, H, W, 3)``,
        ``target`` int64 ``(n,)``, ``target_names``, ``filenames``, ``DESCR``.

    Notes
    -----
    16-bit grey images (PNG mode ``I;16``) are scaled to uint8 by
    ``round(v * 255 / 65535)``; 32-bit images (modes ``I``, ``F``) must hold
    values in 0..255. A class folder without images, a folder that cannot be
    listed, an image that cannot be decoded and a truncated archive are
    errors that name the file or folder.

    Symlinks in a folder are followed, and each image is read once: a symlink
    that loops back to a folder above it, and a second path to a file already
    read, are skipped with a ``UserWarning`` naming them (a file keeps the path
    with the fewest symlinks).
    """
    _pil_image()  # before any file is read
    if size is not None:
        from ..utils._validation import check_size_pair

        size = check_size_pair(size, "size")
    if not isinstance(as_dask, (bool, np.bool_)):
        raise ValueError(f"as_dask must be True or False, got {as_dask!r}.")
    if as_dask:
        return _load_lazy(path, size, subset, cache, return_X_y, chunk_size)
    cache_file = None
    if cache and Path(path).is_file():
        cache_file = _cache_path(path, subset, size, _cache_dir(cache_dir))
        cached = _load_cache(cache_file, path) if cache_file.exists() else None
        if cached is not None:
            images, target, target_names, filenames = cached
            return _result(
                images,
                target,
                list(target_names),
                f"Images from {path} (cached decode).",
                return_X_y,
                filenames=filenames,
            )
    entries = _read_folder(path, subset)
    target_names, target, filenames = _labels(entries)
    where = "" if Path(path).is_dir() else f" in the archive {str(path)!r}"
    images = _stack_images(
        [_decode(data, size, f"{name!r}{where}") for _, name, data in entries], size
    )
    if cache_file is not None:
        _write_cache(
            cache_file,
            images=images,
            target=target,
            target_names=np.array(target_names),
            filenames=filenames,
        )
    descr = (
        f"Images from {path}" + (f" (subset {subset!r})" if subset else "") + f": "
        f"{len(images)} images of shape {images.shape[1:]}, {len(target_names)} classes."
    )
    return _result(images, target, target_names, descr, return_X_y, filenames=filenames)


def _load_lazy(path, size, subset, cache, return_X_y, chunk_size):
    from numbers import Integral

    if cache:
        raise ValueError(
            "cache=True needs the decoded images in memory; with as_dask=True they "
            "are decoded per chunk by the tasks. Pass cache=False."
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1 (files per chunk), got {chunk_size!r}.")
    entries = _read_folder(path, subset, lazy=True)
    target_names, target, filenames = _labels(entries)
    images = _lazy_images(path, entries, size, int(chunk_size))
    descr = (
        f"Images from {path}" + (f" (subset {subset!r})" if subset else "") + f": "
        f"{images.shape[0]} images of shape {images.shape[1:]}, {len(target_names)} "
        f"classes, as a dask array decoded per chunk of {int(chunk_size)} files."
    )
    return _result(images, target, target_names, descr, return_X_y, filenames=filenames)
