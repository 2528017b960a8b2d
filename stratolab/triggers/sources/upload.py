"""Files put into a folder of the owner's (`~/inbox/NAME` by default) as events, and the function's
results written back beside them or into an output folder.

Design choices and why:

- **Polling with os.scandir, not inotify.** inotify cannot watch other users' homes everywhere (NFS
  homes, container overlays, per-user watch limits), and watchfiles is not a dependency. One scandir
  of a folder every `settings.upload_poll_s` is cheap and works on every filesystem.
- **A file is sent once its size and mtime are the same at two polls in a row**, so an upload still in
  progress (a JupyterLab chunked upload, a slow `scp`) is not read half-written. Hidden files, partial
  downloads (`*.part`, `*.crdownload`), the trigger's own results (`*.result.*`) and files not matching
  the trigger's pattern are never events; neither is anything but a regular file (links are not
  followed: see homefiles.py for why every path is opened without following them).
- **The event id is the sha256 of (path, size, mtime_ns)**: the same file is the same event after a
  restart (the store drops it as a duplicate), and a file uploaded again under the same name is a new
  one. Which files were sent is also kept in a small state file, so a restart does not even re-read
  them.
- **Recorded as sent only after the sink returned**: a sink that fails leaves the file unsent, and the
  next poll tries again.
- Files above `settings.extra["max_upload_bytes"]` (100 MiB by default) are skipped, with a warning
  and the trigger's error naming the file, rather than read into memory.

The event: type `io.stratolab.upload.created`, subject the path relative to the home
(`inbox/resize/cat.png`), data the file's bytes, datacontenttype guessed from the name, extensions
`filename` and `size`, the ordering key the path, the time the file's mtime.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import logging
import mimetypes
import os
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stratolab.errors import StratolabError
from stratolab.triggers.events import CloudEvent, is_json, new_event
from stratolab.triggers.sources.base import Source, SourceError, SourceSettings
from stratolab.triggers.sources.homefiles import UnsafePath, open_folder, owned_by, read_file, write_file
from stratolab.triggers.sources.state import load_state, save_state, state_path
from stratolab.triggers.spec import TriggerSpec, home_folder

log = logging.getLogger("stratolab.triggers")

EVENT_TYPE = "io.stratolab.upload.created"
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024**2
#: one sink call carries at most this many files, or this many bytes (the rest follow at once)
BATCH_FILES = 64
BATCH_BYTES = 64 * 1024**2
PARTIAL_SUFFIXES = (".part", ".crdownload", ".partial", ".download", ".tmp")
#: the infix of result files written beside their inputs ("cat.result.png")
RESULT_INFIX = ".result"


@dataclass(frozen=True)
class Listed:
    """A file as one poll saw it."""

    name: str
    size: int
    mtime_ns: int

    @property
    def signature(self) -> list[int]:
        return [self.size, self.mtime_ns]


def is_candidate(name: str, pattern: str) -> bool:
    """Whether a file name can become an event (pure): not hidden, not a partial download, not a result
    this trigger wrote beside its input, and matching the trigger's pattern (in any case)."""
    if name.startswith((".", "~$")) or name.endswith(PARTIAL_SUFFIXES):
        return False
    stem = posixpath.splitext(name)[0]
    if stem.endswith(RESULT_INFIX) or name.endswith(RESULT_INFIX):
        return False
    # case-insensitive: *.jpg is meant to take the camera's IMG_0001.JPG too
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def event_id(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(f"{path}\x00{size}\x00{mtime_ns}".encode()).hexdigest()


def result_name(filename: str, content_type: str | None, beside: bool) -> str:
    """The result file's name (pure): `cat.result.png` beside the input (`cat.result.json` for a JSON
    result); in an output folder the input's own name (`cat.json` for a JSON result)."""
    stem, ext = posixpath.splitext(filename)
    json_result = is_json(content_type)
    if beside:
        return f"{stem}{RESULT_INFIX}{'.json' if json_result else ext}"
    return f"{stem}.json" if json_result and ext.lower() != ".json" else filename


class UploadSource(Source):
    kind = "upload"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = str(self.spec.source.get("folder") or f"inbox/{self.spec.function}")
        self.pattern = str(self.spec.source.get("pattern") or "*")
        self.max_bytes = int(self.settings.extra.get("max_upload_bytes", DEFAULT_MAX_UPLOAD_BYTES))
        self.home = self.settings.home_of(self.spec.owner)
        #: the owner's (uid, gid), looked up in start() (it may create the system account: not on the loop)
        self.account: tuple[int, int] | None = None
        self._state_file = state_path(self.settings.extra, f"upload-{self.trigger_id}.json")
        #: name -> [size, mtime_ns] of the files whose events were stored
        self._sent: dict[str, list[int]] = {}
        #: what the previous poll saw
        self._previous: dict[str, Listed] = {}
        #: files already warned about (too large, someone else's), so the log is not flooded
        self._warned: set[Listed] = set()
        #: what the last poll found wrong with a file (shown as the trigger's error)
        self._problem: str | None = None
        #: set to poll at once (a file arrived through the upload route)
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """Create the folder (as the owner) if it is missing and start polling it."""
        self.account = await asyncio.to_thread(self.settings.account_of, self.spec.owner)
        try:
            fd = await asyncio.to_thread(open_folder, self.home, self.folder, self.account, create=True)
        except FileNotFoundError:
            raise SourceError(f"the home folder {self.home} of {self.spec.owner} does not exist yet: "
                              "start a server once to create it", status=409) from None
        except UnsafePath as e:
            raise SourceError(e.message, status=409) from None
        os.close(fd)
        saved = load_state(self._state_file).get("sent", {})
        self._sent = {k: v for k, v in saved.items() if isinstance(v, list) and len(v) == 2}
        self.spawn(self._run())

    async def _run(self) -> None:
        while True:
            more = False
            try:
                more = await self.poll()
            except asyncio.CancelledError:
                raise
            except UnsafePath as e:
                self.error = e.message
            except Exception as e:
                self.error = f"files not sent ({str(e).strip()[:300] or type(e).__name__}); trying again"
                log.warning("upload trigger %s: %s", self.trigger_id, self.error)
            if not more:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.settings.upload_poll_s)
                except TimeoutError:
                    pass
                self._wake.clear()

    def complete(self, name: str, size: int, mtime_ns: int) -> None:
        """The upload route wrote `name` whole (renamed into place): it need not be seen unchanged by a
        second poll, and it is sent at once."""
        self._previous[name] = Listed(name, size, mtime_ns)
        self._wake.set()

    async def poll(self) -> bool:
        """One look at the folder: send the files that are complete. True when more are ready than one
        batch took (then the caller polls again at once)."""
        listed, found, more = await asyncio.to_thread(self._look)
        self._previous = listed
        if found:
            await self.sink([self._event(item, data) for item, data in found])
            self.received += len(found)
            for item, _ in found:
                self._sent[item.name] = item.signature
        gone = [name for name in self._sent if name not in listed]
        for name in gone:
            del self._sent[name]
        if found or gone:
            # at once, not in a thread: a stop arriving now must not leave sent files unrecorded
            # (they would be sent again; the store would recognise them, but the state file should)
            save_state(self._state_file, {"sent": self._sent})
        self.error = self._problem
        return more

    def _look(self) -> tuple[dict[str, Listed], list[tuple[Listed, bytes]], bool]:
        """(what the folder holds now, the ready files with their bytes, whether more are ready).
        Runs in a thread: it lists and reads files."""
        self._problem = None
        # create=True: a user who deleted the folder gets it back while the trigger exists
        fd = open_folder(self.home, self.folder, self.account, create=True)
        try:
            listed = self._list(fd)
            found: list[tuple[Listed, bytes]] = []
            budget = BATCH_BYTES
            for item in sorted(listed.values(), key=lambda i: (i.mtime_ns, i.name)):
                if self._previous.get(item.name) != item or self._sent.get(item.name) == item.signature:
                    continue  # still changing, or already sent
                if item.size > self.max_bytes:
                    self._warn_once(item, f"~/{self.folder}/{item.name} is {item.size} bytes, above the "
                                          f"{self.max_bytes} bytes an upload trigger reads: it is not sent")
                    continue
                if found and (len(found) >= BATCH_FILES or item.size > budget):
                    return listed, found, True
                data = read_file(fd, item.name, item.size, item.mtime_ns)
                if data is not None:
                    found.append((item, data))
                    budget -= item.size
            return listed, found, False
        finally:
            os.close(fd)

    def _list(self, fd: int) -> dict[str, Listed]:
        listed: dict[str, Listed] = {}
        with os.scandir(fd) as entries:
            for entry in entries:
                if not is_candidate(entry.name, self.pattern) or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                item = Listed(entry.name, st.st_size, st.st_mtime_ns)
                if not owned_by(st, self.account):
                    self._warn_once(item, f"~/{self.folder}/{entry.name} belongs to another account or is a hard "
                                          "link: it is not sent")
                    continue
                listed[entry.name] = item
        return listed

    def _warn_once(self, item: Listed, message: str) -> None:
        self._problem = message
        if item not in self._warned:
            if len(self._warned) >= 4096:  # bounded: at worst a warning is logged again
                self._warned.clear()
            self._warned.add(item)
            log.warning("upload trigger %s: %s", self.trigger_id, message)

    def _event(self, item: Listed, data: bytes) -> CloudEvent:
        path = f"{self.folder}/{item.name}"
        return new_event(
            self.source_uri, EVENT_TYPE, data,
            datacontenttype=mimetypes.guess_type(item.name)[0] or "application/octet-stream",
            subject=path, id=event_id(path, item.size, item.mtime_ns), key=path,
            time=datetime.fromtimestamp(item.mtime_ns / 1e9, UTC), filename=item.name, size=str(item.size),
        )


