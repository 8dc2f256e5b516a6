"""Download a model repo from the Hub, only the files a conversion needs, with every failure as one line.

`huggingface_hub` does the work (its cache, `HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`); `offline=True`
(`--offline`) reads the cache only and fails at once when the files are not there. The format is decided from
`config.json` before any weights are fetched: a timm repo (`architecture` + `pretrained_cfg`) needs one weights file,
`model.safetensors` or else `pytorch_model.bin` (timm's own order); a transformers repo (`model_type`) the files its
converter names (`convert.transformers.TRANSFORMERS_ALLOW_PATTERNS`). Errors: one line each, as
`convert.common.ConversionError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from convert.checkpoints import read_json_object
from convert.common import ConversionError

TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Downloaded:
    """A repo's files in the local cache: the snapshot folder, the commit it resolves to, its config.json."""

    repo_id: str
    folder: Path
    commit: str
    config: dict


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _is_network_error(e: BaseException) -> bool:
    """A failure to reach the server at all (refused, DNS, timeout, offline mode), as opposed to an HTTP answer."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        return False
    return isinstance(e, (OSError, TimeoutError)) or type(e).__module__.split(".")[0] in ("httpx", "httpx2")


def hub_errors(repo_id: str, revision: str | None, offline: bool) -> Callable[[BaseException], ConversionError]:
    """The one-line message for each huggingface_hub failure (subclasses first: GatedRepoError is a
    RepositoryNotFoundError, LocalEntryNotFoundError an EntryNotFoundError). `offline`: the cache was all there was
    (--offline, HF_HUB_OFFLINE, or the Hub could not be reached)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"@{revision}" if revision else ""

    def message(e: BaseException) -> ConversionError:
        if isinstance(e, GatedRepoError):
            text = f"{repo_id} is gated: accept its terms on the Hub, then log in (HF_TOKEN or `hf auth login`)"
        elif isinstance(e, RepositoryNotFoundError):
            text = (f"{repo_id}: no such model repo on {_endpoint()}, or it is private and no valid token was given "
                    f"(HF_TOKEN or `hf auth login`); nor a local path {repo_id}")
        elif isinstance(e, RevisionNotFoundError):
            text = f"{repo_id}: revision {revision!r} does not exist"
        elif isinstance(e, LocalEntryNotFoundError):
            fix = ("; drop --offline to download them" if str(offline).startswith("--offline")
                   else "; unset HF_HUB_OFFLINE to download them" if "HF_HUB_OFFLINE" in str(offline) else "")
            text = f"{repo_id}{at}: {offline}: the files are not in the local cache ({_cache_dir()}){fix}"
        elif isinstance(e, EntryNotFoundError):
            text = f"{repo_id}{at} has no config.json: not a timm or transformers model repo"
        elif isinstance(e, HfHubHTTPError):
            status = e.response.status_code if getattr(e, "response", None) is not None else "?"
            text = f"{repo_id}{at}: the Hub answered HTTP {status} ({' '.join(str(e).split())[:200]})"
        else:
            text = f"{repo_id}{at}: download failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        return ConversionError(text)

    return message


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _reachable(repo_id: str, revision: str | None, offline: bool) -> str | None:
    """One API call that fails fast (file downloads retry with back-off for ~20 s and log each retry) when the Hub
    cannot be reached, and names a missing repo or revision. Returns why only the cache can be used, or None."""
    from huggingface_hub import HfApi, constants

    if offline:
        return "--offline was given"
    if constants.HF_HUB_OFFLINE:
        return "offline mode (HF_HUB_OFFLINE=1)"
    try:
        HfApi().model_info(repo_id, revision=revision)
    except Exception as e:
        if not _is_network_error(e):
            raise
        return f"cannot reach the Hub at {_endpoint()} (network down? HF_ENDPOINT?)"
    return None


def _commit_of(path: str) -> str:
    """The commit a cached file belongs to: its snapshot folder is `.../snapshots/<commit>/<file>`."""
    return Path(path).parent.name


def _download_timm_weights(repo_id: str, revision: str | None, offline: bool) -> Path:
    """`model.safetensors`, else `pytorch_model.bin` (timm's own preference), into the cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    not_cached = None
    for name in TIMM_WEIGHTS:
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=offline,
                                        library_name="vit_hf"))
        except LocalEntryNotFoundError as e:
            if not offline:
                raise
            not_cached = e  # the other file may be cached
        except EntryNotFoundError:
            continue
    if not_cached is not None:
        raise not_cached
    raise ConversionError(f"{repo_id}: a timm repo without {' or '.join(TIMM_WEIGHTS)}")


def _transformers_files(repo_id: str, commit: str, offline: bool) -> list[str]:
    """The files to fetch: the converter picks them from the repo's listing (one weights format, the shards its index
    names); offline, its patterns (only cached files are read offline anyway)."""
    from convert.transformers import TRANSFORMERS_ALLOW_PATTERNS, files_to_download

    if offline:
        return list(TRANSFORMERS_ALLOW_PATTERNS)
    from huggingface_hub import HfApi

    return files_to_download(HfApi().list_repo_files(repo_id, revision=commit))


def _download_transformers(repo_id: str, commit: str, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    files = _transformers_files(repo_id, commit, offline)
    folder = Path(snapshot_download(repo_id, revision=commit, allow_patterns=files, local_files_only=offline,
                                    library_name="vit_hf"))
    if not (folder / "config.json").is_file():  # allow_patterns that match nothing only log, and return a bare path
        raise ConversionError(f"{repo_id}@{commit}: the snapshot holds no config.json")
    return folder


def download(repo_id: str, revision: str | None = None, offline: bool = False,
             check: Callable[[dict], None] | None = None) -> Downloaded:
    """config.json first (to tell the format; `check(config)` may refuse it before any weights are fetched), then the
    weights and files that format needs, all at one commit."""
    from huggingface_hub import hf_hub_download

    try:
        cache_only = _reachable(repo_id, revision, offline)
    except (OSError, ValueError) as e:  # huggingface_hub's errors are OSError/HTTPError; HFValidationError ValueError
        raise hub_errors(repo_id, revision, False)(e) from None
    to_error = hub_errors(repo_id, revision, cache_only)
    try:
        # by the revision's own name (so a branch is cached as such for --offline), then everything at its commit
        config_path = hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=bool(cache_only),
                                      library_name="vit_hf")
        commit = _commit_of(config_path)
        config = read_json_object(config_path, f"{repo_id}@{commit}: config.json")
        if check is not None:
            check(config)
        if "model_type" in config:
            folder = _download_transformers(repo_id, commit, bool(cache_only))
        else:  # timm (or unknown: the folder converter says what is missing)
            folder = _download_timm_weights(repo_id, commit, bool(cache_only)).parent
    except ConversionError:
        raise
    except (OSError, ValueError) as e:
        raise to_error(e) from None
    return Downloaded(repo_id=repo_id, folder=folder, commit=commit, config=config)
