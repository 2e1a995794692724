"""Training engine: the Trainer and start-up checks."""
from .checks import ConfigError, validate_config
from .setup import setup_cfg
from .trainer import Trainer

__all__ = ["ConfigError", "Trainer", "setup_cfg", "validate_config"]
