"""Training, calibration, export and sharing of Medusa heads."""

import os

import torch

# DeepSpeed (imported by accelerate when training) names its accelerator here, instead of warning "Setting
# accelerator to CPU" on CPU-only machines. Only training loads DeepSpeed; inference never sets this.
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
