"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` to and from numpy, without rclpy.

The functions read and fill the messages' fields only (``height``, ``width``, ``encoding``, ``step``, ``data``,
``format``), so rclpy's messages and ``rosbags``' dataclasses both work.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["ENCODINGS", "image_to_bgr", "compressed_to_bgr", "fill_image"]

# Input encodings (sensor_msgs/image_encodings), their channel count and the conversion to BGR.
ENCODINGS = {
    "bgr8": (3, None),
    "rgb8": (3, cv2.COLOR_RGB2BGR),
    "bgra8": (4, cv2.COLOR_BGRA2BGR),
    "rgba8": (4, cv2.COLOR_RGBA2BGR),
    "mono8": (1, cv2.COLOR_GRAY2BGR),
    "8uc1": (1, cv2.COLOR_GRAY2BGR),
    "8uc3": (3, None),
}


def image_to_bgr(msg) -> np.ndarray:
    """A ``sensor_msgs/Image`` as an ``H x W x 3`` BGR uint8 array (a copy); ValueError names what is wrong."""
    encoding = str(msg.encoding).lower()
    if encoding not in ENCODINGS:
        raise ValueError(f"image encoding {msg.encoding!r} is not supported: publish one of "
                         f"{', '.join(sorted(ENCODINGS))}, or JPEG/PNG with image_transport:=compressed")
    channels, conversion = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, np.uint8)
    row = width * channels
    if height < 1 or width < 1 or step < row or data.size < step * height:
        raise ValueError(f"malformed {encoding} image: {width}x{height}, step {step}, {data.size} bytes of data "
                         f"(needs step >= {row} and step * height = {step * height} bytes)")
    image = data[:step * height].reshape(height, step)[:, :row].reshape(height, width, channels)
    return cv2.cvtColor(image, conversion) if conversion is not None else image.copy()


def compressed_to_bgr(msg) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (JPEG, PNG, anything OpenCV decodes) as BGR uint8."""
    image = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode a compressed image of format {msg.format!r} ({len(msg.data)} bytes): "
                         "publish JPEG or PNG (image_transport's compressed plugin), or raw images with "
                         "image_transport:=raw")
    return image


def fill_image(msg, array: np.ndarray, encoding: str):
    """Fill ``msg`` (rclpy's ``sensor_msgs/Image``) with a C-contiguous ``H x W`` (mono8) or ``H x W x 3`` (bgr8)
    uint8 array; returns ``msg``. The header is left to the caller."""
    array = np.ascontiguousarray(array, np.uint8)
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg
