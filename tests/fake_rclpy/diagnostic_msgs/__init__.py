"""Fake diagnostic_msgs package (messages from rosbags' typestore)."""
