"""Memory plans: what a generation or training run needs on the device, before any weight loads.

`generate` plans `vidcli generate` (offload mode, AE tiling), `train` plans one rank of
`vidcli train-dit` (ZeRO states, activations, checkpointing); both read the shared sizes in
`sizes`, measured on the `meta` device by `meta`.
"""

from vidcli.plans.generate import GeneratePlan, generate_plan, plan_generate
from vidcli.plans.sizes import GB, RESERVED_GB, device_memory_gb
from vidcli.plans.train import TrainPlan, model_state_bytes, plan_train, train_plan

__all__ = [
    "GB",
    "RESERVED_GB",
    "GeneratePlan",
    "TrainPlan",
    "device_memory_gb",
    "generate_plan",
    "model_state_bytes",
    "plan_generate",
    "plan_train",
    "train_plan",
]
