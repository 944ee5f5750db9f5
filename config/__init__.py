"""Settings, logging and the composition root that builds mdmq's parts from them."""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
