"""The compute plane: LoRA fits as Ray tasks that hold a GPU only while they run, and the model
presets that configure fits and inference engines."""

from aar_ray.compute.tasks import (OOM_ADVICE, ComputeConfig, FitHandle, FitResult, GPUOutOfMemory,
                                   StudentFitJob, TeacherFitJob, is_cuda_oom, record_adapter,
                                   run_guarded, submit, submit_fit, task_options)

__all__ = ["OOM_ADVICE", "ComputeConfig", "FitHandle", "FitResult", "GPUOutOfMemory", "StudentFitJob",
           "TeacherFitJob", "is_cuda_oom", "record_adapter", "run_guarded", "submit", "submit_fit",
           "task_options"]
