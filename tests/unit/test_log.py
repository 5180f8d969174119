import io
import logging
import sys

from rlhflab.core.log import setup_logging


def test_log_follows_the_current_stderr(monkeypatch):
    """A handler bound to a replaced-and-closed stderr would print 'Logging error' tracebacks."""
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("INFO")
    logging.getLogger("rlhflab.test").info("one")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    setup_logging("INFO")
    logging.getLogger("rlhflab.test").info("two")
    assert "two" in second.getvalue() and "Logging error" not in second.getvalue()
