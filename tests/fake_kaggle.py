"""A fake Kaggle on 127.0.0.1 that the real ``kaggle`` client talks to.

The kaggle client (2.x, on kagglesdk) POSTs JSON to
``{endpoint}/v1/{Service}/{Rpc}`` (``{endpoint}/api/v1/...`` outside
production). ``FakeKaggle`` answers the calls pcam makes, the way Kaggle does:

- ``security.OAuthService/IntrospectToken``: is an API token active, and whose.
- ``competitions.CompetitionApiService/DownloadDataFiles``: 401 (bad
  credentials), 404 (unknown competition), 403 (rules not accepted), else a
  302 to a signed storage address ending in ``.zip``; the ``GET`` there
  answers with Content-Length, ETag, Last-Modified and Accept-Ranges, and
  serves ``Range`` requests (206), so the client resumes a partial file.
- ``StartSubmissionUpload`` -> ``PUT`` of the file -> ``CreateSubmission``.

Two ways to point the client here, neither touching the internet:

- in-process, ``point_client_here(monkeypatch)`` rewrites kagglesdk's endpoint
  table (``kagglesdk.kaggle_env._env_to_endpoint``), every environment to this
  server, and sends any https traffic (real Kaggle) to it as a proxy, which
  refuses ``CONNECT``;
- for a subprocess, ``subprocess_env(home)``: ``KAGGLE_API_ENVIRONMENT=LOCALHOST``
  makes the client call ``http://localhost/api/v1/...`` and ``HTTP_PROXY`` (and
  ``HTTPS_PROXY``) send that here; ``NO_PROXY`` is removed.

Everything the server saw is in ``requests`` (a list of ``Seen``) for tests to
check. Fixtures: ``kaggle_home`` (an empty home, no credentials) and
``fake_kaggle`` (a running fake, the client pointed at it, the fake user's
key in ``KAGGLE_USERNAME``/``KAGGLE_KEY``); a test module gets them with
``pytest_plugins = ["fake_kaggle"]``. (PYTEST_DONT_REWRITE: test modules
import this module before pytest loads it as a plugin, and it asserts nothing.)
"""
from __future__ import annotations

import base64
import email.utils
import hashlib
import itertools
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

USERNAME = "pcam-tester"
KEY = "0123456789abcdef0123456789abcdef"     # legacy API key of USERNAME
TOKEN = "KGAT_fake0123456789abcdef01234567"   # API token of USERNAME
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
SERVICE = "competitions.CompetitionApiService"


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str                   # without host and query
    headers: dict
    body: dict | None = None    # the JSON of an API call
    status: int = 0             # what the fake answered
    note: str = ""              # e.g. "dropped after 1000000 bytes"


@dataclass
class Competition:
    """What the fake server serves: the zip, and the account's state."""

    zip_bytes: bytes
    rules_accepted: bool = True
    title: str = "Fake Competition"
    last_modified: float = field(default_factory=lambda: time.time() - 3600)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha1(self.zip_bytes).hexdigest()[:16] + '"'


