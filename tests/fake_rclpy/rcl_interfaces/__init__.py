"""Fake rcl_interfaces package (messages from rosbags' typestore)."""
