"""Prints the learning rates PyTorch's CosineAnnealingLR gives per epoch (lr 0.01, T_max 20).

The values are pasted into crates/mnist-train/src/schedule.rs's test.
Run: $MNIST_PYTHON scripts/ref/cosine_lr.py
"""
import torch

p = [torch.nn.Parameter(torch.zeros(1))]
opt = torch.optim.SGD(p, lr=0.01)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
lrs = []
for _ in range(20):
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
print(lrs)
