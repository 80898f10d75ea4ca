"""A small in-memory fake of the Hugging Face Hub HTTP API, for tests that drive the real huggingface_hub client.

It serves just what ``create_repo``, ``create_branch``, ``create_commit`` (regular, base64-inline uploads only),
``list_repo_files``, ``repo_info`` and ``snapshot_download`` / ``hf_hub_download`` send:

    POST /api/repos/create                           -> {"url"}; 409 when the repo exists
    POST /api/validate-yaml                          -> README metadata check (400 on invalid YAML)
    POST /api/models/{repo}/branch/{branch}          -> create a branch (409 when it exists)
    POST /api/models/{repo}/preupload/{rev}          -> every file "regular" (so no LFS / Xet server is needed)
    POST /api/models/{repo}/commit/{rev}             -> NDJSON: header, file (base64), deletedFile
    GET  /api/models/{repo}[/revision/{rev}]         -> {"id", "sha", "siblings"}
    GET  /api/models/{repo}/tree/{rev}[/{path}]      -> [{"type": "file", "path", "size", "oid"}]
    HEAD/GET /{repo}/resolve/{rev}/{path}            -> X-Repo-Commit, ETag, Content-Length (+ body on GET)

Failures are injected per endpoint: ``hub.fail["commit"] = 500`` makes every commit answer 500 until removed.
Every request is recorded in ``hub.requests`` (method, path, kind, lower-cased headers) so tests can check what was sent.

    with FakeHub() as hub:
        HfApi(endpoint=hub.url).create_repo("me/heads")
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<op>preupload|commit|revision|tree|branch)/(?P<rev>[^/]+)"
    r"(?:/(?P<path>.+))?)?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file, as the Hub reports it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    summary: str
    parent: str | None
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev, rev)
        return self.commits.get(oid)

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits of a branch, newest first."""
        out, commit = [], self.resolve(branch)
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out


