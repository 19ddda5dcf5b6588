"""The ``ese:`` section of the recipe's arguments, made from :class:`~ese_trainer.ese.settings.ESESettings`."""

from __future__ import annotations

from dataclasses import asdict, field, fields, make_dataclass
from typing import get_type_hints

from ese_trainer.config.sections import set_fields
from ese_trainer.ese.settings import ESESettings


def _ese_post_init(self) -> None:
    stray = set_fields(self, "ese_")
    if stray and not self.ese_enabled:
        keys = ", ".join("ese." + name.removeprefix("ese_") for name in stray)
        raise ValueError(f"{keys} set but ese.enabled is false: enable ESE or remove the key(s)")
    if self.ese_enabled:  # every key resolved (resolved_config.yaml and the card show what was used); validated
        for name, value in asdict(self.settings()).items():
            setattr(self, f"ese_{name}", value)


def _ese_settings(self) -> ESESettings:
    """The set keys as :class:`~ese_trainer.ese.ESESettings` (unset keys take its defaults)."""
    try:
        return ESESettings(**{name.removeprefix("ese_"): getattr(self, name) for name in set_fields(self, "ese_")})
    except ValueError as error:
        raise ValueError(f"ese.{error}") from None


def _make_ese_arguments() -> type:
    """The ``ese:`` section: ``ese_enabled`` plus one optional key per :class:`~ese_trainer.ese.ESESettings` field,
    with its help and default read from there (the one source of ESE's settings)."""
    hints = get_type_hints(ESESettings)
    keys = [("ese_enabled", bool, field(default=False, metadata={"help": "Add the ESE layer and compression terms."}))]
    for setting in fields(ESESettings):
        help_text = f"{setting.metadata['help']} Default: {setting.default}."
        keys.append((f"ese_{setting.name}", hints[setting.name] | None,
                     field(default=None, metadata={"help": help_text})))
    namespace = {"__post_init__": _ese_post_init, "settings": _ese_settings, "__module__": __name__,
                 "_argument_group_name": "ese (YAML section ese:, or --ese.key)",
                 "__doc__": "The ``ese:`` section: Espresso Sentence Embeddings (Li et al., arXiv 2402.14776) "
                            "training terms (see :mod:`ese_trainer.ese`)."}
    return make_dataclass("ESEArguments", keys, namespace=namespace)


ESEArguments = _make_ese_arguments()
