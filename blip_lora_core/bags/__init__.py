"""rosbag2 tools: read a bag, extract frames into a dataset, caption a bag."""
