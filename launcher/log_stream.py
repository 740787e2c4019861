"""A run's log, followed from the launcher's own process over Flower's Control API (protobuf
over HTTP), as ``flwr log RUN_ID CONNECTION --stream`` follows it, but without a ``flwr``
process of about 100 MB beside the launcher for the whole run.

Only for a connection the launcher can read in full: an address with ``insecure = true`` in
its own Flower home. An operator's connections (their ``FLWR_HOME``, TLS, account login) are
followed by ``flwr log`` itself, which reads every kind of connection Flower knows.
"""

from __future__ import annotations

import io
import socket
import threading
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from launcher.flower_home import FlowerHome

RETRY_S = 1.0  # before opening a broken stream again


def plain_address(home: FlowerHome, connection: str) -> str | None:
    """The address of ``connection`` when it is a plain one in the launcher's own Flower home
    (an address and ``insecure = true``, nothing more), else None."""
    if home.flwr_home is not None:  # the operator's connections: maybe a login, certificates
        return None
    try:
        config = tomllib.loads((home.path / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    entry = config.get("superlink", {}).get(connection)
    if not isinstance(entry, dict) or set(entry) != {"address", "insecure"} or entry["insecure"] is not True:
        return None
    return entry["address"] if isinstance(entry["address"], str) else None


def runtime_headers() -> dict[str, str]:
    """The headers by which ``flwr`` tells the SuperLink its Flower version (checked there)."""
    from task import flower_compat as fc

    return {
        fc.FLWR_PACKAGE_NAME_METADATA_KEY: fc.flwr_package_name,
        fc.FLWR_PACKAGE_VERSION_METADATA_KEY: fc.flwr_package_version,
        fc.FLWR_COMPONENT_NAME_METADATA_KEY: "flwr CLI",
    }


class LogStream:
    """The log of run ``run_id`` on the SuperLink at ``address``, line by line as it arrives.

    The SuperLink ends the stream once the run has finished. A stream that breaks while
    ``still_running()`` says the run goes on is opened again after the last part received,
    as ``flwr log`` does. :meth:`close`, from any thread, cuts a read that waits for the
    next line, lets the reading thread finish, and closes the HTTP connection."""

    def __init__(self, address: str, run_id: int, still_running: Callable[[], bool], retry_s: float = RETRY_S):
        from task.flower_compat import ControlHttpClient

        self.run_id = run_id
        self._still_running = still_running
        self._retry_s = retry_s
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None
        self._reader: threading.Thread | None = None
        self._client = ControlHttpClient.from_server_address(
            server_address=address, insecure=True, root_certificates=None, interceptors=[self]
        )

    def intercept(self, context: Any, call_next: Callable[[Any], httpx.Response]) -> httpx.Response:
        """Flower's interceptor protocol: every request carries the version headers, and the
        open response is kept for close()."""
        context.request.headers.update(runtime_headers())
        response = call_next(context)
        with self._lock:
            self._response = response
            closed = self._closed.is_set()
        if closed:  # close() came while this request was on its way
            _cut(response)
        return response

    def lines(self) -> Iterator[str]:
        """The log's lines, newlines translated as a text pipe does (the last one may lack one)."""
        from task.flower_compat import StreamLogsRequest

        self._reader = threading.current_thread()
        after = 0.0
        newlines = io.IncrementalNewlineDecoder(None, translate=True)
        pending = ""
        while not self._closed.is_set():
            try:
                for reply in self._client.StreamLogs(StreamLogsRequest(run_id=self.run_id, after_timestamp=after)):
                    after = max(after, reply.latest_timestamp)
                    *complete, pending = (pending + newlines.decode(reply.log_output)).split("\n")
                    yield from (line + "\n" for line in complete)
                break  # the SuperLink ended it: the run has finished
            except httpx.HTTPStatusError as exc:  # refused, as `flwr log` would print it
                body = exc.response.text.strip()
                yield f"The SuperLink refused the log of run {self.run_id} (HTTP {exc.response.status_code}): {body}\n"
                break
            except (httpx.HTTPError, httpx.StreamError, ValueError, OSError):  # broken, or cut by close()
                if self._closed.is_set() or not self._still_running():
                    break
                self._closed.wait(self._retry_s)
        pending += newlines.decode("", final=True)
        if pending:
            yield pending

    def close(self, join_s: float = 10.0) -> None:
        """Stop following: cut the open response, wait for the reading thread, close the client."""
        with self._lock:
            self._closed.set()
            response = self._response
        if response is not None:
            _cut(response)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(join_s)
        self._client.close()


def _cut(response: httpx.Response) -> None:
    """Shut the response's socket down: a thread blocked reading it wakes at once (closing the
    socket from another thread would not wake it)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass
