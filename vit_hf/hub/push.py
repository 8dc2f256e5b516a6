"""Publish a hub-ready folder (see `vit_hf.hub.folders`) to the Hugging Face Hub, and only its hub files.

Used by the converters' and the training script's `--push_to_hub`. Not remote code: never imported by the
modeling files, so it may use huggingface_hub freely.

Pinning: the model card's usage snippet tells readers to pin `revision`, because remote code runs on their
machine. A commit id is only known once the commit exists, so `push_folder` makes two commits:
1. the model commit: every hub file, with the card's snippet naming the repo and the branch;
2. a README-only commit, made on top of (1) with `parent_commit` so nothing can slip in between, that pins the
   snippet to (1)'s id. The code, weights and configs at (1) and (2) are identical, so the pin is exact.
`push_folder` returns (1)'s id: the revision that the card pins and that reproduces this push.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from .folders import REMOTE_FILES, check_hub_folder, code_files

# Everything a consumer needs and nothing else: optimizer state, checkpoints, caches and tracker logs that a
# training run leaves next to these files are never pushed.
HUB_FILES = ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_FILES)
_IMAGE_REF = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+\.png)>?\s*\)", re.I)
_REPO_LINE = re.compile(r'^(repo\s*=\s*)"[^"\n]*"', re.M)
_REVISION_LINE = re.compile(r'^(revision\s*=\s*)"[^"\n]*"', re.M)
# The converters spell their flags with dashes, the training script (transformers' example) with underscores.
TOKEN_HINT = "pass a token (--hub-token for the converters, --hub_token for training) or run `hf auth login`"


class HubPushError(RuntimeError):
    """A push failed for a reason the user can fix; the message says which. The local folder is untouched."""


def pinned_usage(repo_id: str, revision: str) -> str:
    """The usage snippet of the model card, pinned to `revision` (a commit id, ideally)."""
    return (
        "from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline\n\n"
        f'repo = "{repo_id}"\n'
        f'revision = "{revision}"  # pin the code you trust: remote code runs on your machine\n'
        "processor = AutoImageProcessor.from_pretrained(repo, revision=revision, trust_remote_code=True)\n"
        "model = AutoModelForImageClassification.from_pretrained(repo, revision=revision, trust_remote_code=True)\n"
        'classifier = pipeline("image-classification", model=repo, revision=revision, trust_remote_code=True)\n'
    )


def pin_card(text: str, repo_id: str, revision: str) -> str:
    """Rewrite the card's usage snippet (`repo = "..."`, `revision = "..."` lines) to name `repo_id` @ `revision`.

    Only those assignment lines change (their trailing comments stay); a card without a snippet is returned as is.
    """
    text = _REPO_LINE.sub(lambda m: f'{m.group(1)}"{repo_id}"', text)
    return _REVISION_LINE.sub(lambda m: f'{m.group(1)}"{revision}"', text)


def hub_files(folder: str | Path) -> list[str]:
    """The files of `folder` to publish: the hub set, the `.py` modules its auto_maps name and those modules' relative
    imports, `.png` plots the card shows."""
    folder = Path(folder).resolve()
    names = set(HUB_FILES) | code_files(folder)
    readme = folder / "README.md"
    if readme.is_file():
        for ref in _IMAGE_REF.findall(readme.read_text(encoding="utf-8")):
            target = (folder / ref).resolve()
            if target.is_relative_to(folder):  # never publish a file from outside the folder
                names.add(target.relative_to(folder).as_posix())
    return sorted(n for n in names if (folder / n).is_file())


def _is_connection_error(exc: BaseException) -> bool:
    """True for transport failures (refused, DNS, timeout) from httpx/httpx2 or the standard library."""
    while exc is not None:
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if any(c.__name__ in ("TransportError", "ConnectError", "TimeoutException") for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def _explained(endpoint: str, repo_id: str, user: list[str]) -> Iterator[None]:
    """Turn the client's exceptions into `HubPushError`s that name the problem and how to fix it."""
    try:
        yield
    except OfflineModeIsEnabled as e:
        raise HubPushError(f"cannot push to {repo_id}: HF_HUB_OFFLINE=1 is set; unset it to reach {endpoint}") from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise HubPushError(
                f"no valid Hub token: {endpoint} rejected the request (401). With a token that has write access, "
                f"{TOKEN_HINT} (or set HF_TOKEN)."
            ) from e
        if status == 403:
            who = f"user {user[0]!r}" if user else "this token"
            raise HubPushError(
                f"no write access to {repo_id} at {endpoint} (403): {who} cannot write to the namespace "
                f"{repo_id.split('/')[0]!r}. Push to a repo in your own namespace or ask for write access."
            ) from e
        raise HubPushError(f"pushing to {repo_id} at {endpoint} failed: {e}") from e
    except Exception as e:
        if "xet" in str(e).lower():
            # hf_xet reports every failure of its token/CAS calls as a ConnectionError, even an HTTP error answer.
            raise HubPushError(
                f"the Xet upload to {repo_id} at {endpoint} failed ({type(e).__name__}: {e}). If this endpoint has "
                "no Xet storage (a mirror or a local Hub), set HF_HUB_DISABLE_XET=1 to upload over plain LFS."
            ) from e
        if _is_connection_error(e):
            raise HubPushError(
                f"cannot reach the Hub at {endpoint} ({type(e).__name__}: {e}). Check the network, or HF_ENDPOINT."
            ) from e
        raise


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    create_repo: bool = True,
    pin_revision: bool = True,
    endpoint: str | None = None,
) -> str:
    """Push the hub files of `folder` to `repo_id` in one commit and return that commit's id.

    The folder is checked first (`check_hub_folder`) and only read, never written. Only `hub_files(folder)` are
    sent; the uploaded card names `repo_id` and, with `pin_revision`, a follow-up README-only commit pins its
    snippet to the returned commit id (see the module docstring).

    Args:
        repo_id: "namespace/name", or "name" for the token owner's namespace.
        token: a write token; default: `HF_TOKEN` or the one saved by `hf auth login`.
        revision: branch to commit to (default "main").
        create_repo: create the repository if needed (an existing one is reused).
        endpoint: Hub URL; default `HF_ENDPOINT` or https://huggingface.co.

    Raises:
        vit_hf.hub.HubFolderError: the folder would not load as remote code.
        HubPushError: no token, no write access, the Hub unreachable, or another Hub error (named in the message).
    """
    folder = Path(folder)
    check_hub_folder(folder)
    api = HfApi(endpoint=endpoint)
    endpoint = api.endpoint
    token = token or get_token()
    if not token:
        raise HubPushError(f"no Hub token: {TOKEN_HINT} (or set HF_TOKEN)")
    user: list[str] = []
    with _explained(endpoint, repo_id, user):
        # whoami first: it checks the token and that the Hub answers, in one request without retries.
        user.append(api.whoami(token=token)["name"])
        if "/" not in repo_id:
            repo_id = f"{user[0]}/{repo_id}"
        # Only create what is missing: `create_repo(exist_ok=True)` on a repo the token cannot write to takes a
        # fallback path that builds the repo URL without the custom endpoint and fails on anything but huggingface.co.
        if create_repo and not api.repo_exists(repo_id, token=token):
            repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
        branch = revision or "main"
        card = pin_card((folder / "README.md").read_text(encoding="utf-8"), repo_id, branch)
        # create_commit rather than upload_folder: the same selection, but the card is sent as rewritten bytes
        # (repo id filled in) without touching the local file.
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
            for name in hub_files(folder)
            if name != "README.md"
        ]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        info = api.create_commit(
            repo_id, operations, commit_message=commit_message or f"Upload {folder.name} (vit_hf)",
            revision=revision, token=token,
        )
        sha = info.oid
        pinned = pin_card(card, repo_id, sha)
        if pin_revision and pinned != card:
            try:
                api.create_commit(
                    repo_id,
                    [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=pinned.encode("utf-8"))],
                    commit_message=f"Pin the model card's usage snippet to {sha[:12]}",
                    revision=revision, parent_commit=sha, token=token,
                )
            except HfHubHTTPError as e:
                # The model commit is in; only the card's pin is missing (e.g. someone pushed in between: 412).
                warnings.warn(f"pushed {repo_id}@{sha}, but could not pin the model card to it: {e}", stacklevel=2)
    return sha
