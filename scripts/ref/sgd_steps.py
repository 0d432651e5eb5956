"""Reference for crates/mnist-train/src/optim.rs: two torch.optim.SGD steps.

Run: $MNIST_PYTHON scripts/ref/sgd_steps.py
"""
import torch

p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
for g in ([0.5, 0.25, -1.0], [0.1, -0.2, 0.3]):
    p.grad = torch.tensor(g)
    opt.step()
print([f"{v:.7f}" for v in p.detach().tolist()])
