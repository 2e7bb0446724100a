"""pytest set-up shared by the unit tests and nbval.

nbval compares text outputs of cells marked ``# NBVAL_CHECK_OUTPUT`` (``--nbval-lax``); HTML,
widget and stderr outputs are never compared (widget ids and progress bars change every run).
"""

import os

os.environ.setdefault("LORAKIT_PROFILE", "ci")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and str(collector.path).endswith(".ipynb"):
        collector.skip_compare += ("text/html", "application/javascript", "stderr",
                                   "application/vnd.jupyter.widget-state+json")
