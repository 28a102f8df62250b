"""Where the ``dstm-orch`` process logs: stderr (journald under systemd), and a file only
when the operator names one with ``--log-file``.

A named log file is opened without following a symbolic link (``O_NOFOLLOW``), must be a
regular file owned by the user running dstm-orch, and is kept at mode 0600: it holds
request lines and tracebacks.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
from pathlib import Path

from dstm_orch.domain.errors import DstmError

STDERR_FORMAT = "dstm-orch: %(levelname)s: %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


def open_log_file(path: Path):
    """Open ``path`` for appending, creating it with mode 0600; return a text stream.

    Raises :class:`DstmError` (naming the path) when it is a symbolic link, not a regular
    file, owned by another user, or cannot be opened.
    """
    flags = (os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
             | os.O_CLOEXEC)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DstmError(f"log file {path}: is a symbolic link; refusing to follow it") \
                from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, a socket, a device
            raise DstmError(f"log file {path}: not a regular file") from None
        raise DstmError(f"log file {path}: cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DstmError(f"log file {path}: not a regular file")
        if info.st_uid != os.geteuid():
            raise DstmError(f"log file {path}: owned by uid {info.st_uid}, not by this user")
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


class ProcessLogs:
    """The handlers one run of the CLI installs, and removes again with :meth:`close`.

    Records of ``dstm_orch`` at WARNING and above go to stderr (a long-running command
    chooses its own stderr lines with :meth:`log_to_stderr`); with a log file, every
    record at INFO and above (the libraries' too) also goes there.
    """

    def __init__(self) -> None:
        self.file: Path | None = None
        self._installed: list[tuple[logging.Logger, logging.StreamHandler, bool]] = []
        self._root_level = logging.getLogger().level
        self._package_level = logging.getLogger("dstm_orch").level
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
        self._install(logging.getLogger("dstm_orch"), handler, owns_stream=False)

    def add_file(self, path: str) -> None:
        """Also log to ``path`` (see :func:`open_log_file`)."""
        target = Path(path)
        handler = logging.StreamHandler(open_log_file(target))
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        self._install(logging.getLogger(), handler, owns_stream=True)
        logging.getLogger().setLevel(logging.INFO)
        self.file = target

    def log_to_stderr(self, handler: logging.StreamHandler, level: str) -> None:
        """Send the records of ``dstm_orch`` at ``level`` (a :mod:`logging` level name)
        and above to ``handler``, on stderr, instead of the WARNING lines: one line per
        event in the format of ``handler``, none twice."""
        package = logging.getLogger("dstm_orch")
        for installed in [i for i in self._installed if i[0] is package and not i[2]]:
            package.removeHandler(installed[1])
            self._installed.remove(installed)
        self._install(package, handler, owns_stream=False)
        package.setLevel(level)

    def _install(self, logger: logging.Logger, handler: logging.StreamHandler,
                 owns_stream: bool) -> None:
        logger.addHandler(handler)
        self._installed.append((logger, handler, owns_stream))

    def close(self) -> None:
        for logger, handler, owns_stream in self._installed:
            logger.removeHandler(handler)
            handler.close()
            if owns_stream:
                handler.stream.close()
        self._installed.clear()
        logging.getLogger().setLevel(self._root_level)
        logging.getLogger("dstm_orch").setLevel(self._package_level)
