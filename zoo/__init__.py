"""The sleb model zoo: build, evaluate, document and publish pruned variants listed in a manifest.

    python zoo/publish.py --only smollm2-135m-instruct-sleb-refine-20 --dry-run --out build/zoo

- `manifest.py`  read and validate the manifest: bases, variants (plain and `-healed`), names
- `settings.py`  every setting's default and check, merging, `--set key=value`
- `yamltree.py`  YAML with line numbers, so errors name the line at fault
- `build.py`     load a base once, search once, evaluate dense and variants (cached), heal, stage repository folders
- `card.py`      the model card (huggingface_hub `ModelCard`), the removal picture, the zoo index
- `hub.py`       plan and push repositories and the index through `HfApi`
- `publish.py`   the command line
"""
