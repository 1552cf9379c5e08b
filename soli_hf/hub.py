"""Publish a saved SOLI folder to the Hugging Face Hub (`soli push`, scripts/push_to_hub.py)."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import HfApi, get_token

#: What a SOLI folder must hold to load from the Hub with `trust_remote_code=True` and the pipeline.
REQUIRED_FILES = (
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "pipeline_soli.py",
)
#: Files beside the model that are published when present (the run's evidence behind the model card).
OPTIONAL_FILES = ("training_config.json", "metrics.json", "training_curves.png")


def files_to_publish(folder: str | Path) -> list[str]:
    """The file names `push_to_hub` sends: the required files, the code files named by `auto_map` and the custom
    pipeline, and the optional run files present. Nothing else (no checkpoints, caches or hidden files).

    Raises:
        ValueError: the folder lacks a required file or a code file its config refers to (named).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        hint = " (write the model card first: scripts/make_model_card.py)" if "README.md" in missing else ""
        raise ValueError(f"{folder} is missing {', '.join(missing)}{hint}")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    references = list(config.get("auto_map", {}).values())
    references += [task["impl"] for task in config.get("custom_pipelines", {}).values()]
    if not config.get("auto_map"):
        raise ValueError(f"{folder}/config.json has no auto_map: save the model with soli_hf's save_pretrained")
    code_files = sorted({reference.split(".")[0] + ".py" for reference in references})
    code_files += sorted(path.name for path in folder.glob("*_soli.py") if path.name not in code_files)
    missing_code = [name for name in code_files if not (folder / name).is_file()]
    if missing_code:
        raise ValueError(f"{folder} is missing the code files {', '.join(missing_code)} named in config.json")
    optional = [name for name in OPTIONAL_FILES if (folder / name).is_file()]
    return sorted(set(REQUIRED_FILES) | set(code_files) | set(optional))


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload SOLI model",
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Create (if needed) the model repo `repo_id` and upload the folder's publishable files in one commit.

    Returns the commit URL. Raises ValueError with a clear message when no token is available or the folder
    is incomplete (checked before anything is sent).
    """
    files = files_to_publish(folder)
    token = token or get_token()
    if token is None:
        raise ValueError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
        allow_patterns=files,
    )
    return str(getattr(commit, "commit_url", commit))
