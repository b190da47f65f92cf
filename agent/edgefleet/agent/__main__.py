"""``python -m edgefleet.agent`` runs the device agent (same as ``edgefleet-agent``)."""

import sys

from edgefleet.agent.main import main

sys.exit(main())
