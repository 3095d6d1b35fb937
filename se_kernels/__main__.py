"""``python -m se_kernels bench ...``: see se_kernels/cli.py."""

import sys

from se_kernels.cli import main

sys.exit(main())
