"""A tiny stand-in for the Hugging Face hub's HTTP API, so push_to_hub and from_pretrained run through the
real huggingface_hub client code (create repo, preupload, commit, HEAD/GET resolve) without a network.

It keeps each repo as a folder; every commit replaces the files it names. Files are always uploaded in
"regular" mode (inline base64 in the commit), which the real hub also accepts for small files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(BaseHTTPRequestHandler):
    root: Path
    requests: list

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _json(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self, kind: str):
        body = b"{}"
        self.send_response(404)
        self.send_header("X-Error-Code", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(("POST", self.path))
        if self.path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload.get('organization') or 'user'}/{payload['name']}" \
                if "/" not in payload["name"] else payload["name"]
            (self.root / repo).mkdir(parents=True, exist_ok=True)
            return self._json({"url": f"http://{self.headers['Host']}/{repo}"})
        if self.path == "/api/validate-yaml":  # the real hub checks the model card's metadata block
            return self._validate_card(json.loads(body)["content"])
        m = re.match(r"^/api/models/(.+?)/(preupload|commit)/([^/?]+)", self.path)
        if not m:
            return self._not_found("EntryNotFound")
        repo, action = m.group(1), m.group(2)
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                         for f in files]})
        for line in body.decode().splitlines():  # the commit is NDJSON: a header, then one line per file
            item = json.loads(line)
            if item["key"] == "file":
                target = self.root / repo / item["value"]["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(item["value"]["content"]))
        return self._json({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{COMMIT}",
                           "commitOid": COMMIT})

    def _validate_card(self, content: str):
        try:
            meta = yaml.safe_load(content.split("---")[1])
            assert isinstance(meta, dict) and isinstance(meta.get("tags", []), list)
        except Exception as err:  # noqa: BLE001
            return self._json({"errors": [{"message": f"bad metadata: {err!r}"}]}, code=400)
        return self._json({"errors": [], "warnings": []})

    def _resolve(self, head: bool):
        self.requests.append(("HEAD" if head else "GET", self.path))
        m = re.match(r"^/(.+?)/resolve/([^/]+)/(.+)$", self.path)
        if not m or not (self.root / m.group(1)).is_dir():
            return self._not_found("RepoNotFound")
        path = self.root / m.group(1) / m.group(3)
        if not path.is_file():
            return self._not_found("EntryNotFound")
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_HEAD(self):
        self._resolve(head=True)

    def do_GET(self):
        self._resolve(head=False)


class LocalHub:
    """`with LocalHub(tmp) as hub:` serves repos under tmp at `hub.url`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list = []
        handler = type("Handler", (_Handler,), {"root": self.root, "requests": self.requests})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
