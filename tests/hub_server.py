"""A loopback Hugging Face Hub that speaks the real HTTP protocol of huggingface_hub 2.x / transformers 5.x.

Standard library only (plus PyYAML for `/api/validate-yaml`), so the unmodified `huggingface_hub` client can push
to it and load from it: `model.push_to_hub`, `HfApi.upload_folder` / `create_commit`, `from_pretrained`,
`snapshot_download`, `hf_hub_download`. Start it in-process (`HubServer(...).start()`, or as a context manager)
or as a script: `python tests/hub_server.py --port 0 --root DIR` prints the port on its first stdout line.

What is emulated, and why each piece is there:
- Repositories are git-like: every commit is a full snapshot (path -> blob) with a parent and a 40-hex id, `main`
  is a branch ref, and any commit id resolves to its own file tree. A new repo gets an initial commit holding a
  `.gitattributes`, as on the Hub, so `main` always names a commit (transformers probes README.md in a fresh repo
  and needs `X-Repo-Commit` on the 404).
- `resolve` answers with `X-Repo-Commit`, `ETag` (git blob sha1 for regular files; sha256 for LFS files, repeated in
  `X-Linked-Etag` with `X-Linked-Size`) and `Content-Length`; misses carry `X-Error-Code` RepoNotFound /
  RevisionNotFound / EntryNotFound, which the client maps to its typed errors (and its `.no_exist` cache).
- Uploads: `preupload` answers "lfs" for LFS-tracked patterns (*.safetensors, *.bin, ...), binary samples and
  files over 10 MB, "regular" otherwise. LFS objects go through the batch API, a PUT to a one-time URL (no auth
  header is sent there, like a signed storage URL) and a verify call; the NDJSON commit then references them.
- Xet: huggingface_hub uploads "lfs" files over Xet whenever `hf_xet` is installed and `HF_HUB_DISABLE_XET` is not
  set, and the client sends nothing that tells the server which path it will take. Xet storage (a CAS with chunked
  xorbs and shards) is out of scope, so the design is explicit instead of guessed: `upload_mode="lfs"` (default,
  protocol-realistic) needs clients with `HF_HUB_DISABLE_XET=1`; its `xet-write-token` route answers 501 with a
  message saying exactly that. `upload_mode="regular"` answers "regular" for every file, so any client (Xet on or
  off) inlines the bytes in the commit; use it for clients whose environment you do not control.
- Repo creation takes `{name, organization?, type?, visibility?}` (2.x sends `visibility`; `private` is accepted too)
  and fills the namespace from the token's user when `organization` is missing.
- Auth: `tokens` maps token -> user, `orgs` maps org -> members. Writes need a valid token whose user owns the
  namespace (else 401 / 403); an unknown token is a 401 on any route; private repos are a 401 (no token) or a 404
  (wrong user) with `X-Error-Code: RepoNotFound`, as on the Hub.
- Gated repos (`set_gated`): metadata is public, files answer 401/403 `GatedRepo` to users without access.
- Dataset repos (`DatasetDict.push_to_hub`, `load_dataset("owner/name")`, streaming) live beside model repos under
  the key `datasets/owner/name` (their URL prefix), with the same routes under `/api/datasets/...`,
  `/datasets/<repo>/resolve/...` and `/datasets/<repo>.git/info/lfs/...`. datasets' client lists folders one level at a
  time (`tree` without `recursive`, folders as `{"type": "directory"}`, a missing folder 404 `EntryNotFound`), pins
  the commit through `revision/<sha>`, and streams parquet with `Range` GETs.
- `requests` is the request log (method, path, status, query) that tests assert on.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fnmatch
import hashlib
import json
import re
import secrets
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# The Hub's default .gitattributes for a new model repo (abridged to the patterns that matter for models).
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.mlmodel", "*.model",
    "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth",
    "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub stores anything larger than 10 MB in LFS
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS object (its git sha1 is the tree entry's oid)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def repo_key(repo_id: str, repo_type: str = "model") -> str:
    """How the server names a repo: `owner/name` for a model, `datasets/owner/name` for a data set (its URL path)."""
    return repo_id if repo_type in (None, "model") else f"{repo_type}s/{repo_id}"


def _namespace(key: str) -> str:
    return key.split("/")[-2]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree. `oid` is the git blob id (of the pointer, for LFS); `sha256` marks LFS."""

    size: int
    oid: str
    sha256: str | None = None


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated: bool = False  # files need an accepted access request (`granted`), as a gated Hub repo's do
    granted: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    query: str = ""


