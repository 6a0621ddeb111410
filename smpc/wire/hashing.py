"""SHA-256 of an envelope body on a second thread, so the hash overlaps the GIL-holding AEAD."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from typing import Any

__all__ = ["Hasher"]


# Hash the body on a second thread (hashlib releases the GIL) while the main
# thread runs the AEAD, above this size; below it a thread costs more than it saves.
_PARALLEL_HASH_MIN = 1 << 20
_YIELD_EVERY = 1 << 20


class Hasher:
    """SHA-256 of a buffer that fills front to back, on a second thread if worth it.

    hashlib releases the GIL while it hashes; the AEAD calls do not. So the body
    is hashed on a second core while the main thread encrypts or decrypts, which
    hides most of the hash (the slowest step of both seal and open). The worker
    hashes everything that became ready since its last pass in ONE call, and the
    main thread releases the GIL for a moment every ``_YIELD_EVERY`` bytes, so the
    worker is not left waiting for the 5 ms switch interval between passes.
    :func:`open_envelope` announces each decrypted chunk; :class:`EnvelopeWriter`
    announces a whole run of the caller's chunks at once (continuing its running
    hash ``h``) and joins before ``write`` returns.
    """

    def __init__(self, buffer: memoryview, h: Any = None) -> None:
        self._buf = buffer
        self._h = hashlib.sha256() if h is None else h  # or continue a running hash
        self._hashed = 0  # bytes hashed so far
        self._announced = 0  # bytes announced ready so far
        self._yielded = 0
        self._error: BaseException | None = None
        self._q: queue.SimpleQueue[bool | None] | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()  # the worker has taken work
        if len(buffer) >= _PARALLEL_HASH_MIN:
            self._q = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="envelope-sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Queue items only wake the worker (None: stop); how far to hash is read from
        # ``_announced``, which the main thread sets before it puts an item.
        assert self._q is not None
        try:
            stop = False
            while not stop:
                stop = self._q.get() is None
                while not stop and not self._q.empty():  # coalesce all that is ready
                    stop = self._q.get() is None
                end = self._announced
                self._started.set()
                if end > self._hashed:
                    self._h.update(self._buf[self._hashed : end])
                    self._hashed = end
        except BaseException as e:  # surfaced by hexdigest(), never a wrong digest
            self._error = e
            self._started.set()

    def ready(self, end: int, *, handover: bool = False) -> None:
        """Bytes ``[0, end)`` of the buffer hold their final content.

        ``handover=True`` waits until the worker has started hashing: the main
        thread is about to run long calls that hold the GIL (zero-filling, AEAD)
        and the worker could otherwise only start after them.
        """
        self._announced = end
        if self._q is None:
            self._h.update(self._buf[self._hashed : end])
            self._hashed = end
            return
        self._q.put(True)
        if handover:
            self._started.wait()
        elif end - self._yielded >= _YIELD_EVERY:
            self._yielded = end
            time.sleep(0)  # releases the GIL: lets a worker between passes take the next

    def close(self) -> None:
        """Stop the worker (idempotent); call on every path, also on errors."""
        if self._thread is not None:
            assert self._q is not None
            self._q.put(None)
            self._thread.join()
            self._thread = None

    def join(self) -> None:
        """Stop the worker and make sure all that was announced is hashed."""
        self.close()
        if self._error is not None or self._hashed != self._announced:
            raise RuntimeError("envelope body hashing failed") from self._error

    def hexdigest(self) -> str:
        self.join()
        return self._h.hexdigest()
