"""The project's configuration: one engine (:mod:`refers.config.engine`) and the pre-training schema.

``refers.config`` keeps the pre-training API (:class:`Config`, :func:`load_config` ...) that the
models, data and pre-training code import; the fine-tuning flags, sweep files and demo profiles
declare their schemas beside their code and are read and checked by the same engine.
"""

from refers.config.engine import ConfigError, Spec
from refers.config.pretrain import ALIASES, RULES, Config, config_path, load_config, parse_decoder_name, specs

__all__ = ["ALIASES", "RULES", "Config", "ConfigError", "Spec", "config_path", "load_config", "parse_decoder_name", "specs"]
