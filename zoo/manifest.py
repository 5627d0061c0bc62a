"""The zoo manifest (YAML): target organisation, base models, ratios, calibration and evaluation budgets.

    org: my-org
    defaults:                    # settings every base inherits; a base may override any of them
      calibration: {source: c4, nsamples: 128, seqlen: 2048}
      eval: {max_windows: null, zeroshot_limit: null}
    bases:
      - name: smollm2-135m-instruct
        model: HuggingFaceTB/SmolLM2-135M-Instruct
        license: apache-2.0
        ratios: [0.1, 0.2, 0.3]

Each base gives one variant per ratio, named `<name>-<method slug>-<percent>` (for example
`smollm2-135m-instruct-sleb-refine-20` for the default method `sleb+refine`, whose '+' a Hub repository
name cannot hold; `...-sleb-20` for `method: sleb`) and published as `<org>/<variant name>`. The whole file is
checked before any work is done; every error names the file and the line at fault.
`--set key=value` (for example `eval.max_windows=4`) overrides a setting for every base and
is checked the same way. See `zoo/manifest.yaml` for every setting and its default.

With `heal: {enabled: true}` each ratio also gives a healed variant, `<name>-<method>-<percent>-healed`
(`sleb.healing`: the linear fold and/or distillation from the dense model). The settings, their
checks and `--set` live in `zoo/settings.py`; the YAML-with-line-numbers parser in `zoo/yamltree.py`.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sleb import names as naming
from sleb.loading import DEFAULT_BASE_ID, DEFAULT_MODEL

from .settings import (
    DEFAULT_SETTINGS,
    LEAVES,
    _bool,
    _merge,
    _settings,
    _unknown_key,
    parse_override,
    variant_method,
)
from .yamltree import Bad as _Bad
from .yamltree import ManifestError, Node, parse

__all__ = ["DEFAULT_MANIFEST", "DEFAULT_SETTINGS", "LEAVES", "Base", "Manifest", "ManifestError", "Variant",
           "load_manifest", "parse_override", "variant_name"]

log = logging.getLogger(__name__)

DEFAULT_MANIFEST = Path(__file__).resolve().parent / "manifest.yaml"

DEFAULT_INDEX = {"repo": "README", "type": "space", "collection": "SLEB zoo"}
BASE_FIELDS = ("name", "model", "fallback", "base_model", "license", "license_name", "license_link", "ratios")
TOP_FIELDS = ("org", "private", "index", "defaults", "bases")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
LICENSE_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


# --------------------------------------------------------------------------------------------- the manifest


@dataclass
class Base:
    """One base model: how to load it, what it is on the Hub, its licence, ratios and settings."""

    name: str
    model: str
    base_model: str
    license: str
    ratios: list[float]
    settings: dict
    line: int
    fallback: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    ratio_lines: list[int] = field(default_factory=list)


@dataclass
class Variant:
    """One pruned model to publish: a base at one ratio, healed or not."""

    name: str
    repo_id: str
    base: Base
    ratio: float
    line: int
    healed: bool = False


@dataclass
class Manifest:
    """A validated manifest: every base with its settings merged, every variant named."""

    path: Path
    org: str
    private: bool
    index: dict
    bases: list[Base]
    overrides: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[Variant]:
        return [v for base in self.bases for v in base_variants(base, self.org)]

    def select(self, only: list[str] | None = None) -> list[Variant]:
        """The variants named in `only` (all when empty); an unknown name is an error that lists the known ones."""
        variants = self.variants
        if not only:
            return variants
        by_name = {v.name: v for v in variants}
        unknown = [n for n in only if n not in by_name]
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(by_name), n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ManifestError(f"--only: no variant named {', '.join(unknown)} in {self.path}.{hint} "
                                f"Known: {', '.join(by_name)}.")
        return [by_name[n] for n in dict.fromkeys(only)]


def variant_name(base: Base, ratio: float) -> str:
    return naming.variant_name(base.name, variant_method(base.settings), ratio)


def base_variants(base: Base, org: str) -> list[Variant]:
    """One variant per ratio, plus a `-healed` one beside each when the base's `heal.enabled` is true."""
    lines = base.ratio_lines or [base.line] * len(base.ratios)
    out = []
    for ratio, line in zip(base.ratios, lines, strict=True):
        name = variant_name(base, ratio)
        out.append(Variant(name=name, repo_id=f"{org}/{name}", base=base, ratio=ratio, line=line))
        if base.settings.get("heal", {}).get("enabled"):
            out.append(Variant(name=f"{name}-healed", repo_id=f"{org}/{name}-healed", base=base, ratio=ratio,
                               line=line, healed=True))
    return out


def is_local_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.endswith(".gguf") or Path(model).expanduser().exists()


