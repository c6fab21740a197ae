import torch

# One intra-op thread: the tests' tensors are small, and on a shared 2-core machine a
# second OpenMP thread waiting for a core makes every small op milliseconds slower.
torch.set_num_threads(1)
