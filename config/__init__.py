"""The bottom layer: settings, logging, Sentry and the base of mdmq's errors."""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
