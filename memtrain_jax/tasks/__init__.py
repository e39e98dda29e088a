"""Tasks: what a job trains and evaluates the memory agent on, one module each, registered by name
(`config.task`): MemTrain's masked documents (`memtrain`), long-text QA (`long_qa`), search QA (`search_qa`).
`AgentSetup` builds the job's shared pieces and its task."""

from memtrain_jax.tasks import long_qa, memtrain, search_qa  # noqa: F401  (registers the tasks)
from memtrain_jax.tasks.base import TASK_TYPES, Task, register, task_type
from memtrain_jax.tasks.format import MEMORY_TARGETS, format_examples, search_format_examples
from memtrain_jax.tasks.long_qa import LongQATask
from memtrain_jax.tasks.memtrain import MemTrainTask
from memtrain_jax.tasks.qa_records import QATaskData
from memtrain_jax.tasks.search_qa import SearchQATask
from memtrain_jax.tasks.setup import AgentSetup

TASKS = tuple(TASK_TYPES)

__all__ = [
    "MEMORY_TARGETS",
    "TASKS",
    "TASK_TYPES",
    "AgentSetup",
    "LongQATask",
    "MemTrainTask",
    "QATaskData",
    "SearchQATask",
    "Task",
    "format_examples",
    "register",
    "search_format_examples",
    "task_type",
]
