"""Downloads that survive bad networks: resumable, checksummed, atomic.

Used by `minigpt.data` for corpora that are not on the machine (Tiny Shakespeare, see
notebooks/02_language_modeling.ipynb). The contract of `download`:

* bytes stream to ``<dest>.part``; an interrupted transfer leaves that file behind and the next call
  resumes it with an HTTP ``Range`` request (or starts again from zero when the server ignores it);
* the finished file is checked against its sha256 *before* it gets its final name, so a file at
  ``dest`` has always been verified; a mismatch deletes the partial file;
* every failure is a `DownloadError` whose message names the URL, says the machine may be offline
  and tells where to put the file by hand.

Files live under `cache_dir()`: ``$MINIGPT_CACHE``, else ``$XDG_CACHE_HOME/minigpt``, else
``~/.cache/minigpt``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets in notebooks

from minigpt.checkpoint import fsync_dir

__all__ = ["ChecksumError", "DownloadError", "cache_dir", "download", "sha256_file"]

CHUNK_SIZE = 1 << 16


class DownloadError(RuntimeError):
    """A file could not be downloaded (network failure, server error, bad checksum)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256."""


def cache_dir() -> Path:
    """The folder where downloaded data lives.

    ``$MINIGPT_CACHE`` if set, else ``$XDG_CACHE_HOME/minigpt``, else ``~/.cache/minigpt``.
    The folder is not created here; `download` creates what it needs.
    """
    if os.environ.get("MINIGPT_CACHE"):
        return Path(os.environ["MINIGPT_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "minigpt"
    return Path.home() / ".cache" / "minigpt"


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand(url: str, dest: Path, sha256: str | None) -> str:
    check = f" (its sha256 must be {sha256})" if sha256 else ""
    return f"To go on without the network, fetch {url} elsewhere and place it at {dest}{check}."


def _fsync_and_replace(part: Path, dest: Path) -> None:
    with open(part, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, dest)
    fsync_dir(dest.parent)


def _resume_offset(response, offset: int) -> int:
    """Where the body of `response` starts: `offset` if the server honoured our Range, else 0."""
    if offset and response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return offset
        raise DownloadError(
            f"{response.url}: the server answered a resume request with an unexpected "
            f"Content-Range {response.headers.get('Content-Range')!r}"
        )
    return 0


def _fetch(url, part: Path, *, offset, chunk_size, timeout, progress, headers) -> None:
    """Stream `url` into `part`, starting at byte `offset` if the server agrees."""
    request_headers = {"User-Agent": "minigpt", **headers}
    if offset:
        request_headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=request_headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The partial file is no prefix of what the server has (often: it is already whole,
            # or the remote file changed). Start over.
            err.close()
            part.unlink()
            _fetch(
                url,
                part,
                offset=0,
                chunk_size=chunk_size,
                timeout=timeout,
                progress=progress,
                headers=headers,
            )
            return
        raise
    with response:
        offset = _resume_offset(response, offset)
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        received = offset
        with (
            open(part, "ab" if offset else "wb") as f,
            tqdm(
                total=expected,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=Path(part.name).stem,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read1(chunk_size):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if expected is not None and received != expected:
        # http.client returns b"" rather than raising when the connection closes early.
        raise http.client.IncompleteRead(b"", expected - received)


def download(
    url: str,
    dest,
    sha256: str | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    timeout: float = 30.0,
    progress: bool = True,
    headers: dict | None = None,
) -> Path:
    """Download `url` to `dest` and return `dest` as a Path.

    If `dest` already exists it is returned as is (after checking `sha256`, when given).
    Otherwise the bytes go to ``dest + ".part"``, resuming a partial file left by an earlier
    attempt, are verified against `sha256`, and only then renamed to `dest`.

    Raises `ChecksumError` on a checksum mismatch (the partial file is deleted) and
    `DownloadError` on network or server failures (the partial file is kept for resuming).
    """
    dest = Path(dest)
    sha256 = sha256.lower() if sha256 else None
    if dest.exists():
        if sha256 is not None and (actual := sha256_file(dest)) != sha256:
            raise ChecksumError(
                f"{dest} exists but its sha256 is {actual}, expected {sha256} (the file from "
                f"{url}); delete it to download it again"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    # A resumed file that fails the checksum gets one more try from zero: the partial bytes may
    # have come from an older version of the remote file.
    for attempt in range(2):
        offset = part.stat().st_size if part.exists() else 0
        try:
            _fetch(
                url,
                part,
                offset=offset,
                chunk_size=chunk_size,
                timeout=timeout,
                progress=progress,
                headers=headers or {},
            )
        except urllib.error.HTTPError as err:
            raise DownloadError(
                f"could not download {url}: the server answered HTTP {err.code} {err.reason}. "
                + _by_hand(url, dest, sha256)
            ) from err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", None) or err
            if isinstance(err, http.client.IncompleteRead):
                reason = f"the connection closed with {err.expected} bytes still to come"
            kept = part.stat().st_size if part.exists() else 0
            resume = f"Calling again resumes from the {kept} bytes in {part}. " if kept else ""
            raise DownloadError(
                f"could not download {url}: {reason}. This machine may be offline, or the server "
                f"unreachable. {resume}" + _by_hand(url, dest, sha256)
            ) from err
        if sha256 is None:
            break
        actual = sha256_file(part)
        if actual == sha256:
            break
        part.unlink()
        if attempt == 0 and offset:
            continue
        raise ChecksumError(
            f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. The partial "
            f"file was deleted; the remote file may have changed or the transfer was corrupted."
        )
    _fsync_and_replace(part, dest)
    return dest
