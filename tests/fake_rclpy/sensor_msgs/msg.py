"""sensor_msgs messages."""
from _fake_msgs import export

export(__name__, "sensor_msgs", ["Image", "CompressedImage", "CameraInfo"])
