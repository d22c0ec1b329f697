"""The toy-world demos run by ``rewardflow demo`` (image: ReNO; ``--video``: the toy text-to-video demo)."""
