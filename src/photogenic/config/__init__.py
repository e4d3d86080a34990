"""One typed config tree for every stage: dataclasses (`sections`), named presets (`presets`), YAML files
and `a.b=value` overrides (`loading`). Import everything from here."""

from photogenic.config.loading import (
    field_docs,
    fingerprint,
    flatten,
    from_dict,
    load_config,
    overrides_from,
    to_dict,
)
from photogenic.config.presets import PRESETS
from photogenic.config.sections import (
    DECODER_SIDE,
    Config,
    ConfigError,
    CurateConfig,
    DataConfig,
    EvaluateConfig,
    JudgesConfig,
    ModelConfig,
    PanelConfig,
    RecipeConfig,
    StorageConfig,
    TrackingConfig,
    TrainConfig,
    WorldConfig,
    check_store_uri,
    shown_uri,
)

__all__ = [
    "DECODER_SIDE",
    "PRESETS",
    "Config",
    "ConfigError",
    "CurateConfig",
    "DataConfig",
    "EvaluateConfig",
    "JudgesConfig",
    "ModelConfig",
    "PanelConfig",
    "RecipeConfig",
    "StorageConfig",
    "TrackingConfig",
    "TrainConfig",
    "WorldConfig",
    "check_store_uri",
    "field_docs",
    "fingerprint",
    "flatten",
    "from_dict",
    "load_config",
    "overrides_from",
    "shown_uri",
    "to_dict",
]
