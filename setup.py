"""pip install of the ROS-free core, the CLI and the node's Python code.

The ROS interfaces (msg/srv/action) are built by ament (colcon) or scripts/build_interfaces.sh.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def interface_files(kind: str) -> tuple[str, list[str]]:
    """msg/srv/action files -> share/spatialthinker_ros/<kind>: the layout of a ROS install."""
    files = sorted(f"{kind}/{path.name}" for path in (ROOT / kind).glob("*"))
    return f"share/spatialthinker_ros/{kind}", files


setup(
    name="spatialthinker_ros",
    version="0.2.0",
    description="SpatialThinker-3B spatial reasoning for ROS 2: scene graphs and answers",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8")
    if (ROOT / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["spatialthinker_ros", "spatialthinker_ros.*"]),
    # The .msg/.srv/.action definitions travel with the package (replay registers them in bags;
    # the LLM tool schema is generated from srv/AskSpatial.srv).
    data_files=[interface_files(kind) for kind in ("msg", "srv", "action")],
    install_requires=[
        "numpy>=1.24",
        "pillow>=10.1",
        "torch>=2.4",
        "torchvision>=0.19",  # Qwen2.5-VL's processor needs it (video processor)
        "transformers>=5,<6",
        "rosbags>=0.10",
        "mcap>=1.1",  # reads truncated MCAP bags that rosbags cannot open
        "zstandard>=0.20",  # rosbag2's zstd (per message, per chunk, whole file); mcap needs it too
        "lz4>=4",  # lz4 MCAP chunks (mcap needs it too)
        "tqdm>=4.60",
    ],
    extras_require={
        "remote": ["openai>=1.40", "httpx>=0.27"],
        "eval": ["pyarrow>=14"],  # CV-Bench / BLINK parquet files (spatialthinker-ros eval)
        "planner": ["py-trees>=2.2"],
        # --quantization int8|int4 (weight-only, core/quantization.py); 0.18 checked with torch 2.14
        "quant": ["torchao>=0.18"],  # spatialthinker_ros.ros.behaviours (py_trees behaviour)
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "mcap>=1.1",
            "mcap-ros2-support>=0.5",
            "ruff>=0.6",
            "openai>=1.40",
            "httpx>=0.27",
            "accelerate>=1.0",  # the model card's snippet uses device_map="auto"
            "transformers[serving]>=5,<6",  # a real OpenAI-compatible server for the remote tests
            "pyarrow>=14",  # the eval tests write and read benchmark parquet files
            "py-trees>=2.2",  # the behaviour-tree tests tick a real tree
            "foxglove-sdk>=0.30",  # its typed panel models check the shipped Foxglove layout
            "torchao>=0.18",  # the quantization tests load int8 / int4 models
            "rosdep>=0.25",  # scripts/rosdep_check.sh resolves package.xml's keys offline
        ],
    },
    entry_points={"console_scripts": ["spatialthinker-ros=spatialthinker_ros.cli:main"]},
)