class FakeHub:
    """The server; use as a context manager. ``url`` is its endpoint (http://127.0.0.1:PORT)."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.fail: dict[str, int] = {}  # endpoint name -> HTTP status to answer instead
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ state changes
    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_id=repo_id, private=private)
        self._add_commit(repo, "main", "initial commit", {".gitattributes": b"*.safetensors filter=lfs\n"})
        self.repos[repo_id] = repo
        return repo

    def _add_commit(self, repo: Repo, branch: str, summary: str, files: dict[str, bytes]) -> Commit:
        parent = repo.branches.get(branch)
        seed = json.dumps([parent, summary, sorted((k, git_blob_oid(v)) for k, v in files.items())])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), summary, parent, files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output quiet
            pass

        # -------------------------------------------------------------- plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None):
            self._send(
                status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}
            )

        def _error(self, status: int, message: str, code: str | None = None, head: bool = False):
            headers = {"Content-Type": "application/json", "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

        def _body(self) -> bytes:
            """The body of the current request (read by do_POST before routing)."""
            return self._raw_body

        def _record(self, kind: str) -> bool:
            """Record the request; answer the injected failure for ``kind`` if any (then return True)."""
            with hub.lock:
                hub.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "kind": kind,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                status = hub.fail.get(kind)
            if status is not None:
                self._error(status, f"injected failure ({status})", head=self.command == "HEAD")
                return True
            return False

        def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "Repository not found", "RepoNotFound", head=head)
            return repo

        # -------------------------------------------------------------- routes
        def do_POST(self):
            # Always consume the body, even for unknown routes: the connection is kept alive. One handler object
            # serves every request of a connection, so the body is stored per request.
            self._raw_body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = urlsplit(self.path).path
            if path == "/api/repos/create":
                return self._create_repo()
            if path == "/api/validate-yaml":
                return self._validate_yaml()
            m = _API.match(path)
            if m and m["op"] in ("preupload", "commit", "branch"):
                return getattr(self, "_" + m["op"])(m["repo"], unquote(m["rev"]))
            self._record("unknown")
            self._error(404, f"no route for POST {path}")

        def do_GET(self, head: bool = False):
            self._raw_body = b""
            path = urlsplit(self.path).path
            m = _RESOLVE.match(path)
            if m:
                return self._resolve(m["repo"], unquote(m["rev"]), unquote(m["path"]), head)
            m = _API.match(path)
            if m and m["op"] in (None, "revision"):
                return self._info(m["repo"], unquote(m["rev"] or "main"))
            if m and m["op"] == "tree":
                return self._tree(m["repo"], unquote(m["rev"]), unquote(m["path"] or ""))
            self._record("unknown")
            self._error(404, f"no route for {self.command} {path}", head=head)

        def do_HEAD(self):
            self.do_GET(head=True)

        def _create_repo(self):
            payload = json.loads(self._body() or b"{}")
            if self._record("create"):
                return
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else None
            if repo_id is None:
                return self._error(400, "the fake hub needs owner/name repo ids")
            with hub.lock:
                if (
                    repo_id in hub.repos
                ):  # the Hub's 409 carries the url too (create_repo(exist_ok=True) reads it)
                    body = {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                    return self._json(409, body, {"X-Error-Message": body["error"]})
                hub.create_repo(repo_id, private=payload.get("visibility") == "private")
            self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _validate_yaml(self):
            payload = json.loads(self._body() or b"{}")
            if self._record("validate"):
                return
            content = payload.get("content", "")
            if content.startswith("---\n"):
                try:
                    yaml.safe_load(content[4 : content.find("\n---", 4)])
                except yaml.YAMLError as e:
                    return self._json(400, {"errors": [{"message": str(e)}], "warnings": []})
            self._json(200, {"errors": [], "warnings": []})

        def _branch(self, repo_id: str, branch: str):
            payload = json.loads(self._body() or b"{}")
            if self._record("branch"):
                return
            with hub.lock:
                repo = self._repo(repo_id)
                if repo is None:
                    return
                if branch in repo.branches:
                    return self._error(409, "Reference already exists")
                start = repo.resolve(payload.get("startingPoint") or "main")
                repo.branches[branch] = start.oid
            self._json(200, {})

        def _preupload(self, repo_id: str, rev: str):
            payload = json.loads(self._body() or b"{}")
            if self._record("preupload"):
                return
            with hub.lock:
                repo = self._repo(repo_id)
                if repo is None:
                    return
                commit = repo.resolve(rev)
                existing = commit.files if commit else {}
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing[f["path"]]) if f["path"] in existing else None,
                }
                for f in payload.get("files", [])
            ]
            self._json(200, {"files": files, "commitOid": commit.oid if commit else None})

        def _commit(self, repo_id: str, rev: str):
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            if self._record("commit"):
                return
            with hub.lock:
                repo = self._repo(repo_id)
                if repo is None:
                    return
                if rev not in repo.branches:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                files = dict(repo.resolve(rev).files)
                summary = ""
                for item in lines:
                    key, value = item["key"], item["value"]
                    if key == "header":
                        summary = value["summary"]
                    elif key == "file":
                        if value.get("encoding") != "base64":
                            return self._error(400, "the fake hub only takes base64 file content")
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif key == "deletedFile":
                        if value["path"] not in files:
                            return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
                        del files[value["path"]]
                    else:
                        return self._error(400, f"the fake hub does not support {key!r} operations")
                commit = hub._add_commit(repo, rev, summary, files)
            url = f"{hub.url}/{repo_id}/commit/{commit.oid}"
            self._json(
                200, {"commitUrl": url, "commitOid": commit.oid, "pullRequestUrl": None, "success": True}
            )

        def _info(self, repo_id: str, rev: str):
            if self._record("info"):
                return
            with hub.lock:
                repo = self._repo(repo_id)
                if repo is None:
                    return
                commit = repo.resolve(rev)
                if commit is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                siblings = [{"rfilename": name} for name in sorted(commit.files)]
            self._json(200, {"id": repo_id, "sha": commit.oid, "private": repo.private, "siblings": siblings})

        def _tree(self, repo_id: str, rev: str, prefix: str):
            if self._record("tree"):
                return
            with hub.lock:
                repo = self._repo(repo_id)
                if repo is None:
                    return
                commit = repo.resolve(rev)
                if commit is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": git_blob_oid(data)}
                    for name, data in sorted(commit.files.items())
                    if not prefix or name.startswith(prefix.rstrip("/") + "/")
                ]
            self._json(200, entries)

        def _resolve(self, repo_id: str, rev: str, path: str, head: bool):
            if self._record("resolve"):
                return
            with hub.lock:
                repo = self._repo(repo_id, head=head)
                if repo is None:
                    return
                commit = repo.resolve(rev)
                if commit is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound", head=head)
                data = commit.files.get(path)
            if data is None:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit.oid}
                return self._send(404, b"", headers, head=head)
            headers = {
                "Content-Type": "application/octet-stream",
                "X-Repo-Commit": commit.oid,
                "ETag": f'"{git_blob_oid(data)}"',
            }
            self._send(200, data, headers, head=head)

    return Handler
