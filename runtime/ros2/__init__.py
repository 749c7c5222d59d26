"""ROS 2 around the runtime: ``avs-ros2`` (``runtime.ros2.node``) and a clip player (``runtime.ros2.play``).

Optional: the ``[ros]`` extra installs rclpy and the message packages (PyPI wheels, x86_64), or a ROS 2
installation provides them (apt ROS on a Jetson). Every module here imports without rclpy; rclpy loads when a node
starts, through :func:`import_rclpy`, which names the install command when it is missing. The image conversions
(:mod:`runtime.ros2.images`) need only numpy and OpenCV, and work on rclpy's and on ``rosbags``' messages alike.
"""
from __future__ import annotations

__all__ = ["RosUnavailable", "import_rclpy", "INSTALL_HINT"]

INSTALL_HINT = ("install the ROS 2 extra: pip install -e '.[ros]' in the avs-edge checkout (PyPI's ROS 2 wheels, "
                "x86_64 only), or on a Jetson/aarch64 install ROS 2 from apt (ros-<distro>-rclpy, "
                "ros-<distro>-sensor-msgs, ros-<distro>-std-msgs) and source its setup.bash first")


class RosUnavailable(ImportError):
    """rclpy or a ROS 2 message package cannot be imported here; the message says how to install it."""


def import_rclpy():
    """The ``rclpy`` module, after checking that the message packages the node needs import too."""
    try:
        import rclpy
        import sensor_msgs.msg  # noqa: F401
        import std_msgs.msg  # noqa: F401
    except ImportError as exc:
        raise RosUnavailable(f"ROS 2 for Python is not available ({exc}); {INSTALL_HINT}") from None
    return rclpy
