"""builtin_interfaces messages."""
from _fake_msgs import export

export(__name__, "builtin_interfaces", ["Time", "Duration"])
