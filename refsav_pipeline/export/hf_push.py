"""``refsav export hf --push``: upload a dataset folder to the Hugging Face Hub.

The token is ``huggingface_hub``'s usual one (``HF_TOKEN``, or ``hf auth login``); the Hub is
``HF_ENDPOINT`` (default huggingface.co). An unreachable Hub or a refusal is one line saying
so; the folder stays as written, to push again.
"""

from __future__ import annotations

from pathlib import Path

from refsav_pipeline.errors import InputError
from refsav_pipeline.export.hf_dataset import BUILD_PREFIX, CARD_FILE, DATA_DIR


class PushFailed(Exception):
    """The Hub could not be reached, or refused the upload; the message says which."""


def check_repo_id(repo_id: str) -> None:
    """``owner/name`` as the Hub spells repository ids; an ``InputError`` otherwise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise InputError(f"--push {repo_id!r} is not a Hub repository id like "
                         f"owner/name: {' '.join(str(exc).split())}") from exc


def check_dataset_folder(folder: Path) -> None:
    """A folder ``refsav export hf`` wrote (a card and Parquet files), before it is uploaded."""
    if not (folder / CARD_FILE).is_file() or not any((folder / DATA_DIR).glob("*.parquet")):
        raise InputError(f"--to {folder} has no {CARD_FILE} and {DATA_DIR}/*.parquet: write it "
                         "first with `refsav export hf --out RUN --to DIR`")


def push_folder(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create the dataset repository if needed and upload ``folder`` as one commit; Parquet
    files of an earlier upload that this one does not have are deleted in the same commit.
    Returns the commit's address."""
    import httpx2  # huggingface_hub's HTTP client: its transport errors mean "unreachable"
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    api = HfApi()
    where = f"the Hugging Face Hub at {constants.ENDPOINT}"
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=folder,
                                   commit_message="refsav export hf",
                                   ignore_patterns=[f"{BUILD_PREFIX}*"],  # left by a killed build
                                   delete_patterns=[f"{DATA_DIR}/*.parquet"])
    except OfflineModeIsEnabled as exc:
        raise PushFailed(f"cannot push to {where}: HF_HUB_OFFLINE is set") from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = (" (log in with `hf auth login` or set HF_TOKEN)"
                if status in (401, 403) else "")
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PushFailed(f"{where} refused the upload of {repo_id}{hint}: {first}") from exc
    except (httpx2.TransportError, OSError) as exc:
        raise PushFailed(f"cannot reach {where}: {str(exc) or 'no connection'}") from exc
    return commit.commit_url
