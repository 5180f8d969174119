"""The labelling app must start without the training stack: importing it never imports torch."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import rlhflab.label.app, rlhflab.label.cli, rlhflab.label.service
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy')
             or m.startswith(('rlhflab.models', 'rlhflab.train', 'rlhflab.eval', 'rlhflab.ops',
                              'rlhflab.data.loaders', 'rlhflab.data.format')))
print(','.join(bad))
"""


def test_import_app_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported: {out.stdout.strip()}"
