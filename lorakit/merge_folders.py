"""Old home of ``lorakit merge``'s Python side; it now lives in :mod:`lorakit.merge.folders`.

Kept so that ``from lorakit.merge_folders import merge_adapter_folders`` keeps working.
"""

from .merge.folders import FORMATS, SUMMARY_FILE, check_options, merge_adapter_folders  # noqa: F401
from .merge.refactor import SafetensorsStream, concat_factors, refactor_dense, truncate_factors, weighted  # noqa: F401
from .merge.sources import (  # noqa: F401
    AUTO_CLASSES,
    HEAD_TASKS,
    SourceAdapter,
    check_base_fits,
    check_same_base,
    choose_head,
    load_base_for,
    read_source,
)
