"""``python -m gateway`` is the ``inference-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
