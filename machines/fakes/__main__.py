"""``python -m machines.fakes billing mail``: run fake services by hand (see `server.main`)."""

import sys

from machines.fakes.server import main

sys.exit(main())
