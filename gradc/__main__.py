"""``python -m gradc``: the ``gradc`` command (``gradc.cli``)."""
import sys

from .cli import main

sys.exit(main())
