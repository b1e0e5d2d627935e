"""Every key of a config section with its type, default and one line of help
(`seqmem config --show SECTION`).

Sections: train, eval, curriculum, model (the run's own fields, described on their pydantic
fields), and mixer / task (a registered component's options: the keyword hyperparameters of
its constructor, described in its docstring's "Args:" section; a task's section also lists
the training settings it changes, `Task.train_defaults`, and its source's own setting).
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

from pydantic import BaseModel

from seqmem import mixers, tasks
from seqmem.config.run import (
    DEFAULT_MIXER,
    DEFAULT_TASK,
    CurriculumConfig,
    EvalConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from seqmem.errors import SeqmemError

SECTIONS = {"run": RunConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
            "curriculum": CurriculumConfig}
COMPONENTS = ("mixer", "task")


def _type_text(annotation: Any) -> str:
    text = str(annotation) if not isinstance(annotation, type) else annotation.__name__
    text = re.sub(r"typing\.|seqmem\.[\w.]+\.", "", text)
    return text.replace("NoneType", "None").replace("SerializeAsAny[", "").rstrip("]") \
        if "SerializeAsAny" in text else text.replace("NoneType", "None")


def _args_help(cls: type, registry=None) -> dict[str, str]:
    """name -> first sentence of its description in the class docstring's "Args:" section.
    An entry may describe several names ("expand_k, expand_v: ..."), and "Args: as `other`"
    takes the entries of the registered component `other` (from `registry`)."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    in_args, current = False, []
    for line in doc.splitlines():
        ref = re.match(r"^Args:\s*as `(\w+)`", line.strip())
        if ref and registry is not None and ref.group(1) in registry.names():
            out.update(_args_help(registry.get(ref.group(1)), registry))
            in_args = True
            continue
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args:
            m = re.match(r"^ {4}(\w+(?:,\s*\w+)*):\s*(.*)$", line)
            if m:
                current = [n.strip() for n in m.group(1).split(",")]
                for name in current:
                    out[name] = m.group(2).strip()
            elif line.startswith("        ") and current:
                for name in current:
                    out[name] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                break
    return {k: v.split(". ")[0].rstrip(".") for k, v in out.items()}


def _default(field) -> Any:
    if field.default_factory is not None:
        value = field.default_factory()
        return value.model_dump() if isinstance(value, BaseModel) else value
    return field.default


def describe(section: str, kind: str | None = None) -> list[dict]:
    """Rows {key, type, default, help} of every key of `section` (see the module docstring);
    `kind` names the mixer or task (default: the default one)."""
    if section in SECTIONS:
        model = SECTIONS[section]
        rows = []
        for name, f in model.model_fields.items():
            prefix = "" if section == "run" else f"{section}."
            default = _default(f)
            if isinstance(default, dict):
                default = "{...}"  # a section or a component of its own
            rows.append({"key": prefix + name, "type": _type_text(f.annotation),
                         "default": default, "help": f.description or ""})
        return rows
    if section not in COMPONENTS:
        raise SeqmemError(f"unknown config section {section!r}; accepted: "
                          f"{', '.join([*SECTIONS, *COMPONENTS])}")
    reg = mixers if section == "mixer" else tasks
    kind = kind or (DEFAULT_MIXER if section == "mixer" else DEFAULT_TASK)
    cls = mixers.lookup(kind) if section == "mixer" else tasks.get(kind)  # 1-D or 2-D
    hints = typing.get_type_hints(cls.__init__)
    helps = _args_help(cls, reg)
    prefix = "model.mixer." if section == "mixer" else "task."
    rows = [{"key": prefix + "kind", "type": "str", "default": kind,
             "help": f"the {section}: one of "
                     f"{', '.join(mixers.every_name() if section == 'mixer' else reg.names())}"}]
    for name, p in reg.hyperparameters(cls).items():
        rows.append({"key": prefix + name, "type": _type_text(hints.get(name, Any)),
                     "default": None if p.default is inspect.Parameter.empty else p.default,
                     "help": helps.get(name, "")})
    if section == "task":
        for name, value in cls.train_defaults.items():
            f = TrainConfig.model_fields[name]
            rows.append({"key": f"train.{name}", "type": _type_text(f.annotation),
                         "default": value, "help": f"{kind}'s training default (other tasks: "
                         f"{_default(f)}); {f.description}"})
        if cls.paper_setting:
            rows.append({"key": "(source)", "type": "", "default": "",
                         "help": cls.paper_setting})
    return rows
