# The "Creating Custom Executors" example of NeMo Curator's executor reference
# (../shared/seeds/000_60edafcb2abab0e0.txt), verbatim except for its imports.
from curator_exec_core import BaseExecutor, EmptyTask, ProcessingStage, Task


class MyCustomExecutor(BaseExecutor):
    """Custom executor implementation."""

    def execute(
        self,
        stages: list[ProcessingStage],
        initial_tasks: list[Task] | None = None,
    ) -> list[Task]:
        tasks = initial_tasks or [EmptyTask()]

        for stage in stages:
            stage.setup({})
            new_tasks = []
            for task in tasks:
                result = stage.process(task)
                if result is not None:
                    if isinstance(result, list):
                        new_tasks.extend(result)
                    else:
                        new_tasks.append(result)
            stage.teardown()
            tasks = new_tasks

        return tasks
