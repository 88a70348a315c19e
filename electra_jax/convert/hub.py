"""Hugging Face Hub model ids wherever a model folder is read, and pushing an exported folder to the Hub.

    folder = hub.resolve("google/electra-small-discriminator")            # the snapshot folder in the HF cache
    folder = hub.resolve("google/electra-small-discriminator@<sha>")      # a revision (branch, tag or commit)
    folder = hub.resolve("/path/to/folder")                               # an existing path, returned as it is
    hub.push("hf/disc", "me/electra-small-continued")                     # create_repo + upload_folder

Resolution goes through huggingface_hub's own cache and rules: HF_HUB_CACHE / HF_HOME name the cache, HF_HUB_OFFLINE=1
reads only the cache, the token comes from HF_TOKEN or `hf auth login`. Only the files a model folder needs are
fetched (config.json, the safetensors weights, the tokenizer files; pytorch_model.bin only where a repository has no
safetensors). An id that is neither cached nor reachable raises HubError, one line naming it.
"""

from __future__ import annotations

import os
import re

from electra_jax import errors

MODEL_FILES = ("config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json", "vocab.txt",
               "tokenizer_config.json", "special_tokens_map.json")
LEGACY_WEIGHTS = ("pytorch_model.bin",)
# owner/name as the Hub spells repository ids (one optional owner; letters, digits, '-', '_', '.')
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class HubError(errors.Error, FileNotFoundError):
  """A model id the Hugging Face Hub and its local cache cannot provide."""


def split_revision(name: str, revision: str | None = None) -> tuple[str, str | None]:
  """"owner/name@rev" -> ("owner/name", "rev"); an explicit revision wins over the suffix."""
  if "@" in name and not os.path.exists(name):
    name, suffix = name.rsplit("@", 1)
    revision = revision or suffix or None
  return name, revision


def is_hub_id(name: str) -> bool:
  """True for a string that names a Hub repository rather than a path: "owner/name" or "name", neither existing
  locally nor inside an existing local folder (so a mistyped "runs/pretrain" stays a missing path)."""
  name, _ = split_revision(name)
  if "/" in name and os.path.isdir(name.split("/")[0]):   # a missing path inside an existing local folder
    return False
  return (not os.path.exists(name) and bool(_REPO_ID.match(name)) and not name.startswith(".")
          and ".." not in name and not name.endswith((".json", ".txt", ".safetensors")))


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> str:
  """A local folder for a path or a Hub model id: an existing path is returned unchanged; an id is resolved to its
  snapshot folder in the Hugging Face cache (downloaded unless HF_HUB_OFFLINE=1 or already complete). Anything else
  is returned unchanged, for the caller's own "does not exist" error."""
  name = os.fspath(name_or_path)
  if os.path.exists(name) or not is_hub_id(name):
    return name
  repo_id, revision = split_revision(name, revision)
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  from huggingface_hub import errors as hf_errors  # pylint: disable=import-outside-toplevel
  where = f"{repo_id}" + (f"@{revision}" if revision else "")
  try:
    folder = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILES))
    if not _has_weights(folder):   # an older repository with PyTorch weights only
      folder = huggingface_hub.snapshot_download(repo_id, revision=revision,
                                                 allow_patterns=list(MODEL_FILES + LEGACY_WEIGHTS))
  except (hf_errors.RepositoryNotFoundError, hf_errors.GatedRepoError) as e:
    raise HubError(f"{where}: not a local path, and the Hugging Face Hub has no model {repo_id} that this token "
                   f"may read ({type(e).__name__}); check the id, or log in (HF_TOKEN / `hf auth login`)") from None
  except hf_errors.RevisionNotFoundError:
    raise HubError(f"{where}: the Hugging Face Hub has no revision {revision!r} of {repo_id}") from None
  except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, hf_errors.HfHubHTTPError,
          OSError) as e:
    offline = _offline()
    raise HubError(f"{where}: not a local path and not in the Hugging Face cache ({_cache_dir()}), and the Hub "
                   f"{'is off (HF_HUB_OFFLINE=1)' if offline else 'cannot be reached'} ({type(e).__name__}); "
                   f"download it once with network access, or pass a local folder") from None
  if not os.path.isfile(os.path.join(folder, "config.json")):
    raise HubError(f"{where}: the snapshot {folder} has no config.json; it is not a Transformers model")
  return folder


def _has_weights(folder: str) -> bool:
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names)


def _offline() -> bool:
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _cache_dir() -> str:
  from huggingface_hub import constants  # pylint: disable=import-outside-toplevel
  return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def push(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None, revision: str | None = None,
         commit_message: str | None = None) -> str:
  """Uploads an exported HF folder to the Hub repository `repo_id` (created if missing); returns the commit URL."""
  from huggingface_hub import HfApi  # pylint: disable=import-outside-toplevel
  from huggingface_hub import errors as hf_errors  # pylint: disable=import-outside-toplevel
  folder = os.fspath(folder)
  if not _REPO_ID.match(repo_id) or "/" not in repo_id:
    raise HubError(f"--push_to_hub={repo_id}: a Hub repository id is owner/name")
  api = HfApi()
  try:
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
                             commit_message=commit_message or f"electra_jax export of {os.path.basename(folder)}")
  except (hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, hf_errors.LocalTokenNotFoundError) as e:
    raise HubError(f"--push_to_hub={repo_id}: the upload of {folder} failed ({type(e).__name__}: "
                   f"{' '.join(str(e).split())[:200]}); the folder is written, push it again when the Hub is "
                   f"reachable and the token (HF_TOKEN) may write there") from None
  return str(getattr(info, "commit_url", info))
