"""Downloading a model package: resumable (HTTP Range), checked by size and SHA-256.

The bytes go to ``<file>.part`` beside the target; an interrupted download keeps its part and the
next attempt asks for the rest (``Range: bytes=N-``). Only a complete file whose hash matches is
renamed to the target. Proxies come from the caller (the QGIS shell passes QGIS's proxy settings),
else from the environment as ``urllib`` reads it.
"""

from __future__ import annotations

import errno
import http.client
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import RsVlmError
from ..progress import NullProgress, ProgressBackend, check_canceled
from .archive import CHUNK, sha256_of

TIMEOUT_S = 30.0
USER_AGENT = "rs-vlm-model-manager/1"


def make_opener(proxy: str = "") -> urllib.request.OpenerDirector:
    """A urllib opener through ``proxy`` (``http://user:pass@host:port``) or, when empty, the
    environment's proxies (``http_proxy``, ``https_proxy``, ``no_proxy``)."""
    handler = urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else None)
    return urllib.request.build_opener(handler)


def download(url: str, target: Path, size: int, sha256: str, progress: ProgressBackend | None = None,
             opener: urllib.request.OpenerDirector | None = None, timeout_s: float = TIMEOUT_S) -> Path:
    """Fetch ``url`` into ``target``, resuming a ``.part`` left by an earlier attempt.

    Args:
        url: The package's URL (http, https or file).
        target: The file to write; its folder must exist.
        size: The expected size in bytes.
        sha256: The expected SHA-256 (hex).
        progress: Gets the fraction done; cancelling stops between chunks (the part is kept).
        opener: A urllib opener (proxy); default :func:`make_opener` with the environment's proxies.
        timeout_s: Seconds without data before giving up.

    Returns:
        ``target``, complete and verified.

    Raises:
        RsVlmError: No network, an HTTP error, a truncated or wrong download (the part is
            removed when it can never become right), a full disk; each a sentence.
        CancelledError: The user cancelled (the part is kept for a resume).
    """
    progress = progress or NullProgress()
    opener = opener or make_opener()
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    if have < size:
        _fetch(url, part, have, size, progress, opener, timeout_s)
    got = part.stat().st_size
    if got != size:
        part.unlink(missing_ok=True)
        raise RsVlmError(f"The download of {url} ended after {got:,} of {size:,} bytes; try again.")
    progress.set_stage("Checking the download")
    digest = sha256_of(part)
    if digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise RsVlmError(f"The file downloaded from {url} is not the expected one (its SHA-256 is {digest[:12]}…, "
                         f"the registry says {sha256[:12]}…); nothing was installed. Try again, or check the "
                         "mirror in the settings.")
    os.replace(part, target)
    return target


def _fetch(url: str, part: Path, have: int, size: int, progress: ProgressBackend,
           opener: urllib.request.OpenerDirector, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    progress.set_stage("Downloading the model")
    try:
        response = opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part is not a prefix the server knows: start again
            part.unlink(missing_ok=True)
            return _fetch(url, part, 0, size, progress, opener, timeout_s)
        raise RsVlmError(f"The server refused the model download ({exc.code} {exc.reason}) at {url}; check "
                         "the address or the mirror in the settings, or install the model from a file.") from exc
    except (urllib.error.URLError, socket.timeout, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RsVlmError(f"The model could not be downloaded from {url} ({reason}); check the network or "
                         "the proxy in QGIS's settings, or install the model from a file.") from exc
    with response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"
        done = have if resumed else 0
        try:
            with open(part, mode) as out:
                while True:
                    check_canceled(progress)
                    try:
                        block = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as exc:  # a dropped connection
                        raise _interrupted(url, done, size) from exc
                    if not block:
                        break
                    if done + len(block) > size:
                        raise _too_long(url, part, size)
                    out.write(block)
                    done += len(block)
                    progress.set_fraction(done / max(1, size))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                part.unlink(missing_ok=True)
                raise RsVlmError(f"The disk is full: the model needs {size / 1e6:.0f} MB in {part.parent}; "
                                 "free some space and try again.") from exc
            raise
    if done < size:  # the connection ended early without an error
        raise _interrupted(url, done, size)


def _interrupted(url: str, done: int, size: int) -> RsVlmError:
    return RsVlmError(f"The download from {url} was interrupted after {done:,} of {size:,} bytes; start it again "
                      "to resume.")


def _too_long(url: str, part: Path, size: int) -> RsVlmError:
    part.unlink(missing_ok=True)
    return RsVlmError(f"The server sent more than the {size:,} bytes the registry gives for {url}; the file is "
                      "not the expected one and was discarded. Check the mirror in the settings.")

