"""The ``ese:`` section of the recipe's arguments, made from :class:`~ese_trainer.ese.settings.ESESettings`."""

from __future__ import annotations

from dataclasses import asdict, field, fields, make_dataclass
from typing import get_type_hints

from ese_trainer.config.sections import set_fields
from ese_trainer.ese.settings import DEFAULT_SCHEDULE, OTHER_SCHEDULE_DEFAULTS, ESESettings, schedule_mismatch


def _ese_post_init(self) -> None:
    stray = set_fields(self, "ese_")
    if stray and not self.ese_enabled:
        keys = ", ".join("ese." + name.removeprefix("ese_") for name in stray)
        raise ValueError(f"{keys} set but ese.enabled is false: enable ESE or remove the key(s)")
    if not self.ese_enabled:
        return
    # Without schedule, a key of the other schedule is refused even at its default: a config written when espresso
    # was the default (compression_size, layer_weighting, ...) must say schedule: espresso, not turn into Starbucks
    # unnoticed. With schedule set, only values the schedule would ignore are refused: a resolved config written
    # when every key was resolved (both schedules' defaults) still parses.
    schedule = self.ese_schedule or DEFAULT_SCHEDULE
    other_defaults = OTHER_SCHEDULE_DEFAULTS.get(schedule, {})  # an unknown schedule: settings() names it
    foreign = [name for name in (key.removeprefix("ese_") for key in set_fields(self, "ese_"))
               if name in other_defaults
               and (self.ese_schedule is None or getattr(self, f"ese_{name}") != other_defaults[name])]
    if foreign:
        raise ValueError(schedule_mismatch(foreign, schedule, "ese.", defaulted=self.ese_schedule is None))
    # Every key the schedule reads resolved (resolved_config.yaml and the card show what was used); the other
    # schedule's keys stay unset, so the resolved config parses again as it is.
    for name, value in asdict(self.settings()).items():  # validated
        setattr(self, f"ese_{name}", None if name in other_defaults else value)


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
