"""A folder served over HTTP on a loopback port (python's own http.server, real requests), for the encoder's
remote-input tests. `hold(name, after)` makes a GET of that file send its first `after` bytes, then wait
until `release(name)`: a test can stop a reader at a known point of its run, mid-transfer (and kill it
there), without touching the reader's code."""

from __future__ import annotations

import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    def __init__(self, root: Path):
        self.root, self.requests = Path(root), []
        self._held: dict[str, tuple[threading.Event, int]] = {}
        self.waiting: set[str] = set()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append(("GET", name))
                held = server._held.get(name)
                if held is None:
                    return super().do_GET()
                f = self.send_head()
                if f is None:
                    return
                with f:
                    self.wfile.write(f.read(held[1]))
                    self.wfile.flush()
                    server.waiting.add(name)
                    held[0].wait()
                    self.wfile.write(f.read())

            def do_HEAD(self):
                server.requests.append(("HEAD", self.path.lstrip("/")))
                super().do_HEAD()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(self.root)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for gate, _ in self._held.values():
            gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def hold(self, name: str, after: int = 0) -> None:
        self._held[name] = (threading.Event(), after)

    def release(self, name: str) -> None:
        self._held.pop(name)[0].set()
