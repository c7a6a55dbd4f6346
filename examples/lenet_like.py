"""An example user model for `fxpga quantize examples/lenet_like.py:make --data digits`.

Untrained weights unless you pass `--weights sd.pt` (a state_dict saved with torch.save).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16 * 3 * 3, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(x.view(x.size(0), -1))


def make():
    return LeNetLike()
