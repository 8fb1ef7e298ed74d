"""diagnostic_msgs messages."""
from _fake_msgs import export

export(__name__, "diagnostic_msgs", ["DiagnosticArray", "DiagnosticStatus", "KeyValue"])
