"""docs/usage/config.md, generated from the config dataclasses (the single source of every key's type, default
and help): ``python -m rewardflow.align.docs > docs/usage/config.md``; tests/test_config_docs.py fails when the page
drifts from the code."""

from __future__ import annotations

from rewardflow.align.method import get_method, list_methods
from rewardflow.align.trainer.config import TrainConfig
from rewardflow.config import config_table

HEADER = """# Configuration keys

<!-- Generated from the config dataclasses by `python -m rewardflow.align.docs > docs/usage/config.md`;
do not edit by hand (tests/test_config_docs.py checks it). -->

A `rewardflow train` config is one flat YAML holding the trainer keys and the method's keys; any key can be
overridden on the command line as `key=value`. `rewardflow train --help-config [METHOD]` prints the same tables in
the terminal. Values are checked before any model loads: an unknown key names the closest valid one, a bad value
names the key. Input paths written in a YAML file (`model`, `prompts`, `eval_prompts`, `dataset`) are looked up
next to the file first, then under the shipped `assets/`, then in the working directory. "unset" means the value
comes from elsewhere (the model family for `prompts` / `reward` of embedded models, the adapter for `adapter`).

## Trainer keys

"""


def config_markdown() -> str:
    parts = [HEADER, config_table(TrainConfig)]
    for name in list_methods():
        cls = get_method(name)
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        parts.append(f"\n## `{name}` ({cls.config_class.__name__})\n\n" + (f"{doc}\n\n" if doc else "")
                     + config_table(cls.config_class))
    return "".join(parts)


if __name__ == "__main__":
    print(config_markdown(), end="")
