"""PneumoniaModel for NVFlare's PTFileModelPersistor (config_fed_server.json names it
network.PneumoniaModel): the seed's chest X-ray CNN, input 3x224x224, 2 classes, with the
state-dict keys flarego's model uses (testdata/pneumonia_spec.json is the same net)."""
import torch.nn as nn


class PneumoniaModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.conv2 = nn.Conv2d(12, 20, kernel_size=3, stride=1, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(20, 32, kernel_size=3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(32 * 112 * 112, 2)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.conv2(x))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(x.view(x.size(0), -1))
