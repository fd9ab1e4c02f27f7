"""The outputs of export and import: checked before anything is written, written atomically.

An output folder must be missing (its parent there) or empty unless --force; an output file must not exist unless
--force; and no output may be one of the command's inputs (an input of a run is never its
output), links included. Each file is written atomically (util/files.py), so a crash leaves the
old file or the whole new one. Knows nothing about what the bytes are.
"""

from __future__ import annotations

from pathlib import Path

from ..util.errors import UsageError
from ..util.files import atomic_write_bytes, same_file, writable_folder


def _check_not_input(path: Path, inputs) -> None:
    for src in inputs:
        if same_file(path, src):
            raise UsageError(f"the output {path} is the input {src}; choose another -o")


def check_out_file(path: Path, force: bool, inputs=()) -> None:
    """An output file about to be written: not a folder, not an input, absent unless --force."""
    _check_not_input(path, inputs)
    if path.is_dir():
        raise UsageError(f"the output {path} is a folder; pass a file name such as {path / 'model.model'}")
    if path.exists() and not force:
        raise UsageError(f"the output {path} exists; pass --force to overwrite it, or choose another -o")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"the output folder {parent} does not exist; create it (mkdir -p {parent}) or choose another -o")
    why = writable_folder(parent)
    if why:
        raise UsageError(f"cannot write in {parent} ({why}); choose another -o")


def check_out_folder(folder: Path, names, force: bool, inputs=()) -> None:
    """An output folder about to receive files `names`: missing, empty, or --force given."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"the output {folder} is a file, not a folder; choose a folder name for -o")
    for name in names:
        _check_not_input(folder / name, inputs)
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise UsageError(f"the output folder {folder} is not empty; pass --force to overwrite the files there, "
                         "or choose another -o")
    probe = folder if folder.is_dir() else folder.parent
    if not probe.is_dir():  # the output folder is made, its parent is not (as `tinylm train -o` does it)
        raise UsageError(f"the folder {probe} (where {folder.name} would go) does not exist; create it "
                         f"(mkdir -p {probe}) or choose another -o")
    why = writable_folder(probe)
    if why:
        raise UsageError(f"cannot write in {probe} ({why}); choose another -o")


def write_folder(folder: Path, files: dict[str, bytes], force: bool, inputs=()) -> None:
    check_out_folder(folder, files, force, inputs)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)
