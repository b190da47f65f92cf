"""``python -m agent`` runs the device agent (same as ``edgefleet-agent``)."""

import sys

from agent.main import main

sys.exit(main())
