"""Publishing: the hub-ready folder (`folders`: weights, config with `auto_map`, processor, the copied remote-code
files, checked by a packaging doctor), its model card (`cards`, from the top-level `model_card.md` template) and the
push to a Hub (`push`). Used by the converters and by training; never imported by the remote-code files."""

from .cards import render_model_card
from .folders import HUB_FILE_NAMES, REMOTE_FILES, HubFolderError, check_hub_folder, save_hub_folder
from .push import HubPushError, hub_files, pinned_usage, push_folder

__all__ = [
    "HUB_FILE_NAMES", "REMOTE_FILES", "HubFolderError", "HubPushError", "check_hub_folder", "hub_files",
    "pinned_usage", "push_folder", "render_model_card", "save_hub_folder",
]
