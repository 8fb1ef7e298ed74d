"""Fake std_msgs package (messages from rosbags' typestore)."""
