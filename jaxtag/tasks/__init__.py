"""Tasks by name: what a method's predictions are judged by and served as.

An objective names its task (`objective.task`, jaxtag/objectives.py); the
run builds it with `for_objective`, a bundle with `for_bundle`. The Task
interface is jaxtag/tasks/base.py. A new task is one module here and one
entry in TASKS.
"""
from __future__ import annotations

from jaxtag.tasks.base import Task
from jaxtag.tasks.captioning import Captioning
from jaxtag.tasks.multi_label import MultiLabel
from jaxtag.tasks.single_label import SingleLabel

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (MultiLabel, SingleLabel, Captioning)}


def get(name: str) -> type[Task]:
  if name not in TASKS:
    raise ValueError(f'Unknown task {name!r} (the objective\'s `task`); '
                     f'valid: {", ".join(sorted(TASKS))}.')
  return TASKS[name]


def for_objective(objective, *, tags, encoder) -> Task:
  """The task of a run whose objective is `objective`."""
  return get(objective.task).for_run(tags=tags, encoder=encoder)


def for_bundle(name: str, directory: str) -> Task:
  """The task of the bundle in `directory`, named by its objective."""
  return get(name).for_bundle(directory)
