"""The ``rewardflow`` commands, one module per command, each with ``register(subparsers)``.

Command modules import the library inside their run functions, not at the top: building the parser must not
import torch, diffusers and transformers (seconds), so ``rewardflow --help`` and argument errors answer at once.
"""