def check_model(model: Any) -> str:
    """A model reference that can exist: `default`, an existing local folder or .gguf file, or a Hub id."""
    if not isinstance(model, str) or not model.strip():
        raise _Bad(f"expected a Hub id (owner/name), a local folder or .gguf file, or 'default'; got {model!r}")
    if model == DEFAULT_MODEL:
        return model
    if is_local_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise _Bad(f"unknown model {model!r}: no such local file or folder")
        if path.is_dir() and not (path / "config.json").is_file():
            raise _Bad(f"unknown model {model!r}: the folder has no config.json")
        if path.is_file() and path.suffix != ".gguf":
            raise _Bad(f"unknown model {model!r}: a file must be a .gguf")
        return model
    if not HUB_ID_RE.fullmatch(model) or "--" in model or ".." in model:
        raise _Bad(f"unknown model {model!r}: neither an existing local path nor a Hub id of the form owner/name")
    return model


def _hub_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not HUB_ID_RE.fullmatch(value) or "--" in value or ".." in value:
        raise _Bad(f"{what} must be a Hub id of the form owner/name; got {value!r}")
    return value


def _string(node: Node | None, key: str, where: str, line: int, required: bool = True) -> str | None:
    if node is None:
        if required:
            raise ManifestError(f"{where}:{line}: missing {key}.")
        return None
    if not isinstance(node.value, str) or not node.value.strip():
        raise ManifestError(f"{where}:{node.line}: {key} must be a non-empty string, got {node.value!r}.")
    return node.value.strip()


def _parse_base(node: Node, where: str, defaults: dict) -> Base:
    if not isinstance(node.value, dict):
        raise ManifestError(f"{where}:{node.line}: each entry of bases must be a mapping (name, model, ratios, ...).")
    fields = node.value
    own_settings = _settings(node, where, extra=BASE_FIELDS)  # unknown keys first: a typo explains the rest
    name = _string(fields.get("name"), "name", where, node.line)
    if not NAME_RE.fullmatch(name) or "--" in name or ".." in name:
        raise ManifestError(f"{where}:{fields['name'].line}: name {name!r} must be letters, digits, '-', '_' or '.' "
                            "(at most 64, no '--' or '..'): it becomes part of the repository name.")
    model_node = fields.get("model")
    if model_node is None:
        raise ManifestError(f"{where}:{node.line}: base {name!r} has no model.")
    checked = {}
    for key in ("model", "fallback"):
        if key in fields:
            try:
                checked[key] = check_model(fields[key].value)
            except _Bad as exc:
                raise ManifestError(f"{where}:{fields[key].line}: {key}: {exc}.") from None
    model = checked["model"]
    if "base_model" in fields:
        try:
            base_model = _hub_id(fields["base_model"].value, "base_model")
        except _Bad as exc:
            raise ManifestError(f"{where}:{fields['base_model'].line}: {exc}.") from None
    elif model == DEFAULT_MODEL:
        base_model = DEFAULT_BASE_ID
    elif not is_local_path(model):
        base_model = model
    else:
        raise ManifestError(f"{where}:{model_node.line}: base {name!r} loads a local path; give base_model, the "
                            "Hub id it comes from (the card's base_model).")
    license_ = _string(fields.get("license"), "license", where, node.line)
    if not LICENSE_RE.fullmatch(license_):
        raise ManifestError(f"{where}:{fields['license'].line}: license {license_!r} must be a Hub licence id "
                            "such as apache-2.0, mit, llama3.1 or other.")
    license_name = _string(fields.get("license_name"), "license_name", where, node.line, required=False)
    license_link = _string(fields.get("license_link"), "license_link", where, node.line, required=False)
    if license_ == "other" and not (license_name and license_link):
        raise ManifestError(f"{where}:{fields['license'].line}: license: other needs license_name and license_link.")
    ratios, ratio_lines = _ratios(fields.get("ratios"), where, node.line, name)
    settings = _merge(defaults, own_settings)
    return Base(name=name, model=model, fallback=checked.get("fallback"), base_model=base_model, license=license_,
                license_name=license_name, license_link=license_link, ratios=ratios, settings=settings,
                line=node.line, ratio_lines=ratio_lines)


def _ratios(node: Node | None, where: str, line: int, name: str) -> tuple[list[float], list[int]]:
    if node is None:
        raise ManifestError(f"{where}:{line}: base {name!r} has no ratios (for example ratios: [0.1, 0.2, 0.3]).")
    items = node.value if isinstance(node.value, list) else [node]
    if not items:
        raise ManifestError(f"{where}:{node.line}: ratios of {name!r} is empty.")
    ratios, lines, seen = [], [], {}
    for item in items:
        value = item.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ManifestError(f"{where}:{item.line}: bad ratio {value!r}: a share of the blocks to remove, "
                                "strictly between 0 and 1 (0.2 = 20%).")
        if value in seen:
            raise ManifestError(f"{where}:{item.line}: ratio {value} is listed twice for {name!r} "
                                f"(first at line {seen[value]}).")
        seen[value] = item.line
        ratios.append(float(value))
        lines.append(item.line)
    return ratios, lines


