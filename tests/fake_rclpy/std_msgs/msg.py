"""std_msgs messages."""
from _fake_msgs import export

export(__name__, "std_msgs", ["Header", "String", "Bool", "Float32", "Float64", "Int32", "Empty"])
