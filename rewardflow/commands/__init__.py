"""``rewardflow`` sub-commands, one module each. A module defines ``register(subparsers)``, which adds its
parser and sets ``fn`` (``fn(args) -> int``). Keep imports of torch/diffusers inside ``fn`` so ``--help`` is fast."""
