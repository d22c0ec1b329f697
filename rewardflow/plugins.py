"""Plugins: packages that add generators, rewards, training methods, prompt sources or evaluation hooks.

A plugin is a callable registered under the ``rewardflow.plugins`` entry-point group of its distribution::

    [project.entry-points."rewardflow.plugins"]
    mything = "mypackage.rewardflow_plugin:register"

``register()`` imports the plugin's modules (their ``@register_generator`` / ``@register_reward`` /
``@register_method`` decorators run on import) and calls the other registries
(:func:`rewardflow.io.prompts.register_prompt_source`, :func:`rewardflow.eval.hooks.register_eval_hook`, ...).
Every registry calls :func:`load_plugins` before a lookup, so a plugin's names work everywhere a built-in name
does. rewardflow's own toy world is such a plugin (``rewardflow.toy.plugin``): the core never imports it.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points

GROUP = "rewardflow.plugins"
_loaded = False


def load_plugins() -> None:
    """Call every installed plugin's ``register()`` once per process. A plugin that fails is reported with a
    warning naming it and the error; the others still load."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a plugin's register() may itself look a name up in a registry
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            ep.load()()
        except Exception as e:  # noqa: BLE001 - one broken plugin must not hide the others
            warnings.warn(f"rewardflow plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}",
                          RuntimeWarning, stacklevel=2)
