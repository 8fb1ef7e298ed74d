"""Fake builtin_interfaces package (messages from rosbags' typestore)."""
