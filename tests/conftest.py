import os

import torch

# Two cores on CI: keep each test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
