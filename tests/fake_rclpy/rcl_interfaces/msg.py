"""rcl_interfaces messages."""
from _fake_msgs import export

export(__name__, "rcl_interfaces", ["ParameterDescriptor", "SetParametersResult", "IntegerRange",
                                    "FloatingPointRange", "ParameterType"])
