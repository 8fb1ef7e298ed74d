"""rosbag2 tools: open a bag as its recorder left it (storage), read camera frames (reader), write outputs
checked first and whole (output), extract frames into a dataset (extract), caption a bag (caption)."""