class FakeKaggle:
    """The fake server. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self):
        self.users = {USERNAME: KEY}
        self.tokens = {TOKEN: USERNAME}
        self.competitions: dict[str, Competition] = {}
        self.drop_once_at: int | None = None  # next zip GET: close after this many bytes
        self.hang_once_at: int | None = None  # next zip GET: stop sending after this many bytes
        self._release = threading.Event()     # ... until stop()
        self.upload_status = 200              # what the storage answers to a PUT
        self.uploads: dict[str, bytes] = {}
        self.submissions: list[dict] = []
        self.requests: list[Seen] = []
        self._ids = itertools.count(1)
        self._server = None

    # -- set-up ------------------------------------------------------------

    def add_competition(self, name: str, zip_bytes: bytes, rules_accepted: bool = True) -> None:
        self.competitions[name] = Competition(zip_bytes, rules_accepted)

    def start(self) -> "FakeKaggle":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def point_client_here(self, monkeypatch) -> None:
        """Point the in-process kaggle client at this server (undone by monkeypatch)."""
        from kagglesdk import kaggle_env

        for env in kaggle_env.KaggleEnv:
            monkeypatch.setitem(kaggle_env._env_to_endpoint, env, self.url)
        for name in PROXY_VARS:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.upper(), raising=False)
        # Guard: https (real Kaggle, storage) goes to this server as a proxy, which
        # refuses CONNECT; plain http to 127.0.0.1 stays direct.
        monkeypatch.setenv("HTTPS_PROXY", self.url)

    def subprocess_env(self, home, credentials: bool = True) -> dict:
        """Environment for a subprocess whose kaggle client must talk to this server."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KAGGLE_") and k.lower() not in PROXY_VARS}
        env.update(HOME=str(home), KAGGLE_API_ENVIRONMENT="LOCALHOST",
                   HTTP_PROXY=self.url, HTTPS_PROXY=self.url)
        env.pop("XDG_CONFIG_HOME", None)
        if credentials:
            env.update(KAGGLE_USERNAME=USERNAME, KAGGLE_KEY=KEY)
        return env

    def seen(self, method: str | None = None, path_end: str = "") -> list[Seen]:
        """The requests received, filtered by method and the end of the path."""
        return [r for r in self.requests
                if (method is None or r.method == method) and r.path.endswith(path_end)]

    # -- the API -----------------------------------------------------------

    def user_of(self, headers) -> str | None:
        """The user that the request's credentials belong to (Basic key or Bearer token)."""
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            return user if self.users.get(user) == key else None
        if auth.startswith("Bearer "):
            return self.tokens.get(auth[7:])
        return None

    def call(self, rpc: str, body: dict, user: str | None, base: str):
        """Answer one API call: (status, JSON body or None, extra headers)."""
        if rpc == "security.OAuthService/IntrospectToken":
            owner = self.tokens.get(body.get("token", ""))
            return 200, {"active": owner is not None, "username": owner or ""}, {}
        if user is None:
            return 401, {"code": 401, "message": "Unauthenticated"}, {}
        name = body.get("competitionName", "")
        if rpc.startswith(SERVICE + "/"):
            found = self.competitions.get(name)
            if found is None:
                return 404, {"code": 404, "message": "Competition not found"}, {}
            if not found.rules_accepted and rpc.rsplit("/", 1)[1] in (
                    "DownloadDataFiles", "StartSubmissionUpload", "CreateSubmission"):
                return 403, {"code": 403, "message": "You must accept this competition's rules "
                                                     "before you'll be able to download files."}, {}
        if rpc == f"{SERVICE}/DownloadDataFiles":
            location = f"{base}/storage/competitions/{name}.zip?GoogleAccessId=fake&Signature=fake"
            return 302, None, {"Location": location}
        if rpc == f"{SERVICE}/StartSubmissionUpload":
            token = f"blob-{next(self._ids)}"
            return 200, {"token": token, "createUrl": f"{base}/upload/{token}"}, {}
        if rpc == f"{SERVICE}/CreateSubmission":
            token = body.get("blobFileTokens", "")
            if token not in self.uploads:
                return 400, {"code": 400, "message": "Blob not found"}, {}
            ref = 1000 + len(self.submissions)
            self.submissions.append({"competition": name, "user": user, "ref": ref,
                                     "description": body.get("submissionDescription"),
                                     "bytes": self.uploads[token]})
            title = self.competitions[name].title
            return 200, {"message": f"Successfully submitted to {title}", "ref": ref}, {}
        return 404, {"code": 404, "message": f"the fake Kaggle does not implement {rpc}"}, {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up on purpose (it skips a file it has, it drops a
        # connection in a test) is no error of the fake; anything else is.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKaggle

    def log_message(self, *args):  # keep test output clean
        pass

    def _seen(self, body=None) -> Seen:
        seen = Seen(self.command, urlsplit(self.path).path, dict(self.headers), body)
        self.fake.requests.append(seen)
        return seen

    def _base(self) -> str:
        # Through a proxy the Host is "localhost"; directly it is 127.0.0.1:PORT.
        return f"http://{self.headers.get('Host')}"

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    break
                data += chunk
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, seen: Seen, status: int, body: bytes = b"", headers=None) -> None:
        seen.status = status
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self._read_body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        seen = self._seen(body)
        path = seen.path
        for prefix in ("/api/v1/", "/v1/"):
            if path.startswith(prefix):
                rpc = path[len(prefix):]
                break
        else:
            return self._answer(seen, 404)
        status, payload, headers = self.fake.call(rpc, body, self.fake.user_of(self.headers), self._base())
        data = json.dumps(payload).encode() if payload is not None else b""
        if payload is not None:
            headers = {**headers, "Content-Type": "application/json"}
        self._answer(seen, status, data, headers)

    def do_GET(self):
        seen = self._seen()
        name = seen.path.rsplit("/", 1)[-1].removesuffix(".zip")
        found = self.fake.competitions.get(name)
        if not seen.path.startswith("/storage/") or found is None:
            return self._answer(seen, 404)
        data, size = found.zip_bytes, len(found.zip_bytes)
        headers = {"Content-Type": "application/zip", "ETag": found.etag, "Accept-Ranges": "bytes",
                   "Last-Modified": email.utils.formatdate(found.last_modified, usegmt=True)}
        wanted = self.headers.get("Range", "")
        if_range = self.headers.get("If-Range")
        if wanted.startswith("bytes=") and (if_range is None or if_range == found.etag):
            start = int(wanted[6:].split("-")[0])
            if start >= size:
                return self._answer(seen, 416, headers={"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            return self._answer(seen, 206, data[start:], headers)
        drop, hang = self.fake.drop_once_at, self.fake.hang_once_at
        if drop is None and hang is None:
            return self._answer(seen, 200, data, headers)
        # Promise the whole file, send part of it, then hang up (a dropped
        # connection) or go silent (a stalled one, for a client to be stopped).
        self.fake.drop_once_at = self.fake.hang_once_at = None
        seen.status = 200
        seen.note = f"dropped after {drop} bytes" if hang is None else f"stalled after {hang} bytes"
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(data[:drop if hang is None else hang])
        self.wfile.flush()
        if hang is not None:
            self.fake._release.wait(60)
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_PUT(self):
        data = self._read_body()
        seen = self._seen()
        token = seen.path.rsplit("/", 1)[-1]
        status = self.fake.upload_status
        if status in (200, 201):
            self.fake.uploads[token] = data
        self._answer(seen, status, b"{}" if status < 300 else b"upload failed")


@pytest.fixture
def kaggle_home(tmp_path, monkeypatch):
    """An empty home folder: no Kaggle credentials anywhere, no proxy settings."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name.startswith("KAGGLE_") or name.lower() in PROXY_VARS or name == "XDG_CONFIG_HOME":
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def fake_kaggle(kaggle_home, monkeypatch):
    """A running FakeKaggle, the in-process client pointed at it, signed in with the fake key."""
    with FakeKaggle() as fake:
        fake.point_client_here(monkeypatch)
        monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
        monkeypatch.setenv("KAGGLE_KEY", KEY)
        yield fake
