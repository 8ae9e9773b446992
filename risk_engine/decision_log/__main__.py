"""The decision log's writer process (started by the server, not by hand): see ``process.py``."""

import sys

from risk_engine.decision_log.process import main

sys.exit(main())
