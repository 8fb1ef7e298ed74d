"""Fake sensor_msgs package (messages from rosbags' typestore)."""
