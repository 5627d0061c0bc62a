"""Publishing through `HfApi`: first a plan of what would be sent, then the push.

`Publisher.plan(...)` touches no network: the repository id, the file list and the commit
message, which `--dry-run` writes to `plan.json`. `Publisher.push(plan)`:

1. checks, before anything is sent, that there is a token (`HF_TOKEN` or a saved login) and
   that the Hub is not switched off (`HF_HUB_OFFLINE`);
2. skips the repository when the Hub copy of its key file (`sleb.json`) has the same hash;
3. `create_repo(exist_ok=True)`;
4. when the Hub holds another version, takes its card and `sleb.json` down first, so that no
   card ever describes weights it was not measured on;
5. uploads the weights and results (`upload_folder`; with hf_xet possibly several commits),
   then the card and `sleb.json` in one last commit.

A push that fails midway leaves a repository without a card (and without the key file), so a
rerun pushes it again and finishes it. The token is never logged or written anywhere.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sleb.errors import SlebError
from sleb.files import RECORD_FILE

log = logging.getLogger(__name__)

KEY_FILE = RECORD_FILE
CARD_FILE = "README.md"
INDEX_KEY_FILE = "zoo.json"


class PublishError(SlebError):
    """Publishing cannot go on; the message says which cause (token, offline, network, permissions)."""


@dataclass
class PushPlan:
    """What one push sends: the repository, the folder and its files, the commit message."""

    repo_id: str
    repo_type: str
    folder: str
    files: list[str]
    commit_message: str
    commit_description: str
    private: bool
    key_file: str
    key_sha256: str
    card_last: bool = True  # the card and key file go in a last commit, after everything else
    space_sdk: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_files(folder: str | os.PathLike) -> list[str]:
    """Every file under `folder`, as paths relative to it (what `upload_folder` sends)."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _offline_env() -> bool:
    from huggingface_hub import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class Publisher:
    """Pushes staged folders to `org` on the Hub (or the Hub at `endpoint`)."""

    def __init__(self, org: str, *, private: bool = False, token: str | None = None, endpoint: str | None = None,
                 offline: bool | None = None):
        self.org = org
        self.private = private
        self._token = token
        self.endpoint = endpoint
        self.offline = _offline_env() if offline is None else offline

    # ------------------------------------------------------------------------------------------- no network

    def token(self) -> str | None:
        """The explicit token, else HF_TOKEN, else a saved login (`hf auth login`)."""
        if self._token:
            return self._token
        from huggingface_hub import get_token

        return get_token()

    def where(self) -> str:
        from huggingface_hub import constants

        return self.endpoint or constants.ENDPOINT

    def check_ready(self) -> None:
        """Raise PublishError, sending nothing, when there is no token or the Hub is switched off."""
        problems = []
        if not self.token():
            problems.append("no Hugging Face token: set HF_TOKEN (a token with write access to "
                            f"{self.org}) or log in with `hf auth login`")
        if self.offline:
            problems.append("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to publish")
        if problems:
            raise PublishError("Cannot publish: " + "; and ".join(problems) + ". Nothing was sent. To build the "
                               "repository folders without publishing, use --dry-run --out DIR.")

    def plan(self, folder: str | os.PathLike, name: str, commit_message: str, commit_description: str = "",
             repo_type: str = "model", key_file: str = KEY_FILE, card_last: bool = True,
             space_sdk: str | None = None) -> PushPlan:
        """What `push` would send for `folder` to `<org>/<name>`; reads the folder only."""
        folder = Path(folder)
        files = folder_files(folder)
        if key_file not in files:
            raise PublishError(f"{folder} has no {key_file}; it is not a staged repository folder.")
        return PushPlan(repo_id=f"{self.org}/{name}", repo_type=repo_type, folder=str(folder), files=files,
                        commit_message=commit_message, commit_description=commit_description, private=self.private,
                        key_file=key_file, key_sha256=sha256_file(folder / key_file), card_last=card_last,
                        space_sdk=space_sdk)

    # ------------------------------------------------------------------------------------------- network

    def api(self):
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token())

    def preflight(self) -> str:
        """Before any work: token, not offline, and the Hub reachable and accepting the token. Returns the user."""
        self.check_ready()
        try:
            who = self.api().whoami()
        except Exception as exc:
            raise self.explain(exc, "check the token (whoami)") from None
        name = who.get("name", "?")
        orgs = [o.get("name") for o in who.get("orgs", []) if isinstance(o, dict)]
        if self.org != name and orgs and self.org not in orgs:
            log.warning("The token's user %s is not a member of %s (member of: %s); the push may be refused.",
                        name, self.org, ", ".join(orgs))
        log.info("Publishing to %s/%s as %s", self.where(), self.org, name)
        return name

    def explain(self, exc: Exception, action: str) -> PublishError:
        """A PublishError that says which: token refused, no permission, offline, or no network."""
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        if isinstance(exc, PublishError):
            return exc
        if isinstance(exc, OfflineModeIsEnabled):
            return PublishError(f"Could not {action}: HF_HUB_OFFLINE is set; unset it to publish.")
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if status == 401:
                return PublishError(f"Could not {action}: the Hub refused the token (401). Set a valid HF_TOKEN or "
                                    "log in again with `hf auth login`.")
            if status == 403:
                return PublishError(f"Could not {action}: the token may not write to {self.org} (403). Use a token "
                                    "with write access to the organisation.")
            return PublishError(f"Could not {action}: the Hub answered {status}: {first}")
        return PublishError(f"Could not {action}: cannot reach the Hub at {self.where()} (network: "
                            f"{type(exc).__name__}: {exc}). Check the connection and run the same command again.")

    def remote_sha(self, plan: PushPlan) -> str | None:
        """The sha256 of the Hub copy of the plan's key file; None when the repository or the file is not there."""
        from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        with tempfile.TemporaryDirectory(prefix="sleb-zoo-") as tmp:
            try:
                path = self.api().hf_hub_download(plan.repo_id, plan.key_file, repo_type=plan.repo_type,
                                                  cache_dir=tmp)
            except (RepositoryNotFoundError, RemoteEntryNotFoundError, RevisionNotFoundError):
                return None
            return sha256_file(path)

    def push(self, plan: PushPlan) -> str:
        """Send the plan; returns "unchanged" (the Hub copy has the same key file) or "pushed"."""
        self.check_ready()
        step = f"read {plan.key_file} of {plan.repo_id}"
        try:
            remote = self.remote_sha(plan)
            if remote == plan.key_sha256:
                log.info("%s: the Hub copy has the same %s; skipped", plan.repo_id, plan.key_file)
                return "unchanged"
            api = self.api()
            step = f"create {plan.repo_id}"
            api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True,
                            space_sdk=plan.space_sdk)
            last = [CARD_FILE, plan.key_file]
            if plan.card_last:
                if remote is not None:
                    step = f"take down the outdated card of {plan.repo_id}"
                    api.delete_files(plan.repo_id, last, repo_type=plan.repo_type,
                                     commit_message="Take down the outdated card while the new version uploads")
                step = f"upload the files of {plan.repo_id}"
                api.upload_folder(repo_id=plan.repo_id, repo_type=plan.repo_type, folder_path=plan.folder,
                                  ignore_patterns=last, delete_patterns="*",
                                  commit_message=f"{plan.commit_message} (weights and results; the card follows)")
            step = f"upload the card of {plan.repo_id}"
            api.upload_folder(repo_id=plan.repo_id, repo_type=plan.repo_type, folder_path=plan.folder,
                              allow_patterns=last if plan.card_last else None, commit_message=plan.commit_message,
                              commit_description=plan.commit_description)
        except Exception as exc:
            raise self.explain(exc, step) from None
        log.info("Pushed %s/%s", self.where(), plan.repo_id)
        return "pushed"

    def update_collection(self, title: str, items: list[tuple[str, str]], description: str = "") -> str:
        """Create (or find) the collection `title` in the org and list `items` ((repo id, note)); returns its slug."""
        self.check_ready()
        api = self.api()
        try:
            collection = api.create_collection(title, namespace=self.org, description=description or None,
                                               private=self.private, exists_ok=True)
            present = {item.item_id: item for item in collection.items}
            for repo_id, note in items:
                note = note[:500]
                item = present.get(repo_id)
                if item is None:
                    api.add_collection_item(collection.slug, repo_id, "model", note=note, exists_ok=True)
                elif (item.note or "") != note:
                    api.update_collection_item(collection.slug, item.item_object_id, note=note)
        except Exception as exc:
            raise self.explain(exc, f"update the collection {title!r}") from None
        log.info("Collection %s lists %d variants", collection.slug, len(items))
        return collection.slug
