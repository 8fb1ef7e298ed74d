"""Labelling: frames least-confident first (order.py), and the Label Studio round trip (studio.py: the HTTP
client, tasks.py: rows <-> tasks, roundtrip.py: push and pull)."""