class ResultNotWritten(StratolabError):
    """The result cannot be written where the trigger says (409: the user can fix the folder)."""

    status = 409


def write_result(spec: TriggerSpec, settings: SourceSettings, event_subject: str, content_type: str | None,
                      body: bytes) -> str | None:
    """Write a function's result for the upload `event_subject` (a path relative to the home) where
    the trigger's `source.output` says: "next" beside the file, a folder of the home, or nowhere (None).
    Atomic, as the owner, never through a link, never outside the home. The path written, relative
    to the home; `ResultNotWritten` when a folder on the way is a link or the name is a folder.
    Blocking file I/O: the service calls it in a thread (asyncio.to_thread)."""
    output = spec.source.get("output", "next")
    if not output:
        return None
    subject = home_folder(event_subject, "subject")
    input_folder, filename = posixpath.split(subject)
    beside = output == "next"
    folder = input_folder if beside else home_folder(output, "source.output")
    name = result_name(filename, content_type, beside)
    account = settings.account_of(spec.owner)
    try:
        fd = open_folder(settings.home_of(spec.owner), folder, account, create=True)
    except UnsafePath as e:
        raise ResultNotWritten(f"the result of ~/{subject} is not written: {e.message}") from None
    try:
        write_file(fd, name, body, account)
    except (IsADirectoryError, NotADirectoryError):
        raise ResultNotWritten(f"the result of ~/{subject} is not written: ~/{folder}/{name} is a folder") from None
    finally:
        os.close(fd)
    return f"{folder}/{name}" if folder else name
