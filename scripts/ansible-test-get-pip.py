"""Stand-in for ansible-test's pip bootstrap script (get-pip-<version>.py).

ansible-test gives each sanity test a virtual environment and fetches its pip bootstrap
from ci-files.testing.ansible.com, which CI cannot reach. scripts/setup saves this file
where ansible-test caches that script: it gives the new environment a pip with the
standard library's ensurepip, then that pip installs the pinned pip it was asked for from
the package index. Arguments are ansible-test's (pip options and ``pip==<version>``).
"""

import subprocess
import sys

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"],
                      stdout=subprocess.DEVNULL)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