def _index(node: Node | None, where: str) -> dict:
    index = dict(DEFAULT_INDEX)
    if node is None:
        return index
    if not isinstance(node.value, dict):
        raise ManifestError(f"{where}:{node.line}: index must be a mapping (repo, type, collection).")
    for key, child in node.value.items():
        if key not in DEFAULT_INDEX:
            raise ManifestError(f"{where}:{node.key_lines[key]}: index: {_unknown_key(key, DEFAULT_INDEX)}.")
        value = child.value
        ok = {"repo": isinstance(value, str) and NAME_RE.fullmatch(value or ""),
              "type": value in ("space", "model", "dataset"),
              "collection": value is None or (isinstance(value, str) and 0 < len(value) <= 60)}[key]
        if not ok:
            raise ManifestError(f"{where}:{child.line}: index.{key}: bad value {value!r}.")
        index[key] = value
    return index


def load_manifest(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                  check_hub: bool | None = None) -> Manifest:
    """Read and check a manifest; `overrides` are `--set key=value` strings applied to every base.

    `check_hub`: ask the Hub whether each Hub model exists (default: unless offline); a model the
    Hub does not know is an error at its line. Without the Hub, such a base is skipped at build time.
    """
    path = Path(path) if path else DEFAULT_MANIFEST
    where = str(path)
    if not path.is_file():
        raise ManifestError(f"Manifest {path} does not exist.")
    root = parse(path.read_text(encoding="utf-8"), where)
    if not isinstance(root.value, dict):
        raise ManifestError(f"{where}:{root.line}: the manifest must be a mapping with org and bases.")
    top = root.value
    for key in top:
        if key not in TOP_FIELDS:
            raise ManifestError(f"{where}:{root.key_lines[key]}: {_unknown_key(key, TOP_FIELDS)}.")
    parsed = [parse_override(text) for text in overrides or []]
    org = _string(top.get("org"), "org (the Hub organisation to publish to)", where, root.line)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", org):
        raise ManifestError(f"{where}:{top['org'].line}: org {org!r} is not a Hub user or organisation name.")
    private = False
    if "private" in top:
        try:
            private = _bool(top["private"].value)
        except _Bad as exc:
            raise ManifestError(f"{where}:{top['private'].line}: private: {exc}.") from None
    defaults = copy.deepcopy(DEFAULT_SETTINGS)
    if "defaults" in top:
        if not isinstance(top["defaults"].value, dict):
            raise ManifestError(f"{where}:{top['defaults'].line}: defaults must be a mapping of settings.")
        defaults = _merge(defaults, _settings(top["defaults"], where))
    bases_node = top.get("bases")
    if bases_node is None or not isinstance(bases_node.value, list) or not bases_node.value:
        line = bases_node.line if bases_node else root.line
        raise ManifestError(f"{where}:{line}: bases must be a non-empty list of base models.")
    bases = [_parse_base(item, where, defaults) for item in bases_node.value]
    for key, value in parsed:
        if key == "org":
            org = value
            continue
        for base in bases:
            section, _, sub = key.partition(".")
            if sub:
                base.settings[section][sub] = value
            else:
                base.settings[key] = value
    manifest = Manifest(path=path, org=org, private=private, index=_index(top.get("index"), where), bases=bases,
                        overrides=list(overrides or []))
    _check_names(manifest, where)
    if check_hub is None:
        check_hub = not _offline()
    if check_hub:
        _check_hub_models(manifest, where)
    return manifest


def _check_names(manifest: Manifest, where: str) -> None:
    bases: dict[str, int] = {}
    for base in manifest.bases:
        if base.name in bases:
            raise ManifestError(f"{where}:{base.line}: duplicate base name {base.name!r} (first at line "
                                f"{bases[base.name]}).")
        bases[base.name] = base.line
    seen: dict[str, int] = {}
    for variant in manifest.variants:
        if variant.name in seen:
            raise ManifestError(f"{where}:{variant.line}: duplicate variant name {variant.name!r} (first at line "
                                f"{seen[variant.name]}); rename a base or drop a ratio.")
        seen[variant.name] = variant.line
        try:
            _hub_id(variant.repo_id, "the repository id")
        except _Bad as exc:
            raise ManifestError(f"{where}:{variant.line}: {exc}.") from None
        if len(variant.name) > 96:
            raise ManifestError(f"{where}:{variant.line}: variant name {variant.name!r} is too long for the Hub.")


def _offline() -> bool:
    from huggingface_hub import is_offline_mode

    return is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _check_hub_models(manifest: Manifest, where: str) -> None:
    """Reject Hub ids the Hub says do not exist; when the Hub cannot be asked, leave the check to build time."""
    from huggingface_hub import HfApi

    api = HfApi()
    for base in manifest.bases:
        for model in filter(None, (base.model, base.fallback)):
            if model == DEFAULT_MODEL or is_local_path(model):
                continue
            try:
                exists = api.repo_exists(model)
            except Exception as exc:  # network: cannot tell, the build will report it
                log.warning("Could not ask the Hub whether %s exists (%s); checking it when loading.", model,
                            type(exc).__name__)
                return
            if not exists:
                raise ManifestError(f"{where}:{base.line}: unknown model {model!r}: the Hub has no such repository "
                                    "(or it is private and HF_TOKEN cannot see it).")
