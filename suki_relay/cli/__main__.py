"""`python -m suki_relay.cli`: the `suki-relay` command without its console script."""

import sys

from suki_relay.cli.main import main

sys.exit(main())
