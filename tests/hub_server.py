"""A loopback Hugging Face Hub for tests: the HTTP routes huggingface_hub 1.33 uses to push and pull repos.

Runs in a thread on 127.0.0.1 (random port) and stores repos (models, datasets, and Spaces, which are
created with an sdk) on disk (`root/<type>s/<owner>/<name>/`: `blobs/<git oid>`, `commits.json`,
`refs.json`, `meta.json`). Every request is recorded in `hits` as (method, route name, path); a request
no route matches gets a 404 naming it and lands in `unknown`, so a client upgrade that adds a call fails
loudly. `faults` injects failures into the next matching
requests: `"503"` (answer 503, change nothing), `"drop"` (close the connection without an answer,
change nothing) or `"drop_after"` (apply the request, then close without an answer: a lost response).

Tokens: `tokens = {token: {"name": user, "role": "write" | "read", "orgs": [...]}}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

ROUTES: list[tuple[str, str, re.Pattern]] = [
    (m, name, re.compile(p))
    for m, name, p in [
        ("GET", "whoami", r"^/api/whoami-v2$"),
        ("GET", "agent_harnesses", r"^/api/agent-harnesses$"),  # the `hf` CLI's agent registry, read at start
        ("GET", "refs", r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/refs$"),
        ("POST", "tag", r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/tag/(?P<rev>[^/]+)$"),
        ("DELETE", "delete_tag", r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/tag/(?P<tag>[^/]+)$"),
        (
            "GET",
            "auth_check",
            r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/auth-check(?P<write>/write)?$",
        ),
        ("POST", "create_repo", r"^/api/repos/create$"),
        ("POST", "validate_yaml", r"^/api/validate-yaml$"),
        (
            "POST",
            "preupload",
            r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$",
        ),
        (
            "POST",
            "commit",
            r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$",
        ),
        (
            "POST",
            "branch",
            r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)$",
        ),
        (
            "GET",
            "info",
            r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$",
        ),
        (
            "GET",
            "tree",
            r"^/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$",
        ),
        (
            "HEAD",
            "resolve",
            r"^/(?P<type>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
        ),
        (
            "GET",
            "resolve",
            r"^/(?P<type>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$",
        ),
    ]
]
INITIAL_FILES = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
SPACE_SDKS = ("gradio", "docker", "static", "streamlit")


def _url_prefix(repo_type: str) -> str:
    """The web URL prefix of a repo type: none for models, `datasets/`, `spaces/`."""
    return "" if repo_type == "models" else f"{repo_type}/"


def git_oid(content: bytes) -> str:
    """Git's blob id: sha1 of `blob <size>\\0<content>` (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An HTTP error answer: status, Hub error code header and message."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class Repo:
    """One repo on disk: blobs by git oid, commits (oid -> parent, message, files), branch refs."""

    path: Path

    def read(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def write(self, name: str, value: Any) -> None:
        (self.path / name).write_text(json.dumps(value, indent=1))

    @property
    def meta(self) -> dict:
        return self.read("meta.json")

    @property
    def tags(self) -> dict[str, str]:
        return self.read("tags.json") if (self.path / "tags.json").is_file() else {}

    def head(self, rev: str) -> str:
        refs, commits = {**self.tags, **self.read("refs.json")}, self.read("commits.json")
        if rev in refs:
            return refs[rev]
        if rev in commits:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def files(self, rev: str) -> dict[str, str]:
        return self.read("commits.json")[self.head(rev)]["files"]

    def blob(self, oid: str) -> bytes:
        return (self.path / "blobs" / oid).read_bytes()

    def commit(self, branch: str, message: str, files: dict[str, bytes], deleted: list[str]) -> str:
        """Store blobs and a new commit on `branch` (files = path -> content); return its oid."""
        commits, refs = self.read("commits.json"), self.read("refs.json")
        parent = refs.get(branch)
        tree = dict(commits[parent]["files"]) if parent else {}
        for path_in_repo, content in files.items():
            oid = git_oid(content)
            (self.path / "blobs").mkdir(exist_ok=True)
            (self.path / "blobs" / oid).write_bytes(content)
            tree[path_in_repo] = oid
        for path_in_repo in deleted:
            tree.pop(path_in_repo, None)
        oid = hashlib.sha1(
            json.dumps([parent, message, sorted(tree.items()), len(commits)]).encode()
        ).hexdigest()
        commits[oid] = {"parent": parent, "message": message, "files": tree}
        refs[branch] = oid
        self.write("commits.json", commits)
        self.write("refs.json", refs)
        return oid

    def history(self, branch: str = "main") -> list[dict]:
        """Commits of `branch`, newest first, each with its oid."""
        commits, oid, out = self.read("commits.json"), self.read("refs.json").get(branch), []
        while oid:
            out.append({"oid": oid, **commits[oid]})
            oid = commits[oid]["parent"]
        return out


@dataclass
class HubState:
    """Everything the handler shares: storage root, tokens, recorded hits, pending faults."""

    root: Path
    tokens: dict[str, dict]
    hits: list[tuple[str, str, str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    faults: list[tuple[str, str]] = field(default_factory=list)  # (route name, "503" | "drop" | "drop_after")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        return Repo(self.root / repo_type / repo_id)

    def take_fault(self, route: str) -> str | None:
        for i, (name, kind) in enumerate(self.faults):
            if name == route:
                del self.faults[i]
                return kind
        return None


class Handler(BaseHTTPRequestHandler):
    state: HubState  # set on the subclass made per server

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ---- plumbing ----------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        for route_method, name, pattern in ROUTES:
            match = pattern.match(path)
            if route_method == method and match:
                self.state.hits.append((method, name, path))
                return self._serve(name, match.groupdict(), query, body)
        self.state.unknown.append(f"{method} {path}")
        self._json(404, {"error": f"hub_server: unknown route {method} {path}"})

    def _serve(self, name: str, groups: dict, query: dict, body: bytes) -> None:
        fault = self.state.take_fault(name)
        if fault == "503":
            return self._json(503, {"error": "injected 503"})
        if fault == "drop":
            return self._drop()
        try:
            with self.state.lock:
                status, payload, headers = getattr(self, f"_{name}")(groups, query, body)
        except HubError as e:
            headers = {"X-Error-Code": e.code} if e.code else {}
            return self._json(e.status, {"error": str(e)}, headers)
        if fault == "drop_after":
            return self._drop()
        if isinstance(payload, bytes):
            return self._bytes(status, payload, headers)
        return self._json(status, payload, headers)

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _json(self, status: int, payload: Any, headers: dict | None = None) -> None:
        self._bytes(
            status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Length": str(len(data)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _user(self, required: bool = True) -> dict | None:
        auth = self.headers.get("Authorization", "")
        user = self.state.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if required and user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _writable(self, repo_type: str, repo_id: str) -> Repo:
        user = self._user()
        namespace = repo_id.split("/")[0]
        if user["role"] != "write" or namespace not in (user["name"], *user.get("orgs", [])):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return self._existing(repo_type, repo_id)

    def _existing(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.state.repo(repo_type, repo_id)
        if not (repo.path / "meta.json").is_file():
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        if repo.meta["private"]:
            user = self._user(required=False)
            if user is None or repo_id.split("/")[0] not in (user["name"], *user.get("orgs", [])):
                raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    # ---- routes --------------------------------------------------------------------------
    def _whoami(self, groups, query, body):
        user = self._user()
        orgs = [{"name": org, "roleInOrg": "admin"} for org in user.get("orgs", [])]
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": user["role"]}}
        return 200, {"type": "user", "name": user["name"], "orgs": orgs, "auth": auth}, {}

    def _agent_harnesses(self, groups, query, body):
        """The `hf` CLI reads this registry once a day: served empty (huggingface_hub's own offline fallback)."""
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def _auth_check(self, groups, query, body):
        """`HfApi.auth_check`: 401 bad token, 404 unknown (or hidden) repo, 403 no write access."""
        self._user()
        self._existing(groups["type"], groups["repo"])
        if groups.get("write"):
            self._writable(groups["type"], groups["repo"])
        return 200, {}, {}

    def _create_repo(self, groups, query, body):
        payload = json.loads(body)
        repo_type = (payload.get("type") or "model") + "s"
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self._base()}/{_url_prefix(repo_type)}{repo_id}"
        repo = self.state.repo(repo_type, repo_id)
        if (repo.path / "meta.json").is_file():
            return 409, {"error": "You already created this repo", "url": url}, {}
        user = self._user()
        if user["role"] != "write" or payload["organization"] not in (user["name"], *user.get("orgs", [])):
            raise HubError(403, f"You don't have the rights to create a repo under {payload['organization']}")
        if repo_type == "spaces" and payload.get("sdk") not in SPACE_SDKS:
            raise HubError(
                400, f"a Space needs an sdk, one of {', '.join(SPACE_SDKS)}; got {payload.get('sdk')!r}"
            )
        repo.path.mkdir(parents=True)
        repo.write("commits.json", {})
        repo.write("refs.json", {})
        repo.write(
            "meta.json", {"private": payload.get("visibility") == "private", "sdk": payload.get("sdk")}
        )
        repo.commit("main", "initial commit", INITIAL_FILES, [])
        return 200, {"url": url, "name": repo_id}, {}

    def _validate_yaml(self, groups, query, body):
        content = json.loads(body)["content"]
        if not content.startswith("---\n"):
            return 200, {"warnings": [{"message": "Empty or missing yaml metadata in repo card"}]}, {}
        return 200, {}, {}

    def _refs(self, groups, query, body):
        """`HfApi.list_repo_refs`: branches and tags with their commits (LeRobot finds dataset versions here)."""
        repo = self._existing(groups["type"], groups["repo"])

        def info(kind: str, refs: dict[str, str]) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(refs.items())]

        return 200, {"branches": info("heads", repo.read("refs.json")), "tags": info("tags", repo.tags), "converts": [],
                     "pullRequests": []}, {}  # fmt: skip

    def _tag(self, groups, query, body):
        """`HfApi.create_tag(revision=rev)`: 409 when the tag exists."""
        repo = self._writable(groups["type"], groups["repo"])
        tag, tags = json.loads(body)["tag"], repo.tags
        if tag in tags:
            raise HubError(409, f"Tag {tag} already exists")
        tags[tag] = repo.head(groups["rev"])
        repo.write("tags.json", tags)
        return 200, {}, {}

    def _delete_tag(self, groups, query, body):
        repo = self._writable(groups["type"], groups["repo"])
        tags = repo.tags
        if groups["tag"] not in tags:
            raise HubError(404, f"Invalid rev id: {groups['tag']}", "RevisionNotFound")
        del tags[groups["tag"]]
        repo.write("tags.json", tags)
        return 200, {}, {}

    def _branch(self, groups, query, body):
        repo = self._writable(groups["type"], groups["repo"])
        refs = repo.read("refs.json")
        if groups["rev"] in refs:
            raise HubError(409, f"Branch {groups['rev']} already exists")
        refs[groups["rev"]] = refs["main"]
        repo.write("refs.json", refs)
        return 200, {}, {}

    def _preupload(self, groups, query, body):
        repo = self._writable(groups["type"], groups["repo"])
        files = repo.files(groups["rev"]) if groups["rev"] in repo.read("refs.json") else {}
        out = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
            for f in json.loads(body)["files"]
        ]
        return 200, {"files": out}, {}

    def _commit(self, groups, query, body):
        repo = self._writable(groups["type"], groups["repo"])
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        refs = repo.read("refs.json")
        if header.get("parentCommit") and header["parentCommit"] != refs.get(groups["rev"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files, deleted = {}, []
        for line in lines[1:]:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] == "deletedFile":
                deleted.append(line["value"]["path"])
            else:
                raise HubError(400, f"hub_server: unsupported commit operation {line['key']}")
        oid = repo.commit(groups["rev"], header["summary"], files, deleted)
        prefix = _url_prefix(groups["type"])
        return (
            200,
            {
                "commitUrl": f"{self._base()}/{prefix}{groups['repo']}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            },
            {},
        )

    def _info(self, groups, query, body):
        repo = self._existing(groups["type"], groups["repo"])
        sha = repo.head(groups.get("rev") or "main")
        files = repo.read("commits.json")[sha]["files"]
        siblings = [{"rfilename": p} for p in sorted(files)]
        return (
            200,
            {
                "id": groups["repo"],
                "sha": sha,
                "private": repo.meta["private"],
                "siblings": siblings,
                "tags": [],
                **({"sdk": repo.meta.get("sdk")} if groups["type"] == "spaces" else {}),
            },
            {},
        )

    def _tree(self, groups, query, body):
        repo = self._existing(groups["type"], groups["repo"])
        files = repo.files(groups["rev"])
        prefix = (groups.get("path") or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        for path_in_repo, oid in sorted(files.items()):
            rest = path_in_repo[len(prefix) + 1 :] if prefix else path_in_repo
            if prefix and not path_in_repo.startswith(prefix + "/"):
                continue
            if "/" in rest and not recursive:
                folders.add((prefix + "/" if prefix else "") + rest.split("/")[0])
                continue
            entries.append({"type": "file", "oid": oid, "size": len(repo.blob(oid)), "path": path_in_repo})
        entries += [
            {"type": "directory", "oid": git_oid(f.encode()), "size": 0, "path": f} for f in sorted(folders)
        ]
        return 200, entries, {}

    def _resolve(self, groups, query, body):
        repo = self._existing("datasets" if groups.get("type") else "models", groups["repo"])
        sha = repo.head(groups["rev"])
        oid = repo.read("commits.json")[sha]["files"].get(groups["path"])
        if oid is None:
            raise HubError(404, f"Entry not found: {groups['path']}", "EntryNotFound")
        return (
            200,
            repo.blob(oid),
            {"X-Repo-Commit": sha, "ETag": f'"{oid}"', "Content-Type": "application/octet-stream"},
        )


class LoopbackHub:
    """Start / stop the server; `url` is the endpoint to give `HfApi(endpoint=...)` or `HF_ENDPOINT`."""

    def __init__(self, root: Path, tokens: dict[str, dict]) -> None:
        self.state = HubState(Path(root), tokens)
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo(self, repo_id: str, repo_type: str = "models") -> Repo:
        return self.state.repo(repo_type, repo_id)

    def routes_hit(self) -> set[str]:
        return {name for _, name, _ in self.state.hits}
