import sys

from rewardflow.cli import main

sys.exit(main())
