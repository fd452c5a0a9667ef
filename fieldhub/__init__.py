"""fieldhub: field-device telemetry and comms hub for emergency satellite command vehicles."""

__version__ = "0.1.0"

__all__ = ["__version__"]
