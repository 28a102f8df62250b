"""``python -m dstm_orch ...``: the ``dstm-orch`` command, for hosts without the script
on PATH (a roaming node that runs only ``client``)."""

import sys

from dstm_orch.cli.main import main

sys.exit(main())
