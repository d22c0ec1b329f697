"""rewardflow: align diffusion and rectified-flow generators with reward models.

The two interfaces everything plugs into: :class:`rewardflow.rewards.base.Reward` and
:class:`rewardflow.pipelines.base.Generator`.
"""

__version__ = "0.1.0"