class HubError(Exception):
    """An HTTP error answer: status, optional `X-Error-Code`, and a message sent as `X-Error-Message` and JSON."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


class HubServer:
    """The Hub state plus a `ThreadingHTTPServer` serving it on 127.0.0.1.

    Args:
        root: storage directory (blobs); a temporary one, removed on `stop()`, when None.
        tokens: token -> user name. Writes need one of these.
        orgs: organisation -> member user names (members may write to the organisation's namespace).
        upload_mode: "lfs" (LFS for large/binary files; clients must set HF_HUB_DISABLE_XET=1) or "regular"
            (every file inline in the commit; works with Xet-enabled clients too). See the module docstring.
        port: 0 picks a free port.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
        upload_mode: str = "lfs",
        port: int = 0,
    ):
        if upload_mode not in ("lfs", "regular"):
            raise ValueError(f"upload_mode must be 'lfs' or 'regular', not {upload_mode!r}")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="loopback_hub_")) if root is None else Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self.tokens = dict(tokens or {})
        self.orgs = {k: set(v) for k, v in (orgs or {}).items()}
        self.upload_mode = upload_mode
        self.repos: dict[str, Repo] = {}
        self._lfs_uploads: dict[str, tuple[str, int]] = {}  # one-time upload ticket -> (sha256, size)
        self._log: list[RequestRecord] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (a client then gets "connection refused")."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request log ------------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    # -- storage ---------------------------------------------------------------------------------------------
    def _blob_path(self, key: str) -> Path:
        return self.root / "blobs" / key

    def _store_regular(self, data: bytes) -> FileEntry:
        oid = git_blob_sha1(data)
        path = self._blob_path(oid)
        if not path.exists():
            path.write_bytes(data)
        return FileEntry(size=len(data), oid=oid)

    def _has_lfs(self, sha256: str) -> bool:
        return self._blob_path(f"lfs-{sha256}").is_file()

    def read_blob(self, entry: FileEntry) -> bytes:
        return self._blob_path(f"lfs-{entry.sha256}" if entry.sha256 else entry.oid).read_bytes()

    # -- auth ------------------------------------------------------------------------------------------------
    def user_for(self, headers) -> str | None:
        """The user behind the request's bearer token; None without one; 401 for an unknown token."""
        auth = headers.get("Authorization") or ""
        if not auth:
            return None
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else auth.strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def require_write(self, user: str | None, namespace: str) -> None:
        if user is None:
            raise HubError(401, "Invalid username or password.")
        if not self.can_write(user, namespace):
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace!r} (user {user!r})")

    def repo_for_read(self, repo_id: str, user: str | None) -> Repo:
        with self._lock:
            repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self.can_write(user, _namespace(repo_id))):
            # The Hub hides private repos: 401 without credentials, 404 with the wrong ones.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def set_gated(self, repo_id: str, granted: tuple[str, ...] = ()) -> None:
        """Gate a repo: its metadata stays visible, its files need the owner or a granted user (else 401 without a
        token, 403 with one, `X-Error-Code: GatedRepo`, which the client raises as GatedRepoError)."""
        with self._lock:
            repo = self.repos[repo_id]
            repo.gated, repo.granted = True, set(granted)

    def check_gate(self, repo: Repo, user: str | None) -> None:
        if repo.gated and user not in repo.granted and not self.can_write(user, _namespace(repo.repo_id)):
            raise HubError(401 if user is None else 403,
                           f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                           f"authenticated to access it. Please log in.", "GatedRepo")

    def repo_for_write(self, repo_id: str, user: str | None) -> Repo:
        self.require_write(user, _namespace(repo_id))
        with self._lock:
            repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    # -- git-like state --------------------------------------------------------------------------------------
    def _new_commit(self, repo: Repo, branch: str, parent: str | None, title: str, message: str, author: str,
                    files: dict[str, FileEntry]) -> Commit:
        with self._lock:
            self._counter += 1
            payload = json.dumps(
                [repo.repo_id, parent, title, message, author, self._counter,
                 sorted((p, e.oid) for p, e in files.items())]
            ).encode()
            sha = hashlib.sha1(payload).hexdigest()
            commit = Commit(sha, parent, title, message, author, _now(), dict(files))
            repo.commits[sha] = commit
            repo.refs[branch] = sha
            return commit

    def create_repo(self, repo_id: str, private: bool, user: str, endpoint: str) -> Repo:
        with self._lock:
            if repo_id in self.repos:
                # The Hub's 409 carries the repo URL: `create_repo(exist_ok=True)` reads it from the error body.
                raise HubError(409, "You already created this model repo", body={"url": f"{endpoint}/{repo_id}"})
            repo = Repo(repo_id, private, _now())
            self.repos[repo_id] = repo
            gitattributes = self._store_regular(GITATTRIBUTES)
            self._new_commit(repo, "main", None, "initial commit", "", user, {".gitattributes": gitattributes})
            return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch name or a full commit id -> the commit (404 RevisionNotFound otherwise)."""
        with self._lock:
            sha = repo.refs.get(revision) or (revision if revision in repo.commits else None)
            if sha is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return repo.commits[sha]

    def history(self, repo: Repo, revision: str) -> list[Commit]:
        """Commits reachable from `revision`, newest first (the Hub's /commits order)."""
        commit = self.resolve(repo, revision)
        out = [commit]
        while out[-1].parent is not None:
            out.append(repo.commits[out[-1].parent])
        return out

    def upload_mode_for(self, path: str, size: int, sample: bytes) -> str:
        if self.upload_mode == "regular" or size == 0:
            return "regular"
        name = path.rsplit("/", 1)[-1]
        tracked = any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in LFS_PATTERNS)
        return "lfs" if tracked or size > LFS_SIZE_THRESHOLD or b"\0" in sample else "regular"

    def apply_commit(self, repo: Repo, revision: str, lines: list[dict], user: str) -> Commit:
        """Apply NDJSON commit operations on top of branch `revision`, checking `parentCommit` when given."""
        header = next((ln["value"] for ln in lines if ln.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "The commit header with a non-empty summary is required")
        with self._lock:
            if revision not in repo.refs:
                if _SHA.match(revision):
                    raise HubError(400, "Commits can only be made on branches, not on a commit id")
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.refs[revision]
            parent = header.get("parentCommit")
            if parent and parent != head:
                # Optimistic concurrency: the client committed on top of a state that is no longer the head.
                raise HubError(412, f"Parent commit {parent} is not the head of {revision} ({head})")
            files = dict(repo.commits[head].files)
            for line in lines:
                key, value = line.get("key"), line.get("value") or {}
                path = str(value.get("path", "")).lstrip("/")
                if key == "header":
                    continue
                if not path or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path in commit: {value.get('path')!r}")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    files[path] = self._store_regular(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    sha256, size = value.get("oid"), value.get("size")
                    if value.get("algo", "sha256") != "sha256" or not self._has_lfs(str(sha256)):
                        raise HubError(422, f"LFS object {sha256} for {path} was never uploaded")
                    files[path] = FileEntry(size=int(size), oid=git_blob_sha1(lfs_pointer(sha256, size)), sha256=sha256)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"File {path} does not exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(prefix)}
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            return self._new_commit(repo, revision, head, header["summary"], header.get("description", ""), user,
                                    files)


def _front_matter_errors(content: str) -> list[dict]:
    """What the Hub's YAML validation reports: unparsable YAML, a non-mapping, or a malformed model-index."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
    if match is None:
        return []
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        return [{"message": f"Invalid YAML in README.md front matter: {e}"}]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return [{"message": "README.md front matter must be a YAML mapping"}]
    errors = []
    model_index = meta.get("model-index")
    if model_index is not None:
        if not isinstance(model_index, list) or not all(isinstance(m, dict) and "name" in m for m in model_index):
            errors.append({"message": '"model-index" must be a list of objects with a "name"'})
        else:
            for model in model_index:
                for result in model.get("results", []):
                    if not isinstance(result, dict) or "task" not in result or "dataset" not in result:
                        errors.append({"message": '"model-index[].results[]" needs "task" and "dataset"'})
    for key in ("library_name", "pipeline_tag", "license"):
        if key in meta and not isinstance(meta[key], str):
            errors.append({"message": f'"{key}" must be a string'})
    return errors


def _file_item(path: str, entry: FileEntry) -> dict:
    """A file as the tree and paths-info APIs list it (`lfs` only for LFS files)."""
    item: dict[str, Any] = {"type": "file", "path": path, "size": entry.size, "oid": entry.oid}
    if entry.sha256:
        item["lfs"] = {"oid": entry.sha256, "size": entry.size,
                       "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
    return item


def _card_data(server: HubServer, commit: Commit) -> dict | None:
    entry = commit.files.get("README.md")
    if entry is None:
        return None
    text = server.read_blob(entry).decode("utf-8", "replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError:
        return None
    return meta if isinstance(meta, dict) else None


def _make_handler(server: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log is in `server.requests`
            pass

        # -- plumbing -------------------------------------------------------------------------------------------
        def _read_chunked(self) -> bytes:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()

        def _body(self) -> bytes:
            return self._raw

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "") -> None:
            headers = dict(headers or {})
            if content_type:
                headers["Content-Type"] = content_type
            headers.setdefault("Content-Length", len(body))  # HEAD replies carry the length a GET would have
            # Log before answering: once the client has the reply, a test may already be reading the log.
            server._record(RequestRecord(self.command, self._path, status, self._query))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers, "application/json")

        def _error(self, err: HubError, extra: dict | None = None) -> None:
            headers = {"X-Error-Message": err.message, **err.headers, **(extra or {})}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message, **err.body}, err.status, headers)

        def _dispatch(self) -> None:
            split = urlsplit(self.path)
            self._path, self._query = split.path, split.query
            self._params = parse_qs(split.query)
            self._extra_error_headers: dict | None = None  # the handler object lives as long as the connection
            # Read the body before anything can fail: an unread body would be parsed as the next keep-alive request.
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                self._raw = self._read_chunked()  # httpx streams file objects whose length it cannot tell
            else:
                length = int(self.headers.get("Content-Length") or 0)
                self._raw = self.rfile.read(length) if length else b""
            try:
                self._route(split.path)
            except HubError as err:
                self._error(err, self._extra_error_headers)
            except Exception as exc:  # a server bug must show up as such in the client, not as a hang
                self._error(HubError(500, f"loopback hub bug: {type(exc).__name__}: {exc}"))

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

        # -- routing ------------------------------------------------------------------------------------------
        def _route(self, path: str) -> None:
            method = self.command
            segs = path.strip("/").split("/")  # still percent-encoded: a revision may hold an encoded "/"
            user = server.user_for(self.headers)
            if segs[0] == "api":
                return self._route_api(method, segs[1:], user)
            if segs[0] == "datasets" and len(segs) >= 5 and segs[3] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve("/".join(segs[:3]), unquote(segs[4]), unquote("/".join(segs[5:])), user)
            if len(segs) >= 4 and segs[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(f"{segs[0]}/{segs[1]}", unquote(segs[3]), unquote("/".join(segs[4:])), user)
            if len(segs) >= 2 and segs[0] == "lfs-upload" and method == "PUT":
                return self._lfs_put(segs[1])
            if segs[0] == "datasets" and len(segs) == 7:
                segs = [f"datasets/{segs[1]}", *segs[2:]]  # the same LFS routes, under the data set's key
            if len(segs) == 6 and segs[1].endswith(".git") and segs[2:4] == ["info", "lfs"] and method == "POST":
                repo_id = f"{segs[0]}/{segs[1][:-4]}"
                if segs[4:] == ["objects", "batch"]:
                    return self._lfs_batch(repo_id, user)
                if segs[4:] == ["objects", "verify"]:
                    return self._lfs_verify(repo_id, user)
            raise HubError(404, f"Not found: {method} {path}")

        def _route_api(self, method: str, segs: list[str], user: str | None) -> None:
            if segs == ["agent-harnesses"]:
                raise HubError(404, "Not found")
            if segs == ["whoami-v2"] and method == "GET":
                if user is None:
                    raise HubError(401, "Invalid username or password.")
                orgs = [{"name": o, "type": "org"} for o, members in server.orgs.items() if user in members]
                return self._json({"type": "user", "id": user, "name": user, "fullname": user, "orgs": orgs,
                                   "auth": {"type": "access_token", "accessToken": {"displayName": "loopback",
                                                                                  "role": "write"}}})
            if segs == ["repos", "create"] and method == "POST":
                return self._create_repo(user)
            if segs == ["repos", "delete"] and method == "DELETE":
                body = json.loads(self._body() or b"{}")
                repo_id = repo_key(f"{body.get('organization') or user}/{body.get('name')}", body.get("type"))
                server.repo_for_write(repo_id, user)
                with server._lock:
                    del server.repos[repo_id]
                return self._json({})
            if segs == ["validate-yaml"] and method == "POST":
                body = json.loads(self._body() or b"{}")
                errors = _front_matter_errors(body.get("content", ""))
                return self._json({"errors": errors, "warnings": []}, 400 if errors else 200)
            if len(segs) >= 3 and segs[0] in ("models", "datasets"):
                repo_id, rest = repo_key(f"{segs[1]}/{segs[2]}", segs[0][:-1]), segs[3:]
                if not rest and method == "GET":
                    return self._model_info(repo_id, "main", user)
                if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                    return self._model_info(repo_id, unquote(rest[1]), user)
                if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                    return self._tree(repo_id, unquote(rest[1]), unquote("/".join(rest[2:])), user)
                if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                    return self._paths_info(repo_id, unquote(rest[1]), user)
                if len(rest) == 2 and rest[0] == "commits" and method == "GET":
                    return self._commits(repo_id, unquote(rest[1]), user)
                if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                    return self._preupload(repo_id, unquote(rest[1]), user)
                if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                    return self._commit(repo_id, unquote(rest[1]), user)
                if rest and rest[0] == "xet-write-token":
                    raise HubError(501, "this loopback Hub has no Xet storage: set HF_HUB_DISABLE_XET=1 in the "
                                        "client, or start the server with upload_mode='regular'")
                if rest and rest[0] == "xet-read-token":
                    raise HubError(501, "this loopback Hub has no Xet storage")
            if segs and segs[0] == "spaces":
                raise HubError(404, "this loopback Hub serves model and dataset repos only (spaces requested)",
                               "RepoNotFound")
            raise HubError(404, f"Not found: {method} /api/{'/'.join(segs)}")

        # -- repos -------------------------------------------------------------------------------------------
        def _create_repo(self, user: str | None) -> None:
            body = json.loads(self._body() or b"{}")
            repo_type = body.get("type") or "model"
            if repo_type not in ("model", "dataset"):
                raise HubError(400, f"this loopback Hub serves model and dataset repos only, not {repo_type!r}")
            name, namespace = body.get("name") or "", body.get("organization") or user
            if user is None:
                raise HubError(401, "You must be authenticated to create a repo")
            if not _NAME.match(name) or not _NAME.match(namespace or ""):
                raise HubError(400, f"Invalid repo name {namespace}/{name}")
            server.require_write(user, namespace)
            # huggingface_hub 2.x sends `visibility` ("public" / "private"); older clients sent `private: bool`.
            private = body.get("visibility") in ("private", "protected") or bool(body.get("private"))
            repo = server.create_repo(repo_key(f"{namespace}/{name}", repo_type), private, user, self._endpoint())
            # the URL carries the type (`/datasets/owner/name`): the client reads the repo id and type back from it
            self._json({"url": f"{self._endpoint()}/{repo.repo_id}", "name": f"{namespace}/{name}",
                        "id": f"{namespace}/{name}"})

        def _endpoint(self) -> str:
            return f"http://{self.headers.get('Host') or f'127.0.0.1:{server.port}'}"

        def _model_info(self, key: str, revision: str, user: str | None) -> None:
            repo, repo_id = server.repo_for_read(key, user), "/".join(key.split("/")[-2:])
            commit = server.resolve(repo, revision)
            with_blobs = self._params.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for path, entry in sorted(commit.files.items()):
                sib: dict[str, Any] = {"rfilename": path}
                if with_blobs:
                    sib.update(size=entry.size, blobId=entry.oid)
                    if entry.sha256:
                        sib["lfs"] = {"size": entry.size, "sha256": entry.sha256,
                                      "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
                siblings.append(sib)
            card = _card_data(server, commit) or {}
            self._json({
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                "author": _namespace(key), "sha": commit.sha, "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": card.get("tags") or [],
                "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"),
                "lastModified": commit.date, "createdAt": repo.created_at, "cardData": card or None,
                "siblings": siblings,
            })

        def _tree(self, repo_id: str, revision: str, prefix: str, user: str | None) -> None:
            repo = server.repo_for_read(repo_id, user)
            commit = server.resolve(repo, revision)
            recursive = self._params.get("recursive", ["false"])[0].lower() == "true"
            base = prefix.strip("/") + "/" if prefix.strip("/") else ""
            entries, dirs = [], set()
            for path, entry in sorted(commit.files.items()):
                if not path.startswith(base):
                    continue
                rel = path[len(base):]
                if "/" in rel:
                    parts = rel.split("/")
                    for i in range(1, len(parts) if recursive else 2):
                        dirs.add(base + "/".join(parts[:i]))
                    if not recursive:
                        continue
                entries.append(_file_item(path, entry))
            if base and not entries and not dirs:
                raise HubError(404, f"{prefix} does not exist at {revision}", "EntryNotFound")
            folders = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()}
                       for d in sorted(dirs)]
            self._json(folders + entries)

        def _paths_info(self, repo_id: str, revision: str, user: str | None) -> None:
            repo = server.repo_for_read(repo_id, user)
            commit = server.resolve(repo, revision)
            form = parse_qs(self._body().decode())  # the client posts a form: paths=a&paths=b&expand=False
            out: list[dict] = []
            for path in (p.strip("/") for p in form.get("paths", [])):
                if path in commit.files:
                    out.append(_file_item(path, commit.files[path]))
                elif any(p.startswith(path + "/") for p in commit.files):
                    out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
            self._json(out)

        def _commits(self, repo_id: str, revision: str, user: str | None) -> None:
            repo = server.repo_for_read(repo_id, user)
            self._json([{"id": c.sha, "title": c.title, "message": c.message, "authors": [{"user": c.author}],
                         "date": c.date} for c in server.history(repo, revision)])

        # -- downloads ---------------------------------------------------------------------------------------
        def _resolve(self, repo_id: str, revision: str, path: str, user: str | None) -> None:
            repo = server.repo_for_read(repo_id, user)
            server.check_gate(repo, user)
            commit = server.resolve(repo, revision)
            entry = commit.files.get(path)
            if entry is None:
                # The commit id lets the client cache the miss (`.no_exist/<commit>/<path>`).
                self._extra_error_headers = {"X-Repo-Commit": commit.sha}
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes",
                       "ETag": f'"{entry.sha256 or entry.oid}"'}
            if entry.sha256:
                headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": entry.size})
            data = server.read_blob(entry)
            status, range_header = 200, self.headers.get("Range")
            if range_header and self.command == "GET":
                m = re.match(r"bytes=(\d+)-(\d*)$", range_header.strip())
                if m:
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else len(data) - 1
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    data, status = data[start:end + 1], 206
            self._send(status, data, headers, "application/octet-stream")

        # -- uploads -----------------------------------------------------------------------------------------
        def _preupload(self, repo_id: str, revision: str, user: str | None) -> None:
            repo = server.repo_for_write(repo_id, user)
            commit = server.resolve(repo, revision)
            files = []
            for f in json.loads(self._body() or b"{}").get("files", []):
                mode = server.upload_mode_for(f["path"], int(f["size"]), base64.b64decode(f.get("sample", "")))
                existing = commit.files.get(f["path"])
                # The client skips unchanged files by comparing this oid with its own (sha256 for LFS, sha1 else).
                oid = None if existing is None else (existing.sha256 if mode == "lfs" else existing.oid)
                files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            self._json({"files": files, "commitOid": commit.sha})

        def _lfs_batch(self, repo_id: str, user: str | None) -> None:
            server.repo_for_write(repo_id, user)
            body = json.loads(self._body() or b"{}")
            if body.get("operation") != "upload":
                raise HubError(400, "only the upload operation is supported")
            objects = []
            for obj in body.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
                if not server._has_lfs(oid):
                    ticket = secrets.token_hex(16)
                    with server._lock:
                        server._lfs_uploads[ticket] = (oid, size)
                    repo_url = f"{self._endpoint()}/{repo_id}.git/info/lfs/objects/verify"
                    item["actions"] = {"upload": {"href": f"{self._endpoint()}/lfs-upload/{ticket}"},
                                       "verify": {"href": repo_url}}
                objects.append(item)
            self._json(
                {"transfer": "basic", "objects": objects}, headers={"Content-Type": "application/vnd.git-lfs+json"}
            )

        def _lfs_put(self, ticket: str) -> None:
            with server._lock:
                expected = server._lfs_uploads.pop(ticket, None)
            if expected is None:
                raise HubError(403, "unknown or used upload URL")
            data = self._body()
            oid, size = expected
            if len(data) != size or hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, f"uploaded bytes do not match oid {oid} / size {size}")
            path = server._blob_path(f"lfs-{oid}")
            tmp = path.with_suffix(f".tmp-{ticket}")
            tmp.write_bytes(data)
            tmp.replace(path)
            self._send(200)

        def _lfs_verify(self, repo_id: str, user: str | None) -> None:
            server.repo_for_write(repo_id, user)
            body = json.loads(self._body() or b"{}")
            if not server._has_lfs(str(body.get("oid"))):
                raise HubError(404, f"LFS object {body.get('oid')} not found")
            self._json({"success": True})

        def _commit(self, repo_id: str, revision: str, user: str | None) -> None:
            repo = server.repo_for_write(repo_id, user)
            if self._params.get("create_pr", ["0"])[0] in ("1", "true"):
                raise HubError(400, "pull requests are not supported by this loopback Hub")
            raw = self._body()
            content_type = self.headers.get("Content-Type", "")
            if "ndjson" in content_type:
                lines = [json.loads(ln) for ln in raw.decode().splitlines() if ln.strip()]
            else:  # the older JSON form: {"summary", "files", "lfsFiles", ...} is not spoken by 2.x clients
                raise HubError(400, f"expected application/x-ndjson, got {content_type!r}")
            commit = server.apply_commit(repo, revision, lines, user)
            self._json({"commitUrl": f"{self._endpoint()}/{repo_id}/commit/{commit.sha}", "commitOid": commit.sha,
                        "success": True})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the first line)")
    parser.add_argument("--root", default=None, help="storage directory (default: a temporary one)")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN=USER",
                        help="a write token and its user; repeatable (default: hf_test=tester)")
    parser.add_argument("--upload-mode", choices=("lfs", "regular"), default="lfs")
    args = parser.parse_args(argv)
    tokens = dict(t.split("=", 1) for t in args.token) or {"hf_test": "tester"}
    hub = HubServer(root=args.root, tokens=tokens, upload_mode=args.upload_mode, port=args.port)
    print(hub.port, flush=True)
    try:
        hub._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub._httpd.server_close()


__all__ = ["HubServer", "HubError", "RequestRecord", "git_blob_sha1", "lfs_pointer"]

if __name__ == "__main__":
    main(sys.argv[1:])
