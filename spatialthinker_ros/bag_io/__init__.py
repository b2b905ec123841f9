"""What `spatialthinker-ros replay` reads and writes (no rclpy).

- `reading`: open any recorder's bag (`open_bag` -> `BagInput`), its topics and messages, the
  roles of the wanted topics (`topic_roles`);
- `mcap_stream`: MCAP files cut short, read record by record;
- `paths`: every output path checked before a model loads (`check_outputs`);
- `writing`: the output bag, the JSONL file and the annotated frames (`ReplayOutputs`).
"""

from .errors import BagCutShort, OutputError, ReplayError
from .paths import OutputPaths, check_outputs
from .reading import (
    CAMERA_INFO,
    COMPRESSED,
    IMAGE,
    BagInput,
    BagMessage,
    Topic,
    normalize_msgtype,
    open_bag,
    topic_roles,
)
from .writing import (
    FRAME_FILE,
    FrameSaver,
    JsonlSink,
    OutputBag,
    ReplayOutputs,
    sigint_deferred,
)

__all__ = [
    "CAMERA_INFO",
    "COMPRESSED",
    "FRAME_FILE",
    "IMAGE",
    "BagCutShort",
    "BagInput",
    "BagMessage",
    "FrameSaver",
    "JsonlSink",
    "OutputBag",
    "OutputError",
    "OutputPaths",
    "ReplayError",
    "ReplayOutputs",
    "Topic",
    "check_outputs",
    "normalize_msgtype",
    "open_bag",
    "sigint_deferred",
    "topic_roles",
]
