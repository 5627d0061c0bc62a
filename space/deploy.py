"""Build the Hugging Face Space of the demo and upload it.

    python space/deploy.py --repo-id OWNER/sleb-demo            # needs HF_TOKEN or a saved login
    python space/deploy.py --dry-run --out build/space          # writes the exact Space folder, no network

The Space folder holds app.py, the sleb package, a requirements.txt with the project's
runtime pins, README.md (this folder's card, with `sdk_version` set to the pinned
gradio and `models:` listing the zoo's repos, or the base model while there is no zoo),
and the zoo manifest when there is one. The embedded default model is not shipped: on the
Space the demo loads its base model, HuggingFaceTB/SmolLM2-135M-Instruct, from the Hub.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sleb.demo.zoo_listing import zoo_repos  # noqa: E402
from sleb.errors import SlebError  # noqa: E402

log = logging.getLogger("space.deploy")

DEV_ONLY = {"pytest", "ruff", "selenium", "olah"}  # test tools: not needed on the Space
MANIFEST = Path("zoo") / "manifest.yaml"


def runtime_requirements(text: str) -> list[str]:
    """The project's pinned requirements without the editable install and the test tools."""
    keep = []
    for line in text.splitlines():
        line = line.strip()
        name = re.split(r"[=<>!~\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-")
        if not line or line.startswith(("#", "-e", "--editable")) or name in DEV_ONLY:
            continue
        keep.append(line)
    return keep


def pinned(requirements: list[str], package: str) -> str:
    for line in requirements:
        name, _, version = line.partition("==")
        if name.strip().lower().replace("_", "-") == package:
            return version.strip()
    raise SlebError(f"requirements.txt must pin {package} (e.g. {package}==6.31.0): the Space's sdk_version needs it.")


def card(template: str, sdk_version: str, models: list[str]) -> str:
    """The README with its front matter's sdk_version and models set."""
    match = re.match(r"^---\n(.*?)\n---\n", template, re.S)
    if not match:
        raise SlebError("space/README.md must start with a YAML front matter block between --- lines.")
    front = yaml.safe_load(match.group(1))
    front.update(sdk="gradio", sdk_version=sdk_version, app_file="app.py", models=models)
    dumped = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
    return f"---\n{dumped}---\n{template[match.end():]}"


def build(out: Path) -> Path:
    """Write the Space folder to `out` (replacing it) and return it."""
    requirements = runtime_requirements((ROOT / "requirements.txt").read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(ROOT / "app.py", out / "app.py")
    shutil.copytree(ROOT / "sleb", out / "sleb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n")
    if (ROOT / MANIFEST).is_file():
        (out / MANIFEST).parent.mkdir(parents=True)
        shutil.copy2(ROOT / MANIFEST, out / MANIFEST)
    readme = card((ROOT / "space" / "README.md").read_text(), pinned(requirements, "gradio"),
                  zoo_repos(ROOT / MANIFEST))
    (out / "README.md").write_text(readme)
    log.info("Space folder written to %s", out)
    return out


def check_upload() -> None:
    """Fail early, before building, when an upload cannot work: offline, or no token."""
    from huggingface_hub import constants, get_token

    if constants.is_offline_mode():
        raise SlebError("HF_HUB_OFFLINE is set, so the Hub is unreachable: unset it to upload, or build the folder "
                        "only with --dry-run --out DIR.")
    if not get_token():
        raise SlebError("No Hugging Face token: set HF_TOKEN (a token with write access) or run `hf auth login`.")


def upload(folder: Path, repo_id: str, private: bool) -> str:
    """Create the Space if needed and upload the folder; the token comes from HF_TOKEN or a saved login."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=folder,
                          commit_message="Deploy the sleb demo", delete_patterns=["sleb/**"])
    except Exception as exc:  # network, permissions: one clear line, never the token
        raise SlebError(f"Could not upload to the Space {repo_id}: {type(exc).__name__}: {exc}") from exc
    return f"https://huggingface.co/spaces/{repo_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-id", help="the Space, OWNER/NAME (required unless --dry-run)")
    parser.add_argument("--private", action="store_true", help="create the Space as private")
    parser.add_argument("--dry-run", action="store_true", help="only write the folder (with --out); no network")
    parser.add_argument("--out", type=Path, help="where to write the Space folder (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.dry_run:
            if not args.out:
                raise SlebError("--dry-run needs --out DIR: the folder to write.")
            build(args.out)
            return 0
        if not args.repo_id:
            raise SlebError("Give --repo-id OWNER/NAME, or --dry-run --out DIR to only build the folder.")
        check_upload()
        with tempfile.TemporaryDirectory() as tmp:
            folder = build(args.out or Path(tmp) / "space")
            log.info("Uploaded: %s", upload(folder, args.repo_id, args.private))
        return 0
    except SlebError as exc:
        log.error("error: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
